"""The Train driver's own rules, without a Ray cluster."""

from __future__ import annotations

import signal

import pytest

from tsd_ray.train import driver


class _FitInstallsAHandler:
    """What Ray Train 2.60's TorchTrainer.fit does to SIGINT: it installs a handler that holds
    the run's controller and leaves it installed."""

    def __init__(self, fail: bool = False):
        self.fail = fail

    def fit(self):
        controller = object()
        signal.signal(signal.SIGINT, lambda signum, frame, c=controller: None)
        if self.fail:
            raise RuntimeError("the run failed")
        return "result"


def test_fit_restores_sigint_so_the_finished_controller_is_released():
    before = signal.getsignal(signal.SIGINT)
    assert driver._fit_releasing_controller(_FitInstallsAHandler()) == "result"
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(RuntimeError, match="the run failed"):
        driver._fit_releasing_controller(_FitInstallsAHandler(fail=True))
    assert signal.getsignal(signal.SIGINT) is before

"""What a user sees while a job runs: the one progress convention of tsd_ray.

- Progress (a step starts or ends, one line per epoch) is printed with :func:`say` (driver) or
  :func:`epoch_line` (training workers; Ray forwards a worker's prints to the driver's console,
  prefixed with the worker's name).
- Problems are ``logging`` warnings and errors of the module's logger; nothing is logged at
  INFO for a user to read.
- Ray's own chatter (a line per report and checkpoint, Ray Data's per-dataset notices) is kept
  off the console unless the job runs with ``--verbose`` (:func:`set_verbose`, which sets
  ``TSD_VERBOSE=1`` so that Ray processes started afterwards see it); it still goes to Ray's
  log files (``/tmp/ray/session_latest/logs``).
"""

from __future__ import annotations

import os
import time

__all__ = ["epoch_line", "format_duration", "say", "set_verbose", "verbose"]

VERBOSE_ENV = "TSD_VERBOSE"


def say(msg: str) -> None:
    """One progress line on stdout: ``[tsd_ray HH:MM:SS] msg``."""
    print(f"[tsd_ray {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def verbose() -> bool:
    """True when Ray's own log lines should reach the console (``--verbose``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    """Switch Ray's console chatter on (``--verbose``) or off (the default) for this process
    and the Ray processes it starts."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"


def format_duration(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a non-negative duration."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def epoch_line(name: str, epoch: int, epochs: int, seconds_per_epoch: float, parts: str) -> str:
    """``[name] epoch i/N <parts>, at most m:ss left`` (``epoch`` counts from 0): the epochs
    still to run times ``seconds_per_epoch`` (early stopping may end the phase sooner)."""
    done = epoch + 1
    left = seconds_per_epoch * max(0, epochs - done)
    return f"[{name}] epoch {done}/{epochs} {parts}, at most {format_duration(left)} left"

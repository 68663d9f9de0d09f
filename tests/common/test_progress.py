"""The console's progress lines and the --verbose switch."""

from tsd_ray.common.progress import epoch_line, format_duration, set_verbose, verbose


def test_epoch_line_counts_from_one_and_projects_the_time_left():
    line = epoch_line("MS-p3_w_target", 1, 6, 18.0, "loss 0.41")
    assert line == "[MS-p3_w_target] epoch 2/6 loss 0.41, at most 1:12 left"  # 4 epochs x 18 s
    assert epoch_line("SS", 5, 6, 30.0, "x").endswith("at most 0:00 left")  # the last epoch
    assert format_duration(3725.4) == "1:02:05" and format_duration(-3) == "0:00"


def test_verbose_is_off_unless_set(monkeypatch):
    monkeypatch.setenv("TSD_VERBOSE", "")  # restored after the test, whatever set_verbose writes
    assert not verbose()
    set_verbose(True)
    assert verbose()
    set_verbose(False)
    assert not verbose()

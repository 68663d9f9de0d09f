"""Report writers: file shapes, Markdown tables like the paper's Tables 1-3, per-class tables."""

from __future__ import annotations

import json
import math

import pytest

from tsd_ray.common.types import Event
from tsd_ray.evaluate.report import (
    ReportError,
    event_gap_closed,
    format_table1,
    format_table2,
    format_table3,
    write_evaluation,
    write_per_class,
    write_report,
)
from tsd_ray.metrics.postprocess import PostProcessing
from tsd_ray.metrics.scoring import ScoredSample, score_samples

SETTINGS = {"segment_s": 1.0, "t_collar_s": 0.2, "percentage_of_length": 0.2, "run": "tiny"}


def paper_results():
    return {
        "SS": {"segment_f": 58.57, "event_f": 50.40},
        "WS": {"segment_f": 49.39, "event_f": 39.07},
        "MS": {"segment_f": 51.31, "event_f": 47.56, "final_student": "f"},
        "ablations": {
            "none": {
                "segment_f": 49.4,
                "event_f": 39.1,
                "switches": {"KD": False, "PS": False, "AD": False},
            },
            "KD+PS": {
                "segment_f": 50.9,
                "event_f": 46.0,
                "switches": {"KD": True, "PS": True, "AD": False},
            },
            "all": {
                "segment_f": 51.31,
                "event_f": 47.56,
                "switches": {"kd": True, "pseudo": True, "adversarial": True},
            },
        },
        "iterations": [
            {
                "iteration": 0,
                "f_segment_f": 50.0,
                "f_event_f": 45.0,
                "w_segment_f": 49.0,
                "w_event_f": 39.0,
            },
            {
                "iteration": 1,
                "f_segment_f": 51.31,
                "f_event_f": 47.56,
                "w_segment_f": 49.5,
                "w_event_f": 40.1,
            },
        ],
        "settings": SETTINGS,
    }


def table_rows(md: str, header_start: str) -> list[list[str]]:
    """Cells of the Markdown table whose header row starts with ``header_start``."""
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    rows = []
    for line in lines[i:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_write_report_files_and_tables(tmp_path):
    out = write_report(paper_results(), tmp_path / "run", title="tiny run")
    assert out == {
        "json": str(tmp_path / "run" / "report.json"),
        "md": str(tmp_path / "run" / "report.md"),
    }
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    assert data["title"] == "tiny run"
    assert data["MS"]["event_f"] == 47.56 and data["settings"]["segment_s"] == 1.0
    md = (tmp_path / "run" / "report.md").read_text()
    assert md.startswith("# tiny run")
    assert "1 s segments" in md and "200 ms onset collar" in md and "20 % of the event length" in md

    t1 = table_rows(md, "Method")
    assert t1[0] == ["Method", "Segment-F (%)", "Event-F (%)"]
    assert [r[0].split()[0] for r in t1[2:]] == ["SS", "WS", "MS"]
    assert t1[4][1:] == ["51.31", "47.56"]
    assert "MS closes 74.9 % of the WS → SS event-F gap" in md  # paper: ~75 %

    t2 = table_rows(md, "Setting")
    assert t2[0] == ["Setting", "KD", "PS", "AD", "SR", "Segment-F (%)", "Event-F (%)"]
    assert t2[1] == ["---", ":---:", ":---:", ":---:", ":---:", "---:", "---:"]  # one alignment per column
    assert t2[2] == ["none", "✗", "✗", "✗", "–", "49.40", "39.10"]  # no SR switch given: –
    assert t2[3] == ["KD+PS", "✓", "✓", "✗", "–", "50.90", "46.00"]
    assert t2[4][:4] == ["all", "✓", "✓", "✓"]  # config-style switch names accepted

    t3 = table_rows(md, "Iteration")
    assert t3[0] == [
        "Iteration",
        "f Segment-F (%)",
        "f Event-F (%)",
        "w Segment-F (%)",
        "w Event-F (%)",
    ]
    assert t3[3] == ["1", "51.31", "47.56", "49.50", "40.10"]


def test_report_optional_sections_and_nan(tmp_path):
    results = {"WS": {"segment_f": math.nan, "event_f": 12.345}, "settings": SETTINGS}
    write_report(results, tmp_path, title="ws only")
    md = (tmp_path / "report.md").read_text()
    assert "Table 2" not in md and "Table 3" not in md and "gap" not in md
    assert table_rows(md, "Method")[2][1:] == ["–", "12.35"]
    assert json.loads((tmp_path / "report.json").read_text())["WS"]["segment_f"] is None


def test_report_requires_settings_and_scores(tmp_path):
    with pytest.raises(ReportError, match="segment_s"):
        write_report(
            {"MS": {"segment_f": 1, "event_f": 2}, "settings": {"t_collar_s": 0.2}},
            tmp_path,
            title="x",
        )
    with pytest.raises(ReportError, match="'MS'.*event_f"):
        write_report({"MS": {"segment_f": 1}, "settings": SETTINGS}, tmp_path, title="x")
    with pytest.raises(ReportError, match="none of"):
        format_table1({"settings": SETTINGS})
    assert not (tmp_path / "report.md").exists()  # validated before writing


def test_table_functions_alone():
    assert (
        format_table1(paper_results()).splitlines()[0] == "| Method | Segment-F (%) | Event-F (%) |"
    )
    assert "| --- | :---: | :---: | :---: | :---: | ---: | ---: |\n" in format_table2(
        paper_results()["ablations"]
    )
    assert format_table3([{"iteration": 2}]).splitlines()[-1] == "| 2 | – | – | – | – |"
    assert (
        event_gap_closed({"SS": {"event_f": 50}, "WS": {"event_f": 50}, "MS": {"event_f": 50}})
        is None
    )
    assert event_gap_closed(paper_results()) == pytest.approx(
        100 * (47.56 - 39.07) / (50.40 - 39.07)
    )


def _scores():
    samples = [
        ScoredSample("a1", "dog", [0.9] * 25 + [0.1] * 25, (Event(0.0, 1.0, "dog"),)),
        ScoredSample("a2", "cat", [0.1] * 50, (Event(0.0, 1.0, "cat"),)),
        ScoredSample("a3", "bird", [0.9] * 10 + [0.1] * 40, ()),
    ]
    return score_samples(samples, PostProcessing(), classes=["dog", "cat", "bird"])


def test_per_class_writer(tmp_path):
    sc = _scores()
    out = write_per_class(sc.per_class, tmp_path, title="per class", settings=sc.settings())
    md = (tmp_path / "per_class.md").read_text()
    rows = {r[0]: r for r in table_rows(md, "Class")[2:]}
    assert list(rows) == ["bird", "cat", "dog"]  # sorted
    assert rows["dog"][1:3] == ["1", "1"] and rows["dog"][6] == "100.00"
    assert rows["cat"][6] == "0.00"
    assert rows["bird"][6] == "–"  # no reference events: undefined, not 0
    data = json.loads((tmp_path / "per_class.json").read_text())
    assert data["per_class"]["bird"]["event_f"] is None
    assert data["settings"]["threshold"] == 0.5
    assert out["md"].endswith("per_class.md")


def test_write_evaluation(tmp_path):
    sc = _scores()
    res = {
        "split": "target_test",
        "segment_f": sc.segment_f,
        "event_f": sc.event_f,
        "segment_f_micro": sc.segment_f_micro,
        "event_f_micro": sc.event_f_micro,
        "postprocessing": {"threshold": 0.4, "median_frames": 5},
        "per_class": sc.per_class,
        "n_samples": sc.n_samples,
        "settings": sc.settings(),
        "tuning": {
            "rows": [{"threshold": 0.4, "median_frames": 5, "segment_f": 50.0, "event_f": 50.0}]
        },
    }
    write_evaluation(res, tmp_path)
    md = (tmp_path / "evaluation.md").read_text()
    assert md.startswith("# Evaluation on target_test")
    assert table_rows(md, "Metric")[3] == ["Event-F (%)", "50.00", fmt_pct(sc.event_f_micro)]
    assert "threshold 0.4, median filter 5 frames" in md
    assert "| Class |" in md and "| Threshold |" in md
    data = json.loads((tmp_path / "evaluation.json").read_text())
    assert data["per_class"]["bird"]["event_f"] is None and data["n_samples"] == 3


def fmt_pct(x: float) -> str:
    return f"{x:.2f}"


def test_write_report_to_a_uri(tmp_path):
    out = write_report(paper_results(), f"file://{tmp_path}/uri_run", title="uri")
    assert out["md"] == f"file://{tmp_path}/uri_run/report.md"
    assert (tmp_path / "uri_run" / "report.json").exists()


def test_ss_below_ms_is_said_plainly_instead_of_a_gap_over_100_percent():
    from tsd_ray.evaluate.report import format_table1

    base = {"settings": {"segment_s": 1.0, "t_collar_s": 0.2, "percentage_of_length": 0.2}}
    ok = format_table1({**base, "SS": {"segment_f": 60, "event_f": 40}, "WS": {"segment_f": 50, "event_f": 20},
                        "MS": {"segment_f": 55, "event_f": 30}})
    assert "closes 50.0 % of the WS → SS event-F gap" in ok
    bad = format_table1({**base, "SS": {"segment_f": 24.3, "event_f": 5.7}, "WS": {"segment_f": 30.2, "event_f": 0.0},
                         "MS": {"segment_f": 42.2, "event_f": 10.8}})
    assert "scores below MS here" in bad and "% of the WS → SS" not in bad
    worse = format_table1({**base, "SS": {"segment_f": 1, "event_f": 10}, "WS": {"segment_f": 1, "event_f": 20},
                           "MS": {"segment_f": 1, "event_f": 15}})
    assert "scores below MS and WS here" in worse and "% of the WS → SS" not in worse


def test_report_has_per_class_tables_and_the_encoder_quality():
    from tsd_ray.evaluate.report import format_report

    pc = {"dog": {"n_samples": 3, "n_ref_events": 2, "segment_f": 50.0, "event_f": 40.0}}
    md = format_report({"settings": {"segment_s": 1.0, "t_collar_s": 0.2, "percentage_of_length": 0.2},
                        "SS": {"segment_f": 60, "event_f": 40, "per_class": pc},
                        "encoder": {"accuracy": 0.75, "n": 8, "per_class": {"dog": 1.0, "cat": 0.5}, "unscored": []}},
                       title="t")
    assert "## Per-class scores: SS" in md and "| dog |" in md
    assert "## Reference encoder" in md and "**75.0 %**" in md and "| cat | 50.0 |" in md


def test_psds1_and_intersection_f_appear_where_the_evaluations_hold_them(tmp_path):
    from tsd_ray.evaluate.report import INTERSECTION_NOTE, format_report, format_table1

    base = {"settings": {"segment_s": 1.0, "t_collar_s": 0.2, "percentage_of_length": 0.2}}
    old = format_table1({**base, "SS": {"segment_f": 60, "event_f": 40}})
    assert "PSDS1" not in old  # a run evaluated before PSDS: the table it always had
    pc = {"dog": {"n_samples": 3, "n_ref_events": 2, "segment_f": 50.0, "event_f": 40.0,
                  "psds1": 0.41234, "intersection_f": 55.5}}
    md = format_report({**base, "SS": {"segment_f": 60.0, "event_f": 40.0, "psds1": 0.5123, "intersection_f": 61.0,
                                       "per_class": pc},
                        "WS": {"segment_f": 50, "event_f": 20}}, title="t")
    assert table_rows(md, "Method")[2] == ["SS (f student, strong target labels: upper bound)", "60.00",
                                           "40.00", "0.512", "61.00"]
    assert table_rows(md, "Method")[3][3:] == ["–", "–"]  # WS was evaluated before PSDS
    assert INTERSECTION_NOTE in md
    assert table_rows(md, "Class")[2][-2:] == ["0.412", "55.50"]
    sc = _scores()
    res = {"split": "target_test", "segment_f": 50.0, "event_f": 50.0, "psds1": 0.25, "intersection_f": 33.3,
           "settings": sc.settings()}
    write_evaluation(res, tmp_path)
    md = (tmp_path / "evaluation.md").read_text()
    assert ["PSDS1", "0.250", "–"] in table_rows(md, "Metric")

"""Progress: plain, rate-limited lines where stderr is not a terminal (logs of batch jobs), never silence."""

from __future__ import annotations

from cxrdx import progress


def test_log_progress_writes_lines_with_the_stage_and_its_state(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    with progress.progress_bar(3, "cv pool") as bar:
        for k in range(3):
            bar.set(f"fold {k + 1}")
            bar.advance()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines[:3]] == ["cv pool: 1/3 fold 1", "cv pool: 2/3 fold 2", "cv pool: 3/3 fold 3"]


def test_log_progress_is_rate_limited_and_quiet_for_short_stages(capsys):
    with progress.progress_bar(1000, "extract") as bar:
        for _ in range(1000):
            bar.advance()
    assert capsys.readouterr().err == ""  # well under LINE_INTERVAL_S: no line at all


def test_disabled_progress_prints_nothing(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    with progress.progress_bar(2, "x", enabled=False) as bar:
        bar.advance(2)
    assert capsys.readouterr().err == ""

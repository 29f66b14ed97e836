"""``cost``: a run's worker and wall time per backbone, from its cells' own timings and timestamps."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from benchmark.cli import main
from benchmark.grid import cost
from benchmark.grid.store import CellStore
from test_results import make_cell


def timed_cell(backbone, method, seed, start, minutes, status="ok", steps=None):
    """A cell that started ``start`` minutes after 10:00 UTC and ran ``minutes``."""
    began = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc) + timedelta(minutes=start)
    return {**make_cell(backbone, method, status=status, seed=seed), "steps": steps,
            "started": began.isoformat(), "finished": (began + timedelta(minutes=minutes)).isoformat(),
            "timings": {"total": minutes * 60.0}}


def test_parallel_cells_count_once_in_wall_time_and_sessions_split_at_gaps():
    cells = [
        timed_cell("ddpm", "asp", 0, start=0, minutes=10),
        timed_cell("ddpm", "ste", 0, start=2, minutes=10),  # beside asp on the second worker
        timed_cell("ddpm", "asp", 1, start=14, minutes=6, status="failed"),  # 2 min after: same session
        timed_cell("ddpm", "ste", 1, start=60, minutes=30, steps=1000),  # a later session
        timed_cell("dit", "asp", 0, start=0, minutes=1),
    ]
    ddpm, dit = cost.summarize(cells, gap=timedelta(minutes=5))
    assert (ddpm["backbone"], ddpm["cells"], ddpm["failed"]) == ("ddpm", 4, 1)
    assert ddpm["worker_s"] == 56 * 60
    assert ddpm["dearest"] == ("ste seed 1, 1000 steps", 30 * 60)
    assert [(b.minute, e.minute) for b, e in ddpm["sessions"]] == [(0, 20), (0, 30)]
    assert ddpm["wall_s"] == (20 + 30) * 60
    assert dit["wall_s"] == 60 and len(dit["sessions"]) == 1


def test_a_gap_longer_than_the_threshold_splits_one_session_in_two():
    spans = [(datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 11)),
             (datetime(2026, 1, 1, 11, 10), datetime(2026, 1, 1, 12))]
    assert len(cost.sessions(spans, timedelta(minutes=5))) == 2
    assert cost.sessions(spans, timedelta(minutes=15)) == [(datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 12))]


def test_cost_command_prints_one_row_per_backbone(tmp_path, capsys):
    store = CellStore(tmp_path / "run")
    store.write(timed_cell("ddpm", "asp", 0, start=0, minutes=10))
    store.write(timed_cell("ddpm", "ste", 0, start=2, minutes=9))
    assert main(["cost", str(store.out_dir)]) == 0
    out = capsys.readouterr().out
    assert "| ddpm       | 2       | 0        | 1,140      | 570          | asp seed 0 (600 s)" in out
    assert "0 h 11 min" in out and "2026-12-03 10:00–10:11" in out


def test_cost_of_an_empty_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["cost", str(tmp_path)]) != 0
    assert "no result cells" in capsys.readouterr().err

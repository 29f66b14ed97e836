"""``python -m benchmark dipgo-convergence``: the measurement behind ``tiny``'s DiP-GO pruner steps."""
import re

from benchmark.cli import main


def test_prints_one_line_per_interval_with_the_schedules_change_against_the_last(capsys):
    assert main(["dipgo-convergence", "--backbones", "dit", "--steps", "4", "--every", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.match(r"## dit: 4 pruner steps in \d+ s", lines[0])
    assert lines[1].startswith("step | consistency | kept block share | gates at reuse")
    rows = [line.split(" | ") for line in lines[2:]]
    assert [row[0] for row in rows] == ["2", "4"]
    assert rows[-1][-3:] == ["0.000", "0.000", "0.000"]  # the last snapshot is the final schedule
    assert all(0 <= float(row[2]) <= 1 for row in rows)


def test_steps_must_fill_whole_lines(capsys):
    assert main(["dipgo-convergence", "--backbones", "dit", "--steps", "5", "--every", "2"]) == 2
    assert "must be a multiple of --every 2" in capsys.readouterr().err

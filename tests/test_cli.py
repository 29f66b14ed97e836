"""The command line: `list`, help text, and one `error: ...` line with exit code 2 for every input mistake."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmark.grid import run as grid_run
from benchmark.cli import main
from benchmark.plugins import DISABLE_AUTOLOAD_ENV
from benchmark.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]
BUILTINS = ["uvit", "ddpm", "dense", "dense-ft", "asp", "ste", "progressive", "sparsedm", "dipgo", "uniform-skip"]


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, DISABLE_AUTOLOAD_ENV: "1"}
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_shows_every_builtin():
    result = run_module("list")
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[2].strip(): line for line in result.stdout.splitlines()[2:]}
    assert set(BUILTINS) <= set(rows)
    assert "methods.uniform_skip" in rows["uniform-skip"] and "builtin" in rows["uniform-skip"]


def test_unknown_method_in_a_real_process():
    result = run_module("run", "--methods", "nosuch")
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: unknown method 'nosuch'")
    assert all(name in line for name in BUILTINS[2:])


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["latency", "--help"]])
def test_help_ends_with_examples(capsys, argv):
    code, out, _ = run_main(capsys, *argv)
    assert code == 0
    assert out.rstrip().splitlines()[-1].startswith("  python -m benchmark ")
    assert "examples:" in out


INPUT_ERRORS = [
    (["run", "--methods", "nosuch"], r"unknown method 'nosuch'.*available: dense, dense-ft, asp, .*uniform-skip"),
    (["run", "--methods", "sparsedm+"], r"malformed method chain 'sparsedm\+'"),
    (["run", "--methods", "sparsedm+dipg"], r"unknown method 'dipg' \(did you mean 'dipgo'\?\)"),
    (["run", "--backbones", "vit"], r"unknown backbone 'vit' \(did you mean 'uvit'\?\); available: uvit, ddpm"),
    (["run", "--pattern", "2-4"], r"malformed N:M pattern '2-4'"),
    (["run", "--pattern", "4:2"], r"invalid N:M pattern 4:2"),
    (["run", "--train-steps", "0"], r"--train-steps: must be a positive integer, got 0"),
    (["run", "--fid-samples", "-5"], r"--fid-samples: must be a positive integer, got -5"),
    (["run", "--fid-samples", "many"], r"--fid-samples: expected an integer, got 'many'"),
    (["run", "--sample-steps", "0"], r"--sample-steps: must be a positive integer, got 0"),
    (["run", "--sample-steps", "5000"], r"sample_steps must be between 1 and 1000, got 5000"),
    (["run", "--preset", "imagenet"], r"--preset: invalid choice: 'imagenet'"),
    (["run", "--dipgo-target", "1.5"], r"--dipgo-target: must be a fraction in \(0, 1\]"),
    (["run", "--seed", "-1"], r"--seed: must be an integer in \[0, 2\*\*32\)"),
    (["run", "--checkpoint", "uvit"], r"malformed --checkpoint 'uvit'"),
    (["run", "--checkpoint", "unet=x.pt"], r"--checkpoint for unknown backbone 'unet'"),
    (["run", "--checkpoint", "uvit=/no/such"], r"--checkpoint uvit: no such file or directory /no/such"),
    (["run", "--seeds", "0,1,0"], r"--seeds: seeds must be distinct, got 0,1,0"),
    (["run", "--seeds", "0,x"], r"--seeds: expected an integer, got 'x'"),
    (["run", "--seed", "1", "--seeds", "0,1"], r"argument --seeds: not allowed with argument --seed"),
    (["run", "--fid-samples", "100000"], r"--fid-samples 100000 is not possible: dataset 'mnist16' has 5000 images"),
    (["train-dense", "--backbone", "nosuch"], r"unknown backbone 'nosuch'"),
    (["train-dense", "--backbone", "uvit", "--steps", "0"], r"--steps: must be a positive integer"),
    (["latency", "--backbone", "uvit", "--batch-sizes", "1,0"], r"--batch-sizes: must be a positive integer"),
    ([], r"required: COMMAND"),
]


@pytest.mark.parametrize("argv, pattern", INPUT_ERRORS, ids=[" ".join(a) or "none" for a, _ in INPUT_ERRORS])
def test_input_errors_are_one_line(capsys, argv, pattern):
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("error: ") and re.search(pattern, line), line


def test_sample_steps_replaces_only_that_field_of_the_preset(capsys, monkeypatch, tmp_path):
    """The override is part of the preset, so it enters every cell's config hash; without it nothing changes."""
    seen = []

    def run_grid(registries, methods, backbones, preset, *args, **kwargs):
        seen.append(preset)
        return SimpleNamespace(ok=[], failed=[], skipped=[], claimed=[])

    monkeypatch.setattr(grid_run, "run_grid", run_grid)
    argv = ["run", "--methods", "dense", "--out", str(tmp_path), "--quiet"]
    assert run_main(capsys, *argv, "--sample-steps", "20")[0] == 0
    assert run_main(capsys, *argv)[0] == 0
    tiny = PRESETS["tiny"]
    assert seen == [dataclasses.replace(tiny, sample_steps=20), tiny] and tiny.sample_steps != 20


def test_unwritable_out_dir(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file: nothing can be created under it, not even by root")
    out_dir = blocker / "run"
    code, out, err = run_main(capsys, "run", "--methods", "dense", "--backbones", "uvit", "--out", str(out_dir))
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith(f"error: cannot write results to {out_dir}")


def test_bad_checkpoint_stops_before_any_cell(capsys, tmp_path):
    garbage = tmp_path / "uvit.pt"
    garbage.write_bytes(b"not a checkpoint")
    out_dir = tmp_path / "run"
    argv = ["run", "--methods", "dense", "--backbones", "uvit", "--checkpoint", f"uvit={garbage}", "--out", out_dir]
    code, _, err = run_main(capsys, *map(str, argv), "--quiet")
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith("error: ") and str(garbage) in line
    assert not list((out_dir / "cells").iterdir())


def test_empty_leaderboard_dir(capsys, tmp_path):
    code, _, err = run_main(capsys, "leaderboard", str(tmp_path))
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith("error: no result cells in")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_unavailable(capsys, tmp_path):
    code, _, err = run_main(capsys, "run", "--methods", "dense", "--device", "cuda", "--out", str(tmp_path))
    assert code == 2
    [line] = err.splitlines()
    assert "CUDA is not available" in line and not list(tmp_path.iterdir())

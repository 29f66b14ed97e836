"""The GPU check script says what it needs and stops before any work where there is no suitable GPU."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "results" / "gpu" / "check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check itself runs (minutes)")
def test_without_a_gpu_it_says_what_it_needs_and_does_nothing():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                            cwd=SCRIPT.parents[2])
    assert result.returncode == 3
    assert "needs an NVIDIA GPU with compute capability 8.0+" in result.stderr
    assert not (SCRIPT.parent / "check.out").exists()

"""The GPU check script says what it needs and stops before any work where there is no suitable GPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "results" / "gpu" / "check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check itself runs (minutes)")
def test_without_a_gpu_it_says_what_it_needs_and_does_nothing():
    inside_the_venv = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                            cwd=SCRIPT.parents[2], env=inside_the_venv)
    assert result.returncode == 3
    assert "needs an NVIDIA GPU with compute capability 8.0+" in result.stderr
    assert not (SCRIPT.parent / "check.out").exists()

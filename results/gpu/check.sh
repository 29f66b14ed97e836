#!/usr/bin/env bash
# The GPU check (issue #26): what this suite can only measure on an NVIDIA GPU with compute capability 8.0+.
# Run from the repository root inside its venv, on an otherwise idle GPU; about 8 minutes on an H100:
#   1. the grid's CUDA path: every method on every backbone (text-to-image `sd` included) through
#      `run --device cuda` at tiny budgets (20 fine-tuning steps, FID@64, 10 DDIM steps), every cell must be ok;
#   2. 2:4 vs dense latency at DiT widths (results/latency/dit_widths.sh) and on the SD-1.5 UNet layout;
# and writes results/gpu/check.out (device, versions, wall times, the grid's leaderboard).
# Without such a GPU it says so and exits 3 before any work. No number here may be extrapolated.
set -euo pipefail
here=$(dirname "$0")
python - <<'PY' || exit 3
import sys, torch
if not torch.cuda.is_available():
    sys.exit("results/gpu/check.sh needs an NVIDIA GPU with compute capability 8.0+ (CUDA is not available here)")
major, minor = torch.cuda.get_device_capability()
if major < 8:
    sys.exit(f"results/gpu/check.sh needs compute capability 8.0+; {torch.cuda.get_device_name()} has {major}.{minor}")
PY
out="$here/check.out"
grid=$(mktemp -d)/grid
{
    echo "# results/gpu/check.sh at commit $(git rev-parse --short HEAD), $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
    start=$(date +%s)
    python -m benchmark run --device cuda --methods all --backbones uvit,ddpm,dit,sd --train-steps 20 --fid-samples 64 \
        --sample-steps 10 --out "$grid" --quiet
    echo "grid: $(( $(date +%s) - start )) s"
    cat "$grid/leaderboard.md"
    start=$(date +%s)
    bash results/latency/dit_widths.sh
    echo "DiT-width 2:4 latency: $(( $(date +%s) - start )) s (results/latency/dit-*.json)"
    start=$(date +%s)
    python -m benchmark latency --backbone sd --preset sd15 --batch-sizes 1,2,8 --device cuda \
        --out results/latency/sd15.json
    echo "SD-1.5 UNet 2:4 latency: $(( $(date +%s) - start )) s (results/latency/sd15.json)"
} 2>&1 | tee "$out"

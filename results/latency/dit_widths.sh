#!/usr/bin/env bash
# 2:4 vs dense at DiT widths (S/2, B/2, XL/2 at imagenet256, latent 4x32x32) on a CUDA GPU, sm80 or newer.
# Prepared for a GPU session; writes dit-{s2,b2,xl2}.{json,txt} beside this script. Not yet run: no GPU
# was available when it was written, so this folder holds no DiT numbers.
set -euo pipefail
here=$(dirname "$0")
for variant in dit-s2 dit-b2 dit-xl2; do
    python -m benchmark latency --backbone dit --preset imagenet256 --variant "$variant" --device cuda \
        --batch-sizes 1,16,64 --out "$here/$variant.json" | tee "$here/$variant.txt"
done

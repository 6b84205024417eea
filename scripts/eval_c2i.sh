#!/usr/bin/env bash
# ADM metrics of a sample npz against the ImageNet 256 reference batch, in PyTorch.
# VIRTUAL_imagenet256_labeled.npz: the reference batch of openai/guided-diffusion (evaluations/README.md).
# weights-inception-2015-12-05-6726825d.pth: torch-fidelity's release v0.2.0 asset.
set -euo pipefail
cd "$(dirname "$0")/.."
REF=${REF:-VIRTUAL_imagenet256_labeled.npz}
SAMPLES=${SAMPLES:?set SAMPLES to the .npz written by sample_c2i_ddp.py}
WEIGHTS=${WEIGHTS:-weights-inception-2015-12-05-6726825d.pth}
python3 -m evaluations.c2i.evaluator "$REF" "$SAMPLES" --inception-weights "$WEIGHTS" --batch-size 64 --device "${DEVICE:-auto}"

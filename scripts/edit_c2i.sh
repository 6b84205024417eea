#!/usr/bin/env bash
# Zero-shot editing examples. ImageNet (released weights; photo.png is any picture):
#   python3 edit_c2i.py --task inpaint --gpt-model ARPG-L --gpt-ckpt arpg_300m.pt --vq-ckpt vq_ds16_c2i.pt \
#       --image photo.png --shape center --class-label 207 --cfg-scale 4.0 --step 32 --num-samples 4 --out inpaint.png
#   python3 edit_c2i.py --task expand --gpt-model ARPG-L --gpt-ckpt arpg_300m.pt --vq-ckpt vq_ds16_c2i.pt \
#       --image photo.png --class-label 207 --out-size 24 --step 32 --out expand.png
# Digits (the demo's checkpoint; runs on a CPU in seconds):
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${CKPT:-$(ls results/digits/*-ARPG-digits/checkpoints/*.pt | tail -n 1)}
python3 edit_c2i.py --task inpaint --gpt-model ARPG-digits --gpt-ckpt "$CKPT" --digit-index 3 --shape bottom \
    --cfg-scale 2.0 --num-samples 6 --device cpu --out results/digits/inpaint.png
python3 edit_c2i.py --task outpaint --gpt-model ARPG-digits --gpt-ckpt "$CKPT" --digit-index 3 --shape border \
    --border-width 2 --cfg-scale 2.0 --num-samples 6 --device cpu --out results/digits/outpaint.png
python3 edit_c2i.py --task class-edit --gpt-model ARPG-digits --gpt-ckpt "$CKPT" --digit-index 3 --shape bottom \
    --class-label 9 --cfg-scale 2.0 --num-samples 6 --device cpu --out results/digits/class_edit.png

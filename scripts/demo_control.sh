#!/usr/bin/env bash
# Controllable generation on the CPU demo: the digits' binarised shapes as condition maps. Trains the
# class-only demo model (as scripts/demo.sh) and a controllable one with the same recipe, then measures
# how closely samples follow held-out shapes (scripts/eval_digits_control.py) and draws the picture.
# FINETUNE=1: instead of training the controllable model from scratch, fine-tune the class-only one
# (--init-from: its weights strictly, plus condition rows that start as copies of its [MASK] row).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
STEPS=${STEPS:-1200}
FINETUNE_STEPS=${FINETUNE_STEPS:-600}
COMMON=(--gpt-model ARPG-digits --dataset digits --code-path data/digits/train --global-batch-size 64 --lr 2e-3
        --min-lr 2e-4 --epochs 55 --warmup-epochs 5 --log-every 200 --num-workers 0 --num-threads "$THREADS"
        --device cpu --no-compile)

python3 -m dataset.digits --out data/digits  # also writes data/digits/{train,val}_shape/
latest() { ls "$1"/*-ARPG-digits/checkpoints/*.pt | tail -n 1; }

if ! ls results/digits/*-ARPG-digits/checkpoints/*.pt > /dev/null 2>&1; then
    python3 train_c2i.py "${COMMON[@]}" --results-dir results/digits --max-steps "$STEPS" --ckpt-every "$STEPS"
fi
CLASS_CKPT=$(latest results/digits)
if [ "${FINETUNE:-0}" = 1 ]; then
    python3 train_c2i.py "${COMMON[@]}" --results-dir results/digits_shape_finetuned --condition-path data/digits/train_shape \
        --init-from "$CLASS_CKPT" --warmup-epochs 1 --max-steps "$FINETUNE_STEPS" --ckpt-every "$FINETUNE_STEPS"
    CONTROL_CKPT=$(latest results/digits_shape_finetuned)
else
    python3 train_c2i.py "${COMMON[@]}" --results-dir results/digits_shape --condition-path data/digits/train_shape \
        --max-steps "$STEPS" --ckpt-every "$STEPS"
    CONTROL_CKPT=$(latest results/digits_shape)
fi

python3 sample_c2i.py --gpt-model ARPG-digits --gpt-ckpt "$CONTROL_CKPT" --condition-vocab-size 2 \
    --condition-map data/digits/val_shape/3/2.npy --class-labels 3 --samples-per-class 8 --step 16 --cfg-scale 2.0 \
    --device cpu --out results/digits_control_grid.png
python3 -m scripts.eval_digits_control --class-ckpt "$CLASS_CKPT" --control-ckpt "$CONTROL_CKPT" --step 16 \
    --cfg-scale 2.0 --out results/digits_control.png

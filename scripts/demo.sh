#!/usr/bin/env bash
# The CPU demo: build the digits set, train a 0.2 M-parameter ARPG, sample a grid of all ten classes,
# and judge 1,000 samples (100 per class) with a classifier fitted on real digits.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
STEPS=${STEPS:-1200}
RESULTS=${RESULTS:-results/digits}

python3 -m pip install -q -r requirements.txt
python3 -m dataset.digits --out data/digits

# 1437 training digits / batch 64 = 22 steps per epoch: 1200 steps is about 55 epochs. Every 300 steps the
# run judges 200 samples (class accuracy, Frechet distance: log.txt, metrics.csv, metrics.png); every 600
# it saves a grid of samples to grids/.
python3 train_c2i.py --gpt-model ARPG-digits --dataset digits --code-path data/digits/train \
    --results-dir "$RESULTS" --global-batch-size 64 --lr 2e-3 --min-lr 2e-4 --epochs 55 --warmup-epochs 5 \
    --max-steps "$STEPS" --ckpt-every "$STEPS" --log-every 200 --num-workers 0 --num-threads "$THREADS" \
    --device cpu --no-compile --eval-every 300 --eval-num-images 200 --eval-batch-size 200 --eval-step 16 \
    --eval-cfg-scale 2.0 --sample-every 600
RUN=$(ls -d "$RESULTS"/*-ARPG-digits | tail -n 1)
CKPT=$(ls "$RUN"/checkpoints/*.pt | tail -n 1)

python3 sample_c2i.py --gpt-model ARPG-digits --gpt-ckpt "$CKPT" --class-labels 0 1 2 3 4 5 6 7 8 9 \
    --samples-per-class 10 --step 16 --cfg-scale 2.0 --device cpu --out "$RUN/grid.png"
python3 -m evaluations.digits --gpt-model ARPG-digits --gpt-ckpt "$CKPT" --num-samples 1000 --step 16 --cfg-scale 2.0

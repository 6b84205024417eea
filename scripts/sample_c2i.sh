#!/usr/bin/env bash
# 50,000 samples (50 per class) for FID with the released checkpoints, as in the official GETTING_STARTED
# (arccos, 64 steps: FID about 2.38 / 2.02 / 1.91 for L / XL / XXL at cfg 5.0 / 6.0 / 7.5; the official README's
# cosine-schedule table uses cfg 4.5 / 6.0 / 7.5 for 2.44 / 2.10 / 1.94).
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR (node 0's address), with samples/ on a filesystem all share.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-ARPG-L}
CKPT=${CKPT:-arpg_300m.pt}
CFG=${CFG:-5.0}
NPROC=${NPROC:-8}
torchrun --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="$NPROC" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" sample_c2i_ddp.py \
    --gpt-model "$MODEL" --gpt-ckpt "$CKPT" --vq-ckpt vq_ds16_c2i.pt \
    --sample-schedule arccos --cfg-schedule linear --cfg-scale "$CFG" --step 64 \
    --temperature 1.0 --top-k 0 --top-p 1.0 --precision bf16 \
    --per-proc-batch-size 64 --num-fid-samples 50000 --global-seed 0 --sample-dir samples

#!/usr/bin/env bash
# The official recipe: ARPG-L, 400 epochs, global batch 1024 (128 per GPU on 8 GPUs), lr 4e-4
# (1e-4 per 256 images). XL/XXL: MODEL=ARPG-XL or ARPG-XXL. Several nodes: NNODES, NODE_RANK, MASTER_ADDR
# (node 0's address), MASTER_PORT, with results/ on a filesystem all nodes share (the global batch stays 1024).
# Memory: EXTRA="--grad-checkpointing 36" lets ARPG-XXL train at 128 per GPU on 80 GB GPUs;
# EXTRA="--data-parallel fsdp" shards weights, gradients and AdamW state (convert its checkpoint folders with
# python -m scripts.convert_checkpoint before sampling).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-ARPG-L}
CODES=${CODES:-data/imagenet-llamagen-adm-256_codes}
exec torchrun --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="${NPROC:-8}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" train_c2i.py \
    --gpt-model "$MODEL" --code-path "$CODES" --dataset imagenet_code \
    --epochs 400 --global-batch-size 1024 --lr 4e-4 --min-lr 1e-5 --warmup-epochs 100 --lr-schedule cosine \
    --weight-decay 5e-2 --beta1 0.9 --beta2 0.95 --max-grad-norm 1.0 \
    --dropout-p 0.1 --token-dropout-p 0.1 --mixed-precision bf16 \
    --results-dir results --ckpt-every 5000 --log-every 100 --num-workers 16 --global-seed 0 --resume ${EXTRA:-}

#!/usr/bin/env bash
# Multi-GPU measurements on one host (the tables of docs/training.md and docs/reliability.md): random weights and random codes,
# so it runs anywhere with torchrun and 4 GPUs. Each part prints one summary line per run; the logs are packed into $OUT.
#   bash scripts/check_multigpu.sh scaling-small   # 1 and 2 GPUs, ARPG-L and ARPG-XXL, DDP and FSDP
#   bash scripts/check_multigpu.sh scaling-large   # 4 GPUs, the same models and modes (xxl-ddp-4: that one only)
#   bash scripts/check_multigpu.sh recipe          # ARPG-L, --global-batch-size 1024 on 4 GPUs
#   bash scripts/check_multigpu.sh sample          # 10,000 images on 1 and 4 GPUs, a killed 4-GPU run rerun
#   bash scripts/check_multigpu.sh resume-xxl      # FSDP XXL on 2 GPUs killed and resumed (--deterministic),
#   bash scripts/check_multigpu.sh resume-l        # the same for L on 4 GPUs, then its checkpoint on 2 GPUs;
#                                                  # each converted and loaded strictly on GPU and CPU
#   bash scripts/check_multigpu.sh two-nodes       # two launchers (--nnodes 2) of 2 GPUs: training killed and
#                                                  # resumed, and sampling, against one launcher
# Runs on distinct GPUs of one phase share the host (CPU, PCIe); each phase is listed in the log.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/arpg_multigpu}
OUT=${OUT:-$WORK/out}  # only the summary and logs.tgz land here
LOGS=$WORK/logs
STEPS=${STEPS:-40}
RESUME_STEPS=${RESUME_STEPS:-20}  # the kill-and-resume runs: checkpoints every 10, killed at step 15
mkdir -p "$WORK" "$OUT" "$LOGS"
CODES=$WORK/codes

make_inputs() {  # random RandAR-layout codes (16 per class) and random ARPG-L / VQ-16 checkpoints
  [[ -d $CODES ]] || python3 - "$CODES" <<'PY'
import os, sys
import numpy as np
root, rng = sys.argv[1], np.random.default_rng(0)
for label in range(1000):
    os.makedirs(f"{root}/{label}", exist_ok=True)
    for index in range(16):
        np.save(f"{root}/{label}/{index}.npy", rng.integers(0, 16384, size=(2, 256), dtype=np.int64))
PY
  [[ -f $WORK/arpg_l_random.pt ]] || python3 - "$WORK" <<'PY'
import sys, torch
from autoregressive.models.arpg import ARPG_models
from tokenizer.vq_model import VQ_models
torch.manual_seed(0)
torch.save({"model": ARPG_models["ARPG-L"]().state_dict()}, f"{sys.argv[1]}/arpg_l_random.pt")
torch.save({"model": VQ_models["VQ-16"]().state_dict()}, f"{sys.argv[1]}/vq_random.pt")
PY
}

train() {  # name gpus model batch_per_gpu mode [extra flags]
  local name=$1 gpus=$2 model=$3 per_gpu=$4 mode=$5; shift 5
  if [[ -n $(nvidia-smi -i "$gpus" --query-compute-apps=pid --format=csv,noheader) ]]; then
    echo "$name: GPUs $gpus are busy with other processes; not measured" | tee -a "$LOGS/phases.txt"; return
  fi
  local nproc=$(( $(tr -cd , <<<"$gpus" | wc -c) + 1 ))
  CUDA_VISIBLE_DEVICES=$gpus setsid timeout 420 torchrun --standalone --nproc_per_node="$nproc" train_c2i.py \
    --gpt-model "$model" --code-path "$CODES" --dataset imagenet_code --global-batch-size $((per_gpu * nproc)) \
    --max-steps "$STEPS" --log-every 10 --ckpt-every 100000 --data-parallel "$mode" --num-workers 4 \
    --results-dir "$WORK/runs/$name" "$@" >"$LOGS/$name.log" 2>&1 &
  local pid=$!
  # Stop at the last log line: the final checkpoint (16 GB for XXL with AdamW) is not what is measured.
  while kill -0 $pid 2>/dev/null && ! grep -q "step $(printf %07d "$STEPS") loss" "$LOGS/$name.log"; do sleep 1; done
  # The launcher and every worker, by pattern: a worker left behind holds its GPU memory and, stuck in a
  # collective, time-slices the GPU with the next run (this spoiled a measurement on 2026-11-27).
  kill -9 -- -$pid 2>/dev/null; wait $pid 2>/dev/null
  while pgrep -f -- "--results-dir $WORK/runs/$name( |$)" >/dev/null; do
    pkill -9 -f -- "--results-dir $WORK/runs/$name( |$)"; sleep 1
  done
  echo "exit ok" >>"$LOGS/$name.log"
  rm -rf "$WORK/runs/$name"
  summary "$name"
  tar czf "$OUT/logs-${PART}.tgz" -C "$LOGS" .
}

summary() {  # name: median img/s of the logs after the first (compile), peak memory, final loss
  python3 - "$LOGS/$1.log" "$1" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
rows = re.findall(r"step (\d+) loss ([\d.]+) lr \S+ ([\d.]+) img/s, peak memory ([\d.]+) GiB", text)
after = [float(r[2]) for r in rows[1:]] or [0.0]
peak = max([float(r[3]) for r in rows] or [0.0])
status = re.findall(r"exit (\w+)", text)
oom = "OUT OF MEMORY" if any(s in text for s in ("OutOfMemoryError", "out of memory", "out of GPU memory")) else ""
print(f"{sys.argv[2]:<24} img/s {statistics.median(after):8.1f}  peak {peak:5.1f} GiB  "
      f"loss@{rows[-1][0] if rows else '-'} {rows[-1][1] if rows else '-'}  exit {status[-1] if status else '?'} {oom}")
PY
}

phase() { echo "== phase: $*" | tee -a "$LOGS/phases.txt"; }

fsdp_run() {  # gpus model batch_per_gpu results_dir [extra]: RESUME_STEPS steps, checkpoints every 10, logs every 5
  local gpus=$1 model=$2 per_gpu=$3 dir=$4; shift 4
  local nproc=$(( $(tr -cd , <<<"$gpus" | wc -c) + 1 ))
  CUDA_VISIBLE_DEVICES=$gpus torchrun --standalone --nproc_per_node="$nproc" train_c2i.py --gpt-model "$model" \
    --code-path "$CODES" --dataset imagenet_code --global-batch-size $((per_gpu * nproc)) --max-steps "$RESUME_STEPS" \
    --ckpt-every 10 --log-every 5 --lr 1e-3 --warmup-epochs 0 --data-parallel fsdp --num-workers 4 \
    --results-dir "$dir" "$@"  # a learning rate that moves the logged loss within these few steps
}

losses() { grep -o "step 00000[1-9][05] loss [0-9.]*" "$1" | awk '$2 > 10' | tr '\n' ' '; }  # after the kill's checkpoint

resume_check() {  # name full_gpus cut_gpus model batch_per_gpu: uninterrupted vs killed after the step-10
  # checkpoint + --resume, both with --deterministic (without it two GPU runs from one seed drift apart within
  # a few steps, so only a deterministic run can be compared to the bit). Disjoint GPU sets run concurrently.
  local name=$1 full_gpus=$2 cut_gpus=$3 model=$4 per_gpu=$5 full=$WORK/runs/$1-full cut=$WORK/runs/$1-cut
  phase "resume: $name"
  fsdp_run "$full_gpus" "$model" "$per_gpu" "$full" --deterministic >"$LOGS/$name-full.log" 2>&1 &
  local full_pid=$!
  [[ $full_gpus == "$cut_gpus" ]] && wait $full_pid
  fsdp_run "$cut_gpus" "$model" "$per_gpu" "$cut" --deterministic >"$LOGS/$name-cut.log" 2>&1 &
  local cut_pid=$!
  until grep -q "step 0000015 loss" "$LOGS/$name-cut.log" || ! kill -0 $cut_pid 2>/dev/null; do sleep 1; done
  local pids; pids=$(pgrep -f -- "--results-dir $cut( |$)")
  kill -9 $pids; wait $cut_pid  # the launcher and every worker, by process id, mid-way to the next checkpoint
  echo "$name: killed $(wc -w <<<"$pids") processes at step 15; checkpoints: $(ls "$cut"/*/checkpoints | tr '\n' ' ')"
  cp -r "$cut" "$cut-saved"  # the state at the kill, for the resume on fewer GPUs
  fsdp_run "$cut_gpus" "$model" "$per_gpu" "$cut" --resume --deterministic >"$LOGS/$name-resumed.log" 2>&1
  wait $full_pid
  echo "$name uninterrupted: $(losses "$LOGS/$name-full.log")"
  echo "$name before kill:   $(grep -o "step 0000015 loss [0-9.]*" "$LOGS/$name-cut.log")"
  echo "$name resumed:       $(losses "$LOGS/$name-resumed.log")"
  python -m scripts.convert_checkpoint "$cut/000-$model/checkpoints/$(printf %07d "$RESUME_STEPS")" "$WORK/$name.pt" | tail -1
  python3 -c "import sys; from autoregressive.weights import load_gpt; [load_gpt(sys.argv[1], sys.argv[2], d) \
for d in ('cuda', 'cpu')]; print(sys.argv[2], 'loads strictly on cuda and cpu')" "$model" "$WORK/$name.pt"
  rm -rf "$full" "$WORK/$name.pt"
  tar czf "$OUT/logs-${PART}.tgz" -C "$LOGS" .
}

sample() {  # name gpus [extra]
  local name=$1 gpus=$2; shift 2
  local nproc=$(( $(tr -cd , <<<"$gpus" | wc -c) + 1 ))
  CUDA_VISIBLE_DEVICES=$gpus torchrun --standalone --nproc_per_node="$nproc" sample_c2i_ddp.py --gpt-model ARPG-L \
    --gpt-ckpt "$WORK/arpg_l_random.pt" --vq-ckpt "$WORK/vq_random.pt" --sample-schedule arccos --cfg-scale 4.5 \
    --step 64 --num-fid-samples 10000 --per-proc-batch-size 250 --no-compile-vq --sample-dir "$WORK/samples/$name" "$@"
}

two_nodes() {  # name extra...: one job on two "nodes" of this host, GPUs 0,1 and 2,3, a launcher each
  # (--nnodes 2, rendezvous at node 0's launcher, NCCL); the command's flags follow
  local name=$1 port=$((29500 + RANDOM % 1000)); shift
  for node in 0 1; do
    CUDA_VISIBLE_DEVICES=$([[ $node == 0 ]] && echo 0,1 || echo 2,3) torchrun --nnodes=2 --node_rank=$node \
      --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=$port "$@" >"$LOGS/$name-node$node.log" 2>&1 &
  done
}

node_train() {  # name results_dir [extra]: ARPG-L DDP, 4 x 32, RESUME_STEPS steps, checkpoints every 10, deterministic
  local name=$1 dir=$2; shift 2
  two_nodes "$name" train_c2i.py --gpt-model ARPG-L --code-path "$CODES" --dataset imagenet_code \
    --global-batch-size 128 --max-steps "$RESUME_STEPS" --ckpt-every 10 --log-every 5 --lr 1e-3 --warmup-epochs 0 \
    --num-workers 4 --deterministic --results-dir "$dir" "$@"
}

PART=${1:-none}
make_inputs
case "$PART" in
  scaling-small)
    phase "1 GPU each: L-ddp-1 L-fsdp-1 XXL-ddp-1 XXL-fsdp-1"
    train L-ddp-1 0 ARPG-L 128 ddp & train L-fsdp-1 1 ARPG-L 128 fsdp &
    train XXL-ddp-1 2 ARPG-XXL 64 ddp & train XXL-fsdp-1 3 ARPG-XXL 64 fsdp & wait
    phase "2 GPUs each: L-ddp-2 L-fsdp-2"
    train L-ddp-2 0,1 ARPG-L 128 ddp & train L-fsdp-2 2,3 ARPG-L 128 fsdp & wait
    phase "2 GPUs each: XXL-ddp-2 XXL-fsdp-2"
    train XXL-ddp-2 0,1 ARPG-XXL 64 ddp & train XXL-fsdp-2 2,3 ARPG-XXL 64 fsdp & wait ;;
  scaling-large)
    for n in L-fsdp-4 XXL-fsdp-4 L-ddp-4 XXL-ddp-4; do
      phase "4 GPUs alone: $n"; model=ARPG-${n%%-*}; mode=${n#*-}; mode=${mode%-*}
      train "$n" 0,1,2,3 "$model" $([[ $model == ARPG-L ]] && echo 128 || echo 64) "$mode"
    done ;;
  recipe)  # the official flags; 256 per GPU on 4 GPUs, or 128 with accumulation if 256 does not fit
    phase "recipe: global batch 1024 on 4 GPUs"
    train recipe-1024 0,1,2,3 ARPG-L 256 ddp --lr 4e-4
    if grep -q "out of memory\|out of GPU memory\|OutOfMemoryError" "$LOGS/recipe-1024.log"; then
      train recipe-1024-accum2 0,1,2,3 ARPG-L 256 ddp --lr 4e-4 --gradient-accumulation-steps 2
    fi ;;
  sample)
    phase "sample: 10,000 images on 1 GPU, then 4 GPUs, then 4 GPUs killed mid-way and rerun"
    start=$SECONDS; sample one 0 >"$LOGS/sample-1.log" 2>&1; echo "1 GPU: $((SECONDS - start)) s, exit $?"
    start=$SECONDS; sample four 0,1,2,3 >"$LOGS/sample-4.log" 2>&1; echo "4 GPUs: $((SECONDS - start)) s, exit $?"
    sample killed 0,1,2,3 >"$LOGS/sample-killed.log" 2>&1 &
    while (( $(find "$WORK/samples/killed" -name '*.png' 2>/dev/null | wc -l) < 5000 )); do sleep 1; done
    pkill -9 -f sample_c2i_ddp.py; pkill -9 -f "torchrun.*sample_c2i_ddp"; wait
    echo "killed with $(find "$WORK/samples/killed" -name '*.png' | wc -l) PNGs written"
    sample killed 0,1,2,3 >"$LOGS/sample-rerun.log" 2>&1; echo "rerun exit $?"
    md5sum "$WORK"/samples/*/*.npz
    python3 - "$WORK/samples/killed" <<'PY'
import os, re, sys
names = [n for _, _, files in os.walk(sys.argv[1]) for n in files if re.fullmatch(r"\d{6}\.png", n)]
indices = sorted(int(n[:6]) for n in names)
print(f"PNGs {len(indices)}, distinct {len(set(indices))}, missing {sorted(set(range(10000)) - set(indices))[:5]}")
PY
    ;;
  resume-xxl)
    resume_check XXL-fsdp-2 0,1 2,3 ARPG-XXL 16
    rm -rf "$WORK"/runs/XXL-fsdp-2-cut* ;;
  resume-l)
    resume_check L-fsdp-4 0,1,2,3 0,1,2,3 ARPG-L 32
    phase "resume: the 4-GPU checkpoint of step 10 on 2 GPUs (same global batch)"
    fsdp_run 0,1 ARPG-L 64 "$WORK/runs/L-fsdp-4-cut-saved" --resume --deterministic >"$LOGS/L-fsdp-4to2.log" 2>&1
    echo "4 -> 2 GPUs: exit $?; $(grep -o "saved by 4 processes and resumes on 2[^,]*" "$LOGS/L-fsdp-4to2.log" | head -1)"
    echo "4 -> 2 GPUs: $(losses "$LOGS/L-fsdp-4to2.log")" ;;
  xxl-ddp-4)  # the one scaling run that shared its GPUs with leftovers on 2026-11-27
    phase "4 GPUs alone: XXL-ddp-4"; train XXL-ddp-4 0,1,2,3 ARPG-XXL 64 ddp ;;
  two-nodes)
    phase "two nodes (launchers) of 2 GPUs: training uninterrupted, killed after step 10's checkpoint, resumed"
    node_train nodes-full "$WORK/runs/nodes-full"; wait
    node_train nodes-cut "$WORK/runs/nodes-cut"
    until grep -q "step 0000015 loss" "$LOGS/nodes-cut-node0.log" || ! pgrep -f -- "--results-dir $WORK/runs/nodes-cut" >/dev/null; do
      sleep 1
    done
    pids=$(pgrep -f -- "--results-dir $WORK/runs/nodes-cut( |$)"); kill -9 $pids; wait
    echo "two nodes: killed $(wc -w <<<"$pids") processes at step 15; checkpoints: $(ls "$WORK"/runs/nodes-cut/*/checkpoints | tr '\n' ' ')"
    for node in 0 1; do mv "$LOGS/nodes-cut-node$node.log" "$LOGS/nodes-killed-node$node.log"; done
    node_train nodes-cut "$WORK/runs/nodes-cut" --resume; wait
    echo "two nodes uninterrupted: $(losses "$LOGS/nodes-full-node0.log")"
    echo "two nodes resumed:       $(losses "$LOGS/nodes-cut-node0.log")"
    phase "two nodes of 2 GPUs: sampling 2,000 images, against one GPU"
    sample nodes-one 0 --num-fid-samples 2000 >"$LOGS/nodes-sample-one.log" 2>&1
    two_nodes nodes-sample sample_c2i_ddp.py --gpt-model ARPG-L --gpt-ckpt "$WORK/arpg_l_random.pt" \
      --vq-ckpt "$WORK/vq_random.pt" --sample-schedule arccos --cfg-scale 4.5 --step 64 --num-fid-samples 2000 \
      --per-proc-batch-size 250 --no-compile-vq --sample-dir "$WORK/samples/nodes-two"; wait
    md5sum "$WORK"/samples/nodes-*/*.npz
    rm -rf "$WORK"/runs/nodes-* "$WORK"/samples/nodes-* ;;
  *) echo "usage: $0 scaling-small|scaling-large|xxl-ddp-4|recipe|sample|resume-xxl|resume-l|two-nodes" >&2; exit 2 ;;
esac
tar czf "$OUT/logs-${PART}.tgz" -C "$LOGS" .

#!/usr/bin/env bash
# The ImageNet controllable-generation recipe (docs/controllable.md) end to end on made-up data:
# images of random shapes in an ImageNet-style folder, random VQ-16 and ARPG weights, so it runs anywhere.
# Codes and Canny condition maps are extracted from the images, a class-only checkpoint is fine-tuned with
# --condition-path --init-from, and sample_c2i_ddp.py samples under the val folder's conditions into an .npz.
#   bash scripts/check_control_recipe.sh                                  # on the GPU: ARPG-L, 1 process
#   MODEL=ARPG-tiny DEVICE=cpu STEPS=4 bash scripts/check_control_recipe.sh   # the same steps on a CPU
# What it shows is that the commands run and fit together; the weights learn nothing worth looking at.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/arpg_control}
OUT=${OUT:-$WORK/out}
MODEL=${MODEL:-ARPG-L}
DEVICE=${DEVICE:-auto}
STEPS=${STEPS:-20}
NPROC=${NPROC:-1}
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
LOG=$OUT/control-recipe.log
run() { echo "+ $*" >>"$LOG"; "$@" >>"$LOG" 2>&1 || { echo "failed: $* (see $LOG)"; tail -20 "$LOG"; exit 1; }; }

python3 - "$WORK" "$MODEL" <<'PY'
import os, sys
import numpy as np
import torch
from PIL import Image, ImageDraw
from autoregressive.models.arpg import ARPG_models
from tokenizer.vq_model import VQ_models
work, model = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
for split, per_class in (("train", 8), ("val", 2)):  # 4 synsets; shapes give Canny something to find
    for synset in ("n01440764", "n01443537", "n01484850", "n01491361"):
        os.makedirs(f"{work}/images/{split}/{synset}", exist_ok=True)
        for index in range(per_class):
            image = Image.new("RGB", (320, 288), tuple(int(c) for c in rng.integers(0, 255, 3)))
            draw = ImageDraw.Draw(image)
            for _ in range(6):
                x, y = rng.integers(0, 260, 2)
                box = [int(x), int(y), int(x + rng.integers(20, 120)), int(y + rng.integers(20, 120))]
                colour = tuple(int(c) for c in rng.integers(0, 255, 3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
            image.save(f"{work}/images/{split}/{synset}/{index}.JPEG", quality=95)
torch.manual_seed(0)
torch.save({"model": ARPG_models[model]().state_dict()}, f"{work}/class_only.pt")  # a released-style file
torch.save({"model": VQ_models["VQ-16"]().state_dict()}, f"{work}/vq.pt")
PY

launch() { torchrun --standalone --nproc_per_node="$NPROC" "$@"; }
run launch extract_codes_c2i.py --data-path "$WORK/images/train" --code-path "$WORK/codes" --vq-ckpt "$WORK/vq.pt" \
  --device "$DEVICE"
for split in train val; do
  run launch extract_conditions_c2i.py --data-path "$WORK/images/$split" --condition-path "$WORK/canny_$split"
done
echo "codes: $(find "$WORK/codes" -name '*.npy' | wc -l) files; condition maps: $(find "$WORK/canny_train" \
  -name '*.npy' | wc -l) train, $(find "$WORK/canny_val" -name '*.npy' | wc -l) val; $(cat "$WORK/canny_train/condition.json" | tr -d '\n ')"

run launch train_c2i.py --gpt-model "$MODEL" --code-path "$WORK/codes" --condition-path "$WORK/canny_train" \
  --init-from "$WORK/class_only.pt" --global-batch-size 8 --max-steps "$STEPS" --ckpt-every "$STEPS" --log-every 2 \
  --lr 1e-4 --warmup-epochs 0 --num-workers 0 --results-dir "$WORK/runs" --device "$DEVICE"
echo "fine-tuned: $(grep -o "step [0-9]* loss [0-9.]*" "$LOG" | sed -n '1p;$p' | tr '\n' ' ')"
ckpt=$(ls "$WORK"/runs/*/checkpoints/*.pt | tail -1)

run launch sample_c2i_ddp.py --gpt-model "$MODEL" --gpt-ckpt "$ckpt" --vq-ckpt "$WORK/vq.pt" \
  --condition-path "$WORK/canny_val" --cfg-scale 4.0 --step 64 --per-proc-batch-size 8 --no-compile-vq \
  --sample-dir "$WORK/samples" --device "$DEVICE"
python3 - "$WORK/samples" <<'PY'
import glob, sys
import numpy as np
path = glob.glob(f"{sys.argv[1]}/*.npz")[0]
data = np.load(path)
print(f"sampled under the val conditions: {path.split('/')[-1]}: images {data['arr_0'].shape}, "
      f"labels {sorted(set(data['labels'].tolist()))}")
PY

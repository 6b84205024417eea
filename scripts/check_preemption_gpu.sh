#!/usr/bin/env bash
# On one GPU: ARPG-L on random codes under --deterministic, 40 steps uninterrupted; the same run sent SIGTERM
# (to torchrun) after step 20; its --resume to step 40. Prints the seconds from the signal to the exit with
# a complete checkpoint and whether the resumed losses equal the uninterrupted run's at every step.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m scripts.check_preemption --gpt-model "${MODEL:-ARPG-L}" --steps "${STEPS:-40}" --signal-at "${SIGNAL_AT:-20}" \
    --batch "${BATCH:-64}" --device cuda

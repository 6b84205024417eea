#!/usr/bin/env bash
# Install what the tests need and run the suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements.txt
python3 -m pytest -q

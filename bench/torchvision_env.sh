#!/usr/bin/env bash
# A venv of its own where transformers' real PixtralProcessor runs: it needs torchvision, whose wheels on the
# package index are CUDA builds that only load with the CUDA build of torch (they do run on a CPU). hubtools'
# own venv keeps the CPU torch, so this one is separate (about 5 GB). tests/test_pixtral_processor.py
# (slow) uses it through $HUBTOOLS_TORCHVISION_PYTHON (default /work/peer/tv-venv/bin/python).
#   usage: bash bench/torchvision_env.sh [VENV_DIR]
set -euo pipefail
venv="${1:-/work/peer/tv-venv}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet torch==2.14.1 torchvision==0.29.1 "transformers==5.25.*"
"$venv/bin/pip" install --quiet -e "$repo"
"$venv/bin/python" -c "import torchvision, transformers; print('torchvision', torchvision.__version__, 'transformers', transformers.__version__)"

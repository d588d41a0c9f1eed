"""The release pipeline's GPTQ / AWQ repos (pipeline/quantized_release.py), published to the local Hub:
quantize, verify (nothing is sent unless it passes), card, one commit."""

# ruff: noqa: F811 - the Hub fixtures come from test_publish

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi

from hubtools.errors import VerifyError
from hubtools.pipeline import quantized_release
from hubtools.pipeline.quantized_targets import QuantizedTarget
from hubtools.testing import add_outlier_channels, tiny_params, write_native_checkpoint
from tests.fakehub import FakeHub
from tests.test_publish import TOKEN, api, hub  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
TARGET = QuantizedTarget("gptq", 4, 32, "acme/tiny-GPTQ", samples=4, seq_len=32)


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = tiny_params(moe=False, n_layers=1, dim=64, n_heads=4, n_kv_heads=2, hidden_dim=128)
    return add_outlier_channels(write_native_checkpoint(tmp_path_factory.mktemp("src") / "native", params), params)


def test_a_quantized_repo_is_quantized_verified_carded_and_published_in_one_commit(
    hub: FakeHub, api: HfApi, native: Path, tmp_path: Path
) -> None:
    card = str(ROOT / "cards" / "mistral-7b-v0.1.md")
    result = quantized_release.release_quantized(native, TARGET, api=api, work_dir=tmp_path / "work", card=card)
    files = hub.files(TARGET.repo)
    assert result.verify["passed"] and result.commit_oid is not None
    assert hub.count("POST", "/commit/") == 1
    config = json.loads(files["config.json"])
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert "quantization_report.json" in files and any(k.endswith(".safetensors") for k in files)
    meta = yaml.safe_load(files["README.md"].decode().split("---\n")[1])
    assert (meta["base_model"], meta["base_model_relation"]) == ("mistral-community/Mistral-7B-v0.1", "quantized")
    kl = result.verify["quality"]["quantized"]["mean_kl"]
    assert f"{kl:.4f}" in files["README.md"].decode()


def test_nothing_is_sent_when_verify_fails(
    hub: FakeHub, api: HfApi, native: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hubtools.quantization import verify

    real = verify.verify_quantized

    def failing(src: Path, folder: Path, **kwargs: object) -> object:
        report = real(src, folder)
        report.router = {"passed": False, "differ": ["planted"]}
        return report

    monkeypatch.setattr(verify, "verify_quantized", failing)
    with pytest.raises(VerifyError, match="failed verify .* nothing was sent"):
        quantized_release.release_quantized(native, TARGET, api=api, work_dir=tmp_path / "work")
    assert hub.requests == []

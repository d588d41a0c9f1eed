"""GGUF of the vision releases: the text model inside a Pixtral (`LlavaForConditionalGeneration`) or Mistral3
(`Mistral3ForConditionalGeneration`) wrapper, and with `--mmproj` the vision projector llama.cpp's multimodal tools
load (architecture `clip`, projector type `pixtral`).

Default suite: the layout of both files at tiny size, the projector's tensors equal to the native checkpoint's
(read with safetensors, q/k in native order), the text file verified by the reference forward, and the refusals.
Slow, with the peer: both files equal llama.cpp's converter's (`convert_hf_to_gguf.py`, and with `--mmproj`) on
hubtools' HF conversion, key for key and tensor for tensor, from native and from HF, for every type it writes.

The encoders here have 3 layers: the converter maps `multi_modal_projector.linear_{bid}` through its block-indexed
table, so with fewer layers than 3 it cannot name `linear_2` ("Can not map tensor"; every release has 24 or more).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from hubtools.converter import convert
from hubtools.errors import ParamsError, VerifyError
from hubtools.gguf.export import export
from hubtools.gguf.files import FastReader
from hubtools.gguf.verify import verify_gguf
from hubtools.model.family import ModelParams
from hubtools.testing import (
    TOKENIZERS,
    tiny_ministral3_params,
    tiny_mistral4_params,
    tiny_params,
    tiny_vision,
    tiny_vision_params,
    write_native_checkpoint,
)
from tests import llama_cpp_peer as peer
from tests.helpers import assert_one_line_error

LAYERS = 3  # see the module docstring


def vision_model(kind: str, vocab: str = "tekken") -> ModelParams:
    """Pixtral 12B's shape (no merger, adapter bias), Mistral Small 3.x's (merger), Ministral 3's (YaRN text) or
    Mistral Small 4's (a Mistral 4 text model)."""
    size = TOKENIZERS[vocab][2]
    if kind == "ministral3":
        text = tiny_ministral3_params(vocab_size=size, n_layers=2, tied=True, llama4=True, apply_scale=False)
    elif kind == "mistral4":  # Mistral Small 4: the text file's architecture is `mistral4`
        text = tiny_mistral4_params(vocab_size=size)
    else:
        text = tiny_params(moe=False, vocab_size=size, dim=64)
    merge = 1 if kind == "pixtral" else 2
    return tiny_vision_params(text=text, vision=tiny_vision(merge=merge, layers=LAYERS))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 Mistral3 vision model (v1 vocabulary: small) and its text GGUF and projector in F32."""
    root = tmp_path_factory.mktemp("mmproj")
    write_native_checkpoint(root / "native", vision_model("mistral3", "v1"), tokenizer="v1", dtype=torch.float32)
    export(root / "native", root / "gguf", quants="f32", name="m", mmproj="f32")
    convert(root / "native", root / "hf")
    return root


def _fields(path: Path) -> dict[str, object]:
    return {k: f.contents() for k, f in FastReader(path).fields.items()}


def test_the_text_file_holds_the_text_model_alone_under_the_converter_s_architecture(exported: Path) -> None:
    path = exported / "gguf" / "m.F32.gguf"
    fields = _fields(path)
    assert fields["general.architecture"] == "mistral3" and fields["general.type"] == "model"
    names = [t.name for t in FastReader(path).tensors]
    assert "token_embd.weight" in names and "blk.1.attn_q.weight" in names
    assert not [n for n in names if n.startswith(("v.", "mm."))]
    report = verify_gguf(exported / "native", path, readback=False)
    assert report.passed, report.to_dict()


def test_the_projector_carries_clip_keys_and_the_encoder_and_projector_tensors(exported: Path) -> None:
    path = exported / "gguf" / "mmproj-m.F32.gguf"
    fields = _fields(path)
    expected = {
        "general.architecture": "clip",
        "general.type": "mmproj",
        "clip.has_vision_encoder": True,
        "clip.projector_type": "pixtral",
        "clip.vision.projection_dim": 64,  # the text model's width
        "clip.vision.image_size": 64,
        "clip.vision.patch_size": 4,
        "clip.vision.embedding_length": 32,
        "clip.vision.feed_forward_length": 48,
        "clip.vision.block_count": LAYERS,
        "clip.vision.attention.head_count": 4,
        "clip.use_silu": True,
        "clip.vision.spatial_merge_size": 2,
    }
    assert {k: fields[k] for k in expected} == expected
    assert fields["clip.vision.image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert not [k for k in fields if k.startswith(("tokenizer.", "mistral3.", "llama."))]
    tensors = {t.name: t for t in FastReader(path).tensors}
    names = list(tensors)
    assert names[0] == "v.token_embd.img_break" and tensors[names[0]].tensor_type.name == "F32"
    assert names[1:5] == ["mm.1.weight", "mm.2.weight", "mm.input_norm.weight", "mm.patch_merger.weight"]
    assert names[5:7] == ["v.pre_ln.weight", "v.patch_embd.weight"]
    assert len(names) == 7 + 9 * LAYERS and names[-1] == f"v.blk.{LAYERS - 1}.ln2.weight"
    assert [int(n) for n in tensors["v.patch_embd.weight"].shape] == [4, 4, 3, 32]  # ggml order


def test_projector_tensors_equal_the_native_checkpoint_q_k_in_native_order(exported: Path) -> None:
    """Read independently: safetensors' native tensors vs the GGUF's F32 data (q/k: no permutation left; from an
    HF folder, whose q/k are permuted for rotate-half, the slow tests show the same bytes as the converter's)."""
    tensors = {t.name: t for t in FastReader(exported / "gguf" / "mmproj-m.F32.gguf").tensors}
    pairs = {
        "v.blk.0.attn_q.weight": "vision_encoder.transformer.layers.0.attention.wq.weight",
        "v.blk.2.attn_k.weight": "vision_encoder.transformer.layers.2.attention.wk.weight",
        "v.patch_embd.weight": "vision_encoder.patch_conv.weight",
        "mm.patch_merger.weight": "patch_merger.merging_layer.weight",
        "mm.1.weight": "vision_language_adapter.w_in.weight",
    }
    with safe_open(str(exported / "native" / "consolidated.safetensors"), "np") as f:
        img_break = np.asarray(tensors["v.token_embd.img_break"].data)
        assert np.array_equal(img_break, f.get_tensor("tok_embeddings.weight")[12])  # tiny_vision's [IMG_BREAK]
        for gguf_name, native in pairs.items():
            want = f.get_tensor(native)
            got = np.asarray(tensors[gguf_name].data).reshape(want.shape)
            assert np.array_equal(got, want), gguf_name


def test_projector_types_follow_the_converter_s_rule(tmp_path: Path) -> None:
    native = write_native_checkpoint(tmp_path / "n", vision_model("pixtral", "v1"), tokenizer="v1")
    export(native, tmp_path / "g", quants="f16", name="m", mmproj="q8_0")
    types = {t.name: t.tensor_type.name for t in FastReader(tmp_path / "g" / "mmproj-m.Q8_0.gguf").tensors}
    assert types["v.patch_embd.weight"] == "F32"  # the converter: F16 in an F16 file, else F32
    assert types["mm.1.weight"] == "Q8_0" and types["mm.1.bias"] == "F32" and types["v.blk.0.ln1.weight"] == "F32"
    assert types["v.blk.0.ffn_down.weight"] == "F16"  # rows of 48: not whole Q8_0 blocks
    assert "clip.vision.spatial_merge_size" not in _fields(tmp_path / "g" / "mmproj-m.Q8_0.gguf")  # Pixtral 12B


def test_refusals_are_one_line(tmp_path: Path, run_cli, exported: Path) -> None:  # type: ignore[no-untyped-def]
    text_only = write_native_checkpoint(tmp_path / "t", tiny_params(moe=False, n_layers=1), tokenizer="v1")
    with pytest.raises(ParamsError, match="a MistralForCausalLM has no vision encoder"):
        export(text_only, tmp_path / "o1", quants="f16", mmproj="f16")
    assert not (tmp_path / "o1").exists()
    assert_one_line_error(
        run_cli("gguf", exported / "native", tmp_path / "o2", "--mmproj", "q4_k_m"), "mmproj type 'q4_k_m'"
    )
    with pytest.raises(ParamsError, match=r"no \[IMG_BREAK\] token id .* llama.cpp's projector needs its embedding"):
        export(exported / "hf", tmp_path / "o4", quants="f16", mmproj="f16")  # a v1 vocabulary has none
    with pytest.raises(VerifyError, match="a vision projector"):
        verify_gguf(exported / "native", exported / "gguf" / "mmproj-m.F32.gguf", readback=False)


def test_the_cli_writes_both_files_and_names_the_projector(tmp_path: Path, run_cli, exported: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("gguf", exported / "native", tmp_path / "o", "--quant", "f16", "--mmproj", "f16", "--name", "m")
    assert result.exit_code == 0, result.output
    assert "mmproj F16: mmproj-m.F16.gguf" in result.output
    assert sorted(p.name for p in (tmp_path / "o").glob("*.gguf")) == ["m.F16.gguf", "mmproj-m.F16.gguf"]
    from hubtools.card.gguf import find_releases

    assert [r.files for r in find_releases(tmp_path / "o")] == [("m.F16.gguf",)]  # the card's quants: not the projector


# -- equal to llama.cpp's converter (slow, with the peer) ----------------------------------------------------------

MATRIX = [
    *((kind, t) for kind in ("pixtral", "mistral3") for t in ("f32", "f16", "bf16", "q8_0")),
    ("ministral3", "bf16"),
    ("ministral3", "q8_0"),
    ("mistral4", "f16"),
    ("mistral4", "q8_0"),
]


def assert_same_projector(ours: Path, theirs: Path) -> None:
    """Equal to the converter's projector but for `v.token_embd.img_break`, which hubtools adds (first, where the
    converter's sorted reading meets the embedding) and the converter's HF path drops; llama.cpp requires it."""
    from tests.test_gguf_llama_cpp import _fields as fields
    from tests.test_gguf_llama_cpp import _tensors as tensors

    assert fields(ours) == fields(theirs) and list(fields(ours)) == list(fields(theirs))
    mine, peers = tensors(ours), tensors(theirs)
    assert mine[0][:3] == ("v.token_embd.img_break", "F32", [64]) and "v.token_embd.img_break" not in [
        t[0] for t in peers
    ]
    assert [t[:3] for t in mine[1:]] == [t[:3] for t in peers]
    assert [a[0] for a, b in zip(mine[1:], peers, strict=True) if a[3] != b[3]] == []


def _converter_mmproj(hf: Path, out: Path, outtype: str) -> Path:
    root = peer.tree()
    assert root is not None
    env = dict(os.environ, PYTHONPATH=str(root / "gguf-py"), HF_HUB_OFFLINE="1")
    cmd = [peer.python(), str(root / "convert_hf_to_gguf.py"), str(hf), "--outtype", outtype, "--outfile", str(out)]
    done = subprocess.run([*cmd, "--mmproj"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.skipif(peer.tree() is None, reason="llama.cpp's tree not found (HUBTOOLS_LLAMA_CPP)")
@pytest.mark.parametrize(("kind", "outtype"), MATRIX)
def test_text_and_mmproj_equal_llama_cpp_converter_from_native_and_from_hf(
    tmp_path: Path, kind: str, outtype: str
) -> None:
    from tests.test_gguf_llama_cpp import assert_same_gguf

    native = write_native_checkpoint(tmp_path / "native", vision_model(kind), tokenizer="tekken")
    convert(native, tmp_path / "hf")
    text = peer.convert_hf(tmp_path / "hf", tmp_path / f"peer.{outtype}.gguf", outtype)
    mmproj = _converter_mmproj(tmp_path / "hf", tmp_path / f"peer-mmproj.{outtype}.gguf", outtype)
    for source, out in ((native, "out"), (tmp_path / "hf", "out-hf")):
        result = export(source, tmp_path / out, quants=outtype, name="m", mmproj=outtype)
        assert result.mmproj is not None
        added = ("mistral4.attention.temperature_scale", "mistral4.attention.temperature_length")  # llama-4
        assert_same_gguf(tmp_path / out / result.outputs[0].files[0], text, added=added if kind == "mistral4" else ())
        assert_same_projector(tmp_path / out / result.mmproj.files[0], mmproj)


@pytest.mark.slow
@pytest.mark.skipif(peer.tree() is None, reason="llama.cpp's tree not found (HUBTOOLS_LLAMA_CPP)")
@pytest.mark.parametrize("kind", ["pixtral", "mistral3"])
def test_mmproj_tensors_equal_the_converter_s_mistral_format_path_img_break_included(tmp_path: Path, kind: str) -> None:
    """The converter's native path (`--mistral-format`, run with this Python: it needs mistral-common) does take the
    [IMG_BREAK] row: its tensors, img_break included, equal hubtools' byte for byte (its order is the native
    file's and it adds `clip.rope.freq_base`; hubtools follows the HF path's order and keys)."""
    root = peer.tree()
    assert root is not None
    native = write_native_checkpoint(tmp_path / "native", vision_model(kind), tokenizer="tekken")
    env = dict(os.environ, PYTHONPATH=str(root / "gguf-py"), HF_HUB_OFFLINE="1")
    theirs = tmp_path / "peer.gguf"
    cmd = [
        sys.executable,
        str(root / "convert_hf_to_gguf.py"),
        str(native),
        "--outtype",
        "f16",
        "--outfile",
        str(theirs),
    ]
    done = subprocess.run([*cmd, "--mmproj", "--mistral-format"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = export(native, tmp_path / "out", quants="f16", name="m", mmproj="f16")
    assert result.mmproj is not None
    mine = {t.name: t for t in FastReader(tmp_path / "out" / result.mmproj.files[0]).tensors}
    peers = {t.name: t for t in FastReader(theirs).tensors}
    assert sorted(mine) == sorted(peers) and "v.token_embd.img_break" in mine
    for name, t in mine.items():
        assert t.tensor_type == peers[name].tensor_type, name
        assert np.array_equal(np.asarray(t.data), np.asarray(peers[name].data)), name


LLAMA_MTMD_CLI = peer.binary("llama-mtmd-cli")


@pytest.mark.slow
@pytest.mark.skipif(
    LLAMA_MTMD_CLI is None, reason="llama-mtmd-cli not built (cmake --build build --target llama-mtmd-cli)"
)
@pytest.mark.parametrize("kind", ["pixtral", "mistral3"])
def test_llama_cpp_s_multimodal_cli_loads_both_files_and_encodes_an_image(tmp_path: Path, kind: str) -> None:
    """The real client: llama.cpp's own mtmd loader reads the projector and the text model, encodes an image
    through the projector and decodes it into the text model. (clip.cpp requires `v.token_embd.img_break` for a
    pixtral projector, which the converter's HF path does not write: read in its code, not run here.)"""
    from PIL import Image

    assert LLAMA_MTMD_CLI is not None
    native = write_native_checkpoint(tmp_path / "native", vision_model(kind), tokenizer="tekken")
    result = export(native, tmp_path / "out", quants="f16", name="m", mmproj="f16")
    assert result.mmproj is not None
    image = tmp_path / "image.png"
    Image.new("RGB", (48, 32), (200, 30, 90)).save(image)
    cmd = [str(LLAMA_MTMD_CLI), "-v", "-m", str(tmp_path / "out" / "m.F16.gguf"), "--mmproj",
           str(tmp_path / "out" / result.mmproj.files[0]), "--image", str(image), "-p", "describe", "-n", "2",
           "--temp", "0", "-c", "512"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "clip_encode: output embedding shape" in log and "image decoded" in log, log[-3000:]  # -v logs them

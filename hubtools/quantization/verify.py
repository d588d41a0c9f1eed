"""`hubtools verify SRC QUANT_DIR` on a quantized folder: load it as its users do, prove nothing was lost
in loading, check the router, and measure what the quantization costs (`quality`).

- load: `AutoModelForCausalLM.from_pretrained(QUANT_DIR)` (a vision wrapper: `AutoModelForImageTextToText`;
  transformers + compressed-tensors, nothing else): any missing, unexpected or mismatched key, or a loading
  error, fails (a missing key is a parameter transformers re-initialises: the random-experts trap).
- tensors: after a forward (compressed-tensors decompresses dense layers on the first one), every
  parameter of every decoder layer equals what the folder holds, dequantized here by compressed-tensors
  and laid out by the family as transformers lays it (`Family.hf_layer_state`: experts fused); a
  quantized tensor transformers ignored differs. The clean-room forward on our dequantized weights is
  compared with transformers' logits and the largest difference reported (not judged: transformers
  dequantizes experts in bfloat16, and an MoE router near a tie turns that rounding into a different choice).
- router: each router weight bit-equal to the source's; or, where AWQ folded power-of-two scales into it
  and its norm, the effective router `router * norm` bit-equal (it computes exactly what it computed).
- quality: mean KL, top-1 and perplexity on held-out prompts against the original, for the folder and for
  round-to-nearest of the same weights with the same grid.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hubtools.checkpoint.reader import open_checkpoint
from hubtools.errors import VerifyError
from hubtools.filenames import CONFIG
from hubtools.model.family import ModelParams
from hubtools.model.names import NameTable
from hubtools.model.transforms import to_native
from hubtools.quantization.output import FORMAT
from hubtools.quantization.quality import measure, reference_logits, rtn_getter, transformers_logits
from hubtools.quantization.run import native_reader, plain_params, rope_theta_of
from hubtools.verification.logits import logit_metrics, prompt_tokens

PACKED = ".weight_packed"


@dataclass
class QuantizedVerifyReport:
    """The checks of a quantized folder (`to_json` is `verify --json`)."""

    source: str
    folder: str
    load: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Any] = field(default_factory=dict)
    router: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(part.get("passed") for part in (self.load, self.tensors, self.router)) and bool(self.quality)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "quantized", "passed": self.passed, **self.__dict__}

    def text(self) -> str:
        """The table `hubtools verify` prints."""

        def mark(part: dict[str, Any]) -> str:
            return "ok" if part.get("passed") else "FAIL"

        load = self.load.get("error") or ", ".join(
            f"{k}: {len(v)}" for k, v in self.load.items() if isinstance(v, list)
        )
        lines = [
            f"load      {mark(self.load)}  {load}",
            f"tensors   {mark(self.tensors)}  {self.tensors.get('compared', 0)} layer parameters compared, "
            f"differ: {', '.join(self.tensors.get('differ', [])[:5]) or 'none'}",
            f"router    {mark(self.router)}  bit-equal {len(self.router.get('bit_equal', []))}, "
            f"folded exactly {len(self.router.get('folded_exactly', []))}, differ {len(self.router.get('differ', []))}",
        ]
        if self.quality:
            q, r = self.quality["quantized"], self.quality["rtn"]
            lines += [
                f"quality   {self.quality['tokens']} held-out tokens ({self.quality['prompts']})",
                f"  quantized  mean KL {q['mean_kl']:.5f}  top-1 {q['top1_agreement']:.1%}  ppl {q['perplexity']:.4g}",
                f"  RTN        mean KL {r['mean_kl']:.5f}  top-1 {r['top1_agreement']:.1%}  ppl {r['perplexity']:.4g}",
                f"  original   ppl {self.quality['original']['perplexity']:.4g}",
            ]
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


def is_quantized_folder(folder: Path) -> bool:
    """Whether `folder`'s config.json carries a compressed-tensors `quantization_config` (an FP8 conversion's
    `quant_method: fp8` is a conversion, verified against its native source)."""
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    method = config.get("quantization_config") if isinstance(config, dict) else None
    return isinstance(method, dict) and method.get("quant_method") == "compressed-tensors"


class FolderTensors:
    """The quantized folder's tensors by HF name, quantized ones dequantized by compressed-tensors (float32)."""

    def __init__(self, folder: Path) -> None:
        from compressed_tensors.quantization import QuantizationScheme
        from safetensors import safe_open

        config = json.loads((folder / CONFIG).read_text())["quantization_config"]
        if config.get("quant_method") != "compressed-tensors" or config.get("format") != FORMAT:
            found = f"{config.get('quant_method')} / {config.get('format')}"
            raise VerifyError(
                f"{folder / CONFIG}: expected quant_method compressed-tensors, format {FORMAT}, found {found}"
            )
        group = next(iter(config["config_groups"].values()))
        self.scheme = QuantizationScheme.model_validate(group)
        self.bits, self.group_size = self.scheme.weights.num_bits, self.scheme.weights.group_size
        self.files: dict[str, Path] = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(path, "pt") as f:
                self.files.update(dict.fromkeys(f.keys(), path))  # noqa: SIM118 (safe_open is no dict)
        self.quantized = {n.removesuffix(PACKED) + ".weight" for n in self.files if n.endswith(PACKED)}

    def raw(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.files[name], "pt") as f:
            return f.get_tensor(name)

    def read(self, hf_name: str) -> torch.Tensor:
        if hf_name not in self.quantized:
            return self.raw(hf_name).float()
        from compressed_tensors.compressors import BaseCompressor

        prefix = hf_name.removesuffix("weight")
        state = {k: self.raw(prefix + k) for k in ("weight_packed", "weight_scale", "weight_shape")}
        state["weight_scale"] = state["weight_scale"].float()  # exact products: code x scale
        return BaseCompressor.get_value_from_registry(FORMAT).decompress(state, self.scheme)["weight"].float()


def heldout_texts() -> tuple[str, ...]:
    """The texts of the held-out set shipped with hubtools (`hubtools.tokenization.calibration`, disjoint from the
    calibration set), when this installation has it; none otherwise (the built-in verify prompts remain)."""
    try:
        from hubtools.tokenization import calibration as shipped  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        return ()
    return tuple(sample.text for sample in shipped.builtin_heldout() if sample.text)


def auto_class(params: ModelParams) -> str:
    """The transformers auto class users load the model with: a vision wrapper's is image-text-to-text."""
    return "AutoModelForImageTextToText" if params.family.wraps_text else "AutoModelForCausalLM"


def load_as_users_do(folder: Path, params: ModelParams) -> tuple[Any, dict[str, Any]]:
    """transformers' model and the load check (missing / unexpected / mismatched keys, errors)."""
    import transformers

    name = auto_class(params)
    how = f"{name}.from_pretrained(folder)  # transformers + compressed-tensors"
    try:
        loaded: Any = getattr(transformers, name).from_pretrained(
            str(folder), dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
        model, info = loaded
    except Exception as exc:  # transformers raises many types for a folder it cannot load
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, {"passed": False, "how": how, "error": f"{type(exc).__name__}: {first}"}
    found = {
        key: sorted(map(str, info.get(key) or ())) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    found["error_msgs"] = [str(m) for m in info.get("error_msgs") or ()]
    return model, {"passed": not any(found.values()), "how": how, **found}


def _compare_layers(model: Any, params: ModelParams, tensors: FolderTensors) -> dict[str, Any]:
    """Every decoder-layer parameter transformers holds against the folder's own (dequantized) tensors (a
    wrapper's: its text model's, under the wrapper's prefix)."""
    family, prefix = params.text.family, params.family.hf_text_prefix
    read = lambda name: tensors.read(prefix + name)  # noqa: E731
    text = model.model.language_model if params.family.wraps_text else model.model
    differ, compared = [], 0
    for layer, module in enumerate(text.layers):
        state = module.state_dict()
        keys = [k for k in state if not k.rsplit(".", 1)[-1].startswith(("weight_", "input_", "output_"))]
        try:
            expected = family.hf_layer_state(model.config.get_text_config(), layer, keys, read, torch.float32, None)
        except KeyError as exc:
            return {"passed": False, "compared": compared, "differ": [f"layer {layer}: the folder lacks {exc}"]}
        for key in keys:
            compared += 1
            exact = expected[key].float()  # transformers dequantizes in the load dtype or in the scales' (bf16)
            if not any(torch.equal(state[key].float(), e) for e in (exact, exact.to(torch.bfloat16).float())):
                differ.append(f"{prefix}model.layers.{layer}.{key}")
    quantized = len(tensors.quantized)
    return {
        "passed": not differ and compared > 0,
        "compared": compared,
        "quantized_in_folder": quantized,
        "differ": differ,
    }


def _check_routers(
    params: ModelParams, tensors: FolderTensors, read_source: Callable[[str], torch.Tensor]
) -> dict[str, Any]:
    table = NameTable(params)
    family = params.text.family
    equal, folded, differ = [], [], []
    for layer in range(params.n_layers):
        for group in family.input_groups(params, layer):
            for row in group.passengers:
                name = table.by_native[row.native_name(layer)].hf
                mine, theirs = read_source(row.native_name(layer)), to_native(row.transform, tensors.raw(name), params)
                if torch.equal(mine.to(theirs.dtype), theirs):
                    equal.append(name)
                    continue
                assert group.source is not None
                norm_src, norm_q = (
                    read_source(group.source.native_name(layer)),
                    tensors.raw(table.by_native[group.source.native_name(layer)].hf),
                )
                if torch.equal(mine.float() * norm_src.float(), theirs.float() * norm_q.float()):
                    folded.append(name)
                else:
                    differ.append(name)
    return {"passed": not differ, "bit_equal": equal, "folded_exactly": folded, "differ": differ}


def verify_quantized(
    src: Path, folder: Path, *, texts: tuple[str, ...] = (), progress: Callable[[str], None] | None = None
) -> QuantizedVerifyReport:
    """Run the checks of the module docstring on `folder`, a quantization of `src` (native or HF)."""
    say = progress or (lambda _: None)
    report = QuantizedVerifyReport(str(src), str(folder))
    tensors = FolderTensors(folder)
    with open_checkpoint(src, prefer="native") as ckpt:
        params = plain_params(ckpt.params)  # an FP8 source is read dequantized
        table, sources = NameTable(params), NameTable(ckpt.params)
        read = native_reader(ckpt, torch.device("cpu"))
        source = lambda name: read(sources.by_native[name])  # noqa: E731
        say("loading the folder with transformers")
        model, report.load = load_as_users_do(folder, params)
        report.router = _check_routers(params, tensors, source)
        if model is None:
            report.tensors = {"passed": False, "error": "the folder did not load"}
            return report
        prompts = prompt_tokens(ckpt.tokenizer_file, params.vocab_size, texts + heldout_texts()).pack()
        theta = rope_theta_of(ckpt)
        say("logits: transformers on the quantized folder")
        quant = transformers_logits(model, prompts)
        report.tensors = _compare_layers(model, params, tensors)
        say("logits: the original, our dequantized weights, round-to-nearest")
        original = reference_logits(params, source, prompts, rope_theta=theta)
        ours = reference_logits(
            params, lambda n: to_native(table.by_native[n].transform, tensors.read(table.by_native[n].hf), params),
            prompts, rope_theta=theta,
        )  # fmt: skip
        quantized_native = {table.by_hf[n].native for n in tensors.quantized}
        rtn = reference_logits(
            params,
            rtn_getter(source, quantized_native, bits=tensors.bits, group_size=tensors.group_size),
            prompts,
            rope_theta=theta,
        )
        agreement = logit_metrics(ours, quant, prompts.valid)["max_abs_dlogit"]
        report.tensors["max_abs_dlogit_vs_own_dequantized"] = agreement
        q, r = measure(original, quant, prompts), measure(original, rtn, prompts)
        report.quality = {
            "prompts": prompts.source,
            "tokens": sum(prompts.lengths),
            "bits": tensors.bits,
            "group_size": tensors.group_size,
            "quantized": q.to_json(),
            "rtn": r.to_json(),
            "original": {"perplexity": round(measure(original, original, prompts).perplexity, 6)},
            "beats_rtn": q.mean_kl < r.mean_kl,
        }
    return report

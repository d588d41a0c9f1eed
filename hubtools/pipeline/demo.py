"""`hubtools demo`: the whole release on a tiny synthetic Mixtral, offline, in seconds.

It writes a native checkpoint with mistral-common's real v1 tokenizer, converts it to the HF layout,
loads it with transformers and generates, converts it back and checks the round trip is bit-exact,
verifies the conversion, renders a card and plans the upload (dry run).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hubtools.destination import atomic_folder, record_folder
from hubtools.errors import HubtoolsError

Say = Callable[[str], None]


def _generate(hf: Path, say: Say) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    # transformers types `generate`'s self as GenerativePreTrainedModel, which the Auto class's return is not
    out = model.generate(  # type: ignore[misc]
        ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    say(
        f"3. transformers {type(model).__name__} loaded it; prompt ids {ids[0].tolist()} -> "
        f"generated {out[0, ids.shape[1] :].tolist()} (random weights: the text is noise)"
    )


def _roundtrip(native: Path, back: Path, say: Say) -> None:
    from hubtools.checkpoint.reader import open_checkpoint

    with open_checkpoint(native) as a, open_checkpoint(back) as b:
        same = all(torch.equal(a.read(n).view(torch.uint8), b.read(n).view(torch.uint8)) for n in a.tensors)
        if set(a.tensors) != set(b.tensors) or not same:
            raise HubtoolsError("demo: native -> HF -> native round trip is not bit-exact")
        say(f"   converted back: native -> HF -> native is bit-exact for all {len(a.tensors)} tensors")


def run_demo(workdir: Path | None = None, *, force: bool = False, say: Say = lambda _: None) -> Path:
    """Run the demo in `workdir` (a new temporary folder by default) and return it.

    `workdir` is a folder output (`hubtools.destination`): new, empty, or with `force` one an earlier demo
    wrote and nobody changed since; the demo runs in a temporary folder beside it that takes its place at the end.
    """
    if workdir is None:
        root = Path(tempfile.mkdtemp(prefix="hubtools-demo-"))
        _run(root, say)
        record_folder(root)
        return root
    root = Path(os.path.abspath(workdir))
    if root.is_dir() and not root.is_symlink() and not any(root.iterdir()):
        force = True  # an empty folder holds nothing to lose
    with atomic_folder(root, force=force) as tmp:
        _run(tmp, lambda message: say(message.replace(str(tmp), str(root))))
        for report in (tmp / "verify.json", *(tmp / "gguf").glob("*.verify.json")):
            if report.is_file():  # the reports name the folder the demo ends in, not its temporary
                report.write_text(report.read_text(encoding="utf-8").replace(str(tmp), str(root)), encoding="utf-8")
    return root


def _run(root: Path, say: Say) -> None:
    from hubtools.converter import convert
    from hubtools.inspection import format_summary, summarize
    from hubtools.testing import tiny_params, write_native_checkpoint

    started = time.monotonic()
    native, hf, back = root / "native", root / "hf", root / "roundtrip"
    params = tiny_params(moe=True, n_layers=2, dim=64, n_heads=4, n_kv_heads=2, hidden_dim=128, num_experts=4)
    write_native_checkpoint(native, params, layout="pth-split", tokenizer="v1", dtype=torch.bfloat16, seed=7)
    say(f"1. wrote a tiny native Mixtral (torrent-style consolidated.00.pth-split*, real v1 tokenizer) in {native}")
    say("   " + format_summary(summarize(native)).replace("\n", "\n   "))
    result = convert(native, hf, chat_template="mistral")
    say(f"2. converted to the HF layout in {hf}: {result.tensors} tensors, {len(result.files)} files")
    for rule in result.rules:
        say(f"   {rule}")
    _generate(hf, say)
    convert(hf, back)
    _roundtrip(native, back, say)
    for step in _extra_steps():
        step(root, native, hf, say)
    say(f"done in {time.monotonic() - started:.1f}s; everything is in {root}")


DEMO_CARD = """---
title: Tiny-Mixtral-Demo
repo_id: hubtools-demo/Tiny-Mixtral-Demo
kind: instruct
tokenizer: v1
architecture: MixtralForCausalLM
parameters: 4318016
active_parameters: 4219712
context_length: 32768
metadata:
  license: apache-2.0
  language: [en]
  tags: [moe, mixtral, hubtools-demo]
  pipeline_tag: text-generation
  library_name: transformers
---
A tiny Mixtral with random weights, written by `hubtools demo` to show a whole release end to end.
"""


def _verify(root: Path, native: Path, hf: Path, say: Say) -> None:
    from hubtools.verification.run import verify

    report = verify(native, hf, dtype=torch.float32)
    (root / "verify.json").write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    checks = report.to_dict()["checks"]
    logits = checks["logits"]
    tokenizer = checks["tokenizer"]
    say(
        f"4. verified: tensors {checks['tensors']['compared']} bit-identical; tokenizer "
        f"{tokenizer.get('agreement', 0):.0%} of {tokenizer.get('sequences', 0)} sequences equal to mistral-common; "
        f"logits max |dlogit| {logits.get('max_abs_dlogit', float('nan')):.1e}, "
        f"top-1 {logits.get('top1_agreement', 0):.0%} -> {'PASSED' if report.passed else 'FAILED'}"
    )
    if not report.passed:
        raise HubtoolsError(f"demo: verification failed (report in {root / 'verify.json'})")


def _card(root: Path, native: Path, hf: Path, say: Say) -> None:
    from hubtools.card.render import build_card

    source = root / "tiny-mixtral-demo.md"
    source.write_text(DEMO_CARD)
    card = build_card(
        str(source), hf / "README.md", cards_dir=root, model_dir=hf, report=root / "verify.json", force=True
    )
    say(f"5. rendered the model card (model-index metadata checked locally) -> {card}")


def _publish_plan(root: Path, native: Path, hf: Path, say: Say) -> None:
    from hubtools.publishing.plan import plan_upload
    from hubtools.units import human_bytes

    plan = plan_upload(hf)
    say(
        f"6. publish plan (dry run, no network): {len(plan.files)} files, {human_bytes(plan.total_bytes)}; "
        f"run `hubtools publish {hf} <user>/<repo>` with HF_TOKEN set to upload"
    )


def _gguf(root: Path, native: Path, hf: Path, say: Say) -> None:
    from hubtools.gguf.export import export
    from hubtools.gguf.quant import parse_quants
    from hubtools.gguf.verify import verify_gguf

    result = export(
        native, root / "gguf", quants=parse_quants("q8_0"), name="tiny-mixtral-demo", chat_template="mistral"
    )
    path = root / "gguf" / result.outputs[0].files[0]
    report = verify_gguf(native, path, readback=False)
    (root / "gguf" / f"{path.name}.verify.json").write_text(
        json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n"
    )
    logits = report.logits
    say(
        f"7. exported a Q8_0 GGUF ({path.name}, llama.cpp's layout) and verified it: tensors byte-exact, "
        f"vocabulary equal; vs the original: mean KL {logits.mean_kl or 0:.1e}, top-1 {logits.top1_agreement or 0:.0%} "
        f"-> {'PASSED' if report.passed else 'FAILED'}"
    )
    if not report.passed:
        raise HubtoolsError(f"demo: GGUF verification failed (report in {path}.verify.json)")


def _extra_steps() -> list[Callable[[Path, Path, Path, Say], None]]:
    """verify -> card -> publish plan -> verified Q8_0 GGUF."""
    return [_verify, _card, _publish_plan, _gguf]

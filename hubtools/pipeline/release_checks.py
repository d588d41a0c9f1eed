"""The verify report of a release, built while the shards are written (`pipeline.release`).

Same four checks as `hubtools verify`, fed from the single pass: structure (config vs params, both
sides' names and shapes against the table, dtypes, and every written shard's header read back against
the index plan), tensors (each converted tensor, read back from its shard, bit for bit against
`to_hf(source)`), tokenizer parity (on the HF tokenizer files in the work dir), logits (both forwards
advanced layer by layer, `stream.Lockstep`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hubtools.checkpoint.reader import Checkpoint, TensorSource
from hubtools.checkpoint.safetensors_format import HeaderEntry
from hubtools.checkpoint.steps import Step
from hubtools.checkpoint.writer import Shard
from hubtools.converter import ConversionPlan
from hubtools.dtypes import DType
from hubtools.errors import VerifyError
from hubtools.model.names import NameTable
from hubtools.model.params import default_rope_theta
from hubtools.verification.checks import LogitsCheck
from hubtools.verification.logits import prompt_tokens
from hubtools.verification.report import VerifyReport
from hubtools.verification.run import check_structure, check_tokenizer_parity
from hubtools.verification.stream import Lockstep, TensorTally
from hubtools.verification.structure import HfFolder


class ReleaseChecks:
    """Collects the checks tensor by tensor; `report()` closes them into a `VerifyReport`."""

    def __init__(
        self, ckpt: Checkpoint, conversion: ConversionPlan, out: Path, *, dtype: DType, say: Callable[[str], None]
    ) -> None:
        self.ckpt, self.conversion, self.out = ckpt, conversion, out
        self.table = NameTable(ckpt.params)
        self.tally = TensorTally(self.table, ckpt.params)
        self.header_problems: list[str] = []
        self.dtype = dtype.torch
        self.logits_error: str | None = None
        self.lockstep: Lockstep | None = None
        from hubtools.verification.hf_forward import load_config

        try:
            config = load_config(out)
        except VerifyError as exc:
            self.logits_error = str(exc)
            return
        prompts = prompt_tokens(ckpt.tokenizer_file, ckpt.params.vocab_size)
        theta = default_rope_theta(ckpt.params)
        self.lockstep = Lockstep(config, ckpt.params, prompts, dtype=self.dtype, rope_theta=theta, progress=say)

    def feed(self, step: Step, raw: np.ndarray, back: np.ndarray) -> bool:
        """Check one tensor (source bytes `raw`, bytes read back from the shard `back`); True when exact."""
        native = self.ckpt.tensor_from(step.source, raw)
        hf = torch.from_numpy(back).view(step.out.dtype).reshape(step.out.shape)
        exact = self.tally.check(step.spec, native, hf)
        if self.lockstep is not None and self.logits_error is None:
            try:
                self.lockstep.feed(step.spec, native, hf)
            except RuntimeError as exc:  # transformers refusing the weights for this config
                self.logits_error = f"transformers cannot run the HF model: {str(exc).splitlines()[0]}"
        return exact

    def check_header(self, path: Path, shard: Shard, entries: list[HeaderEntry]) -> None:
        """The header read back from a written shard must list the planned tensors, in order."""
        found = [(e.name, e.code, e.shape) for e in entries]
        planned = [(t.name, t.code, t.shape) for t in shard.tensors]
        if found != planned:
            first = next((i for i, (a, b) in enumerate(zip(found, planned, strict=False)) if a != b), len(found))
            self.header_problems.append(f"{path.name}: header differs from the index plan at tensor {first}")

    def report(self, src: str, out: Path) -> VerifyReport:
        """Structure, tensors, tokenizer and logits, as `hubtools verify SRC OUT` reports them."""
        hf_tensors = {
            t.name: TensorSource(t.name, t.code, t.shape, ()) for s in self.conversion.shards for t in s.tensors
        }
        folder = HfFolder(out, self.conversion.config, (), hf_tensors, tuple(self.header_problems))
        folder = folder.split(self.conversion.params)  # fused tensors (Mistral 4's experts) as their parts
        structure = check_structure(self.ckpt, folder, self.table, stored=hf_tensors)
        tokenizer = check_tokenizer_parity(self.ckpt, out, None)
        return VerifyReport(src, str(out), structure, self.tally.result(), tokenizer, self._logits())

    def _logits(self) -> LogitsCheck:
        name = str(self.dtype).removeprefix("torch.")
        if self.logits_error is not None or self.lockstep is None:
            return LogitsCheck(False, name, error=self.logits_error or "no forward ran")
        return self.lockstep.result()

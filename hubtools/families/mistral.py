"""Mistral: the dense decoder (Mistral 7B; `MistralForCausalLM`), the family every other one derives from.

Pre-norm residual blocks of grouped-query attention with interleaved (native) rotary embeddings and an
optional sliding window, then a SwiGLU feed-forward; RMSNorm; untied embeddings. HF q/k rows are in
rotate-half order (`Transform.ROTARY_Q` / `ROTARY_K`); GGUF keeps the native order (llama.cpp's `llama`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hubtools.model.family import Family, Getter, ModelParams
from hubtools.model.hf_config import config_to_common
from hubtools.model.input_group import InputGroup
from hubtools.model.params import context_field, parse_common
from hubtools.model.rows import Row
from hubtools.model.transforms import Transform

if TYPE_CHECKING:
    import torch

EMBEDDING = Row("tok_embeddings.weight", "model.embed_tokens.weight", "token_embd.weight", ("vocab_size", "dim"))
ATTENTION_NORM = Row(
    "layers.{layer}.attention_norm.weight", "model.layers.{layer}.input_layernorm.weight",
    "blk.{layer}.attn_norm.weight", ("dim",),
)  # fmt: skip
WQ = Row(
    "layers.{layer}.attention.wq.weight", "model.layers.{layer}.self_attn.q_proj.weight",
    "blk.{layer}.attn_q.weight", ("q_out", "dim"), Transform.ROTARY_Q,
)  # fmt: skip
WK = Row(
    "layers.{layer}.attention.wk.weight", "model.layers.{layer}.self_attn.k_proj.weight",
    "blk.{layer}.attn_k.weight", ("kv_out", "dim"), Transform.ROTARY_K,
)  # fmt: skip
WV = Row(
    "layers.{layer}.attention.wv.weight", "model.layers.{layer}.self_attn.v_proj.weight",
    "blk.{layer}.attn_v.weight", ("kv_out", "dim"),
)  # fmt: skip
WO = Row(
    "layers.{layer}.attention.wo.weight", "model.layers.{layer}.self_attn.o_proj.weight",
    "blk.{layer}.attn_output.weight", ("dim", "q_out"),
)  # fmt: skip
FFN_NORM = Row(
    "layers.{layer}.ffn_norm.weight", "model.layers.{layer}.post_attention_layernorm.weight",
    "blk.{layer}.ffn_norm.weight", ("dim",),
)  # fmt: skip
W1 = Row(
    "layers.{layer}.feed_forward.w1.weight", "model.layers.{layer}.mlp.gate_proj.weight",
    "blk.{layer}.ffn_gate.weight", ("hidden_dim", "dim"),
)  # fmt: skip
W2 = Row(
    "layers.{layer}.feed_forward.w2.weight", "model.layers.{layer}.mlp.down_proj.weight",
    "blk.{layer}.ffn_down.weight", ("dim", "hidden_dim"),
)  # fmt: skip
W3 = Row(
    "layers.{layer}.feed_forward.w3.weight", "model.layers.{layer}.mlp.up_proj.weight",
    "blk.{layer}.ffn_up.weight", ("hidden_dim", "dim"),
)  # fmt: skip
NORM = Row("norm.weight", "model.norm.weight", "output_norm.weight", ("dim",))
OUTPUT = Row("output.weight", "lm_head.weight", "output.weight", ("vocab_size", "dim"))

LAYER_NUMBER = re.compile(r"(?:^|\.)layers\.(\d{1,9})\.")  # longer numbers are unknown names
HF_LAYER = "model.layers.{layer}."  # transformers' decoder layer `layer` holds the names under this prefix


class Mistral(Family):
    name = "mistral"
    architecture = "MistralForCausalLM"
    model_type = "mistral"
    gguf_architecture = "llama"
    params_fields = frozenset(
        ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "norm_eps", "vocab_size",
         "rope_theta", "sliding_window", "max_seq_len", "max_position_embeddings")
    )  # fmt: skip
    params_absent = {"tied_embeddings": (False,), "moe": (None, {})}

    def recognises_params(self, raw: Mapping[str, Any]) -> bool:
        return True  # any params.json; the families derived from this one recognise theirs

    def recognises_config(self, config: Mapping[str, Any]) -> bool:
        return config.get("model_type") == self.model_type

    def parse_params(
        self, raw: Mapping[str, Any], *, source: str, names: Mapping[str, str] | None = None
    ) -> ModelParams:
        key, positions = context_field(raw, source)
        common = parse_common({**raw, "max_seq_len": positions}, source=source, names=names)
        options = (("max_positions_key", key),) if key != "max_seq_len" else ()  # the default name: no option
        return ModelParams(**common, family=self, options=options)

    def params_json(self, params: ModelParams) -> dict[str, Any]:
        out = params.common()
        if "max_seq_len" in out:  # under the name params.json gave it
            out[params.option("max_positions_key", "max_seq_len")] = out.pop("max_seq_len")
        return out

    def config_fields(self, params: ModelParams) -> dict[str, Any]:
        return {"architectures": [self.architecture], "model_type": self.model_type}

    def config_to_params(self, config: dict[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, str]]:
        return config_to_common(config, source=source)

    # -- the name table ---------------------------------------------------------------------------------------

    def dims(self, params: ModelParams) -> dict[str, int]:
        return {
            "vocab_size": params.vocab_size,
            "dim": params.dim,
            "hidden_dim": params.hidden_dim,
            "q_out": params.n_heads * params.head_dim,
            "kv_out": params.n_kv_heads * params.head_dim,
            "num_experts": params.num_experts,
        }

    def embedding_rows(self, params: ModelParams) -> tuple[Row, ...]:
        return (EMBEDDING,)

    def layer_rows(self, params: ModelParams, layer: int) -> tuple[Row, ...]:
        return (ATTENTION_NORM, WQ, WK, WV, WO, FFN_NORM, *self.feed_forward_rows(params))

    def feed_forward_rows(self, params: ModelParams) -> tuple[Row, ...]:
        """The rows after the feed-forward norm that belong to no expert."""
        return (W1, W2, W3)

    def head_rows(self, params: ModelParams) -> tuple[Row, ...]:
        return (NORM, OUTPUT)

    def indices(self, names: Iterable[str]) -> tuple[set[int], set[int]]:
        return {int(m[1]) for n in names if (m := LAYER_NUMBER.search(n))}, set()

    # -- the reference forward --------------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor, get: Getter) -> torch.Tensor:
        return get(EMBEDDING.native_name())[tokens]

    def attention_block(
        self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams, positions: torch.Tensor, rope_theta: float
    ) -> torch.Tensor:
        import torch.nn.functional as F

        from hubtools.model import ops

        cis = self.rotary(positions, params, rope_theta)
        mask = ops.attention_mask(positions, self.layer_window(params, layer))
        x = ops.rms_norm(h, get(ATTENTION_NORM.native_name(layer)), params.norm_eps)
        batch, seq, _ = x.shape
        q = F.linear(x, get(WQ.native_name(layer))).view(batch, seq, params.n_heads, params.head_dim)
        k = F.linear(x, get(WK.native_name(layer))).view(batch, seq, params.n_kv_heads, params.head_dim)
        v = F.linear(x, get(WV.native_name(layer))).view(batch, seq, params.n_kv_heads, params.head_dim)
        q, k = self.scale_queries(ops.apply_rotary(q, cis), positions, params), ops.apply_rotary(k, cis)
        out = ops.grouped_query_attention(q, k, v, mask, params.head_dim)
        return h + F.linear(out, get(WO.native_name(layer)))

    def rotary(self, positions: torch.Tensor, params: ModelParams, rope_theta: float) -> torch.Tensor:
        """The complex rotations of `positions` (`ops.apply_rotary`): plain RoPE with base `rope_theta`."""
        from hubtools.model import ops

        return ops.rotary_angles(positions, params.head_dim, rope_theta)

    def scale_queries(self, q: torch.Tensor, positions: torch.Tensor, params: ModelParams) -> torch.Tensor:
        """Queries after the rotary, before attention: unchanged."""
        return q

    def feed_forward_norm(self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams) -> torch.Tensor:
        from hubtools.model import ops

        return ops.rms_norm(h, get(FFN_NORM.native_name(layer)), params.norm_eps)

    def feed_forward_block(self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams) -> torch.Tensor:
        from hubtools.model import ops

        x = self.feed_forward_norm(h, layer, get, params)
        w1, w2, w3 = (get(row.native_name(layer)) for row in (W1, W2, W3))
        return h + ops.swiglu(x, w1, w2, w3)

    def head(self, h: torch.Tensor, get: Getter, params: ModelParams) -> torch.Tensor:
        import torch.nn.functional as F

        from hubtools.model import ops

        normed = ops.rms_norm(h, get(NORM.native_name()), params.norm_eps)
        return F.linear(normed, get(self.output_row(params).native_name()))

    def output_row(self, params: ModelParams) -> Row:
        """The row whose weight projects to the vocabulary (a tied family: the embedding's)."""
        return OUTPUT

    # -- quantization -----------------------------------------------------------------------------------------

    def input_groups(self, params: ModelParams, layer: int) -> tuple[InputGroup, ...]:
        """q/k/v read the attention norm; o reads the heads (no single source: v's rows repeat per group of
        heads); w1/w3 read the feed-forward norm; w2 reads `silu(w1 x) * w3 x`, linear in w3's rows."""
        return (
            InputGroup((WQ, WK, WV), ATTENTION_NORM),
            InputGroup((WO,)),
            InputGroup((W1, W3), FFN_NORM),
            InputGroup((W2,), W3),
        )

    # -- the HF-side forward ----------------------------------------------------------------------------------

    def hf_embed(self, tokens: torch.Tensor, read: Getter) -> torch.Tensor:
        import torch.nn.functional as F

        return F.embedding(tokens, read(EMBEDDING.hf_name()))

    def hf_layer_state(
        self,
        config: Any,
        layer: int,
        keys: list[str],
        read: Getter,
        dtype: torch.dtype,
        fused: dict[str, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        prefix = HF_LAYER.format(layer=layer)
        return {key: read(prefix + key) for key in keys}

    def hf_head_weights(self, read: Getter, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return read(NORM.hf_name()), read((EMBEDDING if config.tie_word_embeddings else OUTPUT).hf_name())


FAMILY = Mistral()

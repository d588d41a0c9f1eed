"""Mistral 4: Mixtral's routed experts plus shared experts and grouped routing, under multi-head latent
attention (Mistral Small 4, 119B, 2603; `Mistral4ForCausalLM`).

What differs from `mixtral`:
- attention is MLA: `wq_a` -> `q_a_norm` -> `wq_b` for the query, `wkv_a_with_mqa` (latent + one shared rope
  key) -> `kv_a_norm` -> `wkv_b` for keys and values, then `wo`; rotary on the rope slice only, pairs
  interleaved both natively and in transformers (`rope_interleave: true`), so no row is permuted;
- each MoE layer has a router `gate`, routed experts `experts.N.w1/w2/w3` and shared experts
  `shared_experts.w1/w2/w3`; the first `first_k_dense_replace` layers are dense (`feed_forward.w1/w2/w3`);
- transformers 5.25 stores the routed experts fused on disk (`mlp.experts.gate_up_proj [E, 2I, H]`, each
  expert's w1 rows then its w3 rows, and `down_proj [E, H, I]`; no conversion mapping exists for
  `mistral4`), so the table names them one by one (`mlp.experts.N.gate_proj`, ... as the DeepSeek-V3 layout
  spells them) and `fusions` says how they sit in the fused tensors;
- params.json: `moe` (routed and shared experts, groups, routed scale, leading dense layers), the MLA ranks,
  `yarn` and `llama_4_scaling`; their mapping to config.json is `hubtools.families.mistral4_fields`.
The reference blocks are `hubtools.model.mla`'s (vLLM's semantics for the native format).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hubtools.errors import ParamsError
from hubtools.families.mistral import (
    ATTENTION_NORM,
    EMBEDDING,
    FFN_NORM,
    HF_LAYER,
    LAYER_NUMBER,
    NORM,
    OUTPUT,
    W1,
    W2,
    W3,
    Mistral,
)  # fmt: skip
from hubtools.families.mixtral import Mixtral, Routing
from hubtools.model import fp8, fp8_block
from hubtools.model import mla_fields as fields
from hubtools.model.family import Getter, ModelParams
from hubtools.model.rows import Fusion, GgufPiece, Part, Role, Row, TensorSpec, expand

if TYPE_CHECKING:
    import numpy as np
    import torch


def _row(native: str, hf: str, gguf: str, shape: tuple[str, ...]) -> Row:
    return Row(f"layers.{{layer}}.{native}", f"model.layers.{{layer}}.{hf}", f"blk.{{layer}}.{gguf}", shape)


WQ_A = _row("attention.wq_a.weight", "self_attn.q_a_proj.weight", "attn_q_a.weight", ("q_lora_rank", "dim"))
Q_A_NORM = _row("attention.q_a_norm.weight", "self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight", ("q_lora_rank",))
WQ_B = _row("attention.wq_b.weight", "self_attn.q_b_proj.weight", "attn_q_b.weight", ("q_out", "q_lora_rank"))
WKV_A = _row(
    "attention.wkv_a_with_mqa.weight", "self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight",
    ("kv_a_out", "dim"),
)  # fmt: skip
KV_A_NORM = _row(
    "attention.kv_a_norm.weight", "self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight", ("kv_lora_rank",)
)
WKV_B = _row("attention.wkv_b.weight", "self_attn.kv_b_proj.weight", "attn_kv_b.weight", ("kv_b_out", "kv_lora_rank"))
WO = _row("attention.wo.weight", "self_attn.o_proj.weight", "attn_output.weight", ("dim", "o_in"))
ROUTER = _row("gate.weight", "mlp.gate.weight", "ffn_gate_inp.weight", ("num_experts", "dim"))
SHARED_W1 = _row("shared_experts.w1.weight", "mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight",
                 ("shared_hidden", "dim"))  # fmt: skip
SHARED_W2 = _row("shared_experts.w2.weight", "mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight",
                 ("dim", "shared_hidden"))  # fmt: skip
SHARED_W3 = _row("shared_experts.w3.weight", "mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight",
                 ("shared_hidden", "dim"))  # fmt: skip
EXPERT_W1 = _row("experts.{expert}.w1.weight", "mlp.experts.{expert}.gate_proj.weight", "ffn_gate_exps.weight",
                 ("expert_hidden_dim", "dim"))  # fmt: skip
EXPERT_W2 = _row("experts.{expert}.w2.weight", "mlp.experts.{expert}.down_proj.weight", "ffn_down_exps.weight",
                 ("dim", "expert_hidden_dim"))  # fmt: skip
EXPERT_W3 = _row("experts.{expert}.w3.weight", "mlp.experts.{expert}.up_proj.weight", "ffn_up_exps.weight",
                 ("expert_hidden_dim", "dim"))  # fmt: skip
ATTENTION_ROWS = (ATTENTION_NORM, WQ_A, Q_A_NORM, WQ_B, WKV_A, KV_A_NORM, WKV_B, WO, FFN_NORM)
FUSED_GATE_UP, FUSED_DOWN = "mlp.experts.gate_up_proj", "mlp.experts.down_proj"  # transformers' layer keys
GGUF_GATE_UP, GGUF_DOWN = "blk.{layer}.ffn_gate_up_exps.weight", "blk.{layer}.ffn_down_exps.weight"  # stored whole
GGUF_K_B, GGUF_V_B = "blk.{layer}.attn_k_b.weight", "blk.{layer}.attn_v_b.weight"  # kv_b, split for absorption
VISION = "vision_encoder"  # params.json's vision tower: a wrapper family's (Mistral3ForConditionalGeneration)


class Mistral4(Mixtral):
    name = "mistral4"
    architecture = "Mistral4ForCausalLM"
    model_type = "mistral4"
    gguf_architecture = "mistral4"  # llama.cpp's `Mistral3Model.Mistral4Model` (a DeepseekV2Model): kv_b split
    quantize_unsupported = (
        "transformers 5.25 loads Mistral 4's routed experts only as fused 3-D parameters (Mistral4Experts."
        "gate_up_proj / down_proj: no nn.Linear for compressed-tensors to quantize, and no weight conversion that "
        "fuses per-expert tensors as Mixtral's does), so a GPTQ / AWQ folder would load with random experts"
    )
    params_fields = fields.TOP_LEVEL  # each mapped or refused by value in `mla_fields.parse`
    params_absent = {}

    def recognises_params(self, raw: Mapping[str, Any]) -> bool:
        """An MLA + MoE params.json; with a `vision_encoder`, the vision wrapper's (it hands this family the rest)."""
        return raw.get("qk_nope_head_dim") is not None and isinstance(raw.get("moe"), dict) and VISION not in raw

    def parse_params(
        self, raw: Mapping[str, Any], *, source: str, names: Mapping[str, str] | None = None
    ) -> ModelParams:
        return fields.parse(raw, source=source, names=names, family=self)

    def params_json(self, params: ModelParams) -> dict[str, Any]:
        return fields.to_params_json(params)

    def config_fields(self, params: ModelParams) -> dict[str, Any]:
        return {**Mistral.config_fields(self, params), **fields.config_fields(params)}

    def checked_config_fields(self, params: ModelParams) -> dict[str, Any]:
        unchecked = ("pad_token_id", "max_position_embeddings")  # no effect on the forward
        return {k: v for k, v in fields.config_fields(params).items() if k not in unchecked}

    def config_to_params(self, config: dict[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, str]]:
        raw, keys = Mistral.config_to_params(self, config, source=source)
        return fields.config_to_params(config, raw, keys, source=source)

    # -- the name table ---------------------------------------------------------------------------------------

    def dims(self, params: ModelParams) -> dict[str, int]:
        mla = fields.mla(params)
        return {
            **super().dims(params),
            "q_lora_rank": mla.q_lora_rank,
            "q_out": params.n_heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim),
            "kv_lora_rank": mla.kv_lora_rank,
            "kv_a_out": mla.kv_lora_rank + mla.qk_rope_head_dim,
            "kv_b_out": params.n_heads * (mla.qk_nope_head_dim + mla.v_head_dim),
            "o_in": params.n_heads * mla.v_head_dim,
            "expert_hidden_dim": mla.expert_hidden_dim,
            "shared_hidden": mla.expert_hidden_dim * mla.num_shared_experts,
        }

    def is_dense(self, params: ModelParams, layer: int) -> bool:
        """Whether layer `layer` is one of the leading dense layers."""
        return layer < fields.mla(params).first_k_dense_replace

    def layer_rows(self, params: ModelParams, layer: int) -> tuple[Row, ...]:
        if self.is_dense(params, layer):
            return (*ATTENTION_ROWS, W1, W2, W3)
        return (*ATTENTION_ROWS, ROUTER, SHARED_W1, SHARED_W2, SHARED_W3)

    def expert_rows(self, params: ModelParams, layer: int) -> tuple[Row, ...]:
        return () if self.is_dense(params, layer) else (EXPERT_W1, EXPERT_W2, EXPERT_W3)

    def fusions(self, params: ModelParams) -> tuple[Fusion, ...]:
        dims, experts = self.dims(params), range(params.num_experts)
        hidden, inter = dims["dim"], dims["expert_hidden_dim"]
        out = []
        for layer in range(params.n_layers):
            if self.is_dense(params, layer):
                continue
            prefix = HF_LAYER.format(layer=layer)
            gate_up = tuple(r.hf_name(layer, e) for e in experts for r in (EXPERT_W1, EXPERT_W3))
            down = tuple(EXPERT_W2.hf_name(layer, e) for e in experts)
            out.append(Fusion(prefix + FUSED_GATE_UP, gate_up, (len(experts), 2 * inter, hidden), (inter, hidden),
                              gguf=GGUF_GATE_UP.format(layer=layer)))  # fmt: skip
            out.append(Fusion(prefix + FUSED_DOWN, down, (len(experts), hidden, inter), (hidden, inter),
                              gguf=GGUF_DOWN.format(layer=layer)))  # fmt: skip
            if fp8.is_quantized(params, _expert_specs(layer, 1)[0]):
                scheme = params.quantization
                if scheme is not None and scheme.block:
                    out.extend(_block_scale_fusions(prefix, layer, params.num_experts, (hidden, inter), scheme))
                else:
                    out.extend(_scale_fusions(prefix, layer, params.num_experts))
        return tuple(out)

    def gguf_pieces(self, params: ModelParams, spec: TensorSpec) -> tuple[GgufPiece, ...]:
        """`wkv_b` as llama.cpp's converter writes it for MLA's absorption: `attn_k_b [heads, kv_lora_rank,
        qk_nope]` (each head's key rows, transposed) then `attn_v_b [heads, v_head_dim, kv_lora_rank]`."""
        if spec.row.native != WKV_B.native:
            return ()
        m, heads = fields.mla(params), params.n_heads
        return (
            GgufPiece(GGUF_K_B.format(layer=spec.unit), (heads, m.kv_lora_rank, m.qk_nope_head_dim), "k_b"),
            GgufPiece(GGUF_V_B.format(layer=spec.unit), (heads, m.v_head_dim, m.kv_lora_rank), "v_b"),
        )

    def gguf_cut(self, params: ModelParams, piece: str, tensor: np.ndarray) -> np.ndarray:
        m = fields.mla(params)
        heads = tensor.reshape(params.n_heads, m.qk_nope_head_dim + m.v_head_dim, -1)
        if piece == "k_b":
            return heads[:, : m.qk_nope_head_dim].transpose(0, 2, 1)
        return heads[:, m.qk_nope_head_dim :]

    def gguf_join(self, params: ModelParams, pieces: Mapping[str, np.ndarray]) -> np.ndarray:
        import numpy as np

        k_b, v_b = pieces["k_b"], pieces["v_b"]
        return np.concatenate((k_b.transpose(0, 2, 1), v_b), axis=1).reshape(-1, k_b.shape[1])

    def fp8_linear(self, params: ModelParams, spec: TensorSpec) -> bool:
        return Mistral.fp8_linear(self, params, spec) and spec.row.native != ROUTER.native  # the router is no nn.Linear

    def check_counts(self, params: ModelParams, names: Any, *, source: str) -> None:
        names = list(names)
        super().check_counts(params, names, source=source)
        holding = {int(m[1]) for n in names if "experts." in n and (m := LAYER_NUMBER.search(n))}
        fields.check_dense_layers(params, holding, source=source)

    # -- the reference forward (native names) -----------------------------------------------------------------

    def attention_block(
        self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams, positions: torch.Tensor, rope_theta: float
    ) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        from hubtools.model import mla, ops

        m = fields.mla(params)
        x = ops.rms_norm(h, get(ATTENTION_NORM.native_name(layer)), params.norm_eps)
        batch, seq, _ = x.shape
        q_latent = ops.rms_norm(
            F.linear(x, get(WQ_A.native_name(layer))), get(Q_A_NORM.native_name(layer)), params.norm_eps
        )
        q = F.linear(q_latent, get(WQ_B.native_name(layer))).view(batch, seq, params.n_heads, -1)
        latent, k_rope = F.linear(x, get(WKV_A.native_name(layer))).split([m.kv_lora_rank, m.qk_rope_head_dim], -1)
        kv = F.linear(
            ops.rms_norm(latent, get(KV_A_NORM.native_name(layer)), params.norm_eps), get(WKV_B.native_name(layer))
        )
        k_nope, v = kv.view(batch, seq, params.n_heads, -1).split([m.qk_nope_head_dim, m.v_head_dim], -1)
        cis = mla.rotation(positions, fields.inverse_frequencies(params, rope_theta))
        q_rope = ops.apply_rotary(q[..., m.qk_nope_head_dim :], cis)
        k_rope = ops.apply_rotary(k_rope.view(batch, seq, 1, m.qk_rope_head_dim), cis)
        q = (
            torch.cat((q[..., : m.qk_nope_head_dim], q_rope), -1)
            * fields.query_scale(params, positions)[None, :, None, None]
        )
        out = mla.latent_attention(
            q.type_as(x), k_rope, k_nope, v, ops.attention_mask(positions, None), fields.softmax_scale(params)
        )
        return h + F.linear(out, get(WO.native_name(layer)))

    def feed_forward_block(self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams) -> torch.Tensor:
        if self.is_dense(params, layer):
            return Mistral.feed_forward_block(self, h, layer, get, params)
        return super().feed_forward_block(h, layer, get, params)

    def route(self, h_mid: torch.Tensor, layer: int, get: Getter, params: ModelParams) -> Routing:
        """Grouped top-k of the normalised hidden state; the shared experts' output starts the sum."""
        from hubtools.model import mla, ops

        m = fields.mla(params)
        normed = self.feed_forward_norm(h_mid, layer, get, params)
        flat, chosen, weights = mla.grouped_top_k(
            normed, get(ROUTER.native_name(layer)), params.num_experts_per_tok,
            groups=m.num_expert_groups, groups_per_token=m.num_expert_groups_per_tok, scale=m.routed_scale,
        )  # fmt: skip
        shared = ops.swiglu(flat, *(get(r.native_name(layer)) for r in (SHARED_W1, SHARED_W2, SHARED_W3)))
        return Routing(h_mid, flat, chosen, weights, shared)

    def add_expert(self, routing: Routing, layer: int, expert: int, get: Getter) -> None:
        """Add expert `expert`'s weighted output for the tokens routed to it (its weights loaded only then)."""
        import torch

        from hubtools.model import ops

        rows, slot = torch.where(routing.chosen == expert)
        if rows.numel():
            w1, w2, w3 = (get(row.native_name(layer, expert)) for row in (EXPERT_W1, EXPERT_W2, EXPERT_W3))
            routing.out.index_add_(
                0, rows, routing.weights[rows, slot, None] * ops.swiglu(routing.flat[rows], w1, w2, w3)
            )
        routing.next_expert = expert + 1

    # -- the HF-side forward ----------------------------------------------------------------------------------

    def empty_fused_experts(self, config: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        import torch

        experts, hidden, inter = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        return {
            FUSED_GATE_UP: torch.empty(experts, 2 * inter, hidden, dtype=dtype),
            FUSED_DOWN: torch.empty(experts, hidden, inter, dtype=dtype),
        }

    def put_expert(self, fused: dict[str, torch.Tensor], config: Any, spec: TensorSpec, tensor: torch.Tensor) -> bool:
        if spec.expert is None:
            return False
        inter, row = config.moe_intermediate_size, spec.row.native  # the native template: wrappers prefix HF names
        if row == EXPERT_W2.native:
            fused[FUSED_DOWN][spec.expert] = tensor
        else:
            half = slice(None, inter) if row == EXPERT_W1.native else slice(inter, None)
            fused[FUSED_GATE_UP][spec.expert, half] = tensor
        return True

    def hf_layer_state(
        self,
        config: Any,
        layer: int,
        keys: list[str],
        read: Getter,
        dtype: torch.dtype,
        fused: dict[str, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        if FUSED_GATE_UP in keys:
            if fused is None:
                fused = self.empty_fused_experts(config, dtype)
                for spec in _expert_specs(layer, config.n_routed_experts):
                    self.put_expert(fused, config, spec, read(spec.hf))
            state.update(fused)
        prefix = HF_LAYER.format(layer=layer)
        return {**state, **{key: read(prefix + key) for key in keys if key not in state}}


def _expert_specs(layer: int, experts: int) -> list[TensorSpec]:
    """The weight specs of `experts` experts of `layer` (w1, w3, w2 each), with placeholder shapes."""
    dims = {"dim": 0, "expert_hidden_dim": 0}
    return [s for e in range(experts) for s in expand((EXPERT_W1, EXPERT_W3, EXPERT_W2), dims, Part.LAYER, layer, e)]


def _scale_fusions(prefix: str, layer: int, experts: int) -> tuple[Fusion, ...]:
    """FP8 experts' scales as transformers 5.25's `FP8Experts` holds them: weight scales `gate_up_proj_scale_inv
    [E, 2, 1]` (one per half: nothing re-quantized) and `down_proj_scale_inv [E, 1, 1]`; input scales
    `gate_up_proj_activation_scale [E]` (one for both halves: w3's must equal w1's) and `down_proj_activation_scale`."""

    def name(row: Row, role: Role, expert: int) -> str:
        return fp8.scale_row(row, role).hf_name(layer, expert)

    w, a, es = Role.WEIGHT_SCALE, Role.ACTIVATION_SCALE, range(experts)
    return (
        Fusion(prefix + FUSED_GATE_UP + "_scale_inv", tuple(name(r, w, e) for e in es for r in (EXPERT_W1, EXPERT_W3)),
               (experts, 2, 1), ()),
        Fusion(prefix + FUSED_DOWN + "_scale_inv", tuple(name(EXPERT_W2, w, e) for e in es), (experts, 1, 1), ()),
        Fusion(prefix + FUSED_GATE_UP + "_activation_scale", tuple(name(EXPERT_W1, a, e) for e in es), (experts,), (),
               tuple((name(EXPERT_W3, a, e), name(EXPERT_W1, a, e)) for e in es)),
        Fusion(prefix + FUSED_DOWN + "_activation_scale", tuple(name(EXPERT_W2, a, e) for e in es), (experts,), ()),
    )  # fmt: skip


def _block_scale_fusions(
    prefix: str, layer: int, experts: int, sizes: tuple[int, int], scheme: fp8.Fp8
) -> tuple[Fusion, ...]:
    """Block-FP8 experts' scales as `FP8Experts` holds them: `gate_up_proj_scale_inv [E, ceil(2I/128),
    ceil(H/128)]` (each expert's w1 grid, then its w3 grid) and `down_proj_scale_inv [E, ceil(H/128),
    ceil(I/128)]`; no activation scale (dynamic).

    Raises:
        ParamsError: an expert width I that is no multiple of the block (a block would straddle w1 and w3).
    """
    hidden, inter = sizes
    if inter % fp8_block.BLOCK[0]:
        raise ParamsError(
            f"moe.expert_hidden_dim {inter} is no multiple of the FP8 block {fp8_block.BLOCK[0]}: transformers' "
            "fused gate_up scales would mix w1 and w3 in one block"
        )
    up, down = fp8_block.scale_shape((inter, hidden)), fp8_block.scale_shape((hidden, inter))
    role = Role.WEIGHT_SCALE

    def name(row: Row, expert: int) -> str:
        return fp8.scale_row(row, role, scheme).hf_name(layer, expert)

    es = range(experts)
    return (
        Fusion(prefix + FUSED_GATE_UP + "_scale_inv", tuple(name(r, e) for e in es for r in (EXPERT_W1, EXPERT_W3)),
               (experts, 2 * up[0], up[1]), up),
        Fusion(prefix + FUSED_DOWN + "_scale_inv", tuple(name(EXPERT_W2, e) for e in es), (experts, *down), down),
    )  # fmt: skip


FAMILY = Mistral4()
__all__ = ["EMBEDDING", "FAMILY", "NORM", "OUTPUT", "Mistral4"]

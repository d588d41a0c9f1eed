"""Mixtral: Mistral with a sparse mixture of experts for the feed-forward (Mixtral 8x7B, 8x22B).

What differs from `mistral`: params.json's `moe` object (config.json `num_local_experts`,
`num_experts_per_tok`); each layer's feed-forward is a router (`gate`) and `num_experts` SwiGLU experts:
top-k of the router logits, softmax over those k, the weighted sum of the chosen experts. The HF checkpoint
names experts one by one (`block_sparse_moe.experts.N.w1`); transformers 5.x fuses them at load time
(`gate_up_proj [E, 2I, H]` with w1 rows first, `down_proj [E, H, I]`), and so does `hf_layer_state`, one
expert at a time into preallocated storage; GGUF stacks them per layer (`ffn_{gate,down,up}_exps`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from hubtools.errors import ParamsError
from hubtools.families.mistral import ATTENTION_NORM, FFN_NORM, HF_LAYER, WK, WO, WQ, WV, Mistral
from hubtools.model.accounting import check_object_fields
from hubtools.model.family import Getter, ModelParams
from hubtools.model.input_group import InputGroup
from hubtools.model.params import Bad, bad_value, parse_common, positive_int
from hubtools.model.rows import Row, TensorSpec

if TYPE_CHECKING:
    import torch

ROUTER = Row(
    "layers.{layer}.feed_forward.gate.weight", "model.layers.{layer}.block_sparse_moe.gate.weight",
    "blk.{layer}.ffn_gate_inp.weight", ("num_experts", "dim"),
)  # fmt: skip
EXPERT_W1 = Row(
    "layers.{layer}.feed_forward.experts.{expert}.w1.weight",
    "model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight",
    "blk.{layer}.ffn_gate_exps.weight", ("hidden_dim", "dim"),
)  # fmt: skip
EXPERT_W2 = Row(
    "layers.{layer}.feed_forward.experts.{expert}.w2.weight",
    "model.layers.{layer}.block_sparse_moe.experts.{expert}.w2.weight",
    "blk.{layer}.ffn_down_exps.weight", ("dim", "hidden_dim"),
)  # fmt: skip
EXPERT_W3 = Row(
    "layers.{layer}.feed_forward.experts.{expert}.w3.weight",
    "model.layers.{layer}.block_sparse_moe.experts.{expert}.w3.weight",
    "blk.{layer}.ffn_up_exps.weight", ("hidden_dim", "dim"),
)  # fmt: skip

EXPERT_NUMBER = re.compile(r"\.experts\.(\d{1,9})\.")
MOE_FIELDS = {"num_local_experts": "num_experts", "num_experts_per_tok": "num_experts_per_tok"}
ROUTER_AUX_LOSS_COEF = 0.02  # the value in the published Mixtral configs
FUSED_GATE_UP, FUSED_DOWN = "mlp.experts.gate_up_proj", "mlp.experts.down_proj"  # transformers' layer keys


@dataclass
class Routing:
    """An MoE layer in progress: hidden state after attention, tokens as rows, the choice, the sum so far."""

    h_mid: torch.Tensor
    flat: torch.Tensor
    chosen: torch.Tensor
    weights: torch.Tensor
    out: torch.Tensor
    next_expert: int = 0


class Mixtral(Mistral):
    name = "mixtral"
    architecture = "MixtralForCausalLM"
    model_type = "mixtral"
    params_fields = (Mistral.params_fields - {"max_position_embeddings"}) | {"moe"}  # no release has it
    params_absent = {"tied_embeddings": (False,)}
    hf_router = "mlp.gate"  # returns (logits, weights, indices), tokens as rows (Mistral 4's too)

    def recognises_params(self, raw: Mapping[str, Any]) -> bool:
        return raw.get("moe") not in (None, {})

    def parse_params(
        self, raw: Mapping[str, Any], *, source: str, names: Mapping[str, str] | None = None
    ) -> ModelParams:
        common = parse_common(raw, source=source, names=names)
        experts, top_k = _moe(raw.get("moe"), source, bad_value(source, names))
        return ModelParams(**common, num_experts=experts, num_experts_per_tok=top_k, family=self)

    def params_json(self, params: ModelParams) -> dict[str, Any]:
        out = params.common()
        out["moe"] = {"num_experts": out.pop("num_experts"), "num_experts_per_tok": out.pop("num_experts_per_tok")}
        return out

    def config_fields(self, params: ModelParams) -> dict[str, Any]:
        return {
            **super().config_fields(params),
            "num_local_experts": params.num_experts,
            "num_experts_per_tok": params.num_experts_per_tok,
            "router_aux_loss_coef": ROUTER_AUX_LOSS_COEF,
            "output_router_logits": False,
        }

    def config_to_params(self, config: dict[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, str]]:
        raw, keys = super().config_to_params(config, source=source)
        raw["moe"] = {native_key: config.get(key) for key, native_key in MOE_FIELDS.items()}
        keys.update({native_key: key for key, native_key in MOE_FIELDS.items()})
        return raw, keys

    def feed_forward_rows(self, params: ModelParams) -> tuple[Row, ...]:
        return (ROUTER,)

    def expert_rows(self, params: ModelParams, layer: int) -> tuple[Row, ...]:
        return (EXPERT_W1, EXPERT_W2, EXPERT_W3)

    def fp8_linear(self, params: ModelParams, spec: TensorSpec) -> bool:
        return super().fp8_linear(params, spec) and spec.row is not ROUTER  # transformers' router is no nn.Linear

    def indices(self, names: Iterable[str]) -> tuple[set[int], set[int]]:
        names = list(names)
        layers, _ = super().indices(names)
        return layers, {int(m[1]) for n in names if (m := EXPERT_NUMBER.search(n))}

    # -- the reference forward: routing, then the experts one at a time (only chosen ones are loaded) -----------

    def feed_forward_block(self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams) -> torch.Tensor:
        routing = self.route(h, layer, get, params)
        for expert in range(params.num_experts):
            self.add_expert(routing, layer, expert, get)
        return self.routed_output(routing)

    def route(self, h_mid: torch.Tensor, layer: int, get: Getter, params: ModelParams) -> Routing:
        """Normalise the hidden state after attention and choose each token's top-k experts."""
        import torch

        from hubtools.model import ops

        normed = self.feed_forward_norm(h_mid, layer, get, params)
        flat, chosen, weights = ops.top_k_routing(normed, get(ROUTER.native_name(layer)), params.num_experts_per_tok)
        return Routing(h_mid, flat, chosen, weights, torch.zeros_like(flat))

    def add_expert(self, routing: Routing, layer: int, expert: int, get: Getter) -> None:
        """Add expert `expert`'s weighted output for the tokens routed to it (its weights loaded only then)."""
        import torch

        from hubtools.model import ops

        rows, slot = torch.where(routing.chosen == expert)
        if rows.numel():
            w1, w2, w3 = (get(row.native_name(layer, expert)) for row in (EXPERT_W1, EXPERT_W2, EXPERT_W3))
            y = ops.swiglu(routing.flat[rows], w1, w2, w3)
            routing.out.index_add_(0, rows, routing.weights[rows, slot, None] * y)
        routing.next_expert = expert + 1

    def routed_output(self, routing: Routing) -> torch.Tensor:
        """The layer's output: the hidden state after attention plus the experts' sum."""
        return routing.h_mid + routing.out.view_as(routing.h_mid)

    def every_token(self, routing: Routing, expert: int) -> Routing:
        """`routing` with every token sent to `expert` alone, at weight 1 (calibration: no expert is starved)."""
        import torch

        tokens = routing.flat.shape[0]
        device = routing.flat.device
        chosen = torch.full((tokens, 1), expert, dtype=routing.chosen.dtype, device=device)
        weights = torch.ones((tokens, 1), dtype=routing.weights.dtype, device=device)
        return Routing(routing.h_mid, routing.flat, chosen, weights, torch.zeros_like(routing.flat), expert)

    def routed_tokens(self, routing: Routing, experts: int) -> list[int]:
        """How many tokens the router sent to each expert."""
        import torch

        return torch.bincount(routing.chosen.reshape(-1), minlength=experts).tolist()

    # -- quantization -----------------------------------------------------------------------------------------

    def input_groups(self, params: ModelParams, layer: int) -> tuple[InputGroup, ...]:
        """Mistral's attention; every expert's w1/w3 read the feed-forward norm, and so does the router (a
        passenger: unquantized, its columns take the scales); each expert's w2 reads what its w3 makes."""
        return (
            InputGroup((WQ, WK, WV), ATTENTION_NORM),
            InputGroup((WO,)),
            InputGroup((EXPERT_W1, EXPERT_W3), FFN_NORM, passengers=(ROUTER,), experts="all"),
            InputGroup((EXPERT_W2,), EXPERT_W3, experts="each"),
        )

    # -- the HF-side forward: experts fused as transformers 5.x fuses them ---------------------------------------

    fused_rows: ClassVar[tuple[Row, Row, Row]] = (EXPERT_W1, EXPERT_W3, EXPERT_W2)  # gate, up, down

    def hf_experts_shape(self, config: Any) -> tuple[int, int, int]:
        """(experts, hidden, expert width) of a MoE layer in transformers' config."""
        return config.num_local_experts, config.hidden_size, config.intermediate_size

    def hf_layer_key(self, key: str) -> str:
        """Where transformers' layer key `key` is stored, under the layer's prefix (Mixtral: `block_sparse_moe`)."""
        return key.replace("mlp.", "block_sparse_moe.", 1)

    def empty_fused_experts(self, config: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Uninitialised fused expert tensors of one layer, for `put_expert`."""
        import torch

        experts, hidden, inter = self.hf_experts_shape(config)
        return {
            FUSED_GATE_UP: torch.empty(experts, 2 * inter, hidden, dtype=dtype),
            FUSED_DOWN: torch.empty(experts, hidden, inter, dtype=dtype),
        }

    def put_expert(self, fused: dict[str, torch.Tensor], config: Any, spec: TensorSpec, tensor: torch.Tensor) -> bool:
        """Copy one expert tensor into its place in `fused`; False if `spec` is no expert's."""
        if spec.expert is None:
            return False
        self._place(fused, config, spec.row.native, spec.expert, tensor)  # native: a wrapper prefixes HF names
        return True

    def _place(
        self, fused: dict[str, torch.Tensor], config: Any, native: str, expert: int, tensor: torch.Tensor
    ) -> None:
        gate, _, down = self.fused_rows
        if native == down.native:
            fused[FUSED_DOWN][expert] = tensor
        else:
            inter = self.hf_experts_shape(config)[2]
            fused[FUSED_GATE_UP][expert, slice(None, inter) if native == gate.native else slice(inter, None)] = tensor

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
                for expert in range(self.hf_experts_shape(config)[0]):
                    for row in self.fused_rows:
                        self._place(fused, config, row.native, expert, read(row.hf_name(layer, expert)))
            state.update(fused)
        prefix = HF_LAYER.format(layer=layer)
        return {**state, **{key: read(prefix + self.hf_layer_key(key)) for key in keys if key not in state}}


def _moe(moe: Any, source: str, bad: Bad) -> tuple[int, int]:
    """(num_experts, num_experts_per_tok) of a params.json `moe` object."""
    if not isinstance(moe, dict):
        raise bad("moe", "an object with num_experts and num_experts_per_tok", moe)
    if not {"num_experts", "num_experts_per_tok"} <= set(moe):
        raise ParamsError(f"{source}: 'moe' needs num_experts and num_experts_per_tok, got {sorted(moe)}")
    check_object_fields(moe, ("num_experts", "num_experts_per_tok"), field="moe", source=source)
    experts, top_k = (positive_int(moe, key, bad) for key in ("num_experts", "num_experts_per_tok"))
    if top_k > experts:
        raise ParamsError(f"{source}: moe.num_experts_per_tok {top_k} must be in 1..num_experts ({experts})")
    return experts, top_k


FAMILY = Mixtral()

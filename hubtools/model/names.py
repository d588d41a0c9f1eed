"""THE name table: native (consolidated) tensor names <-> Hugging Face names, one table, both directions.

The table is data: per-model, per-layer and per-expert rows with `{layer}` / `{expert}` placeholders,
expanded for a given `ModelParams` into `TensorSpec`s in the canonical order (embeddings, layer 0 ..
layer N-1, final norm, output) that both writers use, so shards are grouped by layer. `NameTable`
checks that the expansion is a bijection and raises `MappingError` for anything it does not know.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hubtools.errors import MappingError
from hubtools.model.params import ModelParams

# (native template, HF template, transform, shape recipe). Shapes are symbolic in params fields.
MODEL_ROWS = (("tok_embeddings.weight", "model.embed_tokens.weight", "identity", ("vocab_size", "dim")),)
FINAL_ROWS = (
    ("norm.weight", "model.norm.weight", "identity", ("dim",)),
    ("output.weight", "lm_head.weight", "identity", ("vocab_size", "dim")),
)
ATTENTION_ROWS = (
    ("layers.{layer}.attention_norm.weight", "model.layers.{layer}.input_layernorm.weight", "identity", ("dim",)),
    (
        "layers.{layer}.attention.wq.weight",
        "model.layers.{layer}.self_attn.q_proj.weight",
        "rotary_q",
        ("q_out", "dim"),
    ),
    (
        "layers.{layer}.attention.wk.weight",
        "model.layers.{layer}.self_attn.k_proj.weight",
        "rotary_k",
        ("kv_out", "dim"),
    ),
    (
        "layers.{layer}.attention.wv.weight",
        "model.layers.{layer}.self_attn.v_proj.weight",
        "identity",
        ("kv_out", "dim"),
    ),
    (
        "layers.{layer}.attention.wo.weight",
        "model.layers.{layer}.self_attn.o_proj.weight",
        "identity",
        ("dim", "q_out"),
    ),
    ("layers.{layer}.ffn_norm.weight", "model.layers.{layer}.post_attention_layernorm.weight", "identity", ("dim",)),
)
DENSE_FFN_ROWS = (
    (
        "layers.{layer}.feed_forward.w1.weight",
        "model.layers.{layer}.mlp.gate_proj.weight",
        "identity",
        ("hidden_dim", "dim"),
    ),
    (
        "layers.{layer}.feed_forward.w2.weight",
        "model.layers.{layer}.mlp.down_proj.weight",
        "identity",
        ("dim", "hidden_dim"),
    ),
    (
        "layers.{layer}.feed_forward.w3.weight",
        "model.layers.{layer}.mlp.up_proj.weight",
        "identity",
        ("hidden_dim", "dim"),
    ),
)
MOE_GATE_ROWS = (
    (
        "layers.{layer}.feed_forward.gate.weight",
        "model.layers.{layer}.block_sparse_moe.gate.weight",
        "identity",
        ("num_experts", "dim"),
    ),
)
EXPERT_ROWS = (
    (
        "layers.{layer}.feed_forward.experts.{expert}.w1.weight",
        "model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight",
        "identity",
        ("hidden_dim", "dim"),
    ),
    (
        "layers.{layer}.feed_forward.experts.{expert}.w2.weight",
        "model.layers.{layer}.block_sparse_moe.experts.{expert}.w2.weight",
        "identity",
        ("dim", "hidden_dim"),
    ),
    (
        "layers.{layer}.feed_forward.experts.{expert}.w3.weight",
        "model.layers.{layer}.block_sparse_moe.experts.{expert}.w3.weight",
        "identity",
        ("hidden_dim", "dim"),
    ),
)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model: its native and HF names, expected shape, transform and layer."""

    native: str
    hf: str
    shape: tuple[int, ...]
    transform: str
    layer: int | None = None
    expert: int | None = None


def _dims(params: ModelParams) -> dict[str, int]:
    return {
        "vocab_size": params.vocab_size,
        "dim": params.dim,
        "hidden_dim": params.hidden_dim,
        "q_out": params.n_heads * params.head_dim,
        "kv_out": params.n_kv_heads * params.head_dim,
        "num_experts": params.num_experts,
    }


def _expand(
    rows: Iterable[tuple[str, str, str, tuple[str, ...]]],
    dims: dict[str, int],
    layer: int | None = None,
    expert: int | None = None,
) -> Iterator[TensorSpec]:
    for native, hf, transform, shape in rows:
        yield TensorSpec(
            native=native.format(layer=layer, expert=expert),
            hf=hf.format(layer=layer, expert=expert),
            shape=tuple(dims[s] for s in shape),
            transform=transform,
            layer=layer,
            expert=expert,
        )


def tensor_specs(params: ModelParams) -> list[TensorSpec]:
    """Every tensor the model has, in canonical order (grouped by layer).

    Example:
        >>> from hubtools.model.params import ModelParams
        >>> p = ModelParams(dim=8, n_layers=1, head_dim=4, hidden_dim=16, n_heads=2, n_kv_heads=1,
        ...                 norm_eps=1e-5, vocab_size=10)
        >>> [s.hf for s in tensor_specs(p)][:2]
        ['model.embed_tokens.weight', 'model.layers.0.input_layernorm.weight']
    """
    dims = _dims(params)
    specs = list(_expand(MODEL_ROWS, dims))
    for layer in range(params.n_layers):
        specs.extend(_expand(ATTENTION_ROWS, dims, layer))
        if not params.is_moe:
            specs.extend(_expand(DENSE_FFN_ROWS, dims, layer))
            continue
        specs.extend(_expand(MOE_GATE_ROWS, dims, layer))
        for expert in range(params.num_experts):
            specs.extend(_expand(EXPERT_ROWS, dims, layer, expert))
    specs.extend(_expand(FINAL_ROWS, dims))
    return specs


class NameTable:
    """The expanded table for one model, indexed both ways.

    Raises:
        MappingError: the expansion is not a bijection (a table bug), or a lookup names an unknown tensor.
    """

    def __init__(self, params: ModelParams) -> None:
        self.params = params
        self.specs = tensor_specs(params)
        self.by_native = {s.native: s for s in self.specs}
        self.by_hf = {s.hf: s for s in self.specs}
        if not len(self.by_native) == len(self.by_hf) == len(self.specs):
            raise MappingError("name table is not a bijection (duplicate native or HF names)")

    def spec(self, name: str, *, layout: str) -> TensorSpec:
        """Look a tensor up by its name in `layout` ("native" or "hf")."""
        index = self.by_native if layout == "native" else self.by_hf
        try:
            return index[name]
        except KeyError:
            raise MappingError(
                f"unknown tensor '{name}' for a {layout} {self.params.architecture} "
                f"with {self.params.n_layers} layers"
                + (f" and {self.params.num_experts} experts" if self.params.is_moe else "")
            ) from None

    def check_complete(self, names: Iterable[str], *, layout: str, where: str) -> None:
        """Check that `names` are exactly this model's tensors.

        Raises:
            MappingError: naming the first unknown tensor, or the missing ones.
        """
        present = set(names)
        for name in sorted(present):
            self.spec(name, layout=layout)
        key = "native" if layout == "native" else "hf"
        missing = [getattr(s, key) for s in self.specs if getattr(s, key) not in present]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise MappingError(f"{where}: missing tensor '{missing[0]}'{more}")

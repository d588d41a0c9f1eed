"""THE name table: native (consolidated) tensor names <-> Hugging Face names, one table, both directions.

The table is data: per-model, per-layer and per-expert rows with `{layer}` / `{expert}` placeholders,
expanded for a given `ModelParams` into `TensorSpec`s in the canonical order (embeddings, layer 0 ..
layer N-1, final norm, output) that both writers use, so shards are grouped by layer. `NameTable`
checks that the expansion is a bijection and raises `MappingError` for anything it does not know.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from hubtools.errors import LayoutError, MappingError
from hubtools.model.params import ModelParams
from hubtools.model.transforms import Transform

# (native template, HF template, transform, shape recipe). Shapes are symbolic in params fields.
MODEL_ROWS = (("tok_embeddings.weight", "model.embed_tokens.weight", Transform.IDENTITY, ("vocab_size", "dim")),)
FINAL_ROWS = (
    ("norm.weight", "model.norm.weight", Transform.IDENTITY, ("dim",)),
    ("output.weight", "lm_head.weight", Transform.IDENTITY, ("vocab_size", "dim")),
)
ATTENTION_ROWS = (
    (
        "layers.{layer}.attention_norm.weight",
        "model.layers.{layer}.input_layernorm.weight",
        Transform.IDENTITY,
        ("dim",),
    ),
    (
        "layers.{layer}.attention.wq.weight",
        "model.layers.{layer}.self_attn.q_proj.weight",
        Transform.ROTARY_Q,
        ("q_out", "dim"),
    ),
    (
        "layers.{layer}.attention.wk.weight",
        "model.layers.{layer}.self_attn.k_proj.weight",
        Transform.ROTARY_K,
        ("kv_out", "dim"),
    ),
    (
        "layers.{layer}.attention.wv.weight",
        "model.layers.{layer}.self_attn.v_proj.weight",
        Transform.IDENTITY,
        ("kv_out", "dim"),
    ),
    (
        "layers.{layer}.attention.wo.weight",
        "model.layers.{layer}.self_attn.o_proj.weight",
        Transform.IDENTITY,
        ("dim", "q_out"),
    ),
    (
        "layers.{layer}.ffn_norm.weight",
        "model.layers.{layer}.post_attention_layernorm.weight",
        Transform.IDENTITY,
        ("dim",),
    ),
)
DENSE_FFN_ROWS = (
    (
        "layers.{layer}.feed_forward.w1.weight",
        "model.layers.{layer}.mlp.gate_proj.weight",
        Transform.IDENTITY,
        ("hidden_dim", "dim"),
    ),
    (
        "layers.{layer}.feed_forward.w2.weight",
        "model.layers.{layer}.mlp.down_proj.weight",
        Transform.IDENTITY,
        ("dim", "hidden_dim"),
    ),
    (
        "layers.{layer}.feed_forward.w3.weight",
        "model.layers.{layer}.mlp.up_proj.weight",
        Transform.IDENTITY,
        ("hidden_dim", "dim"),
    ),
)
MOE_GATE_ROWS = (
    (
        "layers.{layer}.feed_forward.gate.weight",
        "model.layers.{layer}.block_sparse_moe.gate.weight",
        Transform.IDENTITY,
        ("num_experts", "dim"),
    ),
)
EXPERT_ROWS = (
    (
        "layers.{layer}.feed_forward.experts.{expert}.w1.weight",
        "model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight",
        Transform.IDENTITY,
        ("hidden_dim", "dim"),
    ),
    (
        "layers.{layer}.feed_forward.experts.{expert}.w2.weight",
        "model.layers.{layer}.block_sparse_moe.experts.{expert}.w2.weight",
        Transform.IDENTITY,
        ("dim", "hidden_dim"),
    ),
    (
        "layers.{layer}.feed_forward.experts.{expert}.w3.weight",
        "model.layers.{layer}.block_sparse_moe.experts.{expert}.w3.weight",
        Transform.IDENTITY,
        ("hidden_dim", "dim"),
    ),
)


class Layout(str, Enum):
    """A checkpoint's naming scheme: Mistral's native one or Hugging Face's."""

    NATIVE = "native"
    HF = "hf"

    @property
    def other(self) -> Layout:
        """The layout a conversion from this one produces."""
        return Layout.HF if self is Layout.NATIVE else Layout.NATIVE

    @property
    def metadata_file(self) -> str:
        """The JSON file that describes the model in this layout."""
        return "params.json" if self is Layout.NATIVE else "config.json"

    @classmethod
    def parse(cls, value: Layout | str) -> Layout:
        """`Layout` from a value such as "hf"; an unknown value is a `LayoutError`.

        Example:
            >>> Layout.parse("hf").other
            <Layout.NATIVE: 'native'>
        """
        try:
            return cls(value)
        except ValueError:
            raise LayoutError(f"{value!r}: expected a layout, one of 'native' or 'hf'") from None


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model: its native and HF names, expected shape, transform and layer."""

    native: str
    hf: str
    shape: tuple[int, ...]
    transform: Transform
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
    rows: Iterable[tuple[str, str, Transform, tuple[str, ...]]],
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

    def index(self, layout: Layout | str) -> dict[str, TensorSpec]:
        """name -> spec for the names of `layout`.

        Raises:
            LayoutError: an unknown layout.
        """
        return self.by_native if Layout.parse(layout) is Layout.NATIVE else self.by_hf

    def spec(self, name: str, *, layout: Layout | str) -> TensorSpec:
        """Look a tensor up by its name in `layout` ("native" or "hf").

        Raises:
            LayoutError: an unknown layout.  MappingError: an unknown name.
        """
        layout = Layout.parse(layout)
        index = self.index(layout)
        try:
            return index[name]
        except KeyError:
            raise MappingError(
                f"unknown tensor '{name}' for a {layout.value} {self.params.architecture} "
                f"with {self.params.n_layers} layers"
                + (f" and {self.params.num_experts} experts" if self.params.is_moe else "")
            ) from None

    def check_complete(self, names: Iterable[str], *, layout: Layout | str, where: str) -> None:
        """Check that `names` are exactly this model's tensors.

        Raises:
            MappingError: naming the first unknown tensor, or the missing ones.
        """
        present = set(names)
        for name in sorted(present):
            self.spec(name, layout=layout)
        key = Layout.parse(layout).value
        missing = [getattr(s, key) for s in self.specs if getattr(s, key) not in present]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise MappingError(f"{where}: missing tensor '{missing[0]}'{more}")

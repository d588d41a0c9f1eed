"""The contract of a model family (what every module in `hubtools.families` states), and `ModelParams`.

`ModelParams` is the one description of a model that the name table, the config translation, the
reference forward and the verifier share; its `family` says what kind of model it is.

A family is a stateless object; the engines (convert, verify, gguf, inspect, release) ask it and never
spell a tensor name. It states:

- recognition: whether a decoded params.json / config.json is one of its models;
- fields: params.json <-> `ModelParams` <-> config.json;
- its rows of the name table (native <-> HF <-> GGUF, per model, layer and expert, with transforms);
- its blocks for the clean-room reference forward on native names (embedding, attention, feed-forward,
  head), each loading weights through `get(native_name)`;
- its blocks for the HF-side forward (transformers' decoder layer filled from the HF names);
- for FP8 checkpoints, which rows are linear layers (`fp8_linear`) and which HF modules stay unquantized
  (`fp8_kept_modules`); the scale rows themselves are added by `hubtools.model.fp8`, never stated.

`Family` holds the generic machinery (expanding rows, counting layers); the families implement the rest.
Two families are equal when they are the same class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hubtools.errors import ParamsError
from hubtools.model.fp8 import Fp8, with_scales
from hubtools.model.input_group import InputGroup
from hubtools.model.rows import Fusion, GgufPiece, Part, Row, TensorSpec, expand

if TYPE_CHECKING:
    import numpy as np
    import torch

Getter = Callable[[str], "torch.Tensor"]

# in params.json order
COMMON_FIELDS = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "norm_eps", "vocab_size",
                 "rope_theta", "sliding_window", "max_seq_len", "num_experts", "num_experts_per_tok")  # fmt: skip


@dataclass(frozen=True)
class ModelParams:
    """Native hyper-parameters. `rope_theta` / `max_seq_len` are None when params.json omits them.

    Example:
        >>> from hubtools.testing import tiny_params
        >>> tiny_params(moe=False).is_moe
        False
    """

    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    vocab_size: int
    rope_theta: float | None = None
    sliding_window: int | None = None
    max_seq_len: int | None = None
    num_experts: int = 0
    num_experts_per_tok: int = 0
    family: Family = field(kw_only=True)
    quantization: Fp8 | None = field(default=None, kw_only=True)  # FP8 weights (`hubtools.model.fp8`)
    options: tuple[tuple[str, Any], ...] = field(default=(), kw_only=True)  # a family's own fields

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def architecture(self) -> str:
        return self.family.architecture

    @property
    def text(self) -> ModelParams:
        """The text model's params: a wrapper's (a vision model's) inner ones, else these."""
        inner: ModelParams | None = self.option("text")
        return inner if inner is not None else self

    @property
    def vision_heads(self) -> int:
        """A vision encoder's attention heads (0 without one): what `Transform.VISION_ROTARY` groups rows by."""
        vision = self.option("vision")
        return vision.num_attention_heads if vision is not None else 0

    def option(self, key: str, default: Any = None) -> Any:
        """A family's own field (`options`), or `default`."""
        return dict(self.options).get(key, default)

    def common(self) -> dict[str, Any]:
        """The fields every family shares, absent optional ones omitted (MoE counts only when MoE)."""
        out = {k: getattr(self, k) for k in COMMON_FIELDS if getattr(self, k) is not None}
        if not self.is_moe:
            out.pop("num_experts"), out.pop("num_experts_per_tok")
        if self.quantization is not None:
            out[self.quantization.native_field] = self.quantization.native()
        return out

    def to_dict(self) -> dict[str, Any]:
        """The params.json form (the family's)."""
        return self.family.params_json(self)


class Family:
    """A model family (see the module docstring). Subclass the nearest relative and state what differs."""

    name: ClassVar[str]
    architecture: ClassVar[str]  # config.json `architectures[0]`
    model_type: ClassVar[str]  # config.json `model_type`, and transformers' modeling module
    gguf_architecture: ClassVar[str]  # llama.cpp's `general.architecture`
    gguf_unsupported: ClassVar[str | None] = None  # why llama.cpp's converter cannot export it, if it cannot
    quantize_unsupported: ClassVar[str | None] = None  # why `hubtools quantize` refuses it, if it does
    params_fields: ClassVar[frozenset[str]]  # the params.json fields it maps (`hubtools.model.accounting`)
    params_absent: ClassVar[Mapping[str, tuple[Any, ...]]] = {}  # fields accepted only with these values
    default_max_positions: ClassVar[int] = 32768  # config.json max_position_embeddings when nothing says
    wraps_text: ClassVar[bool] = False  # a wrapper (vision + a text family) wins over the text families it wraps
    hf_text_prefix: ClassVar[str] = ""  # a wrapper's: where its text model's HF names sit
    hf_router: ClassVar[str | None] = None  # an MoE family's: its router in transformers' decoder layer

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- recognition and fields ------------------------------------------------------------------------------

    def recognises_params(self, raw: Mapping[str, Any]) -> bool:
        """Whether a decoded params.json describes one of this family's models."""
        raise NotImplementedError

    def recognises_config(self, config: Mapping[str, Any]) -> bool:
        """Whether a decoded config.json describes one of this family's models."""
        raise NotImplementedError

    def parse_params(
        self, raw: Mapping[str, Any], *, source: str, names: Mapping[str, str] | None = None
    ) -> ModelParams:
        """Validate a decoded params.json (or config.json translated by `config_to_params`)."""
        raise NotImplementedError

    def params_json(self, params: ModelParams) -> dict[str, Any]:
        """The params.json form of `params`."""
        raise NotImplementedError

    def config_fields(self, params: ModelParams) -> dict[str, Any]:
        """The config.json keys that are this family's own (architecture, model_type, ...)."""
        raise NotImplementedError

    def checked_config_fields(self, params: ModelParams) -> dict[str, Any]:
        """The family's own config.json fields that verify compares (those that change the forward); none here."""
        return {}

    def config_to_params(self, config: dict[str, Any], *, source: str) -> tuple[dict[str, Any], dict[str, str]]:
        """config.json -> (params.json-shaped dict, params field -> config key for messages)."""
        raise NotImplementedError

    def generation_fields(self, params: ModelParams) -> dict[str, Any]:
        """generation_config.json keys of its own, beside bos/eos (a pad token)."""
        return {}

    def layer_window(self, params: ModelParams, layer: int) -> int | None:
        """The attention window of layer `layer` (None: full attention)."""
        return params.sliding_window

    def hf_side_files(self, params: ModelParams) -> dict[str, dict[str, Any]]:
        """JSON files an HF folder carries besides config.json and the tokenizer (a vision model's processor)."""
        return {}

    def with_hf_side_files(self, params: ModelParams, folder: Path) -> ModelParams:
        """`params` read from an HF folder's config.json, completed from the folder's other files (a vision
        model's processor configs hold native fields config.json does not)."""
        return params

    def outer_config(self, params: ModelParams, config: dict[str, Any]) -> dict[str, Any]:
        """The config.json to write from the flat one built for the text model (a wrapper nests it)."""
        return config

    # -- the name table ---------------------------------------------------------------------------------------

    def dims(self, params: ModelParams) -> dict[str, int]:
        """The sizes that row shapes name."""
        raise NotImplementedError

    def embedding_rows(self, params: ModelParams) -> tuple[Row, ...]:
        raise NotImplementedError

    def layer_rows(self, params: ModelParams, layer: int) -> tuple[Row, ...]:
        """The rows of decoder layer `layer` that belong to no expert."""
        raise NotImplementedError

    def expert_rows(self, params: ModelParams, layer: int) -> tuple[Row, ...]:
        """The rows of each expert of layer `layer` (none for a dense layer)."""
        return ()

    def head_rows(self, params: ModelParams) -> tuple[Row, ...]:
        raise NotImplementedError

    def shared_rows(self, params: ModelParams) -> tuple[Row, ...]:
        """Rows whose tensors a later part of the forward uses again (a tied output: the embedding)."""
        return ()

    def fusions(self, params: ModelParams) -> tuple[Fusion, ...]:
        """The HF tensors stored fused (several table tensors back to back); none by default."""
        return ()

    def runtime_differences(self, params: ModelParams) -> tuple[str, ...]:
        """Where transformers runs this model differently from the runtime of the native format (verify's
        notes: a logits failure they explain is not the conversion's); none by default."""
        return ()

    def gguf_text_architecture(self, params: ModelParams) -> str:
        """The `general.architecture` of its text model's GGUF file (a wrapper's: as llama.cpp's converter names it)."""
        return self.gguf_architecture

    def gguf_pieces(self, params: ModelParams, spec: TensorSpec) -> tuple[GgufPiece, ...]:
        """The GGUF tensors table tensor `spec` is written as where llama.cpp's converter splits it; () for one."""
        return ()

    def gguf_cut(self, params: ModelParams, piece: str, tensor: np.ndarray) -> np.ndarray:
        """Piece `piece` (of `gguf_pieces`) of a table tensor's float values."""
        raise NotImplementedError

    def gguf_join(self, params: ModelParams, pieces: Mapping[str, np.ndarray]) -> np.ndarray:
        """The table tensor back from its pieces (`gguf_cut`'s inverse)."""
        raise NotImplementedError

    def experts(self, params: ModelParams, layer: int) -> int:
        """How many experts layer `layer` holds."""
        return params.num_experts if self.expert_rows(params, layer) else 0

    def tensor_specs(self, params: ModelParams) -> list[TensorSpec]:
        """Every tensor in canonical order: embedding, each layer (its own rows, then expert by expert), head;
        an FP8 weight is followed by its two scales (`hubtools.model.fp8`)."""
        dims = self.dims(params)
        specs = list(expand(self.embedding_rows(params), dims, Part.EMBEDDING))
        for layer in range(params.n_layers):
            specs.extend(expand(self.layer_rows(params, layer), dims, Part.LAYER, layer))
            rows = self.expert_rows(params, layer)
            for expert in range(self.experts(params, layer)):
                specs.extend(expand(rows, dims, Part.LAYER, layer, expert))
        specs.extend(expand(self.head_rows(params), dims, Part.HEAD))
        return with_scales(params, specs)

    def fp8_linear(self, params: ModelParams, spec: TensorSpec) -> bool:
        """Whether `spec` is the weight of a module transformers quantizes to FP8 (a linear layer)."""
        return len(spec.shape) == 2 and spec.part is not Part.EMBEDDING

    def fp8_kept_modules(self, params: ModelParams) -> tuple[str, ...]:
        """The HF modules an FP8 release keeps unquantized (`modules_to_not_convert`, transformers' patterns)."""
        return ("lm_head",)

    def check_counts(self, params: ModelParams, names: Iterable[str], *, source: str) -> None:
        """n_layers (and the expert count) must match the indices the weights hold.

        Checked before anything the size of n_layers x num_experts is built (a name table for a crafted
        n_layers of 1e9 would never finish).

        Raises:
            ParamsError: the counts disagree, naming the file and what the weights hold.
        """
        layers, experts = self.indices(names)
        counted = [("n_layers", params.n_layers, layers, "layers")]
        if params.is_moe:
            counted.append(("num_experts", params.num_experts, experts, "experts"))
        for name, count, found, what in counted:
            if count != len(found) or (found and max(found) + 1 != count):
                held = f"{len(found)} (indices {min(found)}..{max(found)})" if found else "none"
                raise ParamsError(f"{source}: {name} is {count}, but the weights hold {what}: {held}")

    def indices(self, names: Iterable[str]) -> tuple[set[int], set[int]]:
        """The layer and expert indices that tensor names (native or HF) hold, without a table."""
        raise NotImplementedError

    # -- the reference forward (native names) -----------------------------------------------------------------

    def embed(self, tokens: torch.Tensor, get: Getter) -> torch.Tensor:
        raise NotImplementedError

    def attention_block(
        self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams, positions: torch.Tensor, rope_theta: float
    ) -> torch.Tensor:
        """`h + attention(norm(h))` of one layer."""
        raise NotImplementedError

    def feed_forward_block(self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams) -> torch.Tensor:
        """`h + feed_forward(norm(h))` of one layer."""
        raise NotImplementedError

    def layer_forward(
        self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams, positions: torch.Tensor, rope_theta: float
    ) -> torch.Tensor:
        """One pre-norm decoder block."""
        h = self.attention_block(h, layer, get, params, positions, rope_theta)
        return self.feed_forward_block(h, layer, get, params)

    def head(self, h: torch.Tensor, get: Getter, params: ModelParams) -> torch.Tensor:
        """Final norm and output projection: hidden states -> logits."""
        raise NotImplementedError

    # A family with experts also streams its feed-forward: `route` once the layer's own tensors are in, then
    # `add_expert` as each expert's arrive, then `routed_output` (verify never holds more than one expert).

    def route(self, h_mid: torch.Tensor, layer: int, get: Getter, params: ModelParams) -> Any:
        """The routing state of layer `layer` for the hidden state after attention."""
        raise NotImplementedError

    def add_expert(self, routing: Any, layer: int, expert: int, get: Getter) -> None:
        """Add one expert's contribution to `routing`."""
        raise NotImplementedError

    def routed_output(self, routing: Any) -> torch.Tensor:
        """The layer's output once every expert is added."""
        raise NotImplementedError

    def every_token(self, routing: Any, expert: int) -> Any:
        """`routing` with every token sent to `expert` alone, at weight 1 (calibration)."""
        raise NotImplementedError

    def routed_tokens(self, routing: Any, experts: int) -> list[int]:
        """How many tokens the router sent to each expert."""
        raise NotImplementedError

    # A vision wrapper (`wraps_text`) also runs its encoder on images before the text embedding: the stem on
    # the images, each encoder layer, then the projector to the text width (native names, through `get`).

    def vision_stem(self, images: list[torch.Tensor], get: Getter, params: ModelParams) -> torch.Tensor:
        """(Vision wrappers) images `[C, H, W]` -> the encoder's input sequence `[patches, hidden]`."""
        raise NotImplementedError

    def vision_layer(
        self, h: torch.Tensor, layer: int, get: Getter, params: ModelParams, grids: list[tuple[int, int]]
    ) -> torch.Tensor:
        """(Vision wrappers) encoder layer `layer`; `grids`: each image's patch rows and columns."""
        raise NotImplementedError

    def vision_project(
        self, h: torch.Tensor, get: Getter, params: ModelParams, grids: list[tuple[int, int]]
    ) -> torch.Tensor:
        """(Vision wrappers) the encoder's output -> one text-width embedding per image token."""
        raise NotImplementedError

    def hf_vision_prefix(self, part: Part, layer: int | None = None) -> str:
        """(Vision wrappers) the HF name prefix of transformers' vision tower, encoder layer `layer`, or projector."""
        raise NotImplementedError

    # -- the HF-side forward (HF names, transformers' modules) -------------------------------------------------

    def hf_embed(self, tokens: torch.Tensor, read: Getter) -> torch.Tensor:
        raise NotImplementedError

    def hf_layer_state(
        self,
        config: Any,
        layer: int,
        keys: list[str],
        read: Getter,
        dtype: torch.dtype,
        fused: dict[str, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """transformers' decoder-layer state dict (its own `keys`) from the checkpoint's HF names.

        Args:
            read: loads an HF tensor in the compute dtype `dtype`.
            fused: a MoE layer's experts already fused (streamed in by `put_expert`), else None.
        """
        raise NotImplementedError

    def hf_head_weights(self, read: Getter, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(final norm weight, output projection; a tied model's is the embedding) read by their HF names."""
        raise NotImplementedError

    def empty_fused_experts(self, config: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """(Families with experts) uninitialised storage for one layer's experts in transformers' layout."""
        raise NotImplementedError

    # -- quantization -----------------------------------------------------------------------------------------

    def input_groups(self, params: ModelParams, layer: int) -> tuple[InputGroup, ...]:
        """The layer's quantized weights grouped by the input they read (see `InputGroup`)."""
        raise NotImplementedError

    def quantize_kept_modules(self, params: ModelParams) -> tuple[str, ...]:
        """Modules a GPTQ / AWQ folder keeps unquantized besides its layers' own (compressed-tensors `ignore`
        entries); `lm_head` even when tied: transformers' head is an `nn.Linear` sharing the embedding."""
        return ("lm_head",)

    def put_expert(self, fused: dict[str, torch.Tensor], config: Any, spec: TensorSpec, tensor: torch.Tensor) -> bool:
        """(Families with experts) copy one expert tensor into `fused`; False if `spec` is no expert's."""
        raise NotImplementedError

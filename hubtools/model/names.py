"""THE name table: native (consolidated) <-> Hugging Face <-> GGUF tensor names, one table, every direction.

A family (`hubtools.families`) states its rows as data (`hubtools.model.rows`); `tensor_specs` expands
them for a given `ModelParams` into `TensorSpec`s in the canonical order (embeddings, layer 0 .. layer
N-1, final norm, output) that both writers use, so shards are grouped by layer; the layer and expert of
each spec are typed fields, so nobody parses names. `NameTable` checks that the expansion is a bijection
and raises `MappingError` for anything it does not know.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from hubtools.errors import LayoutError, MappingError
from hubtools.filenames import CONFIG, PARAMS
from hubtools.model.family import ModelParams
from hubtools.model.rows import Part, TensorSpec

__all__ = ["Layout", "NameTable", "Part", "TensorSpec", "tensor_specs"]


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
        return PARAMS if self is Layout.NATIVE else CONFIG

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


def tensor_specs(params: ModelParams) -> list[TensorSpec]:
    """Every tensor the model has, in canonical order (grouped by layer), as its family states them.

    Example:
        >>> from hubtools.testing import tiny_params
        >>> [(s.part.name, s.layer) for s in tensor_specs(tiny_params(moe=False))][:2]
        [('EMBEDDING', None), ('LAYER', 0)]
    """
    return params.family.tensor_specs(params)


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

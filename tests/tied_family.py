"""A model family added from the test suite alone: Mistral with tied embeddings (no output projection).

Registered as a plugin (entry point group `hubtools.families`) by `tests/test_families.py`; it states only
what differs from `mistral`, as a family module in `hubtools/families/` would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hubtools.families.mistral import EMBEDDING, NORM, Mistral
from hubtools.model.family import ModelParams
from hubtools.model.rows import Row


class TiedMistral(Mistral):
    name = "tied-mistral"
    params_fields = Mistral.params_fields | {"tied_embeddings"}
    params_absent = {"moe": (None, {})}

    def recognises_params(self, raw: Mapping[str, Any]) -> bool:
        return raw.get("tied_embeddings") is True and not raw.get("moe")

    def recognises_config(self, config: Mapping[str, Any]) -> bool:
        return super().recognises_config(config) and config.get("tie_word_embeddings") is True

    def parse_params(
        self, raw: Mapping[str, Any], *, source: str, names: Mapping[str, str] | None = None
    ) -> ModelParams:
        return super().parse_params(
            {k: v for k, v in raw.items() if k != "tied_embeddings"}, source=source, names=names
        )

    def params_json(self, params: ModelParams) -> dict[str, Any]:
        return {**super().params_json(params), "tied_embeddings": True}

    def config_fields(self, params: ModelParams) -> dict[str, Any]:
        return {**super().config_fields(params), "tie_word_embeddings": True}

    def head_rows(self, params: ModelParams) -> tuple[Row, ...]:
        return (NORM,)

    def output_row(self, params: ModelParams) -> Row:
        return EMBEDDING

    def shared_rows(self, params: ModelParams) -> tuple[Row, ...]:
        return (EMBEDDING,)


FAMILY = TiedMistral()

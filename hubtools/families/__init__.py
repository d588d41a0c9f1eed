"""Model families: one module per family, each stating only what differs from its nearest relative.

`mistral` is the dense decoder; `mixtral` derives from it and adds the mixture of experts, `ministral` per-layer
sliding windows, `ministral3` YaRN, llama-4 query scaling and tied embeddings. A family owns
everything that differs between families (the contract is `hubtools.model.family.Family`): recognising
its params.json / config.json, the params <-> config fields, its rows of the name table (native <-> HF <->
GGUF, per layer and per expert), the transforms of those rows, and its blocks for the reference forward and
for the HF-side forward. The engines ask the family of a model (`ModelParams.family`) and never spell a
tensor name.

Adding a family:

1. Write `hubtools/families/NAME.py`: subclass the nearest relative (`Mistral`, `Mixtral`, ...), set
   `name`, `architecture`, `model_type`, the params.json fields it maps (`params_fields`: any other field is
   refused, `hubtools.model.accounting`), override what differs (its `recognises_params` /
   `recognises_config`, its rows, its blocks), and end with `FAMILY = NAME()`. Modules in this package are
   found by name; a family outside it (a plugin) is declared as an entry point in the group
   `hubtools.families` naming its `FAMILY` object.
2. Where several families recognise a file, the most derived one wins (a subclass of all the others);
   anything else is ambiguous and refused. A wrapper (`wraps_text`: a vision encoder around a text model)
   wins over the text families, and chooses its text family from the rest of the file.
3. Test it: the name table is a bijection, params.json -> config.json -> params.json round-trips, and a
   tiny synthetic checkpoint converts, verifies (bit-exact tensors, reference forward vs transformers) and
   exports to GGUF. `tests/test_families.py` shows all of it for a family added from the test suite alone.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from hubtools.errors import ParamsError
from hubtools.filenames import CONFIG, PARAMS
from hubtools.model.accounting import check_config_fields, check_params_fields
from hubtools.model.family import Family, ModelParams
from hubtools.model.hf_config import ConfigOverrides, to_hf_config
from hubtools.model.params import read_json_file

ENTRY_POINTS = "hubtools.families"


def known_families() -> list[Family]:
    """Every family: the modules of this package, then plugins' (entry points `hubtools.families`), in order."""
    found: list[Family] = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        found.append(importlib.import_module(f"{__name__}.{module.name}").FAMILY)
    for point in sorted(entry_points(group=ENTRY_POINTS), key=lambda p: p.name):
        family = point.load()
        if not isinstance(family, Family):
            raise ParamsError(f"entry point '{point.value}': expected a hubtools Family, found {type(family).__name__}")
        found.append(family)
    return found


def _most_derived(matches: list[Family], what: str) -> Family:
    for family in matches:
        if all(isinstance(family, type(other)) for other in matches):
            return family
    names = ", ".join(sorted(f.name for f in matches))
    raise ParamsError(f"{what}: several model families claim it ({names}); expected one")


def _choose(recognises: Callable[[Family], bool], what: str, expected: str) -> Family:
    families = known_families()
    matches = [f for f in families if recognises(f)]
    if not matches:
        raise ParamsError(f"{what}: {expected}")
    wrappers = [f for f in matches if f.wraps_text]  # a vision model: its wrapper chooses the text family
    matches = wrappers or matches
    return _most_derived(matches, what)


def family_named(name: str) -> Family:
    """The family called `name` (e.g. "mixtral").

    Raises:
        ParamsError: no such family, naming the known ones.
    """
    families = known_families()
    for family in families:
        if family.name == name:
            return family
    raise ParamsError(f"model family '{name}': expected one of {', '.join(f.name for f in families)}")


def parse_params(raw: Any, *, source: str = PARAMS) -> ModelParams:
    """A decoded params.json, validated by the family that recognises it.

    Example:
        >>> parse_params({"dim": 8, "n_layers": 1, "hidden_dim": 16, "n_heads": 2, "norm_eps": 1e-5,
        ...               "vocab_size": 10, "moe": {"num_experts": 4, "num_experts_per_tok": 2}}).architecture
        'MixtralForCausalLM'

    Raises:
        ParamsError: naming the file and the field.
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    family = _choose(lambda f: f.recognises_params(raw), source, "no model family recognises it")
    if family.wraps_text:  # its own object is checked by its parser, the rest as the text family's fields
        text_raw = {k: v for k, v in raw.items() if k not in family.params_fields}
        check_params_fields(text_raw, family_of_params(text_raw, source=source), source=source)
    else:
        check_params_fields(raw, family, source=source)
    return family.parse_params(raw, source=source)


def family_of_params(raw: dict[str, Any], *, source: str = PARAMS) -> Family:
    """The family that recognises a decoded params.json (see `parse_params`).

    Raises:
        ParamsError: none or several (ambiguous) do.
    """
    return _choose(lambda f: f.recognises_params(raw), source, "no model family recognises it")


def load_params(path: Path) -> ModelParams:
    """Read and validate a params.json file.

    Raises:
        ParamsError: the file is missing, is not JSON, or fails `parse_params`.
    """
    if not path.is_file():
        raise ParamsError(f"{path}: not found (a native checkpoint needs params.json beside the weights)")
    return parse_params(read_json_file(path), source=str(path))


def from_hf_config(config: Any, *, source: str = CONFIG) -> ModelParams:
    """Translate a config.json back into native params, by the family whose `model_type` it names.

    Every key is accounted for (`hubtools.model.accounting`): mapped, or neutral, or refused.

    Raises:
        ParamsError: no family's config, fields missing, a value of the wrong type or range, or a key that
            would be dropped or changed (the message names the config.json key).
    """
    if not isinstance(config, dict):
        raise ParamsError(f"{source}: expected a JSON object")
    family = family_of_config(config, source=source)
    raw, keys = family.config_to_params(config, source=source)
    params = family.parse_params(raw, source=source, names=keys)
    positions = config.get("max_position_embeddings")
    valid = isinstance(positions, int) and not isinstance(positions, bool) and positions > 0
    overrides = ConfigOverrides(max_position_embeddings=positions if valid else None)
    expected = to_hf_config(params, dtype="bfloat16", overrides=overrides).config
    check_config_fields(config, params, expected, source=source)
    return params


def family_of_config(config: dict[str, Any], *, source: str = CONFIG) -> Family:
    """The family a decoded config.json describes.

    Raises:
        ParamsError: no family recognises it, naming its model_type and the supported ones.
    """
    types = list(dict.fromkeys(f.model_type for f in known_families()))
    expected = " or ".join(f"'{t}'" for t in types)
    return _choose(
        lambda f: f.recognises_config(config),
        source,
        f"model_type '{config.get('model_type')}' is not supported (expected {expected})",
    )


def check_counts(params: ModelParams, names: Iterable[str], *, source: str) -> None:
    """n_layers and num_experts against the indices the weights hold (`Family.check_counts`)."""
    params.family.check_counts(params, names, source=source)

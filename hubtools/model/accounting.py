"""Field accounting: every params.json and config.json field is mapped or refused, never dropped.

params.json: a family declares the fields it maps (`Family.params_fields`) and the fields it accepts only
with a value that means "absent" (`Family.params_absent`, e.g. `tied_embeddings: false` for Mistral);
any other field, at the top or inside an object the family reads (`yarn`, `moe`, `llama_4_scaling`), is
refused naming it.

config.json, one rule: a key is accepted when hubtools, from the params it reads out of that config.json,
would write the same value (so every mapped key round-trips, and a fixed one such as `hidden_act` must hold
the family's value), or when it is one of `NEUTRAL_CONFIG_KEYS`: keys that change neither the weights nor
the forward (training-only settings, caching, transformers' bookkeeping, the dtype, which verify checks
against the tensors); anything else is refused naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hubtools.errors import ParamsError
from hubtools.model import fp8
from hubtools.model.family import Family, ModelParams

# params.json fields read for any family (`hubtools.model.fp8`)
EVERY_FAMILY_FIELDS = frozenset({fp8.NATIVE_FIELD, fp8.BLOCK_NATIVE_FIELD})

NEUTRAL_CONFIG_KEYS = frozenset(
    {
        # transformers' bookkeeping and output switches (no effect on weights or logits)
        "_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "return_dict",
        "output_attentions", "output_hidden_states", "chunk_size_feed_forward", "id2label", "label2id",
        "problem_type", "is_encoder_decoder", "tokenizer_class",
        # training-only (dropout, initialisation, auxiliary loss, router noise) and padding
        "attention_dropout", "initializer_range", "router_aux_loss_coef", "router_jitter_noise",
        "output_router_logits", "pad_token_id",
    }
)  # fmt: skip


def check_params_fields(raw: Mapping[str, Any], family: Family, *, source: str) -> None:
    """Refuse a params.json field `family` does not map (or holds with a value other than "absent").

    Raises:
        ParamsError: naming the file and the field.
    """
    for key, value in raw.items():
        if key in family.params_fields or key in EVERY_FAMILY_FIELDS:
            continue
        absent = family.params_absent.get(key)
        if absent is None:
            raise ParamsError(
                f"{source}: unknown field '{key}' for a {family.architecture} (fields mapped: "
                f"{', '.join(sorted(family.params_fields))}); refused rather than dropped"
            )
        if value not in absent:
            allowed = " or ".join(_json(v) for v in absent)
            raise ParamsError(f"{source}: field '{key}' must be {allowed} for a {family.architecture}, got {value!r}")


def check_object_fields(value: Mapping[str, Any], known: tuple[str, ...], *, field: str, source: str) -> None:
    """Refuse a key of the params.json object `field` (e.g. `yarn`) that is not in `known`.

    Raises:
        ParamsError: naming the file and `field.key`.
    """
    for key in value:
        if key not in known:
            raise ParamsError(f"{source}: unknown field '{field}.{key}' (expected {', '.join(known)})")


def check_config_fields(
    config: Mapping[str, Any], params: ModelParams, expected: Mapping[str, Any], *, source: str, prefix: str = ""
) -> None:
    """Every key of `config` is neutral or equals `expected` (what hubtools writes for `params`); a nested
    model config (a vision model's `text_config` / `vision_config`) is checked by the same rule.

    Args:
        expected: `to_hf_config(params, ...)`'s config.json, with the config's own max_position_embeddings.

    Raises:
        ParamsError: naming the file and the first key that would be dropped or changed.
    """
    given = normalised_rope(config, expected)
    for key, value in given.items():
        if key in NEUTRAL_CONFIG_KEYS or key == fp8.HF_FIELD:  # fp8.parse_hf checks every key of its own
            continue
        if key == "rope_parameters" and key not in expected:  # a default rope family: only its base belongs there
            theta = _json(expected.get("rope_theta"))
            raise ParamsError(
                f"{source}: field '{prefix}rope_parameters' is {_json(value)}, expected "
                f'{{"rope_type": "default", "rope_theta": {theta}}} for a {params.architecture}'
            )
        if key not in expected:
            raise ParamsError(
                f"{source}: unknown field '{prefix}{key}' for a {params.architecture} (hubtools maps or refuses every "
                "field; this one would be dropped)"
            )
        want = expected[key]
        if isinstance(want, dict) and isinstance(value, dict) and "model_type" in want:
            check_config_fields(value, params, want, source=source, prefix=f"{prefix}{key}.")
        elif isinstance(want, dict) and isinstance(value, dict):
            _check_object(value, want, prefix + key, source)
        elif not same_value(want, value) and not _derived_head_dim(key, value, params):
            raise ParamsError(
                f"{source}: field '{prefix}{key}' is {_json(value)}, expected {_json(want)} for a {params.architecture}"
            )


def _check_object(value: Mapping[str, Any], want: Mapping[str, Any], key: str, source: str) -> None:
    for sub, found in value.items():
        if sub not in want:
            raise ParamsError(f"{source}: unknown field '{key}.{sub}' (expected {', '.join(sorted(want))})")
        if not same_value(want[sub], found):
            raise ParamsError(f"{source}: field '{key}.{sub}' is {_json(found)}, expected {_json(want[sub])}")


def normalised_rope(config: Mapping[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with its rotary keys in the form `expected` uses: a transformers 5.x `rope_parameters` of type
    "default" as top-level `rope_theta`, a 4.x `rope_scaling` that scales nothing removed, and the duplicate
    `type` / `max_position_embeddings` keys transformers writes inside `rope_parameters` checked and removed."""
    given = dict(config)
    rope = given.get("rope_parameters")
    if isinstance(rope, dict):
        rope = dict(rope)
        if "type" in rope and rope["type"] == rope.get("rope_type"):
            rope.pop("type")
        if "max_position_embeddings" in rope and rope["max_position_embeddings"] == given.get(
            "max_position_embeddings"
        ):
            rope.pop("max_position_embeddings")
        given["rope_parameters"] = rope
        if (
            "rope_parameters" not in expected
            and rope.get("rope_type") == "default"
            and set(rope) <= {"rope_type", "rope_theta"}
        ):
            given.pop("rope_parameters")
            if given.get("rope_theta") is None:
                given["rope_theta"] = rope.get("rope_theta")
    if "rope_parameters" in expected and "rope_parameters" not in given and "rope_theta" in given:
        kind = expected["rope_parameters"].get("rope_type", "default")  # 4.x spelling: a base, no scaling
        kind = kind if kind in ("default", "axial") else "default"  # (Pixtral's encoder rotary is "axial")
        given["rope_parameters"] = {"rope_type": kind, "rope_theta": given.pop("rope_theta")}
    scaling = given.get("rope_scaling")
    if not scaling or (isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default"):
        given.pop("rope_scaling", None)
    if "rope_parameters" in expected and given.get("rope_theta") is None:
        given.pop("rope_theta", None)
    return given


def _derived_head_dim(key: str, value: Any, params: ModelParams) -> bool:
    """A null head_dim (transformers' default) where dim // n_heads is the head size."""
    return key == "head_dim" and value is None and params.head_dim == params.dim // params.n_heads


def same_value(expected: Any, found: Any) -> bool:
    """JSON values equal as transformers reads them: floats within 1e-9 relative, an integer only as an integer
    and a boolean only as a boolean, lists and objects element by element."""
    if isinstance(expected, bool) or isinstance(found, bool):
        return type(expected) is type(found) and expected == found
    if isinstance(expected, float) and isinstance(found, (int, float)):
        return math.isclose(expected, found, rel_tol=1e-9)
    if isinstance(expected, int) and isinstance(found, int):
        return expected == found
    if isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)):
        return len(expected) == len(found) and all(same_value(a, b) for a, b in zip(expected, found, strict=True))
    if isinstance(expected, dict) and isinstance(found, dict):
        return expected.keys() == found.keys() and all(same_value(expected[k], found[k]) for k in expected)
    return type(expected) is type(found) and bool(expected == found)


def _json(value: Any) -> str:
    import json

    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."

"""hubtools.card.model_facts reached directly: what a converted folder tells its card, and the check that the
card describes that model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubtools.card.model_facts import ModelFacts, check_model_matches, read_model_facts
from hubtools.card.source import load_card_source
from hubtools.errors import CardError

CARD_8X22B = Path(__file__).resolve().parents[1] / "cards" / "mixtral-8x22b-v0.1.md"


def test_facts_from_the_config_and_the_tokenizer_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MixtralForCausalLM"]}))
    config = {"chat_template": "{{ bos_token }}", "bos_token": {"content": "<B>"}, "eos_token": "<E>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_model_facts(tmp_path, counts=(10, 4)) == ModelFacts(
        parameters=10,
        active_parameters=4,
        architecture="MixtralForCausalLM",
        chat_template="{{ bos_token }}",
        chat_template_file="tokenizer_config.json",
        bos_token="<B>",
        eos_token="<E>",
        folder=tmp_path,
        hf_tokenizer=False,
    )
    (tmp_path / "chat_template.jinja").write_text("T")
    facts = read_model_facts(tmp_path, counts=(10, 10))
    assert (facts.active_parameters, facts.chat_template, facts.chat_template_file) == (
        None,
        "T",
        "chat_template.jinja",
    )


def test_a_card_must_describe_the_model_it_is_rendered_for() -> None:
    source = load_card_source(CARD_8X22B)
    check_model_matches(source, ModelFacts(140_000_000_000, None, "MixtralForCausalLM"))  # within 0.5%
    with pytest.raises(CardError) as arch:
        check_model_matches(source, ModelFacts(source.parameters, None, "MistralForCausalLM"))
    assert str(arch.value) == f"{source.path}: expected a MixtralForCausalLM model folder, found MistralForCausalLM"
    with pytest.raises(CardError) as count:
        check_model_matches(source, ModelFacts(7_000_000_000, None, "MixtralForCausalLM"))
    assert str(count.value) == (
        f"{source.path}: expected about 140,620,634,112 parameters as the card states, found 7,000,000,000 in the "
        "model folder (another model, or the card is wrong)"
    )

"""Cards state only what is true of the files they describe: model cards rendered for tiny v1, v3, v7 and
tekken checkpoints, with and without a chat template, and their Python snippets RUN against the folder.

How the snippets run (one subprocess for every card, offline: HF_HUB_OFFLINE=1, a timeout):
- every ```python block of the rendered README.md is extracted and run on its own (fresh globals);
- the repo id is replaced by the local folder path; `hf_hub_download(REPO, NAME)` (a download of one file
  of the repo) becomes the path of that file in the folder;
- skipped, by rule: a block that needs a CUDA GPU and a package built for it (`BitsAndBytesConfig`,
  `flash_attention_2`); `device_map="auto"` is dropped when `accelerate` is not installed (the card tells
  to `pip install accelerate`; on a CPU-only machine it places everything on the CPU anyway).
Nothing else is skipped: the mistral-common block, the default load and the bfloat16 load run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hubtools.card.gguf import build_gguf_card
from hubtools.card.model_facts import read_model_facts
from hubtools.card.render import render_card
from hubtools.card.source import CardSource, ModelKind, load_card_source
from hubtools.converter import convert
from hubtools.gguf.export import export
from hubtools.gguf.quant import parse_quants
from hubtools.testing import TOKENIZERS, tiny_params, write_native_checkpoint
from hubtools.tokenization.choices import TokenizerVersion

ROOT = Path(__file__).resolve().parents[1]
INSTRUCT_SOURCE = ROOT / "cards" / "mixtral-8x7b-instruct-v0.1.md"
# (tokenizer, chat_template for convert, card kind); v1's "auto" writes no template, so "mistral" adds one
CASES = [
    ("v1", "mistral", "instruct"),
    ("v1", "none", "instruct"),
    ("v3", "auto", "instruct"),
    ("v3", "none", "instruct"),
    ("v7", "auto", "instruct"),
    ("v7", "none", "instruct"),
    ("tekken", "auto", "instruct"),
    ("tekken", "none", "instruct"),
    ("v1", "none", "base"),
    ("v7", "auto", "base"),
]
SKIP_BLOCK = ("BitsAndBytesConfig", "flash_attention_2")  # need a CUDA GPU and a package built for it
RUNNER = """
import json, sys, time, traceback
blocks = json.load(open(sys.argv[1]))
results = {}
for key, code in blocks.items():
    started = time.monotonic()
    try:
        exec(compile(code, key, "exec"), {"__name__": "__main__"})
        results[key] = "ok"
    except BaseException:
        results[key] = traceback.format_exc(limit=-3)
    print(key, round(time.monotonic() - started, 2), file=sys.stderr)
json.dump(results, open(sys.argv[2], "w"))
"""


def case_id(case: tuple[str, str, str]) -> str:
    return "-".join(case)


def repo_of(case: tuple[str, str, str]) -> str:
    return f"acme/tiny-{case_id(case)}"


def source_for(case: tuple[str, str, str], folder: Path) -> tuple[CardSource, Any]:
    tokenizer, _, kind = case
    facts = read_model_facts(folder)
    source = dataclasses.replace(
        load_card_source(INSTRUCT_SOURCE),
        repo_id=repo_of(case),
        kind=ModelKind(kind),
        tokenizer=TokenizerVersion(tokenizer),
        parameters=facts.parameters,
        active_parameters=facts.active_parameters,
    )
    return source, facts


@pytest.fixture(scope="module")
def natives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("natives")
    return {
        kind: write_native_checkpoint(
            root / kind, tiny_params(vocab_size=TOKENIZERS[kind][2], n_layers=1, dim=32, hidden_dim=48), tokenizer=kind
        )
        for kind in ("v1", "v3", "v7", "tekken")
    }


@pytest.fixture(scope="module")
def cards(natives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """case id -> (the converted folder, its README.md as `card --model` renders it)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for case in CASES:
        folder = root / f"{case[0]}-{case[1]}"
        if not folder.exists():
            convert(natives[case[0]], folder, chat_template=case[1])
        source, facts = source_for(case, folder)
        out[case_id(case)] = (folder, render_card(source, model=facts))
    return out


def runnable(code: str, repo: str, folder: Path) -> str | None:
    """The block as it runs against the local folder, or None when the rule skips it."""
    if any(marker in code for marker in SKIP_BLOCK):
        return None
    code = code.replace(json.dumps(repo), json.dumps(str(folder)))
    code = code.replace("from huggingface_hub import hf_hub_download", "import os")
    code = code.replace("hf_hub_download(", "os.path.join(")
    if importlib.util.find_spec("accelerate") is None:
        code = re.sub(r'(,\s*)?device_map="auto",?', "", code)
    return code


@pytest.fixture(scope="module")
def outcomes(cards: dict[str, tuple[Path, str]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every runnable block of every card offline, in a few subprocesses side by side (cases split
    between them); block key -> "ok" or its traceback. Per-block timings are printed (see them with -s)."""
    work = tmp_path_factory.mktemp("snippets")
    (work / "runner.py").write_text(RUNNER)
    workers = max(1, min(4, os.cpu_count() or 1))
    chunks: list[dict[str, str]] = [{} for _ in range(workers)]
    for n, case in enumerate(CASES):
        folder, text = cards[case_id(case)]
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
            ran = runnable(code, repo_of(case), folder)
            if ran is not None:
                chunks[n % workers][f"{case_id(case)}#{i}"] = ran
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(work / "hf-home")}
    runs = []
    for n, blocks in enumerate(chunks):
        (work / f"blocks{n}.json").write_text(json.dumps(blocks))
        command = [sys.executable, str(work / "runner.py"), str(work / f"blocks{n}.json"), str(work / f"out{n}.json")]
        runs.append(subprocess.Popen(command, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results: dict[str, Any] = {}
    for n, run in enumerate(runs):
        try:
            _, err = run.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            run.kill()
            raise
        print(err.decode(errors="replace"))
        assert run.returncode == 0, err.decode(errors="replace")[-2000:]
        results |= json.loads((work / f"out{n}.json").read_text())
    return results


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_python_snippet_of_the_card_runs_against_the_folder(
    case: tuple[str, str, str], cards: dict[str, tuple[Path, str]], outcomes: dict[str, Any]
) -> None:
    _, text = cards[case_id(case)]
    ran = {key: result for key, result in outcomes.items() if key.startswith(case_id(case) + "#")}
    failed = {key: result for key, result in ran.items() if result != "ok"}
    assert not failed, "\n".join(f"{key}:\n{result}" for key, result in failed.items())
    # mistral-common, the default load and the bfloat16 load; bitsandbytes and flash-attention skipped
    assert len(ran) == 3 and len(re.findall(r"```python\n", text)) == 5


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_card_states_what_the_folder_holds(case: tuple[str, str, str], cards: dict[str, tuple[Path, str]]) -> None:
    tokenizer, template, kind = case
    folder, text = cards[case_id(case)]
    facts = read_model_facts(folder)
    assert f"| Tokenizer | mistral-common `{tokenizer}` |" in text
    assert facts.tokenizer_version == tokenizer
    has_template = facts.chat_template is not None
    assert has_template == (template != "none")
    if has_template:
        assert f"The chat template shipped in `{facts.chat_template_file}` renders" in text
    else:
        assert "The chat template shipped" not in text
    uses_template = "tokenizer = AutoTokenizer.from_pretrained(model_id)\n" in text and "apply_chat_template" in text
    if kind == "instruct" and not has_template:
        assert "No chat template ships with these files" in text
        assert "tokenizer = MistralCommonBackend.from_pretrained(model_id)" in text and not uses_template
    if kind == "base":
        assert "apply_chat_template" not in text and 'text = "Hello my name is"' in text
    assert "| Context length | 32,768 tokens |" in text  # card source and config.json agree


def test_a_card_source_whose_tokenizer_is_not_the_folders_is_refused(cards: dict[str, tuple[Path, str]]) -> None:
    from hubtools.errors import CardError

    case = ("v3", "auto", "instruct")
    folder, _ = cards[case_id(case)]
    source, facts = source_for(case, folder)
    with pytest.raises(CardError) as error:
        render_card(dataclasses.replace(source, tokenizer=TokenizerVersion.V7), model=facts)
    assert str(error.value) == (
        f"{INSTRUCT_SOURCE}: expected a v7 tokenizer as the card states, found v3 (tokenizer.model.v3) in the "
        "model folder"
    )


def test_the_gguf_card_says_which_exported_files_carry_the_chat_template(
    natives: dict[str, Path], tmp_path: Path
) -> None:
    source = dataclasses.replace(load_card_source(INSTRUCT_SOURCE), tokenizer=TokenizerVersion.V1)
    out = tmp_path / "gguf"
    export(natives["v1"], out, quants=parse_quants("q8_0"), name="tiny", chat_template="none")
    assert "None of these files carries a chat template" in build_gguf_card(source, out)
    export(natives["v1"], out, quants=parse_quants("f16"), name="tiny", chat_template="mistral")
    text = build_gguf_card(source, out)
    assert "embedded in every file" not in text
    assert "The chat template (`tokenizer.chat_template`) is embedded only in tiny.F16.gguf;" in text
    v3 = dataclasses.replace(source, tokenizer=TokenizerVersion.V3)
    export(natives["v3"], tmp_path / "v3", quants=parse_quants("q8_0"), name="tiny")  # auto: the mistral template
    assert "The chat template is embedded in every file (`tokenizer.chat_template`)." in build_gguf_card(
        v3, tmp_path / "v3"
    )

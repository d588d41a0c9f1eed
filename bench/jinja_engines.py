"""The Mistral chat templates in another Jinja engine: @huggingface/jinja (JavaScript) vs transformers.

    npm install --prefix /tmp/hfjinja @huggingface/jinja
    python bench/jinja_engines.py --count 500 --jinja-js /tmp/hfjinja/node_modules/@huggingface/jinja/dist/index.js

@huggingface/jinja is the engine of transformers.js, and llama.cpp's own engine (common/jinja) follows the
same design (no loops over strings, no `format`, its own number printing). Each conversation (the built-in
tool corpus, then `random_tool_chat`) is rendered as text by both engines and sorted into: identical,
rejected by both, different only in how numbers are spelt (the engine's number model), failing in the other
engine for want of `format` (a `\\uXXXX` escape of a non-ASCII character inside a JSON string), other.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hubtools.tokenization.chat_template import mistral_template  # noqa: E402
from hubtools.tokenization.random_chats import random_tool_chat  # noqa: E402
from hubtools.tokenization.tool_corpus import BUILTIN_TOOL_CONVERSATIONS  # noqa: E402

NODE = """
import fs from "fs";
const { Template } = await import(process.argv[1]);
const templates = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = [];
for (const line of fs.readFileSync(process.argv[3], "utf8").split("\\n").filter(Boolean)) {
  const c = JSON.parse(line);
  let text = null, err = null;
  try {
    text = new Template(templates[c.v]).render({ messages: c.chat.messages, tools: c.chat.tools,
      add_generation_prompt: true, bos_token: "<s>", eos_token: "</s>" });
  } catch (e) { err = String(e.message || e); }
  out.push(JSON.stringify({ text, err }));
}
fs.writeFileSync(process.argv[4], out.join("\\n") + "\\n");
"""
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


def python_render(template: str, chat: dict[str, Any]) -> tuple[str | None, str | None]:
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        fields = {"messages": chat["messages"], "tools": chat["tools"], "add_generation_prompt": True}
        text = _compile_jinja_template(template).render(**fields, bos_token="<s>", eos_token="</s>")
        return text, None
    except Exception as exc:  # the template's raise_exception, or an engine error
        return None, str(exc)


def verdict(py: tuple[str | None, str | None], js: dict[str, Any]) -> str:
    (text, err), (js_text, js_err) = py, (js["text"], js["err"])
    if err is not None and js_err is not None:
        return "rejected by both"
    if text is not None and text == js_text:
        return "identical"
    if text is not None and js_err and "format" in js_err:
        return "no format filter in the engine"
    if text is not None and js_text is not None and NUMBER.sub("#", text) == NUMBER.sub("#", js_text):
        pairs = zip(NUMBER.findall(text), NUMBER.findall(js_text), strict=True)
        if all(float(a) == float(b) for a, b in pairs):
            return "number spelling only"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--jinja-js", required=True, help="path to @huggingface/jinja's dist/index.js")
    args = parser.parse_args()
    chats = [dict(c) for c in BUILTIN_TOOL_CONVERSATIONS]
    chats += [random_tool_chat(random.Random(10_000 + i)) for i in range(args.count)]
    templates = {v: mistral_template(v) for v in ("v2", "v3", "v7")}
    cases = [(v, chat) for v in templates for chat in chats]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / n for n in ("templates.json", "cases.jsonl", "out.jsonl")]
        paths[0].write_text(json.dumps(templates), encoding="utf-8")
        paths[1].write_text("".join(json.dumps({"v": v, "chat": c}) + "\n" for v, c in cases), encoding="utf-8")
        script = ["node", "--input-type=module", "-e", NODE, args.jinja_js, *map(str, paths)]
        subprocess.run(script, check=True)
        js = [json.loads(line) for line in paths[2].read_text(encoding="utf-8").split("\n") if line]
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for (v, chat), other in zip(cases, js, strict=True):
        counts[v][verdict(python_render(templates[v], chat), other)] += 1
    for v, c in counts.items():
        print(f"{v}: {len(chats)} conversations: " + ", ".join(f"{n} {k}" for k, n in c.most_common()))


if __name__ == "__main__":
    main()

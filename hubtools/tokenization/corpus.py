"""The built-in corpus of the tokenizer parity check: edge-case texts and conversations.

Texts stress what tokenizer conversions get wrong: runs of spaces (SentencePiece's whitespace pieces
share one score), leading/trailing spaces (the "▁" dummy prefix), newlines, tabs, indented code,
unicode (byte fallback), emoji, CJK, long runs, the empty string, and special-token strings that
mistral-common treats as plain text. Conversations cover system prompt placement, merging of
consecutive messages of one role, right-stripping of assistant text, chunked content, and
conversations mistral-common rejects (the HF template must reject them too).
"""

from __future__ import annotations

_CODE = '''def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
'''

_C_CODE = 'int main(void) {\n\tfor (int i = 0; i < 10; i++) {\n\t\tprintf("%d\\n", i);\n\t}\n\treturn 0;\n}\n'

BUILTIN_TEXTS: tuple[str, ...] = (
    "",
    " ",
    "  ",
    "   ",
    "    ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n ",
    "\t \t",
    "Hello, world!",
    "hello",
    " hello",
    "  hello",
    "   hello",
    "hello ",
    "hello  ",
    "hello   ",
    " leading and trailing ",
    "double  space",
    "triple   space",
    "a    b",
    "x" + " " * 15 + "y",
    "x" + " " * 16 + "y",
    "x" + " " * 17 + "y",
    "x" + " " * 31 + "y",
    "x" + " " * 33 + "y",
    " " * 64,
    " " * 257,
    "line one\nline two\n\nline four",
    "tab\tseparated\tvalues",
    "trailing newline\n",
    "\nleading newline",
    _CODE,
    "    " + _CODE.replace("\n", "\n    "),
    _C_CODE,
    "if x:\n\tpass\n",
    '<div class="a">  <p>text</p></div>',
    "SELECT * FROM t WHERE a = 'b';  -- comment",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "naïve café résumé façade",
    "Ça va? Grüß Gott! ¿Qué tal?",
    "日本語のテキストです。",
    "中文文本，标点符号。",
    "한국어 텍스트",
    "Привет, мир!",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी पाठ",
    "ภาษาไทย",
    "emoji 😀🎉👍🏽 and 🇫🇷 flags",
    "🤖",
    "👨‍👩‍👧‍👦 family",
    "Ω≈ç√∫˜µ≤≥÷",
    "zero\u200bwidth\u200djoiner",
    "non\u00a0breaking\u00a0space",
    "ﬁ ligature and ＡＢＣ fullwidth",
    "math: ∑_{i=1}^{n} x_i² ≤ ∞",
    "3.14159 2.71828 1,000,000 0x1F 1e-5",
    "2024-01-31T12:00:00Z",
    "a" * 300,
    "ab" * 150,
    "-" * 80,
    "=" * 33,
    "...",
    "!!!???",
    "___init___",
    "▁ literal lower one eighth block ▁▁",
    "\u2581x",
    "[INST] hello [/INST]",
    "<s>",
    "</s>",
    "<unk>",
    "text with <s> and </s> inside",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[TOOL_CALLS]",
    "[IMG]",
    "[REF]",
    "[REF] cite",
    "x[REFERENCE_DOC_3]y",
    "<0x41>",
    "<|im_start|>user\nhi<|im_end|>",
    "[control_8]",
    "<SPECIAL_32>",
)


def _u(content: object) -> dict[str, object]:
    return {"role": "user", "content": content}


def _a(content: object) -> dict[str, object]:
    return {"role": "assistant", "content": content}


def _s(content: object) -> dict[str, object]:
    return {"role": "system", "content": content}


BUILTIN_CONVERSATIONS: tuple[tuple[dict[str, object], ...], ...] = (
    (_u("Hello"),),
    (_s("You are a helpful assistant."), _u("Hi")),
    (_u("What is 2+2?"), _a("4"), _u("And 3+3?")),
    (_s("Be terse."), _u("One"), _a("Two"), _u("Three")),
    (_s("Sys"), _u("a"), _a("b"), _u("c"), _a("d"), _u("e")),
    (_u("first part"), _u("second part")),
    (_u("q"), _a("part one"), _a("part two"), _u("next")),
    (_u("q"), _a("answer ending in spaces   "), _u("next")),
    (_u("q"), _a("answer ending in newlines\n\n"), _u("next")),
    (_u("q"), _a("  padded on both sides  "), _u("next")),
    (_u("  leading spaces"), _a(" x"), _u("trailing spaces  ")),
    (_u(""),),
    (_u(" "),),
    (_u("    indented\n        code\n"),),
    (_s("s1"), _s("s2"), _u("u")),
    (_u("a"), _s("mid system"), _u("b")),
    (_s("only a system prompt"),),
    (_s(""), _u("empty system")),
    (_u([{"type": "text", "text": "chunk one"}, {"type": "text", "text": "chunk two"}]),),
    (_s([{"type": "text", "text": "chunked system"}]), _u("u")),
    (_u("日本語 😀"), _a("émoji ok"), _u("more ünïcödé")),
    (_u("tab\tand\nnewline"), _a("ok\tfine"), _u("bye")),
    (_a("assistant first"), _u("then user")),
    (_s("sys"), _a("assistant after system"), _u("user")),
    (_u("a"), _u(""), _u("c")),
    (_u("x" + " " * 20 + "y"),),
    (_u("q"), _s("a system message may come last")),
    (_u("q"), _a([]), _a("an empty assistant message merges into this one (v7 only)"), _u("u")),
    # conversations mistral-common rejects
    (),
    (_a("lonely assistant"),),
    (_u("q"), _a("last message is the assistant")),
    (_u("q"), _a("a"), _s("system after assistant"), _u("u")),
    (_u("q"), _a(""), _u("u")),
    ({"role": "narrator", "content": "unknown role"},),
    (_u(None),),
)

"""Every file name hubtools reads or writes, and the rules that recognise them: the one home of each.

- checkpoint metadata: `params.json` (native), `config.json` and `generation_config.json` (HF), the
  safetensors index `model.safetensors.index.json`, and the default shard size;
- safetensors weights: `consolidated.safetensors` or `consolidated-0000K-of-0000N.safetensors` (native),
  `model.safetensors` or `model-0000K-of-0000N.safetensors` (HF);
- `.pth` weights: `consolidated.00.pth`, and the torrent's byte-split parts `consolidated.00.pth-splitN`;
- tokenizer files: native (`tokenizer.model[.vN]`, `*.model.vN`, `tekken*.json`) and HF (`tokenizer.json`,
  `tokenizer_config.json`, `special_tokens_map.json`, `chat_template.jinja`);
- GGUF files: `NAME.QUANT.gguf`, llama.cpp's split parts `NAME.QUANT-0000K-of-0000N.gguf`, and the verify
  report beside each (`NAME.QUANT.gguf.verify.json`).

Pure: names in, names out; nothing here touches the disk.
"""

from __future__ import annotations

import re

# --- checkpoint metadata ---

PARAMS = "params.json"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
PROCESSOR_CONFIG = "processor_config.json"  # a vision model's processor (PixtralProcessor)
PREPROCESSOR_CONFIG = "preprocessor_config.json"  # ... and its image processor
INDEX = "model.safetensors.index.json"
README = "README.md"
DEFAULT_SHARD_SIZE = 5 * 10**9  # bytes per safetensors shard unless a recipe or the caller says otherwise

# --- safetensors weights ---

NATIVE_STEM = "consolidated"
HF_STEM = "model"
NATIVE_SINGLE = "consolidated.safetensors"
NATIVE_SHARD = re.compile(r"consolidated-(\d{5})-of-(\d{5})\.safetensors")
HF_SHARD = re.compile(r"model(?:-(\d{5})-of-(\d{5}))?\.safetensors")
SAFETENSORS_SUFFIX = ".safetensors"


def shard_name(stem: str, number: int, total: int) -> str:
    """The `number`-th of `total` safetensors shards (numbered from 1).

    Example:
        >>> shard_name("model", 2, 3), shard_name(NATIVE_STEM, 1, 12)
        ('model-00002-of-00003.safetensors', 'consolidated-00001-of-00012.safetensors')
    """
    return f"{stem}-{number:05d}-of-{total:05d}{SAFETENSORS_SUFFIX}"


def shard_names(stem: str, total: int) -> list[str]:
    """Every shard name of a `total`-file series, in order.

    Example:
        >>> shard_names("model", 2)
        ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    """
    return [shard_name(stem, i, total) for i in range(1, total + 1)]


# --- .pth weights ---

PTH_SINGLE = "consolidated.00.pth"
PTH = re.compile(r"consolidated\.\d+\.pth")
PTH_SPLIT = re.compile(r"(consolidated\.\d+\.pth)-split(\d+)")
NATIVE_WEIGHT = re.compile(r"consolidated(\.safetensors|-\d{5}-of-\d{5}\.safetensors|\.\d+\.pth(-split\d+)?)")


def pth_split_name(number: int, base: str = PTH_SINGLE) -> str:
    """The torrent's `number`-th byte-split part of a `.pth` file (numbered from 0).

    Example:
        >>> pth_split_name(0), pth_split_name(3)
        ('consolidated.00.pth-split0', 'consolidated.00.pth-split3')
    """
    return f"{base}-split{number}"


def is_native_weight(name: str) -> bool:
    """A native weight file: consolidated safetensors (single or a shard), `.pth` or a `.pth` split part.

    Example:
        >>> [is_native_weight(n) for n in (NATIVE_SINGLE, "consolidated.00.pth-split2", "model.safetensors")]
        [True, True, False]
    """
    return NATIVE_WEIGHT.fullmatch(name) is not None


# --- tokenizer files ---

SPM = "tokenizer.model"
TEKKEN = "tekken.json"
SPM_NAME = re.compile(r"\.model(?:\.(v\d+)(?:m\d+)?)?$")
TOKENIZER_NAMES = (TEKKEN, f"{SPM}.v7", f"{SPM}.v3", f"{SPM}.v1", SPM)  # the usual names, probed remotely
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
HF_TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)
CHAT_TEMPLATE = "chat_template.jinja"


def is_tekken_name(name: str) -> bool:
    """A tekken tokenizer file name (`tekken*.json`).

    Example:
        >>> is_tekken_name("tekken_240911.json"), is_tekken_name("tokenizer.json")
        (True, False)
    """
    return "tekken" in name and name.endswith(".json")


def is_spm_name(name: str) -> bool:
    """A SentencePiece tokenizer file name (`*.model`, `*.model.vN`, `*.model.vNmM`).

    Example:
        >>> is_spm_name("tokenizer.model.v3"), is_spm_name("tokenizer.json")
        (True, False)
    """
    return SPM_NAME.search(name) is not None


def is_spm_model(name: str) -> bool:
    """A name under which SentencePiece loaders look for the file (`tokenizer.model`, `tokenizer.model.vN`)."""
    return name.startswith(SPM)


def is_tokenizer_name(name: str) -> bool:
    """A native tokenizer file name: `tokenizer.model[.vN]`, `*.model.vN` or `tekken*.json`.

    Example:
        >>> [is_tokenizer_name(n) for n in ("tokenizer.model", "tekken.json", "tokenizer_config.json")]
        [True, True, False]
    """
    return is_tekken_name(name) or is_spm_name(name)


def spm_version(name: str) -> str | None:
    """The version a SentencePiece file name states (`v3` of `tokenizer.model.v3`), None when unversioned.

    Example:
        >>> spm_version("mistral_instruct_tokenizer_241114.model.v7m1"), spm_version("tokenizer.model")
        ('v7', None)
    """
    match = SPM_NAME.search(name)
    return match.group(1) if match and match.group(1) else None


def spm_versioned_name(version: str) -> str:
    """The name under which mistral-common reads a SentencePiece file as `version`.

    Example:
        >>> spm_versioned_name("v3")
        'tokenizer.model.v3'
    """
    return f"{SPM}.{version}"


# --- GGUF files ---

GGUF_SUFFIX = ".gguf"
GGUF_SPLIT = re.compile(r"(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf")
GGUF_FILE = re.compile(r"(?P<stem>.+)\.(?P<quant>[A-Z0-9_]+)(?:-(?P<no>\d{5})-of-(?P<count>\d{5}))?\.gguf")
REPORT_SUFFIX = ".verify.json"


def gguf_name(name: str, quant: str) -> str:
    """The one-file GGUF name of a quant.

    Example:
        >>> gguf_name("Mixtral-8x7B", "Q8_0")
        'Mixtral-8x7B.Q8_0.gguf'
    """
    return f"{name}.{quant}{GGUF_SUFFIX}"


MMPROJ_PREFIX = "mmproj-"  # a vision projector's GGUF: mmproj-<name>.<QUANT>.gguf beside the text model's files


def gguf_split_name(stem: str, number: int, total: int) -> str:
    """llama.cpp's name of the `number`-th of `total` split parts (numbered from 1) of `stem`.gguf.

    Example:
        >>> gguf_split_name("m.Q8_0", 1, 3)
        'm.Q8_0-00001-of-00003.gguf'
    """
    return f"{stem}-{number:05d}-of-{total:05d}{GGUF_SUFFIX}"


def gguf_split_names(stem: str, total: int) -> list[str]:
    """Every part name of a split set, in order."""
    return [gguf_split_name(stem, i, total) for i in range(1, total + 1)]


def gguf_files(name: str, quant: str) -> re.Pattern[str]:
    """The file names hubtools writes for one quant: NAME.QUANT.gguf or NAME.QUANT-0000K-of-0000N.gguf.

    Example:
        >>> [bool(gguf_files("m", "Q8_0").fullmatch(n)) for n in ("m.Q8_0.gguf", "m.Q8_0-00002-of-00003.gguf")]
        [True, True]
    """
    return re.compile(re.escape(f"{name}.{quant}") + r"(?:-\d{5}-of-\d{5})?\.gguf")


def gguf_include_pattern(quant: str, files: list[str] | tuple[str, ...]) -> str:
    """What `hf download --include` takes to fetch one quant: its file name, or a glob for split parts.

    Example:
        >>> gguf_include_pattern("Q8_0", ["m.Q8_0.gguf"]), gguf_include_pattern("F16", ["a", "b"])
        ('m.Q8_0.gguf', '*F16-*-of-*.gguf')
    """
    return files[0] if len(files) == 1 else f"*{quant}-*-of-*{GGUF_SUFFIX}"


def report_name(gguf_file: str) -> str:
    """The verify report kept beside a GGUF file (what the release pipeline writes and the card reads).

    Example:
        >>> report_name("m.Q8_0.gguf")
        'm.Q8_0.gguf.verify.json'
    """
    return f"{gguf_file}{REPORT_SUFFIX}"

"""What `publish` sends: the files of a model folder, their roles, and the checks made before any request.

Nothing leaves the machine before `plan_upload` has checked the folder: every safetensors file parses
(header, offsets, data length), every GGUF file walks from its magic to the end of its last tensor's data
(`gguf.layout`), the index names exactly the shards present, and config.json is valid JSON
with the fields its architecture needs. A failure names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hubtools.checkpoint.hf_index import index_safetensors, json_object, read_weight_map
from hubtools.errors import HubtoolsError, PublishError
from hubtools.families import from_hf_config
from hubtools.filenames import (
    CHAT_TEMPLATE,
    CONFIG,
    GENERATION_CONFIG,
    GGUF_SPLIT,
    GGUF_SUFFIX,
    INDEX,
    PREPROCESSOR_CONFIG,
    PROCESSOR_CONFIG,
    README,
    SAFETENSORS_SUFFIX,
    SPECIAL_TOKENS_MAP,
    TEKKEN,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    gguf_split_names,
    is_spm_model,
)
from hubtools.validation import ref_name, repo_id


def check_publish_settings(
    repo: str, *, revision: str | None = None, create_pr: bool = False, tag: str | None = None
) -> str:
    """Where `publish` and `release` would commit, checked before any work or request (dry runs too).

    Returns:
        The repo id.

    Raises:
        PublishError: a repo id the Hub refuses ('a/b/c', empty parts, bad characters), a revision or tag
            that is not a git ref name, or a tag on a pull request.
    """
    repo = repo_id(repo)
    ref_name(revision, name="revision")
    ref_name(tag, name="tag")
    if tag and create_pr:
        raise PublishError(f"tag '{tag}' on a pull request: a tag must point at a merged commit (tag after merging)")
    return repo


class Role(str, Enum):
    """What a file is to the repo; files upload in this order (weights first, the card last)."""

    WEIGHTS = "weights"
    INDEX = "index"
    CONFIG = "config"
    TOKENIZER = "tokenizer"
    OTHER = "other"
    CARD = "card"


KNOWN_FILES = {
    INDEX: Role.INDEX,
    CONFIG: Role.CONFIG,
    GENERATION_CONFIG: Role.CONFIG,
    PROCESSOR_CONFIG: Role.CONFIG,
    PREPROCESSOR_CONFIG: Role.CONFIG,
    TOKENIZER_JSON: Role.TOKENIZER,
    TOKENIZER_CONFIG: Role.TOKENIZER,
    SPECIAL_TOKENS_MAP: Role.TOKENIZER,
    TEKKEN: Role.TOKENIZER,
    CHAT_TEMPLATE: Role.TOKENIZER,
    README: Role.CARD,
}
ROLE_ORDER = tuple(Role)
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, GGUF_SUFFIX)
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores files from 10 MiB (and binaries) through LFS
OTHER_MAX_SIZE = 10 * 1024 * 1024  # "other" json/md files above this are left out of the plan


@dataclass(frozen=True)
class PlannedFile:
    """One local file to publish: its name in the repo, size, role and expected storage (LFS or not)."""

    path: str
    local: Path
    size: int
    role: Role
    lfs: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "local": str(self.local),
            "size": self.size,
            "role": self.role.value,
            "lfs": self.lfs,
        }


@dataclass(frozen=True)
class UploadPlan:
    """The files of a folder that `publish` would send, in upload order, and the files it leaves out."""

    folder: Path
    files: tuple[PlannedFile, ...]
    ignored: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "files": [f.to_dict() for f in self.files],
            "ignored": list(self.ignored),
            "total_bytes": self.total_bytes,
            "file_count": len(self.files),
        }


def plan_upload(folder: str | os.PathLike[str]) -> UploadPlan:
    """List the files of `folder` to publish and check that the weights are complete.

    Args:
        folder (`Path`): a Hugging Face layout model folder (shards, index, config, tokenizer, README.md).

    Returns:
        `UploadPlan`: files in upload order (weights first, card last) plus the names left out.

    Raises:
        PublishError: not a folder, no weights, a weight file that does not parse (header, offsets, data
            length; for GGUF also metadata and tensor infos), an index that does not name exactly the shards
            present, or a config.json that is not valid JSON with the fields its architecture needs. Nothing
            has been sent when it is raised.

    Example:
        >>> plan_upload(Path("out/mixtral-8x7b-v0.1")).total_bytes  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(
            f"{folder}: expected a model folder to publish, found {'a file' if folder.exists() else 'nothing'}"
        )
    files, ignored = [], []
    for entry in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        planned = planned_file(entry)
        if planned is None:
            ignored.append(entry.name)
        else:
            files.append(planned)
    try:
        check_folder(folder, sorted(f.path for f in files if f.role is Role.WEIGHTS))
    except PublishError:
        raise
    except HubtoolsError as exc:
        raise PublishError(str(exc)) from None
    files.sort(key=lambda f: (ROLE_ORDER.index(f.role), f.path))
    return UploadPlan(folder, tuple(files), tuple(ignored))


def planned_file(entry: Path) -> PlannedFile | None:
    """How `entry` would be published (its role, LFS or not), or None when it is left out."""
    role = _role(entry.name)
    size = entry.stat().st_size
    if role is None or (role is Role.OTHER and size > OTHER_MAX_SIZE):
        return None
    lfs = role is Role.WEIGHTS or is_spm_model(entry.name) or size >= LFS_MIN_SIZE
    return PlannedFile(entry.name, entry, size, role, lfs)


def _role(name: str) -> Role | None:
    if name.endswith(WEIGHT_SUFFIXES):
        return Role.WEIGHTS
    if name in KNOWN_FILES:
        return KNOWN_FILES[name]
    if is_spm_model(name):
        return Role.TOKENIZER
    return Role.OTHER if name.endswith((".json", ".md")) else None


def check_folder(folder: Path, weights: list[str]) -> None:
    """The checks `plan_upload` makes before anything is sent (see the module docstring).

    Raises:
        PublishError, CorruptFileError, ParamsError: naming the file at fault.
    """
    if not weights:
        raise PublishError(
            f"{folder}: expected weights (*.safetensors or *.gguf), found none (run `hubtools convert` first)"
        )
    ggufs = sorted(w for w in weights if w.endswith(GGUF_SUFFIX))
    _check_gguf_splits(folder, set(ggufs))
    if ggufs:
        from hubtools.gguf.files import check_gguf_files  # gguf-py, only for GGUF folders

        check_gguf_files([folder / n for n in ggufs])  # header, metadata, tensor infos, data: complete
    shards = [n for n in weights if n.endswith(SAFETENSORS_SUFFIX)]
    if not shards:
        return  # a GGUF folder: `hubtools verify SRC FILE.gguf` checks its files
    weight_map = read_weight_map(folder)
    if weight_map is None and len(shards) > 1:
        raise PublishError(f"{folder / INDEX}: expected an index beside {len(shards)} weight files, found none")
    if weight_map is not None:
        named = set(weight_map.values())
        if missing := sorted(named - set(shards)):
            raise PublishError(f"{folder / INDEX}: names {', '.join(missing)}, which is missing")
        if extra := sorted(set(shards) - named):
            raise PublishError(
                f"{folder / INDEX}: expected every weight file to be named, found {', '.join(extra)} "
                "not in it (remove them or re-convert)"
            )
    index_safetensors([folder / n for n in shards])  # every header, offset and data length
    config = folder / CONFIG
    if not config.is_file():
        raise PublishError(f"{config}: expected the model's config.json beside the weights, found none")
    from_hf_config(json_object(config), source=str(config))


def _check_gguf_splits(folder: Path, files: set[str]) -> None:
    """Every llama.cpp split set (NAME-0000k-of-0000n.gguf) complete: the Hub must never get half a model."""
    for name in sorted(files):
        match = GGUF_SPLIT.fullmatch(name)
        if match:
            expected = set(gguf_split_names(match["stem"], int(match["count"])))
            if missing := sorted(expected - files):
                raise PublishError(f"{folder}: expected a complete GGUF split set, found no {missing[0]}")

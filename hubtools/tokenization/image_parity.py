"""Tokenizer parity for conversations with images: mistral-common against the HF folder's processor.

mistral-common (the native tekken file, with its `image` config) encodes each image as rows of `[IMG]`, each
row ending in `[IMG_BREAK]` and the last in `[IMG_END]`, sized by the image resized to fit `max_image_size`.
The HF side is what a client runs: the chat template (an image chunk becomes `[IMG]`), transformers' image
processor from preprocessor_config.json (the resized size), `PixtralProcessor`'s expansion of each `[IMG]`
(processor_config.json: `patch_size * spatial_merge_size` pixels per image token) and tokenizer.json.
transformers' `PixtralProcessor` needs torchvision; without it its expansion rule is applied to the same
processor_config.json values, and the report says which ran.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtools.errors import TokenizerError
from hubtools.filenames import PROCESSOR_CONFIG

# (width, height) in pixels: small, odd, one side over the largest edge, both over it, very long and thin
IMAGE_SIZES = ((24, 40), (33, 17), (64, 64), (200, 30), (90, 130), (3, 150))
TEXTS = ("Describe the image.", "What is different between these two?", "Compare:")


@dataclass(frozen=True)
class ImageParity:
    """How many conversations with images agree token for token, which processor ran, the first difference."""

    sequences: int
    agreed: int
    processor: str
    first_mismatch: dict[str, Any] | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.agreed == self.sequences

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sequences": self.sequences, "agreed": self.agreed, "processor": self.processor}
        if self.first_mismatch:
            out["first_mismatch"] = self.first_mismatch
        if self.error:
            out["error"] = self.error
        return out


def conversations() -> list[list[dict[str, Any]]]:
    """Conversations in the HF form (`{"type": "image"}` chunks), image `i` of each standing for `IMAGE_SIZES`
    in turn: image first, image last, two images, images in two turns with an answer between."""
    image = {"type": "image"}
    text = [{"type": "text", "text": t} for t in TEXTS]
    chats: list[list[dict[str, Any]]] = [
        [{"role": "user", "content": [text[0], image]}],
        [{"role": "user", "content": [image, text[0]]}],
        [{"role": "user", "content": [text[1], image, image]}],
        [{"role": "user", "content": [text[2], image, text[0], image]}],
        [
            {"role": "user", "content": [image, text[0]]},
            {"role": "assistant", "content": "A picture."},
            {"role": "user", "content": [text[1], image]},
        ],
    ]
    return chats


def synthetic_image(width: int, height: int, seed: int) -> Any:
    """A deterministic RGB PIL image."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@contextmanager
def _tokens_only() -> Iterator[None]:
    """mistral-common's image encoding without its pixel transform (it needs opencv; the tokens do not
    depend on the pixels, only on the image's size)."""
    import numpy as np
    from mistral_common.tokens.tokenizers import image as mc_image

    original = mc_image.transform_image
    mc_image.transform_image = lambda image, new_size: np.zeros((3, new_size[1], new_size[0]), np.float32)
    try:
        yield
    finally:
        mc_image.transform_image = original


def has_opencv() -> bool:
    """Whether mistral-common can transform images (else `_tokens_only` stands in for it)."""
    from importlib.util import find_spec

    return find_spec("cv2") is not None


def _reference_ids(mt: Any, chat: list[dict[str, Any]], images: list[Any]) -> list[int] | str:
    from mistral_common.protocol.instruct.chunk import ImageChunk, TextChunk
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    queue = iter(images)
    messages: list[Any] = []
    for message in chat:
        if message["role"] == "assistant":
            messages.append(AssistantMessage(content=message["content"]))
            continue
        chunks: list[Any] = [TextChunk(text=c["text"]) if c["type"] == "text" else ImageChunk(image=next(queue))
                             for c in message["content"]]  # fmt: skip
        messages.append(UserMessage(content=chunks))
    try:
        with nullcontext() if has_opencv() else _tokens_only():
            return list(mt.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens)
    except Exception as exc:  # mistral-common rejects: a reason, not a crash
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _expanded(text: str, sizes: Sequence[tuple[int, int]], config: dict[str, Any]) -> str:
    """PixtralProcessor's rule: each `[IMG]` -> rows of `[IMG]` (one per `patch_size * spatial_merge_size`
    square of the resized image) ending in `[IMG_BREAK]`, the last in `[IMG_END]`."""
    token, brk, end = config["image_token"], config["image_break_token"], config["image_end_token"]
    step = config["patch_size"] * config.get("spatial_merge_size", 1)
    pieces = text.split(token)
    if len(pieces) - 1 != len(sizes):
        raise TokenizerError(f"the chat template wrote {len(pieces) - 1} '{token}' for {len(sizes)} images")
    out = pieces[0]
    for (height, width), piece in zip(sizes, pieces[1:], strict=True):
        rows = ([token] * (width // step) + [brk]) * (height // step)
        rows[-1] = end
        out += "".join(rows) + piece
    return out


def _processor(hf_dir: Path, tok: Any) -> tuple[Any, str]:
    """transformers' PixtralProcessor over the folder's tokenizer.json when importable, else None."""
    from transformers import AutoImageProcessor

    images = AutoImageProcessor.from_pretrained(str(hf_dir))
    try:
        from transformers.models.pixtral.processing_pixtral import PixtralProcessor
    except ImportError:  # it needs torchvision
        return images, f"{PROCESSOR_CONFIG} with PixtralProcessor's rule (transformers' needs torchvision)"
    config = json.loads((hf_dir / PROCESSOR_CONFIG).read_text())
    kwargs = {k: v for k, v in config.items() if k != "processor_class"}
    return PixtralProcessor(tokenizer=tok, image_processor=images, **kwargs), "transformers PixtralProcessor"


def _hf_ids(
    processor: Any, tok: Any, chat: list[dict[str, Any]], images: list[Any], config: dict[str, Any]
) -> list[int]:
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    if hasattr(processor, "tokenizer"):  # transformers' PixtralProcessor
        out = processor(text=text, images=images, add_special_tokens=False)
        return [int(i) for i in out["input_ids"][0]]
    step = config["patch_size"] * config.get("spatial_merge_size", 1)
    sizes = [(int(h), int(w)) for h, w in processor(images, patch_size=step)["image_sizes"]]
    return [int(i) for i in tok(_expanded(text, sizes, config), add_special_tokens=False)["input_ids"]]


def check_images(hf_dir: Path, mt: Any, tok: Any) -> ImageParity:
    """Every conversation of `conversations()` (each image cycling through `IMAGE_SIZES`) encoded both ways.

    Args:
        mt: mistral-common's tokenizer of the native file; tok: the folder's tokenizer.json (fast tokenizer).
    """
    if not (hf_dir / PROCESSOR_CONFIG).is_file():
        return ImageParity(0, 0, "none", error=f"{hf_dir}: expected {PROCESSOR_CONFIG} for a vision model, found none")
    config = json.loads((hf_dir / PROCESSOR_CONFIG).read_text())
    processor, which = _processor(hf_dir, tok)
    agreed, total, first = 0, 0, None
    n = 0
    for chat in conversations():
        for shift in range(len(IMAGE_SIZES)):
            count = sum(1 for m in chat if m["role"] == "user" for c in m["content"] if c["type"] == "image")
            sizes = [IMAGE_SIZES[(shift + i) % len(IMAGE_SIZES)] for i in range(count)]
            images = [synthetic_image(w, h, seed=n + i) for i, (w, h) in enumerate(sizes)]
            n += count
            want, got = _reference_ids(mt, chat, images), _hf_ids(processor, tok, chat, images, config)
            total += 1
            if want == got:
                agreed += 1
            elif first is None:
                first = {"conversation": json.dumps(chat), "image_sizes": sizes, "mistral_common": _short(want),
                         "hf": _short(got)}  # fmt: skip
    return ImageParity(total, agreed, which, first)


def _short(ids: list[int] | str) -> Any:
    if isinstance(ids, str):
        return ids
    return ids if len(ids) <= 40 else [*ids[:20], "...", *ids[-20:]]


def check_image_parity(hf_dir: Path, native_file: Path) -> ImageParity:
    """`check_images` for an HF folder and the native tokenizer file (tekken with an `image` config).

    Raises:
        `TokenizerError`: either tokenizer cannot be loaded.
    """
    from hubtools.tokenization.files import tokenizer_version
    from hubtools.tokenization.parity import load_hf_tokenizer, load_reference_tokenizer

    with tempfile.TemporaryDirectory() as workdir:
        mt = load_reference_tokenizer(native_file, tokenizer_version(native_file), workdir)
        if getattr(mt.instruct_tokenizer, "image_encoder", None) is None:
            return ImageParity(0, 0, "none", error=f"{native_file.name}: expected an 'image' config (mistral-common "
                               "cannot encode images without one), found none")  # fmt: skip
        return check_images(hf_dir, mt, load_hf_tokenizer(hf_dir))

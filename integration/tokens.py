"""Caption token counts as the connected text encoder sees them, for the lint and the caption panel."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..style_lora_engine.text_chunks import MAX_TOKENS, count_caption_tokens, make_token_counter
from . import comfy_modules

log = logging.getLogger("style_lora_trainer")

_START_END_TOKENS = (49406, 49407)  # CLIP's <|startoftext|> and <|endoftext|>


def _has_tokenizer(clip: Any) -> bool:
    return clip is not None and callable(getattr(clip, "tokenizer", None))  # the diffusers reference model


def token_counter(clip: Any) -> Callable[[str], int] | None:
    """Count a caption's text-encoder tokens (without start/end tokens), or None if unknown."""
    if clip is None:
        return None
    if _has_tokenizer(clip):
        return lambda text: count_caption_tokens(clip.tokenizer, text)
    if hasattr(clip, "tokenize"):  # ComfyUI CLIP: tokens come in 77-token windows with start/end
        def count(text: str) -> int:
            tokens = clip.tokenize(text)
            first = tokens["l"] if "l" in tokens else next(iter(tokens.values()))  # SDXL: CLIP-L
            return sum(max(0, sum(1 for t in window if _token_id(t) not in _START_END_TOKENS))
                       for window in first)

        return count
    return None


def token_cap(clip: Any) -> int | None:
    """Where text encoding cuts a caption: the diffusers path's 3 windows, ComfyUI's CLIP nowhere."""
    return MAX_TOKENS if _has_tokenizer(clip) else None


def _token_id(token: Any) -> int:
    return int(token[0]) if isinstance(token, (tuple, list)) else int(token)


@functools.lru_cache(maxsize=1)
def caption_token_counter() -> Callable[[str], int] | None:
    """Count caption tokens with ComfyUI's bundled CLIP tokenizer (the one SD1.5/SDXL use), so the
    caption editor's length badges match what the text encoder sees; None outside ComfyUI."""
    sd1_clip = comfy_modules.comfy_module("comfy.sd1_clip")
    if sd1_clip is None:
        return None
    folder = Path(sd1_clip.__file__).parent / "sd1_tokenizer"
    try:
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - badges without token counts beat a broken panel
        log.warning("Style LoRA: no caption token counts (%s)", exc)
        return None
    return make_token_counter(tokenizer)

"""Split caption token ids into CLIP-sized windows (kohya's max_token_length=225 scheme).

CLIP sees 77 positions: BOS + 75 tokens + EOS. Detailed captions (the guide asks for them)
often run past 75 tokens, so they are encoded in up to 3 windows whose hidden states are
concatenated; anything past 3 x 75 = 225 tokens is cut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CLIP_WINDOW = 77
CHUNK_TOKENS = CLIP_WINDOW - 2  # caption tokens per window (start and end tokens excluded)
MAX_CHUNKS = 3
MAX_TOKENS = CHUNK_TOKENS * MAX_CHUNKS  # this module's (kohya's) cap; ComfyUI's CLIP has none


def chunk_token_ids(
    ids: list[int], bos: int, eos: int, pad: int, window: int = CLIP_WINDOW, max_chunks: int = MAX_CHUNKS
) -> list[list[int]]:
    """Wrap ``ids`` (no special tokens) into ``bos + piece + eos`` windows padded to ``window``.

    Each piece holds ``window - 2`` tokens. At least one window is returned (an empty caption
    still needs an encoding); tokens beyond ``max_chunks * (window - 2)`` are dropped.
    """
    if window < 3:
        raise ValueError(f"window must leave room for BOS, EOS and one token (>= 3), got {window}")
    if max_chunks < 1:
        raise ValueError(f"max_chunks must be at least 1, got {max_chunks}")
    piece = window - 2
    ids = list(ids)[: piece * max_chunks]
    pieces = [ids[i : i + piece] for i in range(0, len(ids), piece)] or [[]]
    return [[bos, *p, eos] + [pad] * (piece - len(p)) for p in pieces]


def count_caption_tokens(tokenizer: Any, text: str) -> int:
    """Number of tokens in ``text`` without BOS/EOS, using a Hugging Face CLIP tokenizer."""
    encoded = tokenizer(text, add_special_tokens=False)
    # Works for a plain dict and for transformers' BatchEncoding (a UserDict).
    ids = encoded["input_ids"]
    return len(ids)


def make_token_counter(tokenizer: Any) -> Callable[[str], int]:
    """A ``count_tokens`` callable for ``lint_dataset``."""

    def count(text: str) -> int:
        return count_caption_tokens(tokenizer, text)

    return count

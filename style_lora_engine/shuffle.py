"""Per-step caption shuffling with the first ``keep_tokens`` parts fixed (the guide's token shuffling).

The guide keeps the first part ("caricature of a man with a long beard") in place and reorders
the rest every step, so late descriptors are not under-weighted. Shuffles are derived from
(seed, step, item_index) with a private RNG: resuming a run replays the same captions, and
nothing here touches Python's global ``random`` state.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class ShuffleSettings:
    enabled: bool = True
    separator: str = ","
    keep_tokens: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.separator:
            raise ConfigError('Caption separator cannot be empty; use "," (the usual choice).')
        if self.keep_tokens < 0:
            raise ConfigError(f"keep_tokens cannot be negative, got {self.keep_tokens} (the guide uses 1).")

    def to_json_dict(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "separator": self.separator,
            "keep_tokens": self.keep_tokens,
            "seed": self.seed,
        }


def split_caption(caption: str, separator: str = ",") -> tuple[list[str], str]:
    """Split ``caption`` into stripped, non-empty parts and return the joiner it uses.

    The joiner is the separator with the caption's own surrounding whitespace (the most common
    form if it varies), e.g. ``", "``, ``","`` or ``" | "``, so ``joiner.join(parts)`` reproduces
    a consistently spaced caption exactly (kohya once hard-coded ``", "``). A whitespace-only
    separator splits on runs of whitespace and joins with a single space.
    """
    if not separator:
        raise ConfigError('Caption separator cannot be empty; use "," (the usual choice).')
    core = separator.strip()
    if not core:
        return caption.split(), " "
    pattern = re.compile(r"\s*" + re.escape(core) + r"\s*")
    parts = [p.strip() for p in pattern.split(caption)]
    parts = [p for p in parts if p]
    joiners = Counter(m.group(0) for m in pattern.finditer(caption.strip()))
    if joiners:
        joiner = joiners.most_common(1)[0][0]  # ties: first seen, Counter keeps insertion order
    else:
        # No separator in the caption: use the separator as configured, spaced like ", ".
        joiner = separator if separator != core else f"{core} "
    return parts, joiner


def shuffle_caption(caption: str, settings: ShuffleSettings, step: int, item_index: int) -> str:
    """The caption as trained at global ``step`` for dataset item ``item_index``.

    The first ``keep_tokens`` parts stay in place, the rest are permuted; every part appears
    exactly once. Returned unchanged (byte for byte) when shuffling is off or fewer than two
    parts would move.
    """
    if not settings.enabled:
        return caption
    parts, joiner = split_caption(caption, settings.separator)
    fixed, rest = parts[: settings.keep_tokens], parts[settings.keep_tokens :]
    if len(rest) < 2:
        return caption
    # String seeds are hashed with SHA-512 by random.Random: stable across runs and platforms.
    rng = random.Random(f"{settings.seed}:{step}:{item_index}")
    rng.shuffle(rest)
    return joiner.join(fixed + rest)


def preview_shuffles(
    captions: list[str], settings: ShuffleSettings, count: int = 3, max_captions: int = 5
) -> str:
    """Readable examples of what training will see, for a ComfyUI STRING output."""
    if not settings.enabled:
        header = "Caption shuffling is off: captions are trained exactly as written."
    else:
        header = (
            f"Caption shuffling: on, separator {settings.separator!r}, keep_tokens {settings.keep_tokens} "
            f"(the first {settings.keep_tokens} part(s) stay fixed), seed {settings.seed}."
        )
    lines = [header]
    if not captions:
        lines.append("(no captions)")
        return "\n".join(lines)
    shown = captions[: max(0, max_captions)]
    for index, caption in enumerate(shown):
        lines.append("")
        lines.append(f"[{index + 1}] original: {caption if caption else '(empty caption)'}")
        if not settings.enabled:
            continue
        for step in range(max(0, count)):
            lines.append(f"    step {step}: {shuffle_caption(caption, settings, step, index)}")
    if len(captions) > len(shown):
        lines.append("")
        lines.append(f"... and {len(captions) - len(shown)} more caption(s).")
    return "\n".join(lines)

"""Caption editing: prefix/suffix, find/replace, per-image overrides, and atomic write-back.

``check_caption_extension`` (defined next to the caption-file reading in ``dataset``) is imported from
here by the nodes and the canvas routes: one check for every caption extension a user types.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, safe_join
from .config import check_text
from .dataset import Dataset, check_caption_extension, normalize_caption
from .errors import StyleLoRAError
from .shuffle import split_caption

_EDIT_KEYS = ("prefix", "suffix", "find", "replace", "overrides")


@dataclass(frozen=True)
class CaptionEdits:
    prefix: str = ""
    suffix: str = ""
    find: str = ""
    replace: str = ""
    # (image file name, caption) pairs, sorted by name; a tuple so the object stays hashable.
    overrides: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # The node builds these from its widgets; a number arriving over a link would fail later, unnamed.
        for key in ("prefix", "suffix", "find", "replace"):
            check_text(getattr(self, key), key, error=StyleLoRAError)

    @classmethod
    def from_json(cls, text: str) -> CaptionEdits:
        """Parse the JSON a ComfyUI widget stores, e.g.
        ``{"prefix": "by X", "overrides": {"img.png": "caption"}}``. Blank text means no edits."""
        check_text(text, "edits", error=StyleLoRAError)
        if not text.strip():
            return cls()
        fix = (
            'Expected a JSON object like {"prefix": "", "suffix": "", "find": "", "replace": "", '
            '"overrides": {"image.png": "caption"}}; fix the text or clear it.'
        )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StyleLoRAError(
                f"Caption edits are not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). {fix}"
            ) from exc
        if not isinstance(data, dict):
            raise StyleLoRAError(f"Caption edits must be a JSON object, got {type(data).__name__}. {fix}")
        unknown = sorted(set(data) - set(_EDIT_KEYS))
        if unknown:
            raise StyleLoRAError(
                f"Unknown caption edit key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_EDIT_KEYS)}."
            )
        fields: dict[str, Any] = {}
        for key in ("prefix", "suffix", "find", "replace"):
            value = data.get(key, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise StyleLoRAError(f"Caption edit {key!r} must be text, got {value!r}. {fix}")
            fields[key] = value
        fields["overrides"] = _parse_overrides(data.get("overrides") or {}, fix)
        return cls(**fields)

    def to_json(self) -> str:
        data = {
            "prefix": self.prefix,
            "suffix": self.suffix,
            "find": self.find,
            "replace": self.replace,
            "overrides": dict(self.overrides),
        }
        return json.dumps(data, ensure_ascii=False, indent=2)

    def override_for(self, file_name: str) -> str | None:
        for name, caption in self.overrides:
            if name == file_name:
                return caption
        return None


def _parse_overrides(raw: Any, fix: str) -> tuple[tuple[str, str], ...]:
    # Accept {"a.png": "..."} (the widget format) and [["a.png", "..."], ...] (to_json of old versions).
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in raw):
        pairs = [tuple(p) for p in raw]
    else:
        raise StyleLoRAError(f"Caption edit 'overrides' must map image file names to captions. {fix}")
    result: dict[str, str] = {}
    for name, caption in pairs:
        if not isinstance(name, str) or not isinstance(caption, str):
            raise StyleLoRAError(f"Override {name!r}: both the file name and the caption must be text. {fix}")
        result[name] = caption
    return tuple(sorted(result.items()))


def _joiner(separator: str) -> str:
    # "," -> ", " and " | " -> " | ": the separator followed by exactly one space.
    core = separator.rstrip()
    return f"{core} " if core else " "


def _starts_with_part(caption: str, part: str, separator: str) -> bool:
    if caption == part:
        return True
    if not caption.startswith(part):
        return False
    rest = caption[len(part) :]
    core = separator.strip()
    return rest.lstrip().startswith(core) if core else rest[:1].isspace()


def _ends_with_part(caption: str, part: str, separator: str) -> bool:
    if caption == part:
        return True
    if not caption.endswith(part):
        return False
    rest = caption[: -len(part)]
    core = separator.strip()
    return rest.rstrip().endswith(core) if core else rest[-1:].isspace()


def edit_caption(caption: str, edits: CaptionEdits, file_name: str, separator: str = ",") -> str:
    """Apply ``edits`` to one image's caption.

    Order: a per-image override replaces the caption; then find/replace (plain text, every
    occurrence); then prefix and suffix joined with the separator plus one space. Prefix and
    suffix are idempotent: a caption whose first (last) part already is the prefix (suffix) is
    left alone, so running the edit node twice does not stack trigger words.
    """
    override = edits.override_for(file_name)
    if override is not None:
        caption = normalize_caption(override)
    if edits.find:
        caption = caption.replace(edits.find, edits.replace)
    joiner = _joiner(separator)
    prefix = edits.prefix.strip()
    if prefix and not _starts_with_part(caption, prefix, separator):
        caption = f"{prefix}{joiner}{caption}" if caption.strip() else prefix
    suffix = edits.suffix.strip()
    if suffix and not _ends_with_part(caption, suffix, separator):
        caption = f"{caption}{joiner}{suffix}" if caption.strip() else suffix
    return caption


def apply_edits(dataset: Dataset, edits: CaptionEdits, separator: str = ",") -> Dataset:
    """A new dataset with ``edits`` applied to every item's current caption (held-out or folder validation
    images too, so their captions read like the training ones)."""
    edited = dataset.with_captions(
        [edit_caption(item.caption, edits, item.image_path.name, separator) for item in dataset.items]
    )
    if dataset.validation is None:
        return edited
    validation = dataset.validation.with_captions(
        [edit_caption(item.caption, edits, item.image_path.name, separator) for item in dataset.validation.items])
    return dataclasses.replace(edited, validation=validation)


def unknown_overrides(dataset: Dataset, edits: CaptionEdits) -> list[str]:
    """Override file names that match no image (typos, or images removed since) - for warnings."""
    names = {item.image_path.name for item in dataset.items}
    return [name for name, _ in edits.overrides if name not in names]


def apply_caption_list(dataset: Dataset, captions: list[str]) -> Dataset:
    """Use captions produced elsewhere (e.g. another node pack's captioner), one per image."""
    if isinstance(captions, str):
        raise StyleLoRAError(
            "Expected a list of captions (one per image), got a single text. Connect a list output, "
            "or use the caption edits for one shared caption."
        )
    captions = list(captions)
    if len(captions) != len(dataset.items):
        raise StyleLoRAError(
            f"The caption list has {len(captions)} entries but the dataset has {len(dataset.items)} images. "
            "Caption the same images, in the dataset's sorted file-name order, so the counts match."
        )
    for index, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise StyleLoRAError(
                f"Caption {index + 1} (for {dataset.items[index].image_path.name}) is {type(caption).__name__}, not text."
            )
    return dataset.with_captions([normalize_caption(c) for c in captions])


def write_captions(dataset: Dataset, *, only_changed: bool = True) -> list[Path]:
    """Write each item's caption to its caption file atomically; returns the paths written.

    With ``only_changed`` a file is written only if its caption differs from what was loaded
    (a missing caption file stays missing while its caption is empty). Captions are written
    as UTF-8 without BOM or trailing newline.
    """
    check_caption_extension(dataset.caption_extension)  # it names every file written here
    planned: dict[Path, tuple[str, str]] = {}
    for item in dataset.items:
        if only_changed and item.caption == item.original_caption:
            continue
        try:
            relative = item.caption_path.relative_to(dataset.folder)
        except ValueError:
            relative = item.caption_path  # absolute elsewhere: safe_join rejects it with a clear message
        target = safe_join(dataset.folder, str(relative))
        previous = planned.get(target)
        if previous is not None and previous[1] != item.caption:
            raise StyleLoRAError(
                f"Images {previous[0]} and {item.image_path.name} share the caption file {target.name} "
                "but have different captions; rename one image so each has its own caption file."
            )
        planned[target] = (item.image_path.name, item.caption)
    for target, (_, caption) in planned.items():
        atomic_write_text(target, caption)
    return list(planned)


def tag_frequency(dataset: Dataset, separator: str = ",") -> dict[str, int]:
    """How often each caption part occurs (kohya's ``ss_tag_frequency`` for one folder).

    Counted like kohya: every part of every caption, stripped. Most frequent first, then by name.
    """
    counts: dict[str, int] = {}
    for caption in dataset.captions():
        parts, _ = split_caption(caption, separator)
        for part in parts:
            counts[part] = counts.get(part, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

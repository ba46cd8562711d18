"""Scan a dataset folder into an immutable ``Dataset``: images, captions, sizes, buckets.

Everything is frozen because ComfyUI caches node outputs and hands the same object to several
nodes; editing captions returns a new ``Dataset`` instead of changing a shared one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .buckets import BucketSettings, assign_bucket
from .errors import DatasetError, StyleLoRAError
from .images import IMAGE_EXTENSIONS, is_image_file, open_image_rgb
from .shuffle import ShuffleSettings

MIN_REPEATS = 1
MAX_REPEATS = 100


@dataclass(frozen=True)
class DatasetItem:
    image_path: Path
    caption_path: Path
    caption: str  # what training uses (after edits)
    original_caption: str  # what the caption file held when loaded (normalised)
    width: int  # after EXIF orientation
    height: int
    bucket: tuple[int, int]
    pixel_hash: str  # SHA-256 of the decoded RGB pixels, for duplicate detection
    caption_missing: bool


@dataclass(frozen=True)
class Dataset:
    folder: Path
    items: tuple[DatasetItem, ...]
    repeats: int
    resolution: int
    caption_extension: str
    buckets: BucketSettings
    skipped: tuple[tuple[Path, str], ...]
    shuffle: ShuffleSettings | None = None

    def captions(self) -> list[str]:
        return [item.caption for item in self.items]

    def with_captions(self, captions: list[str]) -> Dataset:
        """A new dataset whose items use ``captions`` (one per item, in item order)."""
        captions = list(captions)
        if len(captions) != len(self.items):
            raise StyleLoRAError(
                f"Got {len(captions)} captions for {len(self.items)} images; give exactly one caption "
                "per image, in the dataset's (sorted file name) order."
            )
        items = tuple(
            dataclasses.replace(item, caption=caption) for item, caption in zip(self.items, captions, strict=True)
        )
        return dataclasses.replace(self, items=items)

    def with_shuffle(self, shuffle: ShuffleSettings | None) -> Dataset:
        return dataclasses.replace(self, shuffle=shuffle)

    def num_train_images(self) -> int:
        """Images seen per epoch: each image repeated ``repeats`` times (kohya's counting)."""
        return len(self.items) * self.repeats

    def items_by_bucket(self) -> dict[tuple[int, int], list[int]]:
        """Item indices per bucket, buckets in size order, items in dataset order: the one grouping
        batches, the latent cache and the reports use (kohya: one bucket per batch)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(self.items):
            groups.setdefault(item.bucket, []).append(index)
        return dict(sorted(groups.items()))

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        return {bucket: len(indices) for bucket, indices in self.items_by_bucket().items()}

    def summary(self) -> dict[str, Any]:
        """JSON-able overview (no absolute paths: it may end up in LoRA metadata)."""
        return {
            "folder": self.folder.name,
            "images": len(self.items),
            "repeats": self.repeats,
            "train_images_per_epoch": self.num_train_images(),
            "resolution": self.resolution,
            "bucketing": self.buckets.enabled,
            "buckets": {f"{w}x{h}": n for (w, h), n in self.bucket_counts().items()},
            "captions_missing": sum(1 for item in self.items if item.caption_missing),
            "skipped": [path.name for path, _ in self.skipped],
            "shuffle": self.shuffle.to_json_dict() if self.shuffle is not None else None,
        }


def normalize_caption_extension(extension: str) -> str:
    """Accept ``"txt"`` or ``".txt"``; refuse anything that is not a plain extension."""
    ext = extension.strip()
    if not ext.startswith("."):
        ext = "." + ext
    if len(ext) < 2 or any(ch in ext for ch in "/\\") or ext.count(".") != 1:
        raise DatasetError(
            f"Caption extension {extension!r} is not a file extension; use something like '.txt' or '.caption'."
        )
    return ext


def normalize_caption(text: str) -> str:
    """One caption line: whitespace runs collapsed, lines joined with ", " and stripped.

    Captioners often write one phrase per line; joining with ", " turns those lines into
    comma-separated parts that shuffling can move around. A comma already ending a line is not
    doubled.
    """
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) > 1:
        lines = [line.rstrip(",").rstrip() for line in lines[:-1]] + lines[-1:]
        lines = [line for line in lines if line]
    return ", ".join(lines).strip()


def read_caption_file(path: Path) -> str:
    """Read and normalise a caption file (UTF-8; a BOM from Windows editors is dropped)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"Cannot read caption file {path}: {exc}. Check its permissions.") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"Caption file {path} is not valid UTF-8 (byte {exc.start}). Open it in a text editor and "
            "save it with UTF-8 encoding."
        ) from exc
    return normalize_caption(text)


def _pixel_hash(image: Any) -> str:
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _list_folder(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DatasetError(f"Cannot list dataset folder {folder}: {exc}. Check its permissions.") from exc


def _is_dataset_image(path: Path) -> bool:
    return not path.name.startswith(".") and is_image_file(path) and path.is_file()


def dataset_images(folder: Path) -> list[Path]:
    """The images a dataset folder trains on: top level, not hidden, sorted by name."""
    return [p for p in _list_folder(folder) if _is_dataset_image(p)]


def caption_file_of(image_path: Path, caption_extension: str) -> Path:
    """``image_path``'s caption file (same stem, next to it); refuses a folder of that name."""
    caption_path = image_path.with_name(image_path.stem + caption_extension)
    if caption_path.is_dir():
        raise DatasetError(f"{caption_path} is a folder, but it should be the caption file of {image_path.name}. "
                           "Rename or remove that folder.")
    return caption_path


def load_dataset(
    folder: str | os.PathLike[str],
    *,
    caption_extension: str = ".txt",
    repeats: int = 10,
    resolution: int = 512,
    buckets: BucketSettings = BucketSettings(),
    skip_unreadable: bool = False,
) -> Dataset:
    """Scan the top level of ``folder`` (no subfolders, no hidden files) in sorted name order.

    Every image is decoded once (to validate it and hash its pixels), so a broken file is
    reported now, not halfway through training.
    """
    folder_path = Path(folder).expanduser()
    if not str(folder).strip():
        raise DatasetError("No dataset folder given; enter the path of a folder with your training images.")
    if not folder_path.exists():
        raise DatasetError(f"Dataset folder {folder_path} does not exist; check the path (use an absolute path).")
    if not folder_path.is_dir():
        raise DatasetError(f"{folder_path} is a file, not a folder; give the folder that holds the images.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not MIN_REPEATS <= repeats <= MAX_REPEATS:
        raise DatasetError(
            f"repeats must be a whole number from {MIN_REPEATS} to {MAX_REPEATS}, got {repeats!r} "
            "(the guide repeats each image about 10 times, 8-20 is the useful range)."
        )
    if not isinstance(resolution, int) or resolution < 8:
        raise DatasetError(f"resolution must be at least 8 pixels, got {resolution!r} (SD1.5 uses 512, SDXL 1024).")
    ext = normalize_caption_extension(caption_extension)
    buckets.effective(resolution)  # validate the bucket settings before the slow scan

    entries = _list_folder(folder_path)
    image_paths = [p for p in entries if _is_dataset_image(p)]

    items: list[DatasetItem] = []
    skipped: list[tuple[Path, str]] = []
    for image_path in image_paths:
        try:
            rgb = open_image_rgb(image_path)
        except DatasetError as exc:
            if not skip_unreadable:
                raise
            skipped.append((image_path, str(exc)))
            continue
        width, height = rgb.size
        pixel_hash = _pixel_hash(rgb)
        rgb.close()
        caption_path = caption_file_of(image_path, ext)
        missing = not caption_path.is_file()
        caption = "" if missing else read_caption_file(caption_path)
        items.append(
            DatasetItem(
                image_path=image_path,
                caption_path=caption_path,
                caption=caption,
                original_caption=caption,
                width=width,
                height=height,
                bucket=assign_bucket(width, height, resolution, buckets),
                pixel_hash=pixel_hash,
                caption_missing=missing,
            )
        )

    if not items:
        raise _no_images_error(folder_path, entries, skipped)
    return Dataset(
        folder=folder_path,
        items=tuple(items),
        repeats=repeats,
        resolution=resolution,
        caption_extension=ext,
        buckets=buckets,
        skipped=tuple(skipped),
    )


def _no_images_error(folder: Path, entries: list[Path], skipped: list[tuple[Path, str]]) -> DatasetError:
    if skipped:
        return DatasetError(
            f"All {len(skipped)} images in {folder} are unreadable (first: {skipped[0][0].name}). "
            "Re-save them as PNG or JPEG."
        )
    exts = ", ".join(IMAGE_EXTENSIONS)
    subfolders = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
    hint = ""
    if subfolders:
        # kohya datasets often nest images in "10_name" folders; only the top level is read here.
        hint = (
            f" Subfolders are not scanned; if the images are in {subfolders[0]!r}, "
            "point the loader at that folder instead."
        )
    return DatasetError(f"No images ({exts}) found in {folder}.{hint} Put your 30-100 training images there.")

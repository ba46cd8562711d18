"""Scan a dataset folder into an immutable ``Dataset``: images, captions, sizes, buckets.

Everything is frozen because ComfyUI caches node outputs and hands the same object to several
nodes; editing captions returns a new ``Dataset`` instead of changing a shared one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .buckets import BucketSettings, assign_bucket
from .config import check_bool, check_int
from .errors import DatasetError, StyleLoRAError
from .images import IMAGE_EXTENSIONS, is_image_file, open_image_rgb
from .loss_masks import MaskScan, scan_masks
from .shuffle import ShuffleSettings
from .validation_set import ValidationSet, training_images_validation

MIN_REPEATS = 1
MAX_REPEATS = 100
MIN_RESOLUTION = 8  # the tiny test models train at 32 px; the node's widget starts at 32
MAX_RESOLUTION = 4096
# Loose sanity bounds for the bucket options (the node's widgets are narrower): a huge max_bucket_size
# arriving over a link would make the bucket list loop for minutes.
MAX_BUCKET_SIZE = 16384
_CAPTION_EXTENSION = re.compile(r"\.[A-Za-z0-9_]{1,16}")


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
    masks: MaskScan | None = None  # loss masks (masked_loss), one per item; None: no mask source chosen
    # Held-out or folder images for the validation loss; None: some of the training images (the default).
    validation: ValidationSet | None = None

    def validation_set(self) -> ValidationSet:
        """The images the validation loss is measured on (``validation_set.py``)."""
        return self.validation if self.validation is not None else training_images_validation(self.items)

    def item_masks(self) -> tuple:
        """The mask of each item (``loss_masks.ItemMask`` or None), in item order."""
        return self.masks.masks if self.masks is not None else tuple(None for _ in self.items)

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
            **({"masks": {"source": self.masks.source, "with_mask": self.masks.count()}}
               if self.masks is not None and self.masks.source != "none" else {}),
            **({"validation": self.validation.describe()} if self.validation is not None else {}),
        }


def check_caption_extension(value: object) -> str:
    """The caption extension as ``.xyz``: a dot then 1-16 ASCII letters, digits or '_', not digits
    only. ``"txt"`` and ``" .txt "`` are completed to ``".txt"`` (older workflows wrote it so).

    Anything else is refused rather than repaired, the fix in the message: the extension becomes part
    of every caption file name, so ``../x`` or ``.a/b`` would point outside the dataset folder, and a
    number sent over the API (``7``) would quietly look for other files (``img0.7``). One rule for the
    loader, the caption editor and the canvas routes (``captions`` exports it for them).
    """
    if isinstance(value, str):
        bare = value.strip()
        bare = bare[1:] if bare.startswith(".") else bare
        if _CAPTION_EXTENSION.fullmatch("." + bare) and not bare.isdigit():
            return "." + bare
    raise DatasetError(
        f"caption_extension {value!r} is not a file extension. Set the caption_extension widget to a dot "
        "followed by 1-16 letters, digits or '_' (not only digits), such as '.txt' or '.caption'."
    )


def normalize_caption_extension(extension: object) -> str:
    """Kept for older callers: the same check as :func:`check_caption_extension`."""
    return check_caption_extension(extension)


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
            f"Caption file {path} is not valid UTF-8 (byte {exc.start}). Re-save it as UTF-8: open it in a "
            "text editor and save it with UTF-8 encoding."
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


def _stat_line(path: Path) -> bytes:
    try:
        st = path.stat()
    except OSError:
        return os.fsencode(f"{path.name}\0missing\n")
    # A link's target is part of what is read, so a retargeted link changes the signature too.
    target = os.path.realpath(path) if path.is_symlink() else ""
    return os.fsencode(f"{path.name}\0{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}\0{target}\n")


def folder_signature(folder: str | os.PathLike[str], caption_extension: str) -> str:
    """A digest of what :func:`load_dataset` would read from ``folder``: the names, sizes and
    modification times (ns) of its images and their caption files, where links point, plus the
    folder's resolved path and the caption extension.

    Stat calls only, no image bytes: cheap enough for ComfyUI to call before every queue (a node's
    ``IS_CHANGED``), so added, removed or edited images and captions are noticed. Raises
    ``DatasetError`` for a folder that cannot be listed or a bad caption extension.
    """
    ext = check_caption_extension(caption_extension)
    folder_path = Path(folder).expanduser()
    digest = hashlib.sha256(os.fsencode(f"{folder_path.resolve()}\0{ext}\n"))
    for image in dataset_images(folder_path):
        digest.update(_stat_line(image))
        digest.update(_stat_line(image.with_name(image.stem + ext)))
    return digest.hexdigest()


def _link_outside_error(path: Path, root: Path) -> DatasetError | None:
    """Why ``path`` (an entry of the dataset folder ``root``, resolved) must not be read, if it leads
    outside ``root``: a shared workflow or dataset could otherwise train on any file of the machine."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        return DatasetError(f"Cannot follow the link {path} ({exc}); replace it with the file itself.")
    if target == root or root in target.parents:
        return None
    return DatasetError(
        f"Refusing to read {path}: it is a link to {target}, outside the dataset folder; copy the file "
        "into the folder instead."
    )


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
    masks: str = "none",
) -> Dataset:
    """Scan the top level of ``folder`` (no subfolders, no hidden files) in sorted name order.

    Every image is decoded once (to validate it and hash its pixels), so a broken file is
    reported now, not halfway through training. An image or caption file that cannot be used (not
    decodable, a caption not in UTF-8, a link leading outside the folder) raises ``DatasetError``
    naming it, or with ``skip_unreadable`` leaves that image out and is listed in ``skipped``.
    ``masks``: where loss masks come from ("none", "alpha channel", "masks folder": ``<folder>/masks/``).
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise DatasetError(f"folder must be text (the path of a folder with your training images), got {folder!r}.")
    if not str(folder).strip():
        raise DatasetError("No dataset folder given; enter the path of a folder with your training images.")
    folder_path = Path(folder).expanduser()
    if not folder_path.exists():
        raise DatasetError(f"Dataset folder {folder_path} does not exist; check the path (use an absolute path).")
    if not folder_path.is_dir():
        raise DatasetError(f"{folder_path} is a file, not a folder; give the folder that holds the images.")
    check_int(repeats, "repeats", MIN_REPEATS, MAX_REPEATS, error=DatasetError,
              fix="The guide repeats each image about 10 times; 8-20 is the useful range.")
    _check_resolution(resolution)
    ext = check_caption_extension(caption_extension)
    _check_buckets(buckets)
    check_bool(skip_unreadable, "skip_unreadable", error=DatasetError)
    buckets.effective(resolution)  # validate the bucket settings before the slow scan

    entries = _list_folder(folder_path)
    root = folder_path.resolve()
    items: list[DatasetItem] = []
    skipped: list[tuple[Path, str]] = []
    for image_path in (p for p in entries if _is_dataset_image(p)):
        try:
            items.append(_load_item(image_path, root, ext, resolution, buckets))
        except DatasetError as exc:
            if not skip_unreadable:
                raise
            skipped.append((image_path, str(exc)))

    if not items:
        raise _no_images_error(folder_path, entries, skipped)
    mask_scan = scan_masks(folder_path, tuple(items), masks) if masks != "none" else None
    return Dataset(
        masks=mask_scan,
        folder=folder_path,
        items=tuple(items),
        repeats=repeats,
        resolution=resolution,
        caption_extension=ext,
        buckets=buckets,
        skipped=tuple(skipped),
    )


def _check_resolution(resolution: object) -> None:
    pixels = check_int(resolution, "resolution", MIN_RESOLUTION, MAX_RESOLUTION, error=DatasetError,
                       fix="SD1.5 trains at 512, SDXL at 1024.")
    if pixels % 8:
        raise DatasetError(f"resolution must be a multiple of 8 (the VAE works in 8-pixel blocks), got "
                           f"{resolution}; SD1.5 trains at 512, SDXL at 1024.")


def _check_buckets(buckets: BucketSettings) -> None:
    """The bucket options by their widget names (BucketSettings.effective checks how they combine)."""
    check_bool(buckets.enabled, "enable_bucket", error=DatasetError)
    check_bool(buckets.no_upscale, "bucket_no_upscale", error=DatasetError)
    check_int(buckets.min_size, "min_bucket_size", 8, MAX_BUCKET_SIZE, error=DatasetError, fix="256 is usual.")
    check_int(buckets.max_size, "max_bucket_size", 8, MAX_BUCKET_SIZE, error=DatasetError,
              fix="1024 is usual for SD1.5, 2048 for SDXL.")
    check_int(buckets.step, "bucket_step", 8, MAX_BUCKET_SIZE, error=DatasetError, fix="64 is usual (kohya).")
    if buckets.step % 8:
        raise DatasetError(f"bucket_step must be a multiple of 8 (the VAE works in 8-pixel blocks), got "
                           f"{buckets.step}; 64 is usual (kohya).")


def _load_item(image_path: Path, root: Path, ext: str, resolution: int, buckets: BucketSettings) -> DatasetItem:
    """One image and its caption; ``DatasetError`` naming the file if either cannot be used."""
    caption_path = caption_file_of(image_path, ext)
    for path in (image_path, caption_path):
        refusal = _link_outside_error(path, root)
        if refusal is not None:
            raise refusal
    rgb = open_image_rgb(image_path)
    width, height = rgb.size
    pixel_hash = _pixel_hash(rgb)
    rgb.close()
    missing = not caption_path.is_file()
    caption = "" if missing else read_caption_file(caption_path)
    return DatasetItem(
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


def _no_images_error(folder: Path, entries: list[Path], skipped: list[tuple[Path, str]]) -> DatasetError:
    if skipped:
        # The first reason names the file and its fix (an image to re-save, a caption not in UTF-8, a link).
        return DatasetError(
            f"All {len(skipped)} images in {folder} were skipped as unreadable. The first: {skipped[0][1]}"
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

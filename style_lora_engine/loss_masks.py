"""Loss masks for kohya's ``--masked_loss``: where each image trains (white) and where it is ignored (black).

Two sources, as in kohya: the image's own alpha channel (kohya ``alpha_mask``), or a same-name image in
the dataset's ``masks/`` folder (kohya's ``conditioning_data_dir``; its R channel, as kohya reads it).
A mask must have its image's size (kohya's rule) and is resized and cropped with exactly the image's
geometry (``images.cover_crop``), so mask and pixels line up; the loss averages it down to the latent.
An image without a mask trains everywhere (a mask of ones).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import DatasetError
from .images import IMAGE_EXTENSIONS, cover_crop

MASK_SOURCES = ("none", "alpha channel", "masks folder")
MASKS_FOLDER = "masks"


@dataclass(frozen=True)
class ItemMask:
    path: Path  # the image itself (alpha channel) or its file in masks/
    source: str  # "alpha channel" or "masks folder"
    digest: str  # SHA-256 of the mask's pixels: an edited mask is another run


@dataclass(frozen=True)
class MaskScan:
    source: str
    masks: tuple[ItemMask | None, ...]  # one per dataset item, None = no mask (trains everywhere)
    problems: tuple[tuple[str, str], ...]  # (file name, what is wrong and the fix)

    def count(self) -> int:
        return sum(1 for m in self.masks if m is not None)


def _upright(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return ImageOps.exif_transpose(img)


def _alpha(img: Image.Image) -> Image.Image | None:
    if img.mode in ("RGBA", "LA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA").getchannel("A")
    return None


def _mask_channel(img: Image.Image, source: str) -> Image.Image:
    if source == "alpha channel":
        alpha = _alpha(img)
        if alpha is None:
            raise ValueError("no alpha channel")
        return alpha
    return img.convert("RGB").getchannel("R")  # kohya: the conditioning image's R channel


def _digest(channel: Image.Image) -> str:
    return hashlib.sha256(channel.tobytes()).hexdigest()


def _mask_file(folder: Path, image_path: Path) -> Path | None:
    masks = folder / MASKS_FOLDER
    for ext in sorted(IMAGE_EXTENSIONS):
        for candidate in (masks / f"{image_path.stem}{ext}", masks / f"{image_path.stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def scan_masks(folder: Path, items: tuple, source: str) -> MaskScan:
    """The mask of every item (``DatasetItem``s, in order) from ``source``; problems listed, not raised,
    except a mask of the wrong size or that cannot be read, which would train the wrong pixels."""
    if source not in MASK_SOURCES:
        raise DatasetError(f"masks must be one of {', '.join(MASK_SOURCES)}, got {source!r}.")
    if source == "none":
        return MaskScan(source, tuple(None for _ in items), ())
    found: list[ItemMask | None] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        path = item.image_path if source == "alpha channel" else _mask_file(folder, item.image_path)
        if path is None:
            found.append(None)
            problems.append((item.image_path.name, f"has no mask in {MASKS_FOLDER}/: it trains on the whole image. "
                             f"Add {MASKS_FOLDER}/{item.image_path.stem}.png (white = train, black = ignore)."))
            continue
        try:
            img = _upright(path)
            channel = _mask_channel(img, source)
        except ValueError:
            found.append(None)
            problems.append((item.image_path.name, "has no alpha channel: it trains on the whole image. Save it "
                             "as a PNG with transparency where it should not train."))
            continue
        except OSError as exc:
            raise DatasetError(f"Mask {path} cannot be read ({exc}). Re-save it as a PNG, or remove it.") from exc
        if img.size != (item.width, item.height):
            raise DatasetError(
                f"Mask {path} is {img.size[0]}x{img.size[1]} but its image {item.image_path.name} is "
                f"{item.width}x{item.height}; a mask must have its image's size (kohya's rule). Resize the mask.")
        found.append(ItemMask(path, source, _digest(channel)))
    if source == "masks folder":
        stems = {item.image_path.stem for item in items}
        masks_dir = folder / MASKS_FOLDER
        for extra in sorted(masks_dir.iterdir()) if masks_dir.is_dir() else []:
            if extra.is_file() and not extra.name.startswith(".") and extra.stem not in stems:
                problems.append((f"{MASKS_FOLDER}/{extra.name}", "matches no training image (same name, any image "
                                 "extension); rename or remove it."))
    return MaskScan(source, tuple(found), tuple(problems))


def prepare_mask(mask: ItemMask | None, bucket: tuple[int, int]) -> torch.Tensor:
    """The mask at the bucket size [1, H, W] in [0, 1], cropped exactly as ``images.prepare_image`` crops its
    image; ones when there is no mask."""
    bucket_w, bucket_h = bucket
    if mask is None:
        return torch.ones(1, bucket_h, bucket_w)
    channel = _mask_channel(_upright(mask.path), mask.source)
    new_w, new_h, left, top = cover_crop(*channel.size, bucket_w, bucket_h)
    if (new_w, new_h) != channel.size:
        channel = channel.resize((new_w, new_h), Image.Resampling.LANCZOS)
    if (new_w, new_h) != (bucket_w, bucket_h):
        channel = channel.crop((left, top, left + bucket_w, top + bucket_h))
    arr = np.asarray(channel, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr))[None]

"""Open training images safely (EXIF orientation, any pixel mode -> RGB) and fit them to a bucket."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

_EXIF_ORIENTATION = 0x0112
# Orientations 5-8 rotate by 90/270 degrees, so width and height swap.
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for the extensions in ``IMAGE_EXTENSIONS``, any letter case (``IMG_01.JPG``)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _unreadable(path: Path, exc: BaseException) -> DatasetError:
    return DatasetError(
        f"Cannot read image {path}: {exc}. Re-save it as PNG or JPEG, or remove it from the "
        "dataset folder (or enable skipping unreadable images)."
    )


def _too_large(path: Path, exc: BaseException) -> DatasetError:
    return DatasetError(
        f"Image {path} is too large to open safely ({exc}). Downscale it (a few thousand "
        "pixels per side is plenty) or remove it from the dataset folder."
    )


# Pillow refuses more than twice Image.MAX_IMAGE_PIXELS and warns above it; the warning is raised
# instead where warnings are errors, so it means "too large" too.
_TOO_LARGE = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def open_image_rgb(path: str | os.PathLike[str], *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` fully and return an upright 8-bit RGB image.

    Transparent pixels are composited on white (what a viewer shows, and what kohya does), so
    cut-out PNGs do not train black backgrounds into the style. ``draft`` (for previews) lets a
    JPEG decode at a reduced scale that still covers that size; other formats ignore it.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if draft is not None:
                img.draft("RGB", draft)
            img.load()
            upright = _exif_upright(img)
    except _TOO_LARGE as exc:
        raise _too_large(path, exc) from exc
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, EOFError) as exc:
        raise _unreadable(path, exc) from exc
    try:
        return to_rgb(upright)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def _exif_upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block should not make the image unusable
        return img.copy()


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha on white, 16-bit/float scaled, not clipped)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(img)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # "1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV": Pillow's own conversion is right for these.
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    # Pillow's convert("RGB") clips 16-bit values at 255, turning most photos white; scale instead.
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float64) / 257.0
    elif img.mode == "I":
        # 16-bit PNGs open as "I" on some Pillow versions; only values above 255 need scaling.
        arr = arr.astype(np.float64)
        scaled = arr / 257.0 if arr.size and arr.max() > 255 else arr
    else:  # "F": 0..1 floats are the common convention; otherwise treat as 0..255.
        arr = np.nan_to_num(arr.astype(np.float64))
        scaled = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after EXIF orientation, read from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            try:
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # same as open_image_rgb: bad EXIF means "upright"
                orientation = 1
    except _TOO_LARGE as exc:
        raise _too_large(path, exc) from exc
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, EOFError) as exc:
        raise _unreadable(path, exc) from exc
    if orientation in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def cover_crop(width: int, height: int, bucket_w: int, bucket_h: int) -> tuple[int, int, int, int]:
    """``(resized_w, resized_h, left, top)`` of the cover-resize + centre-crop into a bucket: the one
    geometry both :func:`prepare_image` and the SDXL crop conditioning use.

    Same as kohya: scale by the larger of the two ratios so no side is padded, then crop the
    overflow evenly from both ends.
    """
    if bucket_w < 1 or bucket_h < 1:
        raise ValueError(f"bucket size must be positive, got {bucket_w}x{bucket_h}")
    scale = max(bucket_w / width, bucket_h / height)
    # max() guards against rounding one pixel short of the bucket.
    new_w = max(bucket_w, int(width * scale + 0.5))
    new_h = max(bucket_h, int(height * scale + 0.5))
    return new_w, new_h, (new_w - bucket_w) // 2, (new_h - bucket_h) // 2


def prepare_image(img: Image.Image, bucket_w: int, bucket_h: int) -> torch.Tensor:
    """Resize ``img`` to cover the bucket (LANCZOS), centre-crop it (:func:`cover_crop`), return CHW
    float in [-1, 1]."""
    img = to_rgb(img)
    new_w, new_h, left, top = cover_crop(*img.size, bucket_w, bucket_h)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    if (new_w, new_h) != (bucket_w, bucket_h):
        img = img.crop((left, top, left + bucket_w, top + bucket_h))
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

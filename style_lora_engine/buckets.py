"""Kohya-style aspect-ratio buckets: train each image near its own shape instead of a square crop.

Mirrors kohya's ``make_bucket_resolutions`` and ``BucketManager.select_bucket`` so a dataset is
bucketed the same way here as in kohya_ss (the guide's reference trainer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class BucketSettings:
    """Bucketing options (kohya names: enable_bucket, min/max_bucket_reso, bucket_reso_steps,
    bucket_no_upscale)."""

    enabled: bool = True
    min_size: int = 256
    max_size: int = 1024
    step: int = 64
    no_upscale: bool = False

    def effective(self, resolution: int) -> BucketSettings:
        """The settings actually used at ``resolution``.

        Clamping (documented behaviour, so tiny test models at 32/64 px still work):
        - ``step`` is at most ``resolution`` (a 64-px step cannot bucket a 32-px model);
        - ``min_size`` is at most ``resolution`` and rounded up to a multiple of ``step``;
        - ``max_size`` is at least ``resolution`` and rounded down to a multiple of ``step``;
          kohya refuses a max below the resolution, here the square bucket just always fits.
        """
        if resolution < 1:
            raise ConfigError(f"resolution must be a positive number of pixels, got {resolution}.")
        if self.step < 1:
            raise ConfigError(f"bucket step must be at least 1 pixel, got {self.step}.")
        if self.min_size < 1 or self.max_size < 1:
            raise ConfigError(
                f"bucket min_size and max_size must be positive, got {self.min_size} and {self.max_size}."
            )
        if self.min_size > self.max_size:
            raise ConfigError(
                f"bucket min_size ({self.min_size}) is larger than max_size ({self.max_size}); swap them."
            )
        step = min(self.step, resolution)
        min_size = min(self.min_size, resolution)
        min_size = max(step, math.ceil(min_size / step) * step)
        max_size = max(self.max_size, resolution)
        max_size = max(min_size, max_size // step * step)
        return BucketSettings(self.enabled, min_size, max_size, step, self.no_upscale)


def make_buckets(resolution: int, settings: BucketSettings = BucketSettings()) -> list[tuple[int, int]]:
    """All (width, height) buckets for ``resolution``: kohya's ``make_bucket_resolutions``.

    Every side is a multiple of ``step`` within [min_size, max_size] and ``w * h <= resolution**2``:
    for each width the largest fitting height, in both orientations, plus the largest square.
    Sorted ascending. With bucketing disabled the only bucket is the square.
    """
    eff = settings.effective(resolution)
    if not settings.enabled:
        return [(resolution, resolution)]
    max_area = resolution * resolution
    side = int(math.sqrt(max_area) // eff.step) * eff.step
    resos: set[tuple[int, int]] = {(side, side)}
    width = eff.min_size
    while width <= eff.max_size:
        height = min(eff.max_size, int((max_area // width) // eff.step) * eff.step)
        if height >= eff.min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += eff.step
    return sorted(resos)


def assign_bucket(
    width: int, height: int, resolution: int, settings: BucketSettings = BucketSettings()
) -> tuple[int, int]:
    """The (width, height) bucket an image of ``width`` x ``height`` trains at.

    - bucketing disabled: ``(resolution, resolution)`` (cover-resize + centre crop);
    - ``no_upscale``: kohya's ``bucket_no_upscale`` - images within the area keep their own size
      rounded down to ``step``; larger ones are shrunk to the area first, keeping aspect ratio;
    - otherwise: the predefined bucket with the nearest aspect ratio (kohya compares plain
      ratios; ties go to the first bucket in sorted order, so the result is deterministic).
    """
    if width < 1 or height < 1:
        raise ConfigError(f"image size must be positive, got {width}x{height}.")
    eff = settings.effective(resolution)
    if not settings.enabled:
        return (resolution, resolution)
    aspect = width / height
    if settings.no_upscale:
        return _no_upscale_bucket(width, height, aspect, resolution * resolution, eff.step)
    buckets = make_buckets(resolution, settings)
    if (width, height) in buckets:
        return (width, height)
    return min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))


def _no_upscale_bucket(width: int, height: int, aspect: float, max_area: int, step: int) -> tuple[int, int]:
    def round_to_step(x: float) -> int:
        x = int(x + 0.5)
        return x - x % step

    if width * height > max_area:
        # Shrink to the area keeping the aspect ratio, then round whichever side keeps the
        # ratio closest (kohya's logic, copied so buckets match kohya's).
        resized_w = math.sqrt(max_area * aspect)
        resized_h = max_area / resized_w
        b_w = round_to_step(resized_w)
        b_h_for_w = round_to_step(b_w / aspect)
        ar_w = b_w / b_h_for_w if b_h_for_w else math.inf
        b_h = round_to_step(resized_h)
        b_w_for_h = round_to_step(b_h * aspect)
        ar_h = b_w_for_h / b_h if b_h else math.inf
        if abs(ar_w - aspect) < abs(ar_h - aspect):
            size = (b_w, int(b_w / aspect + 0.5))
        else:
            size = (int(b_h * aspect + 0.5), b_h)
    else:
        size = (width, height)
    # Round down so the image is cropped, never padded; but never below one step (an image
    # smaller than the step is upscaled to it rather than producing an empty bucket).
    bucket_w = max(step, size[0] - size[0] % step)
    bucket_h = max(step, size[1] - size[1] % step)
    return (bucket_w, bucket_h)

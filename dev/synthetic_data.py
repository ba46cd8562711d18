"""Synthetic images with detailed captions, for the demo and the tests (no downloads).

Two generators:

* :func:`make_base_corpus` - varied shapes, colours and backdrops with captions naming them. The tiny
  model in :mod:`tiny_model` is pretrained on it, so it knows "circle", "red", "striped" ...
* :func:`make_style_dataset` - one distinctive, learnable *style* (warm orange/teal palette, diagonal
  hatching, thick dark outlines) applied to varied content, written as ``img_NNN.png`` + ``.txt``
  captions in the style guide's spirit.

:func:`style_statistics` / :func:`style_distance` measure colour and texture so a test can check
that images move toward the style as the LoRA weight grows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# The base corpus palette is deliberately wide (its average colour is a neutral grey) so the
# style's warm orange/teal palette stands out in colour statistics.
BASE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (50, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 50),
    "purple": (130, 50, 170),
    "pink": (240, 140, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
    "brown": (120, 75, 40),
    "cyan": (60, 210, 230),
    "orange": (245, 140, 30),
    "teal": (30, 130, 130),
    "navy": (25, 35, 100),
    "lime": (170, 230, 60),
    "magenta": (210, 40, 170),
}

SHAPES = ("circle", "square", "triangle", "star")

# The style: a fixed warm palette, hatched fills and thick near-black outlines.
STYLE_PALETTE: dict[str, tuple[int, int, int]] = {
    "orange": (238, 128, 36),
    "teal": (22, 128, 130),
    "cream": (246, 226, 180),
    "rust": (176, 70, 26),
}
STYLE_OUTLINE = (34, 22, 16)
STYLE_ARTIST = "by Synthetic Painter"

ANALYSIS_SIZE = 32  # statistics are computed at one size so 32 px samples compare with 64 px data


# --------------------------------------------------------------------------- drawing helpers


def _star_points(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = rot + i * math.pi / 5 - math.pi / 2
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "star":
        return _star_points(cx, cy, r * 1.15, rot)
    raise ValueError(shape)


def _shape_mask(size: int, shape: str, cx: float, cy: float, r: float, rot: float = 0.0) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, rot), fill=255)
    return mask


def _outline_mask(size: int, shape: str, cx: float, cy: float, r: float, rot: float, width: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=width)
    else:
        pts = _shape_polygon(shape, cx, cy, r, rot)
        draw.line([*pts, pts[0]], fill=255, width=width, joint="curve")
    return mask


def _stripes(size: int, a: tuple[int, int, int], b: tuple[int, int, int], period: int, direction: str,
             duty: float = 0.5) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size]
    coord = {"vertical": xx, "horizontal": yy, "diagonal": xx + yy, "antidiagonal": xx - yy}[direction]
    on = (coord % period) < max(1, round(period * duty))
    arr = np.where(on[..., None], np.array(b, np.uint8), np.array(a, np.uint8))
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _gradient(size: int, a: tuple[int, int, int], b: tuple[int, int, int], vertical: bool) -> Image.Image:
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    t = t[:, None] if vertical else t[None, :]
    t = np.broadcast_to(t, (size, size))[..., None]
    arr = np.array(a, np.float32) * (1 - t) + np.array(b, np.float32) * t
    return Image.fromarray(arr.round().astype(np.uint8), "RGB")


def _darker(c: tuple[int, int, int], f: float = 0.55) -> tuple[int, int, int]:
    return (int(c[0] * f), int(c[1] * f), int(c[2] * f))


def _size_word(r: float, size: int) -> str:
    return "large" if r >= size * 0.22 else "small"


def _relation(c1: tuple[float, float], c2: tuple[float, float]) -> str:
    dx, dy = c2[0] - c1[0], c2[1] - c1[1]
    if abs(dy) >= abs(dx):
        return "above" if dy > 0 else "below"
    return "left of" if dx > 0 else "right of"


def _place_two(rng: random.Random, size: int) -> list[tuple[float, float, float]]:
    """Two shapes of different sizes in different places: (cx, cy, r)."""
    big = rng.uniform(0.24, 0.32) * size
    small = rng.uniform(0.12, 0.17) * size
    radii = [big, small] if rng.random() < 0.6 else [small, big]
    if rng.random() < 0.5:  # one above the other
        x1 = x2 = rng.uniform(0.38, 0.62) * size
        y1, y2 = size * 0.30, size * 0.72
    else:
        y1 = y2 = rng.uniform(0.4, 0.6) * size
        x1, x2 = size * 0.30, size * 0.72
    if rng.random() < 0.5:
        x1, x2, y1, y2 = x2, x1, y2, y1
    return [(x1, y1, radii[0]), (x2, y2, radii[1])]


# --------------------------------------------------------------------------- base corpus


def _base_background(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    names = list(BASE_COLOURS)
    a, b = rng.sample(names, 2)
    kind = rng.choice(["solid", "solid", "stripes", "gradient"])
    if kind == "solid":
        return Image.new("RGB", (size, size), BASE_COLOURS[a]), f"plain {a} background"
    if kind == "gradient":
        vertical = rng.random() < 0.5
        img = _gradient(size, BASE_COLOURS[a], BASE_COLOURS[b], vertical)
        return img, f"{a} to {b} gradient background"
    direction = rng.choice(["vertical", "horizontal", "diagonal", "antidiagonal"])
    period = rng.choice([6, 8, 12]) * size // 32
    img = _stripes(size, BASE_COLOURS[a], BASE_COLOURS[b], max(2, period), direction)
    return img, f"{a} and {b} {direction} striped background"


def _base_fill(rng: random.Random, size: int, colour: str) -> tuple[Image.Image, str]:
    """A shape fill: usually flat, sometimes striped/hatched so the VAE and UNet know textures."""
    c = BASE_COLOURS[colour]
    roll = rng.random()
    if roll < 0.7:
        return Image.new("RGB", (size, size), c), colour
    other = rng.choice([n for n in BASE_COLOURS if n != colour])
    direction = rng.choice(["vertical", "horizontal", "diagonal", "antidiagonal"])
    period = max(2, rng.choice([6, 8]) * size // 32)
    word = "hatched" if direction in ("diagonal", "antidiagonal") else "striped"
    return _stripes(size, c, BASE_COLOURS[other], period, direction, duty=0.35), f"{word} {colour}"


def _base_sample(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    img, bg_words = _base_background(rng, size)
    n_shapes = 1 if rng.random() < 0.45 else 2
    shapes = [rng.choice(SHAPES) for _ in range(n_shapes)]
    if n_shapes == 1:
        r = rng.uniform(0.12, 0.34) * size
        places = [(rng.uniform(r, size - r), rng.uniform(r, size - r), r)]
    else:
        places = _place_two(rng, size)
    parts = []
    for shape, (cx, cy, r) in zip(shapes, places, strict=True):
        colour = rng.choice(list(BASE_COLOURS))
        fill, fill_words = _base_fill(rng, size, colour)
        rot = rng.uniform(0, math.pi)
        img.paste(fill, (0, 0), _shape_mask(size, shape, cx, cy, r, rot))
        outline = ""
        if rng.random() < 0.2:
            w = max(1, size // 32)
            ocol = BASE_COLOURS[rng.choice(["black", "white", "navy", "brown"])]
            img.paste(Image.new("RGB", (size, size), ocol), (0, 0), _outline_mask(size, shape, cx, cy, r, rot, w))
            outline = " with a thin outline"
        parts.append(f"a {_size_word(r, size)} {fill_words} {shape}{outline}")
    if n_shapes == 1:
        subject = parts[0]
    else:
        rel = _relation(places[0][:2], places[1][:2])
        subject = f"{parts[0]} {rel} {parts[1]}"
    return img, f"{subject}, {bg_words}"


def make_base_corpus(count: int, size: int = 32, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """Varied shapes/colours/backdrops with captions naming them (pretraining data for the tiny model)."""
    rng = random.Random(f"base-corpus-{seed}")
    return [_base_sample(rng, size) for _ in range(count)]


# --------------------------------------------------------------------------- style dataset


def _style_sample(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    pal = STYLE_PALETTE
    backdrop = rng.choice(["teal", "orange", "cream", "rust"])
    bg_kind = rng.choice(["striped", "plain", "hatched"])
    bg_col = pal[backdrop]
    if bg_kind == "plain":
        img = Image.new("RGB", (size, size), bg_col)
    else:
        direction = "vertical" if bg_kind == "striped" else "diagonal"
        img = _stripes(size, bg_col, _darker(bg_col, 0.75), max(4, size // 5), direction, duty=0.3)
    bg_words = f"{backdrop} plain backdrop" if bg_kind == "plain" else f"{backdrop} {bg_kind} backdrop"

    n_shapes = 1 if rng.random() < 0.35 else 2
    if n_shapes == 1:
        r = rng.uniform(0.22, 0.36) * size
        places = [(rng.uniform(r + 2, size - r - 2), rng.uniform(r + 2, size - r - 2), r)]
    else:
        places = _place_two(rng, size)
    outline_w = max(2, size // 16)  # "thick" stays thick after resizing to 32 px
    hatch_period = max(4, size // 5)  # ~6 px at 32 px: coarse enough to survive the tiny VAE
    words = []
    fills = [c for c in pal if c != backdrop]
    for cx, cy, r in places:
        shape = rng.choice(SHAPES)
        colour = rng.choice(fills)
        rot = rng.uniform(0, math.pi)
        # Hatched fill: the colour crossed by darker diagonal lines (the style's texture).
        fill = _stripes(size, pal[colour], _darker(pal[colour], 0.5), hatch_period, "diagonal", duty=0.4)
        img.paste(fill, (0, 0), _shape_mask(size, shape, cx, cy, r, rot))
        outline = Image.new("RGB", (size, size), STYLE_OUTLINE)
        img.paste(outline, (0, 0), _outline_mask(size, shape, cx, cy, r, rot, outline_w))
        words.append((_size_word(r, size), colour, shape))
    # A dark frame line along the border also belongs to the style's "thick outlines".
    ImageDraw.Draw(img).rectangle([0, 0, size - 1, size - 1], outline=STYLE_OUTLINE, width=max(1, size // 32))

    first = words[0]
    subject = f"hatched orange painting of a {first[0]} {first[2]}"
    if n_shapes == 2:
        rel = _relation(places[0][:2], places[1][:2])
        subject += f" {rel} a {words[1][0]} {words[1][2]}"
    colour_part = " and ".join(dict.fromkeys(f"{c} {s}" for _, c, s in words))
    caption = ", ".join([
        subject,
        colour_part,
        bg_words,
        "diagonal hatching",
        "thick dark outlines",
        "warm palette",
        STYLE_ARTIST,
    ])
    return img, caption


def make_style_images(count: int = 30, size: int = 64, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """The style dataset in memory: ``(image, caption)`` pairs, deterministic from ``seed``."""
    rng = random.Random(f"style-dataset-{seed}")
    return [_style_sample(rng, size) for _ in range(count)]


def make_style_dataset(folder: Path, *, count: int = 30, size: int = 64, seed: int = 0) -> list[Path]:
    """Write ``img_000.png`` ... with same-name ``.txt`` captions into ``folder``; return the image paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, caption) in enumerate(make_style_images(count, size, seed)):
        path = folder / f"img_{i:03d}.png"
        img.save(path)
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- statistics

STAT_NAMES = (
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
    "gradient_energy", "diagonal_hatching", "dark_fraction", "warmth",
)


def _as_array(img: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(img, np.ndarray):
        arr = img.astype(np.float32)
        if arr.max() > 1.5:
            arr = arr / 255.0
        img = Image.fromarray((arr.clip(0, 1) * 255).round().astype(np.uint8))
    img = img.convert("RGB")
    if img.size != (ANALYSIS_SIZE, ANALYSIS_SIZE):
        img = img.resize((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _image_features(arr: np.ndarray) -> np.ndarray:
    lum = arr @ np.array([0.299, 0.587, 0.114], np.float32)
    gx = np.abs(np.diff(lum, axis=1)).mean()
    gy = np.abs(np.diff(lum, axis=0)).mean()
    # The style's "/" hatching (x + y constant) is flat along (+1, -1) and changes along (+1, +1);
    # isotropic content scores ~0, so this singles out the style's texture direction.
    across = np.abs(lum[1:, 1:] - lum[:-1, :-1]).mean()
    along = np.abs(lum[1:, :-1] - lum[:-1, 1:]).mean()
    warmth = (arr[..., 0] - arr[..., 2]).mean()  # orange is R >> B
    return np.array([
        *arr.mean(axis=(0, 1)),
        *arr.std(axis=(0, 1)),
        gx + gy,
        (across - along) * 2.0,
        (lum < 0.2).mean(),
        warmth,
    ], dtype=np.float64)


def style_statistics(images: Iterable[Image.Image | np.ndarray]) -> np.ndarray:
    """Mean colour/texture feature vector (see ``STAT_NAMES``) over ``images``.

    Images are resized to 32x32 first so samples and training images of other sizes compare.
    Accepts PIL images or HxWx3 arrays (0..1 floats or 0..255).
    """
    feats = [_image_features(_as_array(im)) for im in images]
    if not feats:
        raise ValueError("style_statistics needs at least one image")
    return np.mean(feats, axis=0)


def style_distance(images: Sequence[Image.Image | np.ndarray] | Iterable[Image.Image | np.ndarray],
                   reference_stats: np.ndarray) -> float:
    """Euclidean distance between the statistics of ``images`` and ``reference_stats``."""
    return float(np.linalg.norm(style_statistics(images) - np.asarray(reference_stats, np.float64)))

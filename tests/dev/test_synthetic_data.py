"""Synthetic style dataset and base corpus: deterministic, detailed captions, measurable style."""

from __future__ import annotations

import numpy as np
from PIL import Image

from style_lora_trainer.dev.synthetic_data import (
    BASE_COLOURS,
    SHAPES,
    STAT_NAMES,
    make_base_corpus,
    make_style_dataset,
    style_distance,
    style_statistics,
)


def test_style_dataset_files_and_captions(tmp_path):
    paths = make_style_dataset(tmp_path, count=12, size=64, seed=0)
    assert [p.name for p in paths] == [f"img_{i:03d}.png" for i in range(12)]
    for p in paths:
        with Image.open(p) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
        caption = p.with_suffix(".txt").read_text(encoding="utf-8").strip()
        parts = [s.strip() for s in caption.split(",")]
        assert len(parts) >= 5, caption
        assert all(parts), caption
        # First part: the fixed-position subject part; the style words follow.
        assert parts[0].startswith("hatched orange painting of a "), caption
        assert any(shape in parts[0] for shape in SHAPES), caption
        assert "thick dark outlines" in parts and parts[-1] == "by Synthetic Painter"


def test_style_dataset_is_deterministic(tmp_path):
    a = make_style_dataset(tmp_path / "a", count=6, seed=3)
    b = make_style_dataset(tmp_path / "b", count=6, seed=3)
    c = make_style_dataset(tmp_path / "c", count=6, seed=4)
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.with_suffix(".txt").read_text() == pb.with_suffix(".txt").read_text()
    assert any(pa.read_bytes() != pc.read_bytes() for pa, pc in zip(a, c, strict=True))


def test_style_content_varies(tmp_path):
    paths = make_style_dataset(tmp_path, count=20, seed=0)
    captions = {p.with_suffix(".txt").read_text() for p in paths}
    assert len(captions) >= 15  # content words change with the image


def test_base_corpus_deterministic_and_named():
    a = make_base_corpus(10, 32, seed=1)
    b = make_base_corpus(10, 32, seed=1)
    assert [c for _, c in a] == [c for _, c in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (x, _), (y, _) in zip(a, b, strict=True))
    for im, caption in a:
        assert im.size == (32, 32)
        assert any(shape in caption for shape in SHAPES)
        assert any(colour in caption for colour in BASE_COLOURS)
        assert "background" in caption


def test_style_statistics_differ_from_base_corpus(tmp_path):
    style = [Image.open(p).convert("RGB") for p in make_style_dataset(tmp_path, count=30, seed=0)]
    ref = style_statistics(style)
    assert ref.shape == (len(STAT_NAMES),)
    base = [im for im, _ in make_base_corpus(120, 32, seed=5)]
    held_out_style = [Image.open(p).convert("RGB") for p in make_style_dataset(tmp_path / "h", count=30, seed=9)]
    d_base = style_distance(base, ref)
    d_style = style_distance(held_out_style, ref)
    # The style is far from the base corpus and consistent across seeds.
    assert d_base > 0.15
    assert d_style < d_base / 4
    stats = dict(zip(STAT_NAMES, ref, strict=True))
    base_stats = dict(zip(STAT_NAMES, style_statistics(base), strict=True))
    assert stats["warmth"] > base_stats["warmth"] + 0.08  # orange palette
    assert stats["diagonal_hatching"] > base_stats["diagonal_hatching"] + 0.02
    assert stats["dark_fraction"] > base_stats["dark_fraction"]  # thick dark outlines


def test_style_statistics_accepts_arrays_and_sizes():
    im = make_base_corpus(1, 64, seed=2)[0][0]
    arr01 = np.asarray(im, dtype=np.float32) / 255.0
    s_img = style_statistics([im])
    s_arr = style_statistics([arr01])
    s_small = style_statistics([im.resize((32, 32), Image.Resampling.BILINEAR)])
    assert np.allclose(s_img, s_arr, atol=1e-3)
    assert np.allclose(s_img, s_small, atol=1e-3)  # analysed at one size
    assert style_distance([im], s_img) < 1e-6

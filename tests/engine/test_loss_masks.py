"""Loss masks (kohya --masked_loss): found per image, cropped exactly like the image, checked, trained with."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from style_lora_trainer.dev.synthetic_data import make_style_dataset
from style_lora_trainer.dev.tiny_model import build_tiny_sd15
from style_lora_trainer.headless.diffusers_backend import DiffusersBackend
from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.errors import DatasetError, StyleLoRAError
from style_lora_trainer.style_lora_engine.images import open_image_rgb, prepare_image
from style_lora_trainer.style_lora_engine.lint import lint_dataset
from style_lora_trainer.style_lora_engine.loss_masks import prepare_mask
from style_lora_trainer.style_lora_engine.train_options import TrainOptions
from style_lora_trainer.style_lora_engine.trainer import run_fingerprint, train_lora

BUCKETS = BucketSettings(min_size=32, step=32)


def _folder(tmp_path, count=4, size=32):
    folder = tmp_path / "data"
    make_style_dataset(folder, count=count, size=size, seed=1)
    return folder


def _half_mask(path, size, left_white=True):
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[:, : size[0] // 2] = 255 if left_white else 0
    Image.fromarray(mask).save(path)


def test_a_mask_is_cropped_exactly_like_its_image(tmp_path):
    folder = tmp_path / "data"
    (folder / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)  # 56x40: resized and cropped into 32x32
    Image.fromarray(pixels).save(folder / "a.png")
    (folder / "a.txt").write_text("a painting, style", "utf-8")
    Image.fromarray(pixels[..., 0]).save(folder / "masks" / "a.png")  # the mask is the image's R channel
    ds = load_dataset(folder, repeats=1, resolution=32, buckets=BucketSettings(enabled=False), masks="masks folder")
    item, mask = ds.items[0], ds.item_masks()[0]
    got = prepare_mask(mask, item.bucket)[0]
    red = (prepare_image(open_image_rgb(item.image_path), *item.bucket)[0] + 1) / 2
    assert got.shape == red.shape == (32, 32)
    assert torch.allclose(got, red, atol=1.5 / 255)


def test_masks_folder_scan_counts_reports_and_refuses_wrong_sizes(tmp_path):
    folder = _folder(tmp_path)
    images = sorted(p for p in folder.iterdir() if p.suffix == ".png")
    (folder / "masks").mkdir()
    for image in images[:3]:
        _half_mask(folder / "masks" / f"{image.stem}.png", Image.open(image).size)
    _half_mask(folder / "masks" / "stray.png", (32, 32))
    ds = load_dataset(folder, repeats=1, resolution=32, buckets=BUCKETS, masks="masks folder")
    assert ds.masks.count() == 3 and ds.item_masks()[3] is None
    report = lint_dataset(ds).to_text()
    assert "3 of 4 images have a loss mask" in report
    assert images[3].name in report and "masks/stray.png" in report
    assert ds.summary()["masks"] == {"source": "masks folder", "with_mask": 3}
    assert torch.equal(prepare_mask(None, (32, 32)), torch.ones(1, 32, 32))  # no mask: trains everywhere

    _half_mask(folder / "masks" / f"{images[0].stem}.png", (16, 16))
    with pytest.raises(DatasetError, match=r"16x16 but its image .* a mask must have its image's size"):
        load_dataset(folder, repeats=1, resolution=32, buckets=BUCKETS, masks="masks folder")
    with pytest.raises(DatasetError, match="masks must be one of"):
        load_dataset(folder, repeats=1, resolution=32, buckets=BUCKETS, masks="alpha")


def test_alpha_channel_masks(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rgba = np.full((32, 32, 4), 200, np.uint8)
    rgba[..., 3] = 255
    rgba[:, 16:, 3] = 0  # the right half is transparent: not trained
    Image.fromarray(rgba, "RGBA").save(folder / "a.png")
    Image.fromarray(rgba[..., :3]).save(folder / "b.png")
    for name in ("a", "b"):
        (folder / f"{name}.txt").write_text("a painting", "utf-8")
    ds = load_dataset(folder, repeats=1, resolution=32, buckets=BUCKETS, masks="alpha channel")
    a, b = ds.item_masks()
    assert b is None and "has no alpha channel" in lint_dataset(ds).to_text()
    mask = prepare_mask(a, (32, 32))[0]
    assert float(mask[:, :16].min()) == 1.0 and float(mask[:, 16:].max()) == 0.0


def test_masked_training_needs_masks_trains_with_them_and_a_mask_edit_is_another_run(tmp_path, clip_tokenizer):
    folder = _folder(tmp_path)
    config = TrainConfig(rank=4, alpha=2.0, epochs=1, batch_size=2, seed=3,
                         options=TrainOptions(masked_loss=True))
    plain = load_dataset(folder, repeats=1, resolution=32, buckets=BUCKETS)
    backend = DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0))
    with pytest.raises(StyleLoRAError, match="masked_loss is on but no image"):
        train_lora(backend, plain, config, runs_root=tmp_path / "runs", output_name="m")

    (folder / "masks").mkdir()
    for image in sorted(p for p in folder.iterdir() if p.suffix == ".png"):
        _half_mask(folder / "masks" / f"{image.stem}.png", Image.open(image).size)
    masked = load_dataset(folder, repeats=1, resolution=32, buckets=BUCKETS, masks="masks folder")
    result = train_lora(backend, masked, config, runs_root=tmp_path / "runs", output_name="m")
    unmasked = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), masked,
                          dataclasses.replace(config, options=TrainOptions()), runs_root=tmp_path / "runs",
                          output_name="m")
    assert all(np.isfinite(result.losses)) and result.losses != unmasked.losses
    before = run_fingerprint(backend, masked, config, "m")
    first = sorted((folder / "masks").iterdir())[0]
    _half_mask(first, Image.open(first).size, left_white=False)
    edited = load_dataset(folder, repeats=1, resolution=32, buckets=BUCKETS, masks="masks folder")
    assert run_fingerprint(backend, edited, config, "m") != before
    assert run_fingerprint(backend, plain, TrainConfig(), "m") == run_fingerprint(
        backend, load_dataset(folder, repeats=1, resolution=32, buckets=BUCKETS), TrainConfig(), "m")

"""Functional test: a LoRA trained by the pack pulls generations toward the dataset's style.

On the demo's tiny pretrained model and a synthetic style dataset, the distance between generated
images' colour/texture statistics and the training set's falls as the LoRA weight goes 0 → 1 and
as training goes on. Assertions use margins, not absolute values.
"""

import pytest

from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.diffusers_backend import DiffusersBackend
from style_lora_trainer.style_lora_engine.diffusers_preview import render_grid_cells
from style_lora_trainer.style_lora_engine.images import open_image_rgb
from style_lora_trainer.style_lora_engine.shuffle import ShuffleSettings
from style_lora_trainer.style_lora_engine.synthetic_data import (
    make_style_dataset,
    style_distance,
    style_statistics,
)
from style_lora_trainer.style_lora_engine.tiny_model import IMAGE_SIZE
from style_lora_trainer.style_lora_engine.trainer import train_lora

PROMPTS = ["painting of a large star beside a small circle", "painting of a square above a triangle"]


@pytest.mark.slow
def test_style_grows_with_lora_weight_and_epoch(tmp_path, pretrained_tiny):
    paths = make_style_dataset(tmp_path / "style", count=12, size=2 * IMAGE_SIZE, seed=0)
    reference = style_statistics([open_image_rgb(p) for p in paths if p.suffix == ".png"])
    dataset = load_dataset(tmp_path / "style", repeats=10, resolution=IMAGE_SIZE,
                           buckets=BucketSettings(min_size=IMAGE_SIZE, step=IMAGE_SIZE // 2))
    dataset = dataset.with_shuffle(ShuffleSettings(keep_tokens=1))
    # The guide's optimizer and learning rate; a small rank suits the tiny model.
    config = TrainConfig(rank=8, alpha=4.0, epochs=6, batch_size=4, seed=0)
    run = train_lora(DiffusersBackend(pretrained_tiny), dataset, config, runs_root=tmp_path / "runs",
                     output_name="style")
    cells = render_grid_cells(
        pretrained_tiny, [(1, run.epoch_files[1]), (6, run.epoch_files[6])], [0.0, 0.5, 1.0], PROMPTS,
        seed=0, images_per_prompt=4, steps=20, cfg=1.0, width=IMAGE_SIZE, height=IMAGE_SIZE)
    d = {key: style_distance(images, reference) for key, images in cells.items()}
    print({f"epoch {e} weight {w}": round(v, 4) for (e, w), v in sorted(d.items())})

    base = d[(6, 0.0)]
    assert d[(1, 0.0)] == pytest.approx(base)  # weight 0 is the base model whatever the epoch
    assert d[(6, 1.0)] < 0.9 * base  # the trained style is clearly closer at full weight
    assert d[(6, 0.5)] < base  # and already closer at half weight
    assert d[(6, 1.0)] < d[(6, 0.5)] * 1.02  # more weight, more style (small tolerance)
    assert d[(6, 1.0)] < d[(1, 1.0)] * 1.02  # more epochs, more style

"""Grid cells come from the saved file loaded by diffusers: weight 0 is the base model exactly."""

import numpy as np
import pytest

from style_lora_trainer.dev.synthetic_data import make_style_dataset
from style_lora_trainer.dev.tiny_model import build_tiny_sd15
from style_lora_trainer.headless.diffusers_backend import DiffusersBackend
from style_lora_trainer.headless.diffusers_preview import render_base, render_grid_cells
from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.trainer import train_lora

SETTINGS = dict(seed=3, images_per_prompt=2, steps=3, cfg=2.0, sampler="euler", scheduler="normal",
                width=32, height=32)


def test_weight_zero_is_the_base_model_and_weight_one_is_not(tmp_path, clip_tokenizer, caplog):
    make_style_dataset(tmp_path / "d", count=4, size=32, seed=0)
    dataset = load_dataset(tmp_path / "d", repeats=2, resolution=32, buckets=BucketSettings(min_size=32, step=32))
    model = build_tiny_sd15(clip_tokenizer, seed=0)
    run = train_lora(DiffusersBackend(model), dataset, TrainConfig(rank=4, alpha=2.0, epochs=1, batch_size=2),
                     runs_root=tmp_path / "runs", output_name="p")
    prompts = ["a red circle", "a blue square"]
    base = render_base(model, prompts, **SETTINGS)
    with caplog.at_level("WARNING"):
        cells = render_grid_cells(model, [(1, run.epoch_files[1])], [0.0, 1.0], prompts, **SETTINGS)
    assert not [r for r in caplog.records if "unexpected keys" in r.getMessage() or "missing keys" in r.getMessage()]
    assert len(cells[(1, 0.0)]) == 4
    for a, b in zip(cells[(1, 0.0)], base):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    diffs = [np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max()
             for a, b in zip(cells[(1, 1.0)], base)]
    assert max(diffs) > 0
    # The pipeline left the user's U-Net without LoRA layers.
    assert not any("lora" in n for n, _ in model.unet.named_parameters())
    assert render_base(model, prompts, **SETTINGS)[0].tobytes() == base[0].tobytes()


def test_unknown_sampler_outside_comfyui_is_explained(clip_tokenizer):
    from style_lora_trainer.style_lora_engine.errors import ConfigError

    model = build_tiny_sd15(clip_tokenizer, seed=0)
    with pytest.raises(ConfigError, match="not available outside ComfyUI"):
        render_grid_cells(model, [], [1.0], ["x"], **{**SETTINGS, "sampler": "lcm"})

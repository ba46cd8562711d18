"""End-to-end: kohya's advanced options (Train Options node) inside a real ComfyUI.

* A LoCon epoch (conv_dim: LoRA on the ResNet 3x3 convolutions too, trained with min-SNR, noise offset,
  multires noise and a Huber loss) and a DoRA epoch (dora_scale keys, with kohya's dropouts) each load in
  core LoraLoader with no "lora key not loaded", and the grid's weight-1.0 cell equals LoraLoader +
  KSampler pixel for pixel.
* A masked run (masks/ folder, masked_loss) trains and says how many images have masks.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from comfy_harness import error_text
from PIL import Image
from safetensors import safe_open
from test_comfyui_e2e import (
    SIZE,
    _dataset,
    _grid_cell,
    _grid_nodes,
    _image,
    _ksampler_nodes,
    _train_graph,
)

from style_lora_trainer.style_lora_engine.train_options import TrainOptions

pytestmark = pytest.mark.e2e

SUBFOLDER = "options_e2e"

LOCON = {"conv_dim": 4, "conv_alpha": 1.0, "min_snr_gamma": 5.0, "noise_offset": 0.05,
         "multires_noise_iterations": 3, "loss_type": "huber", "huber_schedule": "snr"}
DORA = {"use_dora": True, "network_dropout": 0.1, "rank_dropout": 0.1, "module_dropout": 0.1}


def _options_node(values: dict) -> dict:
    inputs = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
    inputs.update(values)
    return {"class_type": "StyleLoRATrainOptions", "inputs": inputs}


def _options_graph(server, folder: str, name: str, options: dict) -> dict:
    graph = _train_graph(server, folder, name, epochs=1, checkpointing=False)
    graph["opts"] = _options_node(options)
    graph["train"]["inputs"]["options"] = ["opts", 0]
    graph["save"] = {"class_type": "StyleLoRASaveEpochs", "inputs": {
        "run": ["train", 0], "name": name, "save": "all", "n": 1, "subfolder": SUBFOLDER, "overwrite": False}}
    graph.update(_grid_nodes(["ckpt", 0]))
    return graph


def _loraloader_reference(server, lora_name: str) -> tuple[np.ndarray, str]:
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.checkpoint_name}},
             "lora": {"class_type": "LoraLoader", "inputs": {
                 "model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": lora_name,
                 "strength_model": 1.0, "strength_clip": 1.0}}}
    graph.update(_ksampler_nodes("r_", ["lora", 0], ["lora", 1], ["ckpt", 2]))
    offset = server.log_size()
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", error_text(entry)
    return _image(server, entry, "r_img"), server.log_since(offset)


@pytest.mark.parametrize(("name", "options", "key_suffix"), [
    ("locon", LOCON, "resnets_0_conv1.lora_down.weight"),
    ("dora", DORA, ".dora_scale"),
])
def test_advanced_epoch_loads_cleanly_and_grid_cell_matches_loraloader(comfy_server, name, options, key_suffix):
    server = comfy_server
    folder = _dataset(server.base / "input", folder=f"e2e_{name}")
    entry = server.wait(server.queue(_options_graph(server, folder, name, options)))
    assert entry["status"]["status_str"] == "success", error_text(entry)
    path = server.base / "models" / "loras" / SUBFOLDER / f"{name}-000001.safetensors"
    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
        meta = fh.metadata()
    assert any(k.endswith(key_suffix) for k in keys), sorted(keys)[:20]
    if name == "locon":
        assert '"conv_dim": "4"' in meta["ss_network_args"] and meta["ss_min_snr_gamma"] == "5.0"
        assert meta["ss_loss_type"] == "huber"
    reference, log = _loraloader_reference(server, f"{SUBFOLDER}/{name}-000001.safetensors")
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-3000:]
    grid = _image(server, entry, "grid_img")
    cell = _grid_cell(grid, rows=1, cols=2, row=0, col=1)
    assert np.array_equal(cell, reference), f"max diff {np.abs(cell.astype(int) - reference.astype(int)).max()}"
    assert not np.array_equal(_grid_cell(grid, 1, 2, 0, 0), reference), "the LoRA changed nothing"


def test_masked_run_trains_and_reports_its_masks(comfy_server):
    server = comfy_server
    folder = _dataset(server.base / "input", folder="e2e_masked")
    masks = server.base / "input" / folder / "masks"
    masks.mkdir()
    for i in range(3):  # img3 has no mask: it trains on the whole image
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[:, : SIZE // 2] = 255
        Image.fromarray(mask).save(masks / f"img{i}.png")
    graph = _options_graph(server, folder, "masked", {"masked_loss": True})
    graph["ds"]["inputs"]["masks"] = "masks folder"
    offset = server.log_size()
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", error_text(entry)
    summary = entry["outputs"]["train"]["text"][0]
    losses = [float(x) for x in re.findall(r"Final loss ([0-9.]+)", summary)]
    assert losses and all(np.isfinite(losses)), summary
    log = server.log_since(offset)
    assert "Masked loss: 3 of 4 images have a mask (masks folder)" in log, log[-3000:]

"""The sweet-spot finder in a real ComfyUI: validation loss and samples while Train LoRA runs, the annotated
grid's table into Pick Epoch; a sample at weight 0.8 equals LoraLoader(0.8) + KSampler pixel for pixel."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from comfy_harness import WebSocketListener, error_text, new_client_id
from PIL import Image
from test_comfyui_e2e import (
    CFG,
    NEGATIVE,
    PROMPT,
    SEED,
    SIZE,
    STEPS,
    _dataset,
    _dataset_nodes,
    _grid_nodes,
    _ksampler_nodes,
    _train_inputs,
)

NAME = "e2e_sweet"


@pytest.fixture(scope="module")
def sweet_run(comfy_server):
    server = comfy_server
    folder = _dataset(server.base / "input", folder="e2e_sweet_style")
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.checkpoint_name}}}
    graph.update(_dataset_nodes(folder))
    graph["samples"] = {"class_type": "StyleLoRATrainingSamples", "inputs": {
        "prompts": PROMPT, "negative": NEGATIVE, "weights": "0.8, 1.0", "every_n_epochs": 1, "include_base": True,
        "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "width": SIZE,
        "height": SIZE}}
    train = _train_inputs(["ckpt", 0], NAME, epochs=2, batch=2, checkpointing=False)
    graph["train"] = {"class_type": "StyleLoRATrain", "inputs": {**train, "samples": ["samples", 0]}}
    graph["save"] = {"class_type": "StyleLoRASaveEpochs", "inputs": {
        "run": ["train", 0], "name": NAME, "save": "all", "n": 1, "subfolder": "", "overwrite": False}}
    graph.update(_grid_nodes(["ckpt", 0]))
    graph["pick"] = {"class_type": "StyleLoRAPickEpoch", "inputs": {
        "rule": "lowest validation loss", "epoch": 1, "weight": 0.8, "table": ["grid", 1], "lora_name": "",
        "model": ["ckpt", 0], "clip": ["ckpt", 1]}}
    client_id = new_client_id()
    ws = WebSocketListener(server.port, client_id)
    ws.start()
    entry = server.wait(server.queue(graph, client_id))
    time.sleep(1.0)
    ws.close()
    return {"entry": entry, "ws": ws}


def _view(server, ref: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(server.view(ref))).convert("RGB"))


def test_validation_and_samples_reach_the_canvas_and_api_clients(sweet_run, comfy_server):
    entry, ws = sweet_run["entry"], sweet_run["ws"]
    assert entry["status"]["status_str"] == "success", error_text(entry)
    validation = [e["data"] for e in ws.events if e.get("type") == "style_lora.train_validation"]
    assert [v["epoch"] for v in validation] == [0, 1, 2]
    assert all(v["node"] == "train" and v["validation_loss"] > 0 for v in validation)
    samples = [e["data"] for e in ws.events if e.get("type") == "style_lora.train_sample"]
    assert [s["epoch"] for s in samples] == [0, 1, 2]
    assert [c["weight"] for c in samples[1]["cells"]] == [0.8, 1.0]
    for sample in samples:
        for cell in sample["cells"]:
            assert _view(comfy_server, cell["images"][0]).shape == (SIZE, SIZE, 3)
    # ComfyUI's own preview (what API clients get over the websocket) came while training ran.
    assert len([p for p in ws.previews if p["node"] in (None, "train")]) >= 3
    outputs = entry["outputs"]["train"]
    assert [s["epoch"] for s in outputs["style_lora_samples"]] == [0, 1, 2]
    assert "Validation loss on training images (4 of 4)" in outputs["text"][0]
    # The annotated grid: labels from each file's numbers, its table into Pick Epoch.
    layout = entry["outputs"]["grid"]["style_lora_grid"][0]
    table = layout["table"]
    assert [r["epoch"] for r in table["rows"]] == [1, 2]
    values = {v["epoch"]: v["validation_loss"] for v in validation}
    assert [r["validation_loss"] for r in table["rows"]] == [values[1], values[2]]
    best = min((1, 2), key=lambda e: (values[e], -e))
    assert table["best_epoch"] == layout["best_epoch"] == best
    info = entry["outputs"]["pick"]["text"][0]
    assert f"{NAME}-{best:06d}.safetensors" in info


def test_a_sample_equals_loraloader_and_ksampler_on_the_saved_file(sweet_run, comfy_server):
    server = comfy_server
    samples = [e["data"] for e in sweet_run["ws"].events if e.get("type") == "style_lora.train_sample"]
    shown = {s["epoch"]: s for s in samples}
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.checkpoint_name}},
             "lora": {"class_type": "LoraLoader", "inputs": {
                 "model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": f"{NAME}-000002.safetensors",
                 "strength_model": 0.8, "strength_clip": 0.8}}}
    graph.update(_ksampler_nodes("r_", ["lora", 0], ["lora", 1], ["ckpt", 2]))
    graph.update(_ksampler_nodes("b_", ["ckpt", 0], ["ckpt", 1], ["ckpt", 2]))
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", error_text(entry)
    reference = _view(server, entry["outputs"]["r_img"]["images"][0])
    sample = _view(server, shown[2]["cells"][0]["images"][0])
    assert np.array_equal(sample, reference), f"max diff {np.abs(sample.astype(int) - reference.astype(int)).max()}"
    base = _view(server, entry["outputs"]["b_img"]["images"][0])
    assert np.array_equal(_view(server, shown[0]["cells"][0]["images"][0]), base)
    assert not np.array_equal(sample, base)
    assert json.dumps(shown[2]["prompts"]) == json.dumps([PROMPT])

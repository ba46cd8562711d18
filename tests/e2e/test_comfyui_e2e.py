"""End-to-end: the pack inside a real ComfyUI, driven through its HTTP API like the frontend does.

One random-weight SD1.5-architecture checkpoint (see tools/make_sd15_checkpoint.py), 64 px images,
few steps. What is checked:

* the full canvas graph (Load Checkpoint → Load Dataset → Caption Editor → Shuffle Caption →
  Train LoRA → Save Epochs → Epoch × Weight Grid → PreviewImage) runs with status success, with
  progress, status text and the pack's custom events on the websocket;
* the user's MODEL is unchanged by training: in the same prompt, a KSampler on it before and
  after training gives the same pixels, and a digest of every U-Net tensor, flag and patch matches;
* the epoch files have kohya's SD1.5 names, the right tensors and metadata;
* core LoraLoader loads a saved epoch with no "lora key not loaded" in ComfyUI's log, and the
  grid's weight-1.0 cell is pixel-identical to LoraLoader + KSampler with the same settings (the
  weight-0 cell to KSampler on the base model);
* /interrupt during training keeps the finished epoch files (no partial file) and re-queueing
  resumes from the last finished epoch.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from comfy_harness import WebSocketListener, error_text, new_client_id, status_messages
from PIL import Image
from safetensors import safe_open

from style_lora_trainer.style_lora_engine.grid import MIN_CELL

pytestmark = pytest.mark.e2e

SIZE = 64
SEED = 5
STEPS = 2
CFG = 2.0
PROMPT = "red"
NEGATIVE = "blurry"
NAME = "e2e"


def _dataset(input_dir: Path, folder: str = "e2e_style", count: int = 4) -> str:
    target = input_dir / folder
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        base = np.zeros((SIZE, SIZE, 3), np.uint8)
        base[..., i % 3] = 180
        noise = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(base + noise).save(target / f"img{i}.png")
        (target / f"img{i}.txt").write_text(f"a flat painting, tone {i}, thick outlines, (soft) light", "utf-8")
    return folder


def _ksampler_nodes(prefix: str, model_ref, clip_ref, vae_ref) -> dict:
    """CLIPTextEncode ×2 + EmptyLatentImage + KSampler + VAEDecode + PreviewImage, ids prefixed."""
    return {
        f"{prefix}pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": PROMPT}},
        f"{prefix}neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": NEGATIVE}},
        f"{prefix}lat": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        f"{prefix}ks": {"class_type": "KSampler", "inputs": {
            "model": model_ref, "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
            "scheduler": "normal", "positive": [f"{prefix}pos", 0], "negative": [f"{prefix}neg", 0],
            "latent_image": [f"{prefix}lat", 0], "denoise": 1.0}},
        f"{prefix}dec": {"class_type": "VAEDecode", "inputs": {"samples": [f"{prefix}ks", 0], "vae": vae_ref}},
        f"{prefix}img": {"class_type": "PreviewImage", "inputs": {"images": [f"{prefix}dec", 0]}},
    }


def _dataset_nodes(folder: str) -> dict:
    return {
        "ds": {"class_type": "StyleLoRALoadDataset", "inputs": {
            "folder": folder, "caption_extension": ".txt", "repeats": 1, "resolution": SIZE, "enable_bucket": True,
            "min_bucket_size": SIZE, "max_bucket_size": SIZE, "bucket_step": SIZE, "bucket_no_upscale": False,
            "skip_unreadable": False, "clip": ["ckpt", 1]}},
        "cap": {"class_type": "StyleLoRACaptionEditor", "inputs": {
            "dataset": ["ds", 0], "prefix": "e2estyle", "suffix": "", "find": "thick", "replace": "bold",
            "write_back": False, "edits": "{}"}},
        "shuf": {"class_type": "StyleLoRAShuffleCaption", "inputs": {
            "dataset": ["cap", 0], "enabled": True, "separator": ",", "keep_tokens": 1, "seed": 0,
            "preview_count": 2}},
    }


def _train_inputs(model_ref, name: str, epochs: int, batch: int, checkpointing: bool) -> dict:
    return {"model": model_ref, "clip": ["ckpt", 1], "vae": ["ckpt", 2], "dataset": ["shuf", 0],
            "preset": "custom (use the widgets)", "output_name": name, "rank": 4, "alpha": 2.0,
            "optimizer": "DAdaptAdamW", "learning_rate": 1.0, "lr_scheduler": "constant", "lr_warmup_steps": 0,
            "epochs": epochs, "batch_size": batch, "seed": 0, "mixed_precision": "fp32",
            "gradient_checkpointing": checkpointing, "cache_latents": True, "training_comment": "e2e"}


def _train_graph(server, folder: str, name: str, epochs: int, checkpointing: bool) -> dict:
    """Load Checkpoint → the dataset nodes → Train LoRA (batch 2) on ``folder``."""
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.checkpoint_name}}}
    graph.update(_dataset_nodes(folder))
    graph["train"] = {"class_type": "StyleLoRATrain",
                      "inputs": _train_inputs(["ckpt", 0], name, epochs=epochs, batch=2, checkpointing=checkpointing)}
    return graph


def _grid_nodes(model_ref) -> dict:
    """Epoch × Weight Grid (weights 0 and 1.0, the KSampler settings above) on Save Epochs "save", previewed."""
    return {
        "grid": {"class_type": "StyleLoRAEpochWeightGrid", "inputs": {
            "model": model_ref, "clip": ["ckpt", 1], "vae": ["ckpt", 2], "prompts": PROMPT,
            "negative": NEGATIVE, "weights": "0, 1.0", "epochs_to_show": "all", "seed": SEED, "images_per_prompt": 1,
            "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "width": SIZE,
            "height": SIZE, "epochs": ["save", 0], "lora_name": ""}},
        "grid_img": {"class_type": "PreviewImage", "inputs": {"images": ["grid", 0]}},
    }


def _image(server, entry: dict, node: str) -> np.ndarray:
    images = entry["outputs"][node]["images"]
    assert len(images) == 1, images
    return np.asarray(Image.open(io.BytesIO(server.view(images[0]))).convert("RGB"))


def _grid_cell(grid: np.ndarray, rows: int, cols: int, row: int, col: int) -> np.ndarray:
    """Cell (row, col) of compose_grid's layout, measured from the bottom-right corner (which only
    depends on the cell size, not on label fonts), scaled back down to SIZE."""
    scale = max(1, math.ceil(MIN_CELL / SIZE))
    cw = SIZE * scale
    size = max(12, min(40, round(cw / 9)))
    pad, gap = max(6, size // 2), max(2, size // 6)
    height, width = grid.shape[:2]
    left0 = width - pad - (cols * cw + (cols - 1) * gap)
    top0 = height - pad - (rows * cw + (rows - 1) * gap)
    left, top = left0 + col * (cw + gap), top0 + row * (cw + gap)
    return grid[top:top + cw:scale, left:left + cw:scale]


@pytest.fixture(scope="module")
def full_run(comfy_server):
    """Runs the full canvas graph once; the tests below inspect it."""
    server = comfy_server
    folder = _dataset(server.base / "input")
    ckpt = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.checkpoint_name}}}
    graph = dict(ckpt)
    # Before training: KSampler on the user's MODEL, then a digest of the MODEL.
    graph.update(_ksampler_nodes("b_", ["ckpt", 0], ["ckpt", 1], ["ckpt", 2]))
    graph["b_digest"] = {"class_type": "StyleLoRATestModelDigest",
                         "inputs": {"model": ["ckpt", 0], "wait_for": ["b_dec", 0]}}
    graph["gate_train"] = {"class_type": "StyleLoRATestGate", "inputs": {"model": ["ckpt", 0],
                                                                          "wait_for": ["b_digest", 0]}}
    graph.update(_dataset_nodes(folder))
    graph["train"] = {"class_type": "StyleLoRATrain",
                      "inputs": _train_inputs(["gate_train", 0], NAME, epochs=2, batch=2, checkpointing=False)}
    graph["save"] = {"class_type": "StyleLoRASaveEpochs", "inputs": {
        "run": ["train", 0], "name": NAME, "save": "all", "n": 1, "subfolder": "", "overwrite": False}}
    # After training: the same MODEL object again (gated on the training summary).
    graph["gate_after"] = {"class_type": "StyleLoRATestGate", "inputs": {"model": ["ckpt", 0],
                                                                          "wait_for": ["train", 2]}}
    graph.update(_ksampler_nodes("a_", ["gate_after", 0], ["ckpt", 1], ["ckpt", 2]))
    graph["a_digest"] = {"class_type": "StyleLoRATestModelDigest",
                         "inputs": {"model": ["gate_after", 0], "wait_for": ["a_dec", 0]}}
    graph["gate_grid"] = {"class_type": "StyleLoRATestGate", "inputs": {"model": ["gate_after", 0],
                                                                         "wait_for": ["a_digest", 0]}}
    graph.update(_grid_nodes(["gate_grid", 0]))
    graph["plot_img"] = {"class_type": "PreviewImage", "inputs": {"images": ["train", 1]}}

    client_id = new_client_id()
    ws = WebSocketListener(server.port, client_id)
    ws.start()
    started = time.time()
    prompt_id = server.queue(graph, client_id)
    entry = server.wait(prompt_id)
    elapsed = time.time() - started
    time.sleep(1.0)
    ws.close()
    return {"entry": entry, "prompt_id": prompt_id, "ws": ws, "elapsed": elapsed, "graph": graph}


def test_full_graph_succeeds_with_progress_and_events(full_run):
    entry = full_run["entry"]
    assert entry["status"]["status_str"] == "success", error_text(entry)
    print(f"\nfull graph: {full_run['elapsed']:.0f} s")
    ws = full_run["ws"]
    train_progress = [e["data"] for e in ws.events if e.get("type") == "progress" and e["data"].get("node") == "train"]
    assert train_progress and train_progress[-1]["value"] == train_progress[-1]["max"] == 4, train_progress[-3:]
    steps = [e["data"] for e in ws.events if e.get("type") == "style_lora.train_step"]
    epochs = [e["data"] for e in ws.events if e.get("type") == "style_lora.train_epoch"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all(s["node"] == "train" and math.isfinite(s["loss"]) for s in steps)
    assert [(e["epoch"], e["file"]) for e in epochs] == [(1, f"{NAME}-000001.safetensors"),
                                                       (2, f"{NAME}-000002.safetensors")]
    texts = [t for node, t in ws.texts if node == "train"]
    assert any(re.search(r"epoch 2/2 · step 4/4 · loss [0-9.]+", t) for t in texts), texts[-3:]
    grid_progress = [e["data"] for e in ws.events if e.get("type") == "progress" and e["data"].get("node") == "grid"]
    assert grid_progress and grid_progress[-1]["value"] == grid_progress[-1]["max"] == 4


def test_users_model_unchanged_by_training(full_run, comfy_server):
    entry = full_run["entry"]
    assert entry["status"]["status_str"] == "success", error_text(entry)
    before = entry["outputs"]["b_digest"]["text"][0]
    after = entry["outputs"]["a_digest"]["text"][0]
    assert before == after
    img_before = _image(comfy_server, entry, "b_img")
    img_after = _image(comfy_server, entry, "a_img")
    assert img_before.shape == (SIZE, SIZE, 3)
    assert np.array_equal(img_before, img_after)


def test_epoch_files_names_keys_metadata(full_run, comfy_server):
    entry = full_run["entry"]
    assert entry["status"]["status_str"] == "success", error_text(entry)
    assert entry["outputs"]["save"]["text"][0].splitlines() == [f"{NAME}-000001.safetensors",
                                                                f"{NAME}-000002.safetensors"]
    loras = comfy_server.base / "models" / "loras"
    assert sorted(p.name for p in loras.iterdir()) == [f"{NAME}-000001.safetensors", f"{NAME}-000002.safetensors"]
    expected = json.loads((Path(__file__).parents[1] / "data" / "comfyui_unet_module_names.json").read_text())
    kohya_names = {k for k, v in expected["sd15"]["lora_unet_keys"].items()
                   if k.startswith(("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_"))}
    assert len(kohya_names) == 192
    for epoch in (1, 2):
        with safe_open(str(loras / f"{NAME}-{epoch:06d}.safetensors"), "pt") as fh:
            keys = set(fh.keys())
            meta = fh.metadata()
            ups = [fh.get_tensor(k) for k in keys if k.endswith(".lora_up.weight")]
            alpha = fh.get_tensor("lora_unet_mid_block_attentions_0_proj_in.alpha")
        assert {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in keys} == kohya_names
        assert len(keys) == 3 * 192
        assert any(float(u.abs().max()) > 0 for u in ups), "lora_up stayed zero: nothing was trained"
        assert float(alpha) == 2.0
        assert meta["ss_epoch"] == str(epoch) and meta["ss_num_epochs"] == "2"
        assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
        assert meta["ss_base_model_version"] == "sd_v1"
        assert meta["ss_sd_model_name"] == comfy_server.checkpoint_name
        assert meta["modelspec.prediction_type"] == "epsilon"
        assert meta["ss_shuffle_caption"] == "True" and meta["ss_keep_tokens"] == "1"
        assert meta["ss_steps"] == str(2 * epoch)
        assert "e2estyle" in meta["ss_tag_frequency"]


def test_loraloader_loads_epoch_cleanly_and_grid_cell_matches(full_run, comfy_server):
    server = comfy_server
    assert full_run["entry"]["status"]["status_str"] == "success", error_text(full_run["entry"])
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.checkpoint_name}},
             "lora": {"class_type": "LoraLoader", "inputs": {
                 "model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": f"{NAME}-000002.safetensors",
                 "strength_model": 1.0, "strength_clip": 1.0}}}
    graph.update(_ksampler_nodes("r_", ["lora", 0], ["lora", 1], ["ckpt", 2]))
    offset = server.log_size()
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", error_text(entry)
    log = server.log_since(offset)
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-3000:]
    reference = _image(server, entry, "r_img")
    grid = _image(server, full_run["entry"], "grid_img")
    # rows: epochs 1, 2; columns: weights 0, 1.0
    cell = _grid_cell(grid, rows=2, cols=2, row=1, col=1)
    assert cell.shape == reference.shape
    assert np.array_equal(cell, reference), f"max diff {np.abs(cell.astype(int) - reference.astype(int)).max()}"
    base = _image(server, full_run["entry"], "b_img")
    for row in (0, 1):
        assert np.array_equal(_grid_cell(grid, 2, 2, row, 0), base)
    assert not np.array_equal(reference, base), "the LoRA changed nothing (weight 1.0 == base)"


def test_interrupt_keeps_finished_epochs_and_requeue_resumes(comfy_server):
    server = comfy_server
    folder = _dataset(server.base / "input", "e2e_stop", count=4)
    graph = _train_graph(server, folder, "e2e_stop", epochs=3, checkpointing=True)
    runs = server.base / "output" / "style_lora_runs"
    prompt_id = server.queue(graph)
    deadline = time.time() + 1800
    first: Path | None = None
    while time.time() < deadline and first is None:
        found = sorted(runs.glob("e2e_stop-*/e2e_stop-000001.safetensors")) if runs.is_dir() else []
        first = found[0] if found else None
        time.sleep(0.5)
    assert first is not None, server.log_tail()
    server.interrupt()
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in status_messages(entry), status_messages(entry)
    # The live chart's history says "stopped" (ComfyUI's interrupt reached the node unchanged).
    history = server.get_json("/style_lora/training?node=train")
    assert history["state"] == "stopped" and history["points"], history
    run_dir = first.parent
    files = sorted(p.name for p in run_dir.iterdir())
    assert "e2e_stop-000001.safetensors" in files and "e2e_stop-000003.safetensors" not in files
    # No partial file; ".lock" is the run folder's lock file (empty, held only while a run trains).
    assert not [f for f in files if (f.startswith(".") and f != ".lock") or f.endswith(".tmp")], files
    first_bytes = first.read_bytes()
    with safe_open(str(first), "pt") as fh:
        assert len(list(fh.keys())) == 3 * 192

    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", error_text(entry)
    summary = entry["outputs"]["train"]["text"][0]
    match = re.search(r"Resumed after epoch (\d+)", summary)
    assert match and int(match[1]) >= 1, summary
    assert "3 epoch file(s)" in summary, summary
    assert first.read_bytes() == first_bytes  # a finished epoch is never rewritten
    assert (run_dir / "e2e_stop-000003.safetensors").is_file()

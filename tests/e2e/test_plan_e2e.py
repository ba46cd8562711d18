"""End-to-end: the canvas's Measure (``POST /style_lora/plan`` with ``measure``) in a real ComfyUI warms up
on the checkpoint ComfyUI already holds from a run, as a queued Train LoRA would train on it, instead of
loading a second copy that the plan's memory would count twice; with nothing held it loads one."""

from __future__ import annotations

import time

import numpy as np
import pytest
from comfy_harness import error_text
from test_comfyui_e2e import SEED, SIZE, _dataset, _image, _ksampler_nodes

pytestmark = pytest.mark.e2e

GIB = 2**30


def _rss(server) -> int:
    """The ComfyUI process's resident memory now."""
    with open(f"/proc/{server.proc.pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def _measure(server, folder: str) -> dict:
    body = {"load_dataset": {"folder": folder, "repeats": 1, "resolution": SIZE, "min_bucket_size": SIZE,
                             "max_bucket_size": SIZE, "bucket_step": SIZE},
            "train_lora": {"output_name": "plan_e2e", "rank": 4, "alpha": 2.0, "epochs": 1, "batch_size": 1},
            "train_options": None, "save_epochs": None, "checkpoint": server.checkpoint_name, "measure": True}
    answer = server.post_json("/style_lora/plan", body, timeout=600)
    assert answer["measured"] is True and answer["estimated_peak"] > 0, answer
    return answer


def test_measure_uses_the_checkpoint_comfyui_holds_and_does_not_count_it_twice(comfy_server):
    server = comfy_server
    folder = _dataset(server.base / "input", "plan_e2e", count=2)

    # Nothing held: /free empties ComfyUI's cache (its prompt worker does it between prompts).
    server.post_json("/free", {"unload_models": True, "free_memory": True})
    time.sleep(3)
    before_fresh = _rss(server)
    fresh = _measure(server, folder)
    assert "warm-up on a copy loaded for it" in fresh["text"], fresh["text"]

    # A run with Load Checkpoint: its MODEL, CLIP and VAE stay in ComfyUI's cache.
    prompt = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.checkpoint_name}}}
    prompt.update(_ksampler_nodes("s_", ["ckpt", 0], ["ckpt", 1], ["ckpt", 2]))
    entry = server.wait(server.queue(prompt), timeout=300)
    assert entry["status"]["status_str"] == "success", error_text(entry)
    before_held = _rss(server)
    held = _measure(server, folder)
    assert "warm-up on the model ComfyUI already holds" in held["text"], held["text"]
    grew_fresh, grew_held = fresh["estimated_peak"] - before_fresh, held["estimated_peak"] - before_held
    print(f"\nmeasured peak with nothing held: {fresh['estimated_peak'] / GIB:.2f} GiB ({grew_fresh / GIB:+.2f} GiB over "
          f"the process before); with the checkpoint held: {held['estimated_peak'] / GIB:.2f} GiB "
          f"({grew_held / GIB:+.2f} GiB)")
    # The fresh warm-up had to load the checkpoint (its fp32 U-Net alone is 3.2 GiB here); on the held one the
    # peak grows by no second copy.
    assert grew_held < grew_fresh - 2 * GIB, (fresh["text"], held["text"])

    # The held models are unchanged by the warm-up: sampling on them now (a new seed, so ComfyUI runs it)
    # gives the pixels of the same graph on a fresh load of the checkpoint.
    def reseeded(seed: int) -> dict:
        return {**prompt, "s_ks": {**prompt["s_ks"], "inputs": {**prompt["s_ks"]["inputs"], "seed": seed}}}

    after = server.wait(server.queue(reseeded(SEED + 2)), timeout=300)
    assert after["status"]["status_str"] == "success", error_text(after)
    server.post_json("/free", {"unload_models": True, "free_memory": True})
    time.sleep(3)
    reloaded = server.wait(server.queue(reseeded(SEED + 2)), timeout=300)
    assert reloaded["status"]["status_str"] == "success", error_text(reloaded)
    assert np.array_equal(_image(server, after, "s_img"), _image(server, reloaded, "s_img"))

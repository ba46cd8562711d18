"""e2e: an epoch trained by the headless CLI (``python -m headless train``) on the same single-file
checkpoint ComfyUI loads is patched completely by ComfyUI's own LoraLoader."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from comfy_harness import REPO, error_text

pytestmark = pytest.mark.e2e
NAME = "cli_e2e"
EXPECTED = json.loads((REPO / "tests" / "data" / "comfyui_unet_module_names.json").read_text())["sd15"]


@pytest.fixture(scope="module")
def cli_epoch(comfy_server, tmp_path_factory):
    sys.path.insert(0, str(REPO / "tools"))
    from pack_loader import load_pack

    load_pack()
    from style_lora_trainer.dev.synthetic_data import make_style_dataset

    work = tmp_path_factory.mktemp("headless")
    make_style_dataset(work / "cli_style", count=2, size=64, seed=0)
    loras = comfy_server.base / "models" / "loras" / "headless"  # a subfolder: other tests list loras/ exactly
    command = [sys.executable, "-m", "headless", "train", "--checkpoint", str(comfy_server.base / "models" / "checkpoints" / comfy_server.checkpoint_name),
               "--dataset", str(work / "cli_style"), "--output-dir", str(work / "out"), "--loras-dir", str(loras),
               "--workflow", "workflows/style_lora_full_guide_sd15.json", "--no-samples", "--no-progress",
               "--repeats", "1", "--resolution", "64", "--batch-size", "2", "--epochs", "1",
               "--set", "load_dataset.min_bucket_size=64", "--set", "load_dataset.max_bucket_size=64",
               "--output-name", NAME, "--set", f"save_epochs.name={NAME}"]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                            text=True, timeout=1200, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    path = loras / f"{NAME}-000001.safetensors"
    assert path.is_file(), result.stdout[-2000:]
    return f"headless/{path.name}"


def test_cli_trained_epoch_loads_in_loraloader_with_every_key_patched(comfy_server, cli_epoch):
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": comfy_server.checkpoint_name}},
        "lora": {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                                                        "lora_name": cli_epoch, "strength_model": 1.0,
                                                        "strength_clip": 1.0}},
        "keys": {"class_type": "StyleLoRATestPatchedKeys", "inputs": {"model": ["lora", 0]}},
    }
    offset = comfy_server.log_size()
    entry = comfy_server.wait(comfy_server.queue(graph))
    assert entry["status"]["status_str"] == "success", error_text(entry)
    log = comfy_server.log_since(offset)
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-3000:]
    patched = set(entry["outputs"]["keys"]["text"][0].splitlines())
    assert patched == {m["path"] + ".weight" for m in EXPECTED["transformer_linear_modules"]}

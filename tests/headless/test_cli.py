"""The headless trainer end to end on a random SD1.5 single-file checkpoint, offline (no ComfyUI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from style_lora_trainer.headless import cli
from style_lora_trainer.integration import canvas_contract, events
from style_lora_trainer.style_lora_engine.lora_file import read_lora_metadata

ROOT = Path(__file__).resolve().parents[2]
COMFY_KEYS = json.loads((ROOT / "tests" / "data" / "comfyui_unet_module_names.json").read_text())["sd15"]


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A two-image dataset; the CLI sets the pack's folder variables, restored after the test."""
    from style_lora_trainer.dev.synthetic_data import make_style_dataset

    for name in ("STYLE_LORA_DATASET_ROOTS", "STYLE_LORA_LORAS_DIR", "STYLE_LORA_OUTPUT_DIR"):
        monkeypatch.setenv(name, "")
    make_style_dataset(tmp_path / "my_style", count=2, size=64, seed=0)
    return tmp_path


def small_run(checkpoint: Path, folders: Path) -> list[str]:
    # 2 images x 1 repeat at batch 2: one step per epoch, two epochs = two steps
    return ["train", "--checkpoint", str(checkpoint), "--dataset", str(folders / "my_style"),
            "--output-dir", str(folders / "out"), "--workflow", str(ROOT / "workflows" / "style_lora_full_guide_sd15.json"),
            "--no-samples", "--no-progress", "--repeats", "1", "--resolution", "64", "--batch-size", "2",
            "--epochs", "2", "--set", "load_dataset.min_bucket_size=64", "--set", "load_dataset.max_bucket_size=64",
            "--output-name", "cli_style", "--set", "save_epochs.name=cli_style"]


@pytest.mark.slow
def test_trains_from_a_single_file_checkpoint_stops_on_ctrl_c_and_resumes(sd15_single_file, folders, capsys):
    steps = []

    def ctrl_c_at_step_two(event: str, payload: dict) -> None:
        if event == canvas_contract.EVENT_STEP:
            steps.append(payload["step"])
            if payload["step"] == 2:
                raise KeyboardInterrupt

    remove = events.add_listener(ctrl_c_at_step_two)
    try:
        assert cli.main(small_run(sd15_single_file, folders)) == 130
    finally:
        remove()
    err = capsys.readouterr().err
    assert "Stopped. Every finished epoch is kept" in err and "run the same command again to resume" in err
    (run_dir,) = (folders / "out" / "style_lora_runs").iterdir()
    assert sorted(p.name for p in run_dir.glob("*.safetensors") if "resume" not in p.name) == [
        "cli_style-000001.safetensors"]
    assert not list(run_dir.glob(".*tmp*"))  # nothing half-written

    grid = ["--grid", "--set", "grid.prompts=a lighthouse", "--set", "grid.weights=1.0", "--set", "grid.steps=2",
            "--set", "grid.width=64", "--set", "grid.height=64", "--set", "grid.sampler_name=euler",
            "--set", "grid.scheduler=normal"]
    assert cli.main(small_run(sd15_single_file, folders) + grid) == 0
    out = capsys.readouterr().out
    assert "Resumed after epoch 1." in out
    table = json.loads((folders / "out" / "grid_table.json").read_text())
    assert [row["epoch"] for row in table["rows"]] == [1, 2]  # the grid's rows: every saved epoch
    assert table["best_epoch"] in (1, 2)
    from PIL import Image

    with Image.open(folders / "out" / "grid.png") as image:
        assert image.width >= 64 and image.height >= 2 * 64  # two epoch rows of 64 px cells (+ labels)
    loras = folders / "out" / "loras"
    files = sorted(p.name for p in loras.glob("*.safetensors"))
    assert files == ["cli_style-000001.safetensors", "cli_style-000002.safetensors"]
    assert steps == [1, 2]  # the second run trained step 2 only: after the stop no step ran twice
    with safe_open(str(loras / files[-1]), "pt") as fh:
        keys = set(fh.keys())
    modules = {k.rsplit(".", 2)[0] for k in keys if k.endswith(".lora_down.weight")}
    assert len(modules) == len(COMFY_KEYS["transformer_linear_modules"])  # every attention/FF Linear
    assert modules <= set(COMFY_KEYS["lora_unet_keys"])  # names ComfyUI's LoraLoader patches
    meta = read_lora_metadata(loras / files[-1])
    assert meta["ss_network_dim"] == "32" and meta["ss_network_alpha"] == "16.0"
    assert meta["ss_num_epochs"] == "2" and meta["ss_epoch"] == "2"
    assert meta["ss_sd_model_name"] == "sd15_random"


def test_python_dash_m_headless_prints_the_settings_a_workflow_gives(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "headless", "train", "--checkpoint", str(tmp_path / "unused.safetensors"),
         "--workflow", "workflows/style_lora_full_guide_sdxl.json", "--output-dir", str(tmp_path / "out"),
         "--set", "train_lora.epochs=5", "--print-settings"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "rank = 64  # workflow style_lora_full_guide_sdxl.json" in result.stdout
    assert "epochs = 5  # --set train_lora.epochs" in result.stdout
    assert "resolution = 1024  # workflow" in result.stdout


def test_a_bad_setting_exits_with_its_message_before_loading_anything(tmp_path, capsys, monkeypatch):
    for name in ("STYLE_LORA_DATASET_ROOTS", "STYLE_LORA_LORAS_DIR", "STYLE_LORA_OUTPUT_DIR"):
        monkeypatch.setenv(name, "")
    code = cli.main(["train", "--checkpoint", str(tmp_path / "missing.safetensors"), "--output-dir",
                     str(tmp_path), "--rank", "0"])
    assert code == 2
    assert "error: --set train_lora.rank = 0: must be between 1 and 256" in capsys.readouterr().err
    code = cli.main(["train", "--checkpoint", str(tmp_path / "missing.safetensors"), "--output-dir", str(tmp_path)])
    assert code == 2
    assert "missing.safetensors not found" in capsys.readouterr().err


@pytest.mark.slow
def test_plan_prints_the_runs_numbers_from_a_warm_up_and_keeps_nothing(sd15_single_file, folders, capsys):
    code = cli.main(small_run(sd15_single_file, folders) + ["--plan"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Pre-flight plan" in out
    assert "2 images x 1 repeats = 2 per epoch; batch 2 -> 1 steps per epoch, 2 steps in 2 epochs" in out
    assert "[!!] 2 epochs (the guide: 20, each saved)" in out
    assert "disk:" in out and "memory on cpu: about" in out and "s/step (warm-up)" in out
    assert not (folders / "out" / "style_lora_runs").exists() and not (folders / "out" / "loras").exists()

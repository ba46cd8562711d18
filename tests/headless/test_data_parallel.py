"""Data-parallel training: ``accelerate launch`` of the headless CLI with 2 processes on a CPU (gloo).

The same global batch (2 processes x 2 = 1 process x 4) gives the same steps per epoch, the same
losses (the same draws, each process training its slice) and the same LoRA; only the main process
writes; a run stopped with Ctrl-C in 2 processes resumes in one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from style_lora_trainer.style_lora_engine.data_parallel import DataParallel
from style_lora_trainer.style_lora_engine.lora_file import read_lora_metadata

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")


def test_a_process_takes_its_slice_of_each_global_batch():
    batch = [7, 3, 5, 1, 9]  # a bucket's last, short global batch of 2 processes x 3
    assert DataParallel(0, 2).share(batch, 3) == [7, 3, 5]
    assert DataParallel(1, 2).share(batch, 3) == [1, 9]
    assert DataParallel(1, 2).share([4], 3) == []  # nothing this step: it adds zero gradients
    assert DataParallel(0, 1).share(batch, 5) == batch
    assert DataParallel(1, 4).global_batch_size(2) == 8
    assert DataParallel(0, 2).is_main and not DataParallel(1, 2).is_main
    single = DataParallel()
    grads = torch.ones(3)
    assert single.sum_(grads) is grads and torch.equal(grads, torch.ones(3))  # no group: unchanged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp: Path, name: str, processes: int, batch: int, stop_at: int = 0) -> tuple[subprocess.CompletedProcess, list]:
    args = ["train", "--checkpoint", str(tmp / "tiny.safetensors"), "--dataset", str(tmp / "style"),
            "--output-dir", str(tmp / name), "--no-progress", "--no-samples", "--device", "cpu",
            "--resolution", "32", "--repeats", "2", "--epochs", "2", "--batch-size", str(batch),
            "--set", "load_dataset.min_bucket_size=32", "--set", "load_dataset.max_bucket_size=32",
            "--set", "train_lora.preset=custom (use the widgets)", "--rank", "4", "--alpha", "2",
            "--output-name", "ddp", "--set", "save_epochs.name=ddp"]
    if processes == 1:
        command = [sys.executable, str(WORKER), *args]
    else:
        command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                   str(WORKER), *args]
    report = tmp / f"{name}-report"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STYLE_LORA_TEST_REPORT": str(report),
           "STYLE_LORA_TEST_STOP_AT": str(stop_at), "OMP_NUM_THREADS": "1"}
    for var in ("STYLE_LORA_DATASET_ROOTS", "STYLE_LORA_LORAS_DIR", "STYLE_LORA_OUTPUT_DIR"):
        env.pop(var, None)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    reports = [json.loads(Path(f"{report}.{rank}.json").read_text()) for rank in range(processes)]
    return result, reports


@pytest.mark.slow
@pytest.mark.skipif(not ACCELERATE.is_file(), reason="needs accelerate's launcher (pip install accelerate)")
def test_two_processes_train_what_one_does_write_once_and_resume_in_one(tmp_path, pretrained_tiny):
    from style_lora_trainer.dev.synthetic_data import make_style_dataset

    make_style_dataset(tmp_path / "style", count=4, size=64, seed=0)
    single, (one,) = run(tmp_path, "single", processes=1, batch=4)
    assert single.returncode == 0, single.stderr[-3000:]
    # 4 images x 2 repeats at a global batch of 4: 2 steps per epoch, 4 in all
    assert [s[1:] for s in one["steps"]] == [[2, 4]] * 4

    parallel, reports = run(tmp_path, "parallel", processes=2, batch=2, stop_at=3)
    output = parallel.stdout + parallel.stderr
    assert [r["code"] for r in reports] == [130, 130], output[-3000:]
    assert [r["world"] for r in reports] == ["2", "2"]
    for report in reports:  # each process: the same steps and the global batch's loss
        assert [s[0] for s in report["steps"]] == [1, 2, 3]
        assert [s[1:] for s in report["steps"]] == [[2, 4]] * 3
        assert report["losses"] == pytest.approx(one["losses"][:3], rel=1e-4)
    assert output.count("Epoch 1/2 saved") == 1, output[-3000:]  # one process speaks and writes
    (run_dir,) = (tmp_path / "parallel" / "style_lora_runs").iterdir()
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".lock")) == [
        "config.json", "ddp-000001.safetensors", "resume.safetensors"]
    meta = read_lora_metadata(run_dir / "ddp-000001.safetensors")
    assert (meta["ss_batch_size_per_device"], meta["ss_total_batch_size"]) == ("2", "4")
    assert json.loads((run_dir / "config.json").read_text())["processes"] == 2
    assert not (tmp_path / "parallel" / "loras").exists()  # stopped before Save Epochs

    resumed, (after,) = run(tmp_path, "parallel", processes=1, batch=4)  # same global batch: the same run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed after epoch 1." in resumed.stdout
    assert [s[0] for s in after["steps"]] == [3, 4]
    assert after["losses"] == pytest.approx(one["losses"][2:], rel=1e-4)
    reference = load_file(str(tmp_path / "single" / "loras" / "ddp-000002.safetensors"))
    trained = load_file(str(tmp_path / "parallel" / "loras" / "ddp-000002.safetensors"))
    assert reference.keys() == trained.keys()
    for key, value in reference.items():
        assert torch.allclose(trained[key], value, rtol=1e-3, atol=1e-6), key

"""End-to-end: what a crash and a changed folder do in a real ComfyUI.

* ComfyUI killed with SIGKILL right at an epoch boundary (as the OOM killer or a power cut ends
  it): after a restart, queueing the same graph again resumes, every epoch file finished before the
  kill is byte-identical, and no temp file is left in the run folder.
* Load Dataset sees images added, removed or re-captioned between two queues (``IS_CHANGED``)
  instead of reusing ComfyUI's cached output.

Each test has its own ComfyUI (killing the session's would break the other tests).
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
from comfy_harness import ComfyServer, error_text
from PIL import Image
from safetensors import safe_open
from test_comfyui_e2e import _dataset, _dataset_nodes, _train_graph

pytestmark = pytest.mark.e2e

NAME = "e2e_kill"
EPOCHS = 3


@pytest.fixture
def own_server(comfy_env, sd15_checkpoint, tmp_path):
    comfy, python = comfy_env
    server = ComfyServer(comfy, python, tmp_path / "comfy_base", sd15_checkpoint)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _digests(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.glob(f"{NAME}-*.safetensors")}


def _resume_epoch(run_dir: Path) -> int:
    path = run_dir / "resume.safetensors"
    if not path.is_file():
        return 0
    with safe_open(str(path), "pt") as fh:
        return int(fh.metadata()["epoch"])


def test_kill_9_at_an_epoch_boundary_then_requeue_resumes_and_keeps_finished_epochs(own_server):
    server = own_server
    folder = _dataset(server.base / "input", "e2e_kill", count=4)
    graph = _train_graph(server, folder, NAME, epochs=EPOCHS, checkpointing=False)
    runs = server.base / "output" / "style_lora_runs"
    server.queue(graph)
    # Kill the moment epoch 2's file appears: its resume state is then being written, or not yet.
    deadline, target = time.time() + 1800, None
    while time.time() < deadline and target is None:
        found = sorted(runs.glob(f"{NAME}-*/{NAME}-000002.safetensors")) if runs.is_dir() else []
        target = found[0] if found else None
        if target is None:
            time.sleep(0.005)
    assert target is not None, server.log_tail()
    server.kill()
    run_dir = target.parent
    before = _digests(run_dir)
    covered = _resume_epoch(run_dir)
    left_over = sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))
    print(f"killed with epoch files {sorted(before)}, resume state of epoch {covered}, temp files {left_over}")
    assert f"{NAME}-000002.safetensors" in before and f"{NAME}-00000{EPOCHS}.safetensors" not in before

    server.restart()
    entry = server.wait(server.queue(graph))
    assert entry["status"]["status_str"] == "success", error_text(entry)
    summary = entry["outputs"]["train"]["text"][0]
    assert f"{EPOCHS} epoch file(s)" in summary, summary
    if covered:
        assert re.search(rf"Resumed after epoch {covered}\b", summary), summary
    after = _digests(run_dir)
    assert {k: after[k] for k in before} == before, "a finished epoch was rewritten"
    assert sorted(after) == [f"{NAME}-{e:06d}.safetensors" for e in range(1, EPOCHS + 1)]
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert _resume_epoch(run_dir) == EPOCHS
    if covered < len(before):  # the kill landed between an epoch file and its resume state
        assert "kept unchanged" in server.log_text(), server.log_tail()


def _write_image(folder: Path, name: str, caption: str, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"{name}.png")
    (folder / f"{name}.txt").write_text(caption, "utf-8")


def test_load_dataset_sees_images_and_captions_changed_between_queues(own_server):
    server = own_server
    folder = _dataset(server.base / "input", "e2e_changing", count=4)
    path = server.base / "input" / folder
    nodes = _dataset_nodes(folder)
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.checkpoint_name}},
             "ds": nodes["ds"],
             "shuf": {**nodes["shuf"], "inputs": {**nodes["shuf"]["inputs"], "dataset": ["ds", 0],
                                                  "preview_count": 8}},
             "lint": {"class_type": "StyleLoRATestShowText", "inputs": {"text": ["ds", 1]}},
             "preview": {"class_type": "StyleLoRATestShowText", "inputs": {"text": ["shuf", 1]}}}

    def run() -> tuple[str, str]:
        entry = server.wait(server.queue(graph))
        assert entry["status"]["status_str"] == "success", error_text(entry)
        return entry["outputs"]["lint"]["text"][0], entry["outputs"]["preview"]["text"][0]

    def images_in(report: str) -> int:
        match = re.search(r"(\d+) images?", report)
        assert match, report
        return int(match[1])

    lint, _ = run()
    assert images_in(lint) == 4
    _write_image(path, "added", "a flat painting, zebra stripes", seed=9)
    lint, preview = run()
    assert images_in(lint) == 5 and "zebra" in preview, (lint, preview)
    (path / "img0.txt").write_text("a flat painting, giraffe neck", "utf-8")
    _, preview = run()
    assert "giraffe" in preview, preview
    (path / "added.png").unlink()
    (path / "added.txt").unlink()
    lint, preview = run()
    assert images_in(lint) == 4 and "zebra" not in preview, (lint, preview)

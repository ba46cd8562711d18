"""Functional test: a LoRA trained by the pack pulls generations toward the dataset's style.

On the demo's tiny pretrained model (shipped, checked by hash: the same start on every CPU) and a
synthetic style dataset, the distance between generated images' colour/texture statistics and the
training set's falls as the LoRA weight goes 0 → 0.25 → 0.5 and as training goes on (epoch 1 → 3).
Assertions use margins, not absolute values.

What it does not assert, and why: that weight 1.0 beats 0.5. On this tiny model DAdapt's step
peaks at d·lr ≈ 1e-2 early in epoch 2 and the full-weight LoRA overcooks: seeds 0/1/2 end epoch 3
at 0.36 / 0.29 / 0.34 at weight 1.0 (base 0.36) while weight 0.5 gives 0.31 / 0.32 / 0.31 on all of
them, every time closer than epoch 1. That is the guide's reason for the epoch × weight grid.

Why a cosine schedule over 3 epochs and a fixed thread count: at a constant rate the run is
chaotic (the same run on AVX2 kernels, or with one thread instead of two, ended far apart); with
the rate decaying to zero the AVX2 and AVX-512 runs end at the same distances (second test).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from style_lora_trainer.dev.synthetic_data import (
    make_style_dataset,
    style_distance,
    style_statistics,
)
from style_lora_trainer.dev.tiny_model import IMAGE_SIZE
from style_lora_trainer.headless.diffusers_backend import DiffusersBackend
from style_lora_trainer.headless.diffusers_preview import render_grid_cells
from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.images import open_image_rgb
from style_lora_trainer.style_lora_engine.shuffle import ShuffleSettings
from style_lora_trainer.style_lora_engine.trainer import train_lora

PROMPTS = ["painting of a large star beside a small circle", "painting of a square above a triangle"]
ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def measure_style(model, work: Path) -> dict[tuple[int, float], float]:
    """Train the guide's recipe on the style set; style distance per (epoch, weight) of the grid."""
    paths = make_style_dataset(work / "style", count=12, size=2 * IMAGE_SIZE, seed=0)
    reference = style_statistics([open_image_rgb(p) for p in paths if p.suffix == ".png"])
    dataset = load_dataset(work / "style", repeats=10, resolution=IMAGE_SIZE,
                           buckets=BucketSettings(min_size=IMAGE_SIZE, step=IMAGE_SIZE // 2))
    dataset = dataset.with_shuffle(ShuffleSettings(keep_tokens=1))
    # The guide's optimizer and learning rate, with its cosine schedule; a small rank suits the tiny model.
    config = TrainConfig(rank=8, alpha=4.0, epochs=3, batch_size=4, seed=0, lr_scheduler="cosine")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # reductions are summed per thread: a many-core machine runs the same sums
    try:
        run = train_lora(DiffusersBackend(model), dataset, config, runs_root=work / "runs", output_name="style")
        cells = render_grid_cells(
            model, [(1, run.epoch_files[1]), (3, run.epoch_files[3])], list(WEIGHTS), PROMPTS,
            seed=0, images_per_prompt=4, steps=20, cfg=1.0, width=IMAGE_SIZE, height=IMAGE_SIZE)
    finally:
        torch.set_num_threads(before)
    return {key: style_distance(images, reference) for key, images in cells.items()}


def assert_style_grows(d: dict[tuple[int, float], float]) -> None:
    base = d[(3, 0.0)]
    assert d[(1, 0.0)] == pytest.approx(base)  # weight 0 is the base model whatever the epoch
    assert d[(3, 0.25)] < base  # a quarter of the LoRA already pulls toward the style
    assert d[(3, 0.5)] < d[(3, 0.25)]  # more weight, more style
    assert d[(3, 0.5)] < 0.9 * base  # clearly closer at half weight
    assert d[(3, 0.5)] < d[(1, 0.5)] - 0.01  # more epochs, more style
    assert d[(1, 0.5)] < base and d[(1, 1.0)] < d[(1, 0.5)]  # after one epoch full weight is not overcooked yet


@pytest.mark.slow
def test_style_grows_with_lora_weight_and_epoch(tmp_path, pretrained_tiny):
    d = measure_style(pretrained_tiny, tmp_path)
    print({f"epoch {e} weight {w}": round(v, 4) for (e, w), v in sorted(d.items())})
    assert_style_grows(d)


_AVX2_CHILD = """
import json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], str(Path(sys.argv[1]) / "engine")]
import conftest  # loads the pack the way ComfyUI does
from style_lora_trainer.dev.tiny_model import pretrained_tiny_sd15
from test_style_learning import measure_style
d = measure_style(pretrained_tiny_sd15(conftest.CACHE_DIR, progress=False), Path(sys.argv[2]))
print("RESULT " + json.dumps([[e, w, v] for (e, w), v in d.items()]))
"""


@pytest.mark.slow
def test_same_style_result_with_avx2_kernels(tmp_path, pretrained_tiny):
    """Another CPU, simulated: the same run with ATen's AVX2 kernels instead of AVX-512 ends where
    this process's run ends (at a constant rate it did not: 0.63 against 0.23 at epoch 6)."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip(f"this CPU runs {torch.backends.cpu.get_cpu_capability()} kernels already; nothing to compare")
    here = measure_style(pretrained_tiny, tmp_path / "here")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "HF_HUB_OFFLINE": "1"}
    child = subprocess.run([sys.executable, "-c", _AVX2_CHILD, str(ROOT / "tests"), str(tmp_path / "avx2")],
                           capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert child.returncode == 0, child.stderr[-3000:]
    line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT "))
    avx2 = {(e, w): v for e, w, v in json.loads(line[len("RESULT "):])}
    print({f"epoch {e} weight {w}": (round(here[(e, w)], 4), round(v, 4)) for (e, w), v in sorted(avx2.items())})
    assert_style_grows(avx2)
    for key, value in here.items():
        assert avx2[key] == pytest.approx(value, abs=0.02), key

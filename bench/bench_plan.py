"""The pre-flight plan's memory estimate against the measured peak of the same training, on the
benchmark settings (SD1.5 architecture, random weights, 256 px, batch 1, r32/16, DAdaptAdamW, cached
latents): fp32, fp32 + gradient checkpointing, bf16. One fresh process per plan and per training.

Two hosts: the headless trainer (its --plan, then the same command training), and with --comfyui-dir /
--comfyui-python the canvas's: the warm-up of ``POST /style_lora/plan``'s Measure (``ComfyPlanHost``: the
checkpoint loaded as Load Checkpoint does, ComfyUI's backend), then a training on a checkpoint loaded the
same way, in ComfyUI's interpreter.

    .venv/bin/python bench/bench_plan.py [--work /tmp/style_lora_bench_plan]
        [--comfyui-dir $COMFYUI_DIR --comfyui-python $COMFYUI_PYTHON] [--hosts headless,comfy]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

SETTINGS = {
    "fp32": ["--mixed-precision", "fp32"],
    "fp32 + gradient checkpointing": ["--mixed-precision", "fp32", "--set", "train_lora.gradient_checkpointing=true"],
    "bf16": ["--mixed-precision", "bf16"],
}
COMFY_SETTINGS = {"fp32": ("fp32", False), "fp32 + gradient checkpointing": ("fp32", True), "bf16": ("bf16", False)}


def gib(text: str, pattern: str) -> float:
    found = re.search(pattern, text)
    if not found:
        raise SystemExit(f"not found: {pattern}\n{text[-2000:]}")
    return float(found.group(1))


def child_comfy(opts: argparse.Namespace) -> int:
    """In ComfyUI's interpreter: the canvas's warm-up (phase plan) or a training (phase train)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from comfy_random_models import setup_comfy

    setup_comfy(opts.comfyui_dir)
    import folder_paths
    import torch
    from pack_loader import load_pack

    folder_paths.add_model_folder_path("checkpoints", str(opts.checkpoint.parent))
    folder_paths.set_output_directory(str(opts.work / "comfy_output"))
    load_pack()
    from style_lora_trainer.integration import comfy_modules, host
    from style_lora_trainer.integration.plan_host import ComfyPlanHost
    from style_lora_trainer.style_lora_engine import memory_meter
    from style_lora_trainer.style_lora_engine.buckets import BucketSettings
    from style_lora_trainer.style_lora_engine.config import TrainConfig
    from style_lora_trainer.style_lora_engine.dataset import load_dataset
    from style_lora_trainer.style_lora_engine.trainer import train_lora

    precision, checkpointing = COMFY_SETTINGS[opts.child_setting]
    dataset = load_dataset(opts.work / "style", repeats=2, resolution=256,
                           buckets=BucketSettings(min_size=256, max_size=256, step=64))
    config = TrainConfig(rank=32, alpha=16.0, epochs=2, batch_size=1, seed=0, mixed_precision=precision,
                         gradient_checkpointing=checkpointing, cache_latents=True)
    if opts.child == "plan":  # as the route's worker thread runs it: not under inference mode
        plan = ComfyPlanHost().warm_up(opts.checkpoint.name, dataset, config, output_name="bench", save_mode="all",
                                       save_n=1)
        print(plan.to_text(), flush=True)
        return 0
    with torch.inference_mode():  # as ComfyUI runs nodes
        model, clip, vae = comfy_modules.require_comfy_module("nodes").CheckpointLoaderSimple().load_checkpoint(
            opts.checkpoint.name)[:3]
        device = torch.device("cpu")
        memory_meter.reset_peak(device)
        train_lora(host.training_backend(model, clip, vae), dataset, config,
                   runs_root=opts.work / "comfy_output" / f"runs-{time.time_ns()}", output_name="bench")
    print(f"Peak memory while training on cpu: {memory_meter.peak_bytes(device) / 2**30:.2f} GiB", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/style_lora_bench_plan"))
    parser.add_argument("--hosts", default="headless,comfy")
    parser.add_argument("--comfyui-dir", type=Path, default=os.environ.get("COMFYUI_DIR"))
    parser.add_argument("--comfyui-python", default=os.environ.get("COMFYUI_PYTHON"))
    parser.add_argument("--child", choices=["plan", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--child-setting", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        return child_comfy(opts)
    from pack_loader import load_pack
    from random_checkpoint import write_random_checkpoint

    load_pack()
    from style_lora_trainer.dev.synthetic_data import make_style_dataset

    checkpoint = opts.work / "sd15_random.safetensors"
    if not checkpoint.is_file():
        write_random_checkpoint(checkpoint, "sd15", seed=0)
    if not (opts.work / "style").is_dir():
        make_style_dataset(opts.work / "style", count=2, size=256, seed=0)
    hosts = opts.hosts.split(",")
    rows = ["| host | setting | plan: estimated peak | warm-up peak | training: measured peak | estimate / measured |",
            "|---|---|---|---|---|---|"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def row(host: str, name: str, plan: str, trained: str) -> None:
        estimate = gib(plan, r"about ([0-9.]+) GiB at its peak")
        warm = gib(plan, r"warm-up: ([0-9.]+) GiB peak")
        measured = gib(trained, r"Peak memory while training on \S+: ([0-9.]+) GiB")
        rows.append(f"| {host} | {name} | {estimate:.2f} GiB | {warm:.2f} GiB | {measured:.2f} GiB | "
                    f"{estimate / measured:.2f} |")
        print(rows[-1], flush=True)

    if "headless" in hosts:
        common = [sys.executable, "-m", "headless", "train", "--checkpoint", str(checkpoint), "--dataset",
                  str(opts.work / "style"), "--repeats", "2", "--epochs", "2", "--batch-size", "1", "--resolution",
                  "256", "--set", "load_dataset.min_bucket_size=256", "--set", "load_dataset.max_bucket_size=256",
                  "--no-samples", "--no-progress", "--set", "train_lora.preset=custom (use the widgets)"]
        for name, flags in SETTINGS.items():
            out = opts.work / "out"
            shutil.rmtree(out, ignore_errors=True)
            plan = subprocess.run([*common, "--output-dir", str(out), *flags, "--plan"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, check=True).stdout
            shutil.rmtree(out, ignore_errors=True)
            trained = subprocess.run([*common, "--output-dir", str(out), *flags], cwd=ROOT, env=env,
                                     capture_output=True, text=True, check=True).stdout
            row("headless", name, plan, trained)
    if "comfy" in hosts:
        if not (opts.comfyui_dir and opts.comfyui_python):
            raise SystemExit("the comfy host needs --comfyui-dir and --comfyui-python (or COMFYUI_DIR / COMFYUI_PYTHON)")
        child = [opts.comfyui_python, str(Path(__file__).resolve()), "--work", str(opts.work), "--comfyui-dir",
                 str(opts.comfyui_dir), "--checkpoint", str(checkpoint)]
        for name in COMFY_SETTINGS:
            outs = [subprocess.run([*child, "--child", phase, "--child-setting", name], cwd=ROOT, env=env,
                                   capture_output=True, text=True, check=True).stdout for phase in ("plan", "train")]
            row("ComfyUI (canvas Measure)", name, *outs)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The pre-flight plan's memory estimate against the measured peak of the same training, on the
benchmark settings (SD1.5 architecture, random weights, 256 px, batch 1, r32/16, DAdaptAdamW, cached
latents): fp32, fp32 + gradient checkpointing, bf16. Headless trainer, one fresh process per run.

    .venv/bin/python bench/bench_plan.py [--work /tmp/style_lora_bench_plan]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

SETTINGS = {
    "fp32": ["--mixed-precision", "fp32"],
    "fp32 + gradient checkpointing": ["--mixed-precision", "fp32", "--set", "train_lora.gradient_checkpointing=true"],
    "bf16": ["--mixed-precision", "bf16"],
}


def gib(text: str, pattern: str) -> float:
    found = re.search(pattern, text)
    if not found:
        raise SystemExit(f"not found: {pattern}\n{text[-2000:]}")
    return float(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/style_lora_bench_plan"))
    opts = parser.parse_args(argv)
    from pack_loader import load_pack
    from random_checkpoint import write_random_checkpoint

    load_pack()
    from style_lora_trainer.dev.synthetic_data import make_style_dataset

    checkpoint = opts.work / "sd15_random.safetensors"
    if not checkpoint.is_file():
        write_random_checkpoint(checkpoint, "sd15", seed=0)
    if not (opts.work / "style").is_dir():
        make_style_dataset(opts.work / "style", count=2, size=256, seed=0)
    common = [sys.executable, "-m", "headless", "train", "--checkpoint", str(checkpoint), "--dataset",
              str(opts.work / "style"), "--repeats", "2", "--epochs", "2", "--batch-size", "1", "--resolution", "256",
              "--set", "load_dataset.min_bucket_size=256", "--set", "load_dataset.max_bucket_size=256",
              "--no-samples", "--no-progress", "--set", "train_lora.preset=custom (use the widgets)"]
    rows = ["| setting | plan: estimated peak | warm-up peak | training: measured peak | estimate / measured |",
            "|---|---|---|---|---|"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name, flags in SETTINGS.items():
        out = opts.work / "out"
        shutil.rmtree(out, ignore_errors=True)
        plan = subprocess.run([*common, "--output-dir", str(out), *flags, "--plan"], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True).stdout
        shutil.rmtree(out, ignore_errors=True)
        trained = subprocess.run([*common, "--output-dir", str(out), *flags], cwd=ROOT, env=env,
                                 capture_output=True, text=True, check=True).stdout
        estimate = gib(plan, r"about ([0-9.]+) GiB at its peak")
        warm = gib(plan, r"warm-up: ([0-9.]+) GiB peak")
        measured = gib(trained, r"Peak memory while training on \S+: ([0-9.]+) GiB")
        rows.append(f"| {name} | {estimate:.2f} GiB | {warm:.2f} GiB | {measured:.2f} GiB | {estimate / measured:.2f} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

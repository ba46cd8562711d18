"""The product path, side by side with kohya: Train LoRA's own backend inside a real ComfyUI.

What runs: ComfyUI's ``load_checkpoint_guess_config`` (what Load Checkpoint does) on an
SD1.5-architecture random-weight checkpoint, then the pack's host choice (``ComfyBackend``) and
training loop, in ComfyUI's interpreter (``COMFYUI_PYTHON``, ``COMFYUI_DIR``), in CPU mode. Settings:
256 px, batch 1, rank 32 / alpha 16, DAdaptAdamW lr 1.0, cached latents, shuffled captions keeping
the first tag, one epoch of ``--steps`` steps, in three configurations: fp32, fp32 with gradient
checkpointing, bf16.

With ``KOHYA_DIR`` (an sd-scripts checkout) and ``KOHYA_PYTHON`` (its venv) set, kohya's
``train_network.py`` runs on the same checkpoint, images, captions and settings (``--sdpa``,
DAdaptAdam with decoupled weight decay and bias correction, ``--network_train_unet_only``), and the
runs alternate: kohya, pack, kohya, pack, ... per configuration.

Both trainers are timed the same way: a global optimizer step hook records the time of every
``optimizer.step()`` and a thread samples the process's RSS every 0.1 s. Reported per run: median
s/step over steps 4..N and min–max, RSS while training (median of the samples from step 4 on),
peak RSS (``ru_maxrss``) and, for the pack, how long the end of the epoch held training (epoch file
and resume-state snapshot). Not a test: timings on a busy machine mean nothing.

    $COMFYUI_PYTHON bench/bench_comfy_train.py --comfyui-dir $COMFYUI_DIR [--kohya-dir D --kohya-python P]
        [--steps 20] [--res 256] [--configs fp32,gc,bf16] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"fp32": ("fp32", False), "gc": ("fp32", True), "bf16": ("bf16", False)}
LABELS = {"fp32": "fp32", "gc": "fp32 + gradient checkpointing", "bf16": "bf16"}
MARK_BEGIN, MARK_END = "<!-- bench_comfy_train:begin -->", "<!-- bench_comfy_train:end -->"
WARMUP = 3  # steps 1-3 (allocator warm-up, first-touch) are not in the median

# --- measurement shared by both children -----------------------------------------------------

_PROBE = r'''
import json, os, resource, threading, time, torch
_steps, _faults, _rss, _stop = [], [], [], threading.Event()
def _statm():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def _sample():
    while not _stop.wait(0.1):
        _rss.append((time.perf_counter(), _statm()))
_torch_rss = _statm()  # the process with torch imported: builds differ (a CUDA build holds more)
threading.Thread(target=_sample, daemon=True).start()
from torch.optim.optimizer import register_optimizer_step_post_hook
def _on_step(*a, **k):
    _steps.append(time.perf_counter())
    _faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
register_optimizer_step_post_hook(_on_step)
def probe_report(extra=None):
    _stop.set()
    return {"steps": _steps, "faults": _faults, "rss": _rss, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "torch": torch.__version__, "torch_rss": _torch_rss, **(extra or {})}
'''


def _summary(report: dict) -> dict:
    steps = report["steps"]
    intervals = [b - a for a, b in zip(steps, steps[1:])]
    timed = intervals[WARMUP - 1:] or intervals
    since = steps[min(WARMUP, len(steps) - 1)] if steps else 0.0
    rss = [r for t, r in report["rss"] if since <= t <= (steps[-1] if steps else 0.0)] or [0]
    out = {"steps": len(steps), "median": statistics.median(timed) if timed else float("nan"),
           "min": min(timed, default=float("nan")), "max": max(timed, default=float("nan")),
           "rss_training": statistics.median(rss), "peak": report["peak"],
           "torch": report.get("torch", "?"), "torch_rss": report.get("torch_rss", float("nan"))}
    faults = [b - a for a, b in zip(report.get("faults", []), report.get("faults", [])[1:])][WARMUP - 1:]
    out["faults"] = statistics.median(faults) if faults else float("nan")
    if "epoch_end_stall" in report:
        out["epoch_end_stall"] = report["epoch_end_stall"]
    return out


# --- the pack in ComfyUI ----------------------------------------------------------------------

def child_pack(opts) -> dict:
    exec(_PROBE, globals())  # noqa: S102  (bench only: the same probe text for both trainers)
    sys.path.insert(0, str(ROOT / "tools"))
    from comfy_random_models import setup_comfy

    setup_comfy(opts.comfyui_dir)
    import comfy.sd
    import folder_paths
    import torch
    from pack_loader import load_pack

    torch.set_num_threads(opts.threads)
    folder_paths.set_output_directory(str(opts.work / "comfy_output"))
    load_pack()
    from style_lora_trainer.integration import host
    from style_lora_trainer.style_lora_engine.buckets import BucketSettings
    from style_lora_trainer.style_lora_engine.config import TrainConfig
    from style_lora_trainer.style_lora_engine.dataset import load_dataset
    from style_lora_trainer.style_lora_engine.shuffle import ShuffleSettings
    from style_lora_trainer.style_lora_engine.trainer import TrainCallbacks, train_lora

    precision, checkpointing = CONFIGS[opts.config]
    with torch.inference_mode():  # as ComfyUI runs nodes
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(opts.checkpoint))[:3]
    dataset = load_dataset(opts.work / "dataset" / "1_style", repeats=1, resolution=opts.res,
                           buckets=BucketSettings(min_size=opts.res, max_size=opts.res, step=opts.res))
    dataset = dataset.with_shuffle(ShuffleSettings(keep_tokens=1))
    config = TrainConfig(rank=32, alpha=16.0, epochs=1, batch_size=1, seed=0, mixed_precision=precision,
                         gradient_checkpointing=checkpointing, cache_latents=True)
    if "channels_last" in opts.levers:
        _channels_last_for_training()
    if "compile" in opts.levers:
        _compiled_blocks_for_training()
    if "no_heap" in opts.levers:
        _heap_not_kept()
    if "no_gemm_conv" in opts.levers:
        _small_convs_not_gemm()
    epoch_end, validated = [], []
    # The epoch's validation loss is measured between its last step and the file (deliberate work, like
    # kohya's sample images): the stall reported is the file and resume-state snapshot after it.
    callbacks = TrainCallbacks(on_epoch=lambda info: epoch_end.append(time.perf_counter()),
                               on_validation=lambda info: validated.append(time.perf_counter()))
    with torch.inference_mode():
        train_lora(host.training_backend(model, clip, vae), dataset, config,
                   runs_root=opts.work / f"runs-{opts.config}-{time.time_ns()}", output_name="bench",
                   callbacks=callbacks)
    stall = epoch_end[0] - max([_steps[-1], *validated[-1:]]) if epoch_end and _steps else None  # noqa: F821
    return probe_report({"epoch_end_stall": stall})  # noqa: F821


def _heap_not_kept() -> None:
    """The shipped lever switched off, for comparison: glibc's default heap behaviour during the steps."""
    import contextlib

    from style_lora_trainer.style_lora_engine import cpu_heap

    cpu_heap.kept_between_steps = lambda device: contextlib.nullcontext(False)


def _small_convs_not_gemm() -> None:
    """The shipped lever switched off, for comparison: every conv through oneDNN (PyTorch's own path)."""
    from style_lora_trainer.style_lora_engine import cpu_conv

    cpu_conv.MAX_POSITIONS = 0


def _channels_last_for_training() -> None:
    """Lever under trial (not in the pack): the training copy's conv weights in channels_last."""
    import torch

    from style_lora_trainer.integration.comfy_backend import ComfyBackend

    begin = ComfyBackend.begin_training

    def begin_training(self, *, dtype, gradient_checkpointing):
        begin(self, dtype=dtype, gradient_checkpointing=gradient_checkpointing)
        for param in self._mp.model.diffusion_model.parameters():
            if param.ndim == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)

    ComfyBackend.begin_training = begin_training


def _compiled_blocks_for_training() -> None:
    """Lever under trial (not in the pack): ``torch.compile`` of each ResBlock / SpatialTransformer of the
    training copy (regional compilation; the LoRA layers are inside when the first step traces them)."""
    from style_lora_trainer.integration.comfy_backend import ComfyBackend

    begin, end = ComfyBackend.begin_training, ComfyBackend.end_training

    def begin_training(self, *, dtype, gradient_checkpointing):
        begin(self, dtype=dtype, gradient_checkpointing=gradient_checkpointing)
        self._compiled = [m for m in self._mp.model.diffusion_model.modules()
                          if type(m).__name__ in ("ResBlock", "SpatialTransformer")]
        for module in self._compiled:
            module.compile(dynamic=False)

    def end_training(self):
        for module in getattr(self, "_compiled", []):
            module._compiled_call_impl = None
        end(self)

    ComfyBackend.begin_training, ComfyBackend.end_training = begin_training, end_training


# --- kohya ------------------------------------------------------------------------------------

def kohya_command(opts, config: str) -> list[str]:
    precision, checkpointing = CONFIGS[config]
    out = opts.work / f"kohya-{config}"
    args = [
        "--pretrained_model_name_or_path", str(opts.checkpoint), "--train_data_dir", str(opts.work / "dataset"),
        "--output_dir", str(out), "--output_name", "bench", "--resolution", f"{opts.res},{opts.res}",
        "--train_batch_size", "1", "--max_train_steps", str(opts.steps), "--network_module", "networks.lora",
        "--network_dim", "32", "--network_alpha", "16", "--optimizer_type", "DAdaptAdam", "--optimizer_args",
        "decouple=True", "use_bias_correction=True", "weight_decay=0.01", "betas=0.9,0.999",
        "--learning_rate", "1.0", "--network_train_unet_only", "--cache_latents", "--sdpa",
        "--shuffle_caption", "--keep_tokens", "1", "--seed", "0", "--max_data_loader_n_workers", "0",
        "--caption_extension", ".txt", "--mixed_precision", "no" if precision == "fp32" else precision,
        "--save_model_as", "safetensors",
    ]
    if precision != "fp32":
        args += ["--save_precision", precision]
    if checkpointing:
        args.append("--gradient_checkpointing")
    if opts.kohya_tokenizer:
        args += ["--tokenizer_cache_dir", str(opts.kohya_tokenizer)]
    return args


def run_kohya(opts, config: str) -> dict:
    probe = _PROBE + (
        "import runpy, sys, torch\n"
        f"torch.set_num_threads({opts.threads})\n"
        f"sys.path.insert(0, {str(opts.kohya_dir)!r})\n"
        f"sys.argv = [{str(opts.kohya_dir / 'train_network.py')!r}] + {kohya_command(opts, config)!r}\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n    print('RESULT ' + json.dumps(probe_report()), flush=True)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(opts.kohya_python), "-c", probe], cwd=opts.kohya_dir, env=env,
                          capture_output=True, text=True, timeout=3600)
    return _result(proc, "kohya")


def run_pack(opts, config: str) -> dict:
    cmd = [sys.executable, __file__, "--child", config, "--comfyui-dir", str(opts.comfyui_dir), "--work",
           str(opts.work), "--checkpoint", str(opts.checkpoint), "--res", str(opts.res), "--steps", str(opts.steps),
           "--threads", str(opts.threads), "--levers", opts.levers]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return _result(proc, "pack")


def _result(proc: subprocess.CompletedProcess, who: str) -> dict:
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{who} run failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return _summary(json.loads(line[len("RESULT "):]))


# --- data and report ------------------------------------------------------------------------

def make_dataset(folder: Path, count: int, res: int) -> None:
    """``count`` synthetic images with detailed captions, in kohya's ``<repeats>_<name>`` folder layout."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((res, res), Image.Resampling.BICUBIC)
        image.save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(
            f"flat pastel style, object {i}, thick outlines, soft shading, muted palette, paper texture", "utf-8")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(opts, rows: dict) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu}, {opts.threads} threads, "
        f"{os.cpu_count()} CPUs visible; Python {platform.python_version()}. {opts.res} px, batch 1, r32/16, "
        f"DAdaptAdam(W) lr 1.0, cached latents, shuffle keep 1, {opts.steps} steps per run, median of steps "
        f"{WARMUP + 1}–{opts.steps}, runs alternating{' with kohya' if opts.kohya_dir else ''}.",
        "",
        "| setting | trainer | torch (RSS after import) | s/step (median) | min–max | RSS while training | peak RSS "
        "| page faults / step | epoch-end stall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, results in rows.items():
        for who, r in results:
            stall = f"{r['epoch_end_stall']:.2f} s" if r.get("epoch_end_stall") is not None else "–"
            lines.append(f"| {LABELS[config]} | {who} | {r['torch']} ({_gib(r['torch_rss'])}) | "
                         f"{r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | "
                         f"{_gib(r['rss_training'])} | {_gib(r['peak'])} | {r.get('faults', float('nan')):,.0f} | "
                         f"{stall} |")
    if opts.kohya_dir:
        lines += ["", "| setting | pack / kohya s/step | pack / kohya RSS while training |", "|---|---|---|"]
        for config, results in rows.items():
            pack = [r for who, r in results if who == "pack"]
            kohya = [r for who, r in results if who == "kohya"]
            if pack and kohya:
                sp = statistics.median(r["median"] for r in pack) / statistics.median(r["median"] for r in kohya)
                rs = (statistics.median(r["rss_training"] for r in pack)
                      / statistics.median(r["rss_training"] for r in kohya))
                lines.append(f"| {LABELS[config]} | {sp:.2f}× | {rs:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfyui-dir", type=Path, default=os.environ.get("COMFYUI_DIR"))
    p.add_argument("--kohya-dir", type=Path, default=os.environ.get("KOHYA_DIR"))
    p.add_argument("--kohya-python", type=Path, default=os.environ.get("KOHYA_PYTHON"))
    p.add_argument("--kohya-tokenizer", type=Path, default=os.environ.get("KOHYA_TOKENIZER_DIR"),
                   help="--tokenizer_cache_dir for kohya (offline CLIP tokenizer)")
    p.add_argument("--checkpoint", type=Path, help="SD1.5 checkpoint (default: a random one, made once)")
    p.add_argument("--work", type=Path, default=Path("/tmp/style_lora_bench"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--configs", default="fp32,gc,bf16")
    p.add_argument("--rounds", type=int, default=1, help="alternating runs per trainer and configuration")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", type=Path, help="rewrite the results section of this Markdown file")
    p.add_argument("--levers", default="", help="comma-separated levers under trial for the pack: channels_last, compile; no_heap and "
                        "no_gemm_conv switch shipped ones off (glibc's default heap during the steps; every conv "
                        "through oneDNN)")
    p.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.comfyui_dir is None:
        p.error("set COMFYUI_DIR (or --comfyui-dir) and run with ComfyUI's interpreter")
    opts.work.mkdir(parents=True, exist_ok=True)
    if opts.checkpoint is None:
        opts.checkpoint = opts.work / "sd15_random.safetensors"
        if not opts.checkpoint.exists() or opts.child is None:
            subprocess.run([sys.executable, str(ROOT / "tools" / "make_sd15_checkpoint.py"), "--comfyui-dir",
                            str(opts.comfyui_dir), "--out", str(opts.checkpoint)], check=True)
    if opts.child:
        opts.config = opts.child
        print("RESULT " + json.dumps(child_pack(opts)), flush=True)
        return 0
    make_dataset(opts.work / "dataset" / "1_style", opts.steps, opts.res)
    rows: dict = {}
    for config in opts.configs.split(","):
        rows[config] = []
        for _ in range(opts.rounds):
            if opts.kohya_dir:
                rows[config].append(("kohya", run_kohya(opts, config)))
                print(config, "kohya", rows[config][-1], flush=True)
            rows[config].append(("pack", run_pack(opts, config)))
            print(config, "pack", rows[config][-1], flush=True)
    text = report(opts, rows)
    print(text)
    if opts.out:
        doc = opts.out.read_text(encoding="utf-8") if opts.out.exists() else ""
        block = f"{MARK_BEGIN}\n{text}\n{MARK_END}"
        if MARK_BEGIN in doc and MARK_END in doc:
            doc = doc[:doc.index(MARK_BEGIN)] + block + doc[doc.index(MARK_END) + len(MARK_END):]
        else:
            doc = doc.rstrip() + "\n\n## Product path in ComfyUI, side by side with kohya\n\n" + block + "\n"
        opts.out.write_text(doc, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

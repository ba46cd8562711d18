"""Seconds per LoRA training step and peak RSS for the real SD1.5 U-Net, on the CPU.

What one step is: the same work as one step of ``trainer.train_lora`` with ``DiffusersBackend``,
minus the text encoder. The U-Net is the real SD1.5 architecture (``UNet2DConditionModel``
built from ``dev/model_configs/sd15_unet.json``, random weights, nothing
downloaded), frozen, fp32, with a peft LoRA injected exactly as the trainer does (rank 32 /
alpha 16 on ``find_lora_targets(unet)``), DAdaptAdamW from ``build_optimizer(TrainConfig())``,
the constant LR schedule, DDPM noise + random timestep, MSE loss, gradient clipping at 1.0.

Text conditioning is a random ``[1, 77, 768]`` tensor drawn once: the text encoder is frozen and
runs under no_grad, so it is not what this benchmark measures.

Four configurations, each in its own freshly spawned process (so peak RSS is per configuration):
gradient checkpointing off/on x latent caching on/off. "Caching off" runs a full-size SD1.5 VAE
encoder (random weights) on a pixel image under no_grad inside every step, as the trainer's
``_LatentSource`` does with ``cache_latents=False``; "caching on" encodes once up front (timed and
reported separately). The whole VAE stays resident in both cases, as it does in the trainer.

Usage::

    .venv/bin/python bench/bench_train_step.py                  # full size, 256 px, 5 timed steps
    .venv/bin/python bench/bench_train_step.py --steps 10 --res 512 --out docs/benchmarks.md
    .venv/bin/python bench/bench_train_step.py --quick          # tiny U-Net + VAE, 64 px: seconds

``--threads`` defaults to the cores this process may run on (``os.sched_getaffinity``).

The parent process imports only the standard library; torch, diffusers and the engine are
imported in the children, so the parent's memory never shows up in a child's peak RSS.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import multiprocessing
import os
import platform
import re
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "style_lora_trainer"
DEFAULT_RES = 256
QUICK_RES = 64
DEFAULT_STEPS = 5
SEED = 0
MARK_BEGIN = "<!-- bench_train_step:begin -->"
MARK_END = "<!-- bench_train_step:end -->"

# SD1.5's VAE (runwayml/stable-diffusion-v1-5 vae/config.json); random weights.
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# SD1.5's training noise schedule.
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    gradient_checkpointing: bool
    cache_latents: bool

    @property
    def label(self) -> str:
        ckpt = "ckpt on" if self.gradient_checkpointing else "ckpt off"
        cache = "latents cached" if self.cache_latents else "VAE every step"
        return f"{ckpt}, {cache}"


CASES: tuple[Case, ...] = (
    Case(gradient_checkpointing=False, cache_latents=True),
    Case(gradient_checkpointing=True, cache_latents=True),
    Case(gradient_checkpointing=False, cache_latents=False),
    Case(gradient_checkpointing=True, cache_latents=False),
)


@dataclass(frozen=True)
class Settings:
    quick: bool
    res: int
    steps: int
    threads: int


@dataclass(frozen=True)
class CaseResult:
    case: Case
    build_s: float
    rss_after_build: int  # bytes
    cache_s: float | None  # latent caching, once (None: latents encoded every step)
    first_step_s: float
    median_step_s: float
    min_step_s: float
    max_step_s: float
    peak_rss: int  # bytes
    latent_hw: tuple[int, int]
    rank: int
    alpha: float
    unet_params: int
    lora_params: int
    lora_modules: int
    first_grad_norm: float


# --------------------------------------------------------------------------- child process


def peak_rss_bytes() -> int:
    """This process's peak resident set size (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _engine(module: str) -> Any:
    return _pack_module(f"style_lora_engine.{module}")


def _dev(module: str) -> Any:
    return _pack_module(f"dev.{module}")


def _pack_module(module: str) -> Any:
    """A module of the pack, with the repo loaded as a package the way ComfyUI loads it."""
    sys.path.insert(0, str(ROOT / "tools"))
    from pack_loader import load_pack

    load_pack(PACKAGE)
    return importlib.import_module(f"{PACKAGE}.{module}")


def _build_unet(quick: bool) -> Any:
    from diffusers import UNet2DConditionModel

    if quick:
        config = _dev("tiny_model").tiny_sd15_configs()["unet"]
    else:
        config = _dev("kohya_readers").load_unet_config("sd15")
    return UNet2DConditionModel.from_config(config)


def _build_vae(quick: bool) -> Any:
    from diffusers import AutoencoderKL

    config = _dev("tiny_model").tiny_sd15_configs()["vae"] if quick else SD15_VAE_CONFIG
    return AutoencoderKL(**config).requires_grad_(False).eval()


def _encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """``DiffusersBackend.encode_images``: posterior mean x scaling factor, under no_grad."""
    import torch

    with torch.no_grad():
        return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor


def _train_step(
    unet: Any,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    lora_params: list[torch.nn.Parameter],
    noise_scheduler: Any,
    get_latents: Callable[[], torch.Tensor],
    context: torch.Tensor,
    generator: torch.Generator,
    max_grad_norm: float,
) -> float:
    """One optimizer step (``DiffusersBackend.loss`` + the trainer's update); returns the grad norm."""
    import torch
    import torch.nn.functional as F

    latents = get_latents()
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
    )
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states=context).sample
    loss = F.mse_loss(pred.float(), noise.float())
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()}")
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(lora_params, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def run_case(case: Case, settings: Settings) -> dict[str, Any]:
    """Run one configuration (meant to run in a fresh process); returns ``asdict(CaseResult)``."""
    import torch
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    config_mod = _engine("config")
    find_lora_targets = _engine("lora_keys").find_lora_targets
    build_optimizer = _engine("optimizers").build_optimizer
    build_lr_scheduler = _engine("schedules").build_lr_scheduler
    adapter = _engine("trainer").ADAPTER
    config = config_mod.TrainConfig().validate()

    torch.set_num_threads(settings.threads)
    torch.manual_seed(SEED)

    def say(msg: str) -> None:
        print(f"  [{case.label}] {msg}", flush=True)

    # Build: models, LoRA injection and optimizer, in the trainer's order.
    say("building models")
    t0 = time.perf_counter()
    unet = _build_unet(settings.quick)
    vae = _build_vae(settings.quick)
    noise_scheduler = DDPMScheduler(**SD15_SCHEDULER_CONFIG)
    unet_params = sum(p.numel() for p in unet.parameters())
    targets = find_lora_targets(unet)
    unet.requires_grad_(False)  # DiffusersBackend.begin_training
    if case.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    lora_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=targets,
                             init_lora_weights=True, lora_dropout=0.0)
    LoraModel(unet, lora_config, adapter)
    lora_params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in lora_params:
        p.data = p.data.float()
        p.requires_grad_(True)
    optimizer = build_optimizer(lora_params, config)
    total_steps = settings.steps + 1
    lr_scheduler = build_lr_scheduler(optimizer, config.lr_scheduler,
                                      warmup_steps=config.lr_warmup_steps, total_steps=total_steps)
    build_s = time.perf_counter() - t0
    rss_after_build = peak_rss_bytes()

    # Inputs: one random image in [-1, 1] and a random text conditioning (text encoder not measured).
    data_gen = torch.Generator().manual_seed(SEED)
    pixels = torch.rand((1, 3, settings.res, settings.res), generator=data_gen) * 2 - 1
    context = torch.randn((1, 77, unet.config.cross_attention_dim), generator=data_gen)

    cache_s: float | None = None
    cached: torch.Tensor | None = None
    if case.cache_latents:
        say("caching latents (once)")
        t0 = time.perf_counter()
        cached = _encode(vae, pixels)
        cache_s = time.perf_counter() - t0

    def get_latents() -> torch.Tensor:
        return cached if cached is not None else _encode(vae, pixels)

    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    noise_gen = torch.Generator().manual_seed(SEED)
    times: list[float] = []
    first_grad_norm = 0.0
    for step in range(total_steps):
        t0 = time.perf_counter()
        grad_norm = _train_step(unet, optimizer, lr_scheduler, lora_params, noise_scheduler,
                                get_latents, context, noise_gen, config.max_grad_norm)
        times.append(time.perf_counter() - t0)
        if step == 0:
            first_grad_norm = grad_norm
            # LoRA B starts at zero, so B's gradient must not be: a zero norm means no LoRA
            # gradient reached the parameters (e.g. checkpointing cut the graph).
            if not grad_norm > 0:
                raise RuntimeError(f"LoRA gradient norm after the first step is {grad_norm}")
        say(f"step {step + 1}/{total_steps}: {times[-1]:.3f} s")

    timed = times[1:]
    result = CaseResult(
        case=case,
        build_s=build_s,
        rss_after_build=rss_after_build,
        cache_s=cache_s,
        first_step_s=times[0],
        median_step_s=statistics.median(timed),
        min_step_s=min(timed),
        max_step_s=max(timed),
        peak_rss=peak_rss_bytes(),
        latent_hw=(settings.res // vae_factor, settings.res // vae_factor),
        rank=config.rank,
        alpha=config.alpha,
        unet_params=unet_params,
        lora_params=sum(p.numel() for p in lora_params),
        lora_modules=len(targets),
        first_grad_norm=first_grad_norm,
    )
    return asdict(result)


# --------------------------------------------------------------------------- parent process


def run_in_fresh_process(case: Case, settings: Settings) -> CaseResult:
    """Run one configuration in a newly spawned interpreter, so its peak RSS is its own."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes=1, maxtasksperchild=1) as pool:
        raw = pool.apply(run_case, (case, settings))
    raw["case"] = Case(**raw["case"])
    raw["latent_hw"] = tuple(raw["latent_hw"])
    return CaseResult(**raw)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def _ram_gib() -> str:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return f"{int(match.group(1)) / 2**20:.1f} GiB" if match else "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_description(settings: Settings) -> dict[str, str]:
    return {
        "date (UTC)": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "CPU": _cpu_model(),
        "cores": f"{available_cores()} available of {os.cpu_count()}; torch threads {settings.threads}",
        "RAM": _ram_gib(),
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "torch / diffusers / peft / dadaptation": " / ".join(
            _version(d) for d in ("torch", "diffusers", "peft", "dadaptation")
        ),
    }


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def results_markdown(settings: Settings, results: list[CaseResult], command: str) -> str:
    first = results[0]
    h, w = first.latent_hw
    model = "tiny SD1.5-shaped U-Net and VAE (--quick smoke test, NOT representative)" if settings.quick \
        else "SD1.5 U-Net (sd15_unet.json) and SD1.5 VAE, random weights"
    lines = [
        "## LoRA training step on CPU (`bench/bench_train_step.py`)",
        "",
        f"Command: `{command}`",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine_description(settings).items()),
        "",
        f"Model: {model}; U-Net {first.unet_params / 1e6:.2f}M params, fp32. LoRA rank {first.rank} / alpha "
        f"{first.alpha:g} (peft, as the trainer injects it) on {first.lora_modules} modules, "
        f"{first.lora_params / 1e6:.2f}M trainable params; DAdaptAdamW (`build_optimizer(TrainConfig())`), "
        f"batch 1, {settings.res} px ({h}x{w} latents). Text conditioning is a random [1, 77, "
        "cross_attention_dim] tensor: the frozen text encoder is not measured. Each row ran in its own "
        f"fresh process. Median/min/max over the {settings.steps} steps after the first.",
        "",
        "| grad checkpointing | latents | build | RSS after build | cache latents (once) | first step "
        "| median s/step | min–max s/step | peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cache = f"{r.cache_s:.2f} s" if r.cache_s is not None else "—"
        lines.append(
            f"| {'on' if r.case.gradient_checkpointing else 'off'} "
            f"| {'cached' if r.case.cache_latents else 'VAE encode every step'} "
            f"| {r.build_s:.1f} s | {_gib(r.rss_after_build)} | {cache} | {r.first_step_s:.2f} s "
            f"| **{r.median_step_s:.3f} s** | {r.min_step_s:.3f}–{r.max_step_s:.3f} | {_gib(r.peak_rss)} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, section: str) -> None:
    """Replace the benchmark section between the markers in ``path`` (append it if absent)."""
    block = f"{MARK_BEGIN}\n{section}{MARK_END}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    start, end = text.find(MARK_BEGIN), text.find(MARK_END)
    if start != -1 and end > start:
        text = text[:start] + block + text[end + len(MARK_END):].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny U-Net/VAE at {QUICK_RES} px: a smoke test that runs in seconds")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"timed steps after the first one (default {DEFAULT_STEPS})")
    parser.add_argument("--res", type=int, default=None,
                        help=f"image size in pixels, a multiple of 8 (default {DEFAULT_RES}; {QUICK_RES} "
                             "with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the cores this process may run on)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown file whose benchmark section is written/replaced, e.g. docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.res is None:
        args.res = QUICK_RES if args.quick else DEFAULT_RES
    if args.res < 8 or args.res % 8:
        parser.error(f"--res must be a positive multiple of 8, got {args.res}")
    if args.threads is None:
        args.threads = available_cores()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(quick=args.quick, res=args.res, steps=args.steps, threads=args.threads)
    command = "python bench/bench_train_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{'QUICK (tiny model) ' if settings.quick else ''}LoRA training-step benchmark: "
          f"{settings.res} px, 1 + {settings.steps} steps, {settings.threads} torch threads", flush=True)
    results: list[CaseResult] = []
    for case in CASES:
        print(f"{case.label}: starting a fresh process", flush=True)
        results.append(run_in_fresh_process(case, settings))
    section = results_markdown(settings, results, command.strip())
    print()
    print(section)
    if args.out is not None:
        write_markdown(args.out, section)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

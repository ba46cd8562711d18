"""The whole guide, end to end, headless, on the embedded tiny model and a synthetic style dataset.

LoadDataset → CaptionEditor → ShuffleCaption → TrainLoRA → SaveEpochs → EpochWeightGrid, called
through the very node functions ComfyUI calls, with the guide's settings: 10 repeats, 20 epochs,
DAdapt-AdamW at lr 1.0, shuffled captions with the first part kept. Writes ``demo_output/``.

Two choices differ from the guide because the model is tiny: rank 8 / alpha 4 (the guide's 32/16 is for
SD1.5's 860 M parameters) and the guide's cosine schedule rather than constant (at a constant rate this
model's run is chaotic: another CPU's kernels end elsewhere), with the guide's LR warmup over the first
150 steps (two epochs): without it DAdapt's first steps overshoot on this model (the validation loss
rose above the base model's at epochs 2-3 and the style came and went). Last, the demo measures what the grid
shows: the distance between each cell's colour/texture statistics and the training set's, per epoch
and weight, and names the closest cell, the sweet spot.

Run with ``make demo`` (or ``.venv/bin/python tools/demo.py --help``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pack_loader import load_pack  # noqa: E402

GRID_PROMPTS = [
    "painting of a large star beside a small circle, plain backdrop",
    "painting of a square above a triangle, simple backdrop",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "demo_output", help="output folder")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache", help="where the tiny model is cached")
    p.add_argument("--images", type=int, default=30, help="dataset size (the guide: 30-100)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--lr-scheduler", default="cosine", help="the guide's constant or cosine")
    p.add_argument("--lr-warmup-steps", type=int, default=150,
                   help="the guide's LR warmup: 150 steps = 10 %% of the default run (two epochs)")
    p.add_argument("--grid-steps", type=int, default=20)
    p.add_argument("--weights", default="0, 0.5, 0.8, 1.0", help="grid columns (0 = base model)")
    p.add_argument("--grid-epochs", default="1, 2, 3, 5, 10, 20", help="grid rows ('all' or e.g. '5, 10-20')")
    p.add_argument("--fresh", action="store_true", help="delete earlier demo output first (no resume)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out: Path = args.out.resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    # The nodes' folders outside ComfyUI: datasets under out/, LoRAs in out/loras, runs in out/.
    os.environ["STYLE_LORA_DATASET_ROOTS"] = str(out)
    os.environ["STYLE_LORA_LORAS_DIR"] = str(out / "loras")
    os.environ["STYLE_LORA_OUTPUT_DIR"] = str(out)

    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    load_pack()
    from style_lora_trainer.dev.synthetic_data import make_style_dataset
    from style_lora_trainer.dev.tiny_model import IMAGE_SIZE, pretrained_tiny_sd15
    from style_lora_trainer.integration.images import image_to_pil
    from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS as NODES
    from style_lora_trainer.style_lora_engine.grid import plot_validation

    started = time.perf_counter()
    print("[1/8] tiny SD-style model (built and pretrained once, then cached)")
    model = pretrained_tiny_sd15(args.cache, progress=True)

    print(f"[2/8] synthetic style dataset: {args.images} images with detailed captions")
    make_style_dataset(out / "dataset", count=args.images, size=2 * IMAGE_SIZE, seed=0)

    print("[3/8] LoadDataset: repeats, buckets, lint against the guide")
    dataset, lint = NODES["StyleLoRALoadDataset"]().load(
        folder="dataset", caption_extension=".txt", repeats=args.repeats, resolution=IMAGE_SIZE,
        enable_bucket=True, min_bucket_size=IMAGE_SIZE, max_bucket_size=2 * IMAGE_SIZE, bucket_step=IMAGE_SIZE // 2,
        bucket_no_upscale=False, skip_unreadable=False, clip=model)
    (out / "lint_report.txt").write_text(lint + "\n", encoding="utf-8")
    print(lint)

    print("[4/8] CaptionEditor + ShuffleCaption (first part stays in place)")
    dataset, captions = NODES["StyleLoRACaptionEditor"]().edit(
        dataset=[dataset], prefix=[""], suffix=[""], find=[""], replace=[""], write_back=[False], edits=["{}"])
    (out / "captions.txt").write_text(captions + "\n", encoding="utf-8")
    dataset, preview = NODES["StyleLoRAShuffleCaption"]().configure(
        dataset=dataset, enabled=True, separator=",", keep_tokens=1, seed=0, preview_count=3)["result"]
    (out / "shuffle_preview.txt").write_text(preview + "\n", encoding="utf-8")
    print(preview)

    print(f"[5/8] TrainLoRA: rank {args.rank}/alpha {args.alpha:g}, DAdaptAdamW lr 1.0, {args.epochs} epochs")
    (samples,) = NODES["StyleLoRATrainingSamples"]().configure(
        prompts=GRID_PROMPTS[0], negative="", weights="0.8, 1.0", every_n_epochs=5, include_base=True, seed=0,
        steps=args.grid_steps, cfg=3.0, sampler_name="euler", scheduler="normal", width=IMAGE_SIZE,
        height=IMAGE_SIZE)
    trained = NODES["StyleLoRATrain"]().train(
        model=model, clip=model, vae=model, dataset=dataset, preset="custom (use the widgets)",
        output_name="demo_style", rank=args.rank, alpha=args.alpha, optimizer="DAdaptAdamW", learning_rate=1.0,
        lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.lr_warmup_steps, epochs=args.epochs, batch_size=args.batch_size, seed=0,
        mixed_precision="auto", gradient_checkpointing=False, cache_latents=True,
        training_comment="Style LoRA Trainer demo on the embedded tiny model", samples=samples)
    run, loss_plot, summary, _plan = trained["result"]
    image_to_pil(loss_plot)[0].save(out / "loss.png")
    plot_validation([(e, v) for e, _, v in run.validation], mean_losses=epoch_means(run),
                    title="demo_style: validation loss per epoch", path=out / "validation.png")
    write_samples_strip(trained["ui"].get("style_lora_samples", []), out / "samples.png", IMAGE_SIZE)
    (out / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    print(summary)

    print("[6/8] SaveEpochs: every epoch into loras/")
    epochs, names = NODES["StyleLoRASaveEpochs"]().save(
        run=run, name="demo_style", save="all", n=1, subfolder="", overwrite=True)["result"]
    print(f"saved {len(epochs.files)} files: {epochs.files[0].path.name} ... {epochs.files[-1].path.name}")

    print("[7/8] EpochWeightGrid: epochs × LoRA weights")
    grid, table = NODES["StyleLoRAEpochWeightGrid"]().render(
        model=model, clip=model, vae=model, prompts="\n".join(GRID_PROMPTS), negative="", weights=args.weights,
        epochs_to_show=args.grid_epochs, seed=0, images_per_prompt=2, steps=args.grid_steps, cfg=3.0,
        sampler_name="euler", scheduler="normal", width=IMAGE_SIZE, height=IMAGE_SIZE, epochs=epochs)["result"]
    image_to_pil(grid)[0].save(out / "grid.png")
    (out / "grid_table.json").write_text(json.dumps(json.loads(table), indent=2) + "\n", encoding="utf-8")
    picked = NODES["StyleLoRAPickEpoch"]().pick(rule="lowest validation loss", epoch=1, weight=1.0, table=table)
    print(picked["result"][4])

    print("[8/8] style distance per epoch × weight (lower = closer to the dataset's style)")
    table = style_table(model, out, epochs, args)
    (out / "style_distance.txt").write_text(table + "\n", encoding="utf-8")
    print(table)

    print(f"done in {time.perf_counter() - started:.0f} s → {out}")
    for name in ("grid.png", "grid_table.json", "validation.png", "samples.png", "style_distance.txt", "loss.png",
                 "lint_report.txt", "shuffle_preview.txt", "summary.txt", "loras/"):
        print(f"  {out / name}")
    return 0


def epoch_means(run) -> list[tuple[int, float]]:
    """Each epoch's mean training loss, from the run's per-step losses and epoch boundaries."""
    means, start = [], 0
    for epoch, end in enumerate(run.epoch_end_steps, 1):
        chunk = run.losses[start:end]
        if chunk:
            means.append((epoch, sum(chunk) / len(chunk)))
        start = end
    return means


def write_samples_strip(samples: list[dict], path: Path, size: int) -> None:
    """The samples Train LoRA showed while training, one row per sampled epoch (base first), as a PNG."""
    from PIL import Image

    from style_lora_trainer.integration import paths
    from style_lora_trainer.style_lora_engine.grid import compose_grid

    if not samples:
        return
    weights = [c["weight"] for c in samples[-1]["cells"]]

    def cell(sample: dict, weight) -> Image.Image:
        found = next((c for c in sample["cells"] if c["weight"] in (weight, None)), None)
        ref = found["images"][0] if found else None
        if ref is None:
            return Image.new("RGB", (size, size), "white")
        with Image.open(paths.temp_dir() / ref["subfolder"] / ref["filename"]) as img:
            return img.convert("RGB")

    rows = [[cell(s, w) for w in weights] for s in samples]
    labels = ["base" if s["epoch"] == 0 else f"epoch {s['epoch']}" for s in samples]
    compose_grid(rows, labels, [f"{w:g}" for w in weights],
                 title=f"samples during training: {samples[0]['prompts'][0]}").save(path)


def style_table(model, out: Path, epochs, args: argparse.Namespace) -> str:
    """Distance of generated images' colour/texture statistics to the training set's, per grid cell:
    4 images per prompt (more than the grid shows, for a steadier figure), the grid's seed and steps."""
    from style_lora_trainer.dev.synthetic_data import style_distance, style_statistics
    from style_lora_trainer.dev.tiny_model import IMAGE_SIZE
    from style_lora_trainer.headless.diffusers_preview import render_grid_cells
    from style_lora_trainer.nodes.epoch_weight_grid import parse_epoch_selection, parse_weights
    from style_lora_trainer.style_lora_engine.images import open_image_rgb

    by_epoch = {f.epoch: f.path for f in epochs.files}
    chosen = parse_epoch_selection(args.grid_epochs, list(by_epoch))
    weights = parse_weights(args.weights)
    reference = style_statistics([open_image_rgb(p) for p in sorted((out / "dataset").glob("*.png"))])
    cells = render_grid_cells(model, [(e, by_epoch[e]) for e in chosen], weights, GRID_PROMPTS, seed=0,
                              images_per_prompt=4, steps=args.grid_steps, cfg=3.0, width=IMAGE_SIZE,
                              height=IMAGE_SIZE)
    distance = {key: style_distance(images, reference) for key, images in cells.items()}
    lines = ["epoch | " + " | ".join(f"w {w:g}" for w in weights)]
    lines += [f"{e:5d} | " + " | ".join(f"{distance[(e, w)]:.3f}" for w in weights) for e in chosen]
    best = min((k for k in distance if k[1] != 0), key=distance.get)
    base = distance.get((best[0], 0.0))
    lines.append(f"closest to the style: epoch {best[0]} at weight {best[1]:g} ({distance[best]:.3f}"
                 + (f"; the base model: {base:.3f})" if base is not None else ")"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m headless train``: the guide's training without a browser, from a single-file checkpoint.

The same node functions the canvas runs (Load Dataset → Caption Editor → Shuffle Caption → Train LoRA
→ Save Epochs → optionally Epoch × Weight Grid), on the user's own SD1.5/SDXL ``.safetensors`` file
loaded with diffusers (``checkpoint.py``), with settings from a workflow, a TOML/JSON file and flags
(``settings.py``). So the epoch files, their metadata, resume and the run folder are the nodes' own:
running the same command again resumes, and Ctrl-C keeps every finished epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..integration import canvas_contract, events
from ..style_lora_engine import memory_meter
from ..style_lora_engine.errors import StyleLoRAError
from .settings import Settings, build_settings

log = logging.getLogger("style_lora_trainer")

EXAMPLES = """examples:
  python -m headless train --checkpoint v1-5-pruned-emaonly.safetensors --dataset ~/data/my_style
  python -m headless train --checkpoint sd_xl_base_1.0.safetensors --workflow my_workflow.json \\
      --dataset ~/data/my_style --output-dir runs/ --grid
  python -m headless train --checkpoint model.safetensors --dataset ~/data/my_style \\
      --settings my_style.toml --set train_lora.epochs=10 --set train_lora.batch_size=2
"""

# Flags for the settings people change most; anything else with --set section.widget=value.
SHORTCUTS = {
    "output_name": ("train_lora", "output_name"), "epochs": ("train_lora", "epochs"),
    "rank": ("train_lora", "rank"), "alpha": ("train_lora", "alpha"),
    "batch_size": ("train_lora", "batch_size"), "mixed_precision": ("train_lora", "mixed_precision"),
    "resolution": ("load_dataset", "resolution"), "repeats": ("load_dataset", "repeats"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m headless", description=__doc__.splitlines()[0],
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a style LoRA", epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--checkpoint", type=Path, required=True, help="single-file SD1.5 or SDXL .safetensors")
    train.add_argument("--dataset", type=Path,
                       help="the image + caption folder (else the workflow's Load Dataset folder, under --dataset-root)")
    train.add_argument("--dataset-root", type=Path, default=None,
                       help="the folder a workflow's dataset folder names are relative to (default: the current folder)")
    train.add_argument("--workflow", type=Path, help="a ComfyUI workflow (UI or API format) to take the settings from")
    train.add_argument("--train-node", help="the Train LoRA node's id, when the workflow has several")
    train.add_argument("--settings", type=Path, help="a TOML or JSON file: one table per node, e.g. [train_lora]")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.WIDGET=VALUE",
                       help="one widget, e.g. --set train_lora.rank=16 (repeatable; wins over the files)")
    for flag, (role, widget) in SHORTCUTS.items():
        train.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, help=f"= --set {role}.{widget}")
    train.add_argument("--output-dir", type=Path, default=Path("style_lora_output"),
                       help="run folders (resume state), loras/ and the grid go here (default: ./style_lora_output)")
    train.add_argument("--loras-dir", type=Path, help="where Save Epochs writes the files (default: OUTPUT_DIR/loras)")
    train.add_argument("--grid", action="store_true",
                       help="render the Epoch x Weight grid at the end (the workflow's grid settings, else [grid])")
    train.add_argument("--no-samples", action="store_true",
                       help="skip the workflow's Training Samples (no sampling while training)")
    train.add_argument("--prediction-type", default="auto", choices=["auto", "epsilon", "v_prediction"],
                       help="the checkpoint's target (auto: ComfyUI's v_pred marker key)")
    train.add_argument("--device", default="auto",
                       help="auto: the GPU accelerate assigns to this process (else the CPU); or e.g. cpu, cuda:1")
    train.add_argument("--cache-dir", type=Path, default=None,
                       help="where the tokenizer files built from open-clip's vocabulary are kept")
    train.add_argument("--print-settings", action="store_true", help="print every setting and its source, then stop")
    train.add_argument("--plan", action="store_true",
                       help="print the pre-flight plan (steps, the guide's checks, disk, memory and time from a "
                            "measured warm-up of a few steps), then stop without training")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    return parser.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> Settings:
    assignments = list(args.set)
    for flag, (role, widget) in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            assignments.append(f"{role}.{widget}={value}")
    settings = build_settings(args.workflow, args.settings, assignments, args.train_node)
    # The grid is a separate, long job on a CPU: only when asked for. Samples follow the workflow.
    settings.enabled.discard("grid")
    if args.grid:
        settings.enabled.add("grid")
    if args.no_samples:
        settings.enabled.discard("training_samples")
    return settings


def configure_folders(args: argparse.Namespace, settings: Settings) -> Path:
    """The nodes' folders outside ComfyUI (``integration/paths``): the dataset root, loras, runs."""
    out = args.output_dir.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.dataset is not None:
        dataset = args.dataset.expanduser().resolve()
        roots = [dataset.parent]
        settings.set("load_dataset", "folder", dataset.name, "--dataset")
    else:
        roots = [(args.dataset_root or Path.cwd()).expanduser().resolve()]
    os.environ["STYLE_LORA_DATASET_ROOTS"] = os.pathsep.join(str(r) for r in roots)
    os.environ["STYLE_LORA_LORAS_DIR"] = str((args.loras_dir or out / "loras").expanduser().resolve())
    os.environ["STYLE_LORA_OUTPUT_DIR"] = str(out)
    return out


def start_processes(device: str) -> tuple[Any, Any]:
    """``(torch device, DataParallel)`` of this process: under ``accelerate launch`` (or torchrun) accelerate
    joins the process group (nccl on GPUs, gloo on CPUs) and picks this process's GPU; alone, one process."""
    import torch

    from ..style_lora_engine.data_parallel import SINGLE_PROCESS, from_process_group

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        from accelerate import PartialState
    except ImportError:
        if launched:
            raise StyleLoRAError("Several processes were launched but accelerate is not installed: "
                                 "pip install accelerate") from None
        chosen = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                              ("cpu" if device == "auto" else device))
        return chosen, SINGLE_PROCESS
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=on_cpu)
    chosen = torch.device(state.device if device == "auto" else device)
    if chosen.type == "cpu" and state.num_processes > 1:
        # Processes on one CPU share its cores (else each takes them all and they thrash).
        local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return chosen, from_process_group(chosen)


class ProgressBar:
    """tqdm over Train LoRA's own events: the canvas chart's numbers (loss, d·lr, ETA) in a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, event: str, payload: dict) -> None:
        if event == canvas_contract.EVENT_START and self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=payload["total_steps"], initial=payload["start_step"], unit="step",
                            dynamic_ncols=True, desc="training")
        elif event == canvas_contract.EVENT_STEP and self.bar is not None:
            self.bar.n = payload["step"]
            self.bar.set_postfix_str(f"epoch {payload['epoch']}/{payload['num_epochs']} loss {payload['loss']:.4f} "
                                     f"d·lr {payload['dlr']:.2e}", refresh=False)
            self.bar.refresh()
        elif event == canvas_contract.EVENT_END:
            self.close()

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class BarLogHandler(logging.Handler):
    """The trainer's log lines (epoch saved, validation loss) printed above the bar, not through it."""

    def __init__(self, bar: ProgressBar) -> None:
        super().__init__(logging.INFO)
        self.progress = bar

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.write(self.format(record))


def train(args: argparse.Namespace) -> int:
    from ..nodes import NODE_CLASS_MAPPINGS as NODES
    from .checkpoint import load_checkpoint

    settings = resolve_settings(args)
    out = configure_folders(args, settings)
    if args.print_settings:
        print(settings.describe())
        return 0
    values = settings.values
    device, parallel = start_processes(args.device)
    main = parallel.is_main

    def say(text: str) -> None:  # one process speaks for the group
        if main:
            print(text, flush=True)

    if not main:
        log.setLevel(logging.WARNING)
    cache_dir = (args.cache_dir or out / ".cache").expanduser().resolve()
    say(f"loading {args.checkpoint}")
    model = load_checkpoint(args.checkpoint, cache_dir=cache_dir, prediction_type=args.prediction_type)
    for module in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
        if module is not None:
            module.to(device)
    model.data_parallel = parallel
    say(f"{model.arch} checkpoint, {model.prediction_type}, on {device}"
        + (f", process {parallel.rank} of {parallel.world_size} (global batch = batch_size x "
           f"{parallel.world_size})" if parallel.active else ""))

    dataset, lint = NODES["StyleLoRALoadDataset"]().load(**values["load_dataset"], clip=model)
    say(lint)
    edits = {k: [v] for k, v in values["caption_editor"].items()}
    dataset, _captions = NODES["StyleLoRACaptionEditor"]().edit(dataset=[dataset], **edits)
    dataset, preview = NODES["StyleLoRAShuffleCaption"]().configure(dataset=dataset, **values["shuffle_caption"])["result"]
    say(preview)
    extra: dict[str, Any] = {}
    if "train_options" in settings.enabled:
        (extra["options"],) = NODES["StyleLoRATrainOptions"]().options(**values["train_options"])
    if "training_samples" in settings.enabled:
        (extra["samples"],) = NODES["StyleLoRATrainingSamples"]().configure(**values["training_samples"])

    if args.plan:
        return print_plan(model, dataset, values, extra, parallel, say)
    bar = ProgressBar(enabled=main and not args.no_progress)
    remove = events.add_listener(bar)
    handler = BarLogHandler(bar)
    log.addHandler(handler)
    log.propagate = False
    memory_meter.reset_peak(device)
    try:
        trained = NODES["StyleLoRATrain"]().train(model=model, clip=model, vae=model, dataset=dataset,
                                                  **values["train_lora"], **extra)
    except KeyboardInterrupt:
        bar.close()  # before the message, so it does not land inside the bar's line
        if main:
            print("\nStopped. Every finished epoch is kept in its run folder under "
                  f"{out / 'style_lora_runs'}; run the same command again to resume.", file=sys.stderr)
        return 130
    finally:
        bar.close()
        remove()
        log.removeHandler(handler)
        log.propagate = True
    run, _plot, summary, _plan = trained["result"]
    if not main:
        return 0  # the main process saves the epochs and renders the grid
    print(summary, flush=True)
    peak = memory_meter.peak_bytes(device)
    if peak is not None:
        print(f"Peak memory while training on {device}: {peak / 2**30:.2f} GiB", flush=True)
    epochs, names = NODES["StyleLoRASaveEpochs"]().save(run=run, **values["save_epochs"])["result"]
    print(names, flush=True)
    if "grid" in settings.enabled:
        from ..integration.images import image_to_pil

        grid, table = NODES["StyleLoRAEpochWeightGrid"]().render(model=model, clip=model, vae=model, epochs=epochs,
                                                                 **values["grid"])["result"]
        image_to_pil(grid)[0].save(out / "grid.png")
        (out / "grid_table.json").write_text(json.dumps(json.loads(table), indent=2) + "\n", encoding="utf-8")
        print(f"grid: {out / 'grid.png'}", flush=True)
    return 0


def print_plan(model: Any, dataset: Any, values: dict, extra: dict, parallel: Any, say: Any) -> int:
    """``--plan``: the run's plan with a measured warm-up; nothing is trained or kept."""
    from ..integration import host, paths
    from ..nodes.train_lora import train_config
    from ..style_lora_engine.lora_file import sanitize_name
    from ..style_lora_engine.training_plan import make_plan

    config = train_config(**values["train_lora"], options=extra.get("options"))
    plan = make_plan(host.training_backend(model, model, model), dataset, config, runs_root=paths.runs_dir(),
                     output_name=sanitize_name(values["train_lora"]["output_name"], "output_name"),
                     save_mode=values["save_epochs"]["save"], save_n=values["save_epochs"]["n"], parallel=parallel)
    say(plan.to_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "train":
            return train(args)
    except StyleLoRAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2


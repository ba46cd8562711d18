"""Where the pack may read and write: dataset roots, the loras folders and the runs folder.

Inside ComfyUI: datasets under ComfyUI's input folder (plus ``STYLE_LORA_DATASET_ROOTS``), LoRAs in
the first ``loras`` folder (where LoraLoader lists them), runs in the output folder (its temp
folder is wiped). Outside ComfyUI the demo and tests set ``STYLE_LORA_DATASET_ROOTS``
(os.pathsep-separated), ``STYLE_LORA_LORAS_DIR`` and ``STYLE_LORA_OUTPUT_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..style_lora_engine.atomic import safe_join
from ..style_lora_engine.errors import DatasetError
from . import comfy_modules


def _folder_paths():
    return comfy_modules.comfy_module("folder_paths")


def _env_dirs(name: str) -> list[Path]:
    value = os.environ.get(name, "")
    return [Path(p).resolve() for p in value.split(os.pathsep) if p.strip()]


def dataset_roots() -> list[Path]:
    roots = []
    folder_paths = _folder_paths()
    if folder_paths is not None:
        roots.append(Path(folder_paths.get_input_directory()).resolve())
    roots.extend(_env_dirs("STYLE_LORA_DATASET_ROOTS"))
    if not roots:
        roots.append(Path.cwd().resolve())
    return roots


def is_within(directory: Path, target: Path) -> bool:
    """``target`` inside (or equal to) ``directory`` after resolving links; inside ComfyUI by its own
    ``folder_paths.is_within_directory``, so the pack confines paths exactly as ComfyUI does."""
    folder_paths = _folder_paths()
    check = getattr(folder_paths, "is_within_directory", None) if folder_paths is not None else None
    if check is not None:
        return bool(check(str(directory), str(target)))
    root, path = Path(directory).resolve(), Path(target).resolve()
    return path == root or root in path.parents


def resolve_dataset_folder(folder: str) -> Path:
    """A dataset folder from a widget: relative to the first dataset root (ComfyUI's input folder),
    or absolute inside one of the roots. Anything else is refused, so a shared workflow cannot
    point the pack at arbitrary folders."""
    text = folder.strip()
    if not text:
        raise DatasetError("No dataset folder given. Put your images in a folder under ComfyUI's input "
                           "folder and enter its name, e.g. 'my_style'.")
    roots = dataset_roots()
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        return safe_join(roots[0], text)
    resolved = candidate.resolve()
    for root in roots:
        if is_within(root, resolved):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise DatasetError(
        f"Dataset folder {resolved} is outside the folders this pack may read ({allowed}). Move it "
        "into ComfyUI's input folder, or add its parent to STYLE_LORA_DATASET_ROOTS."
    )


def loras_dir() -> Path:
    folder_paths = _folder_paths()
    if folder_paths is not None:
        return Path(folder_paths.get_folder_paths("loras")[0])
    env = os.environ.get("STYLE_LORA_LORAS_DIR")
    return Path(env) if env else Path.cwd() / "loras"


def lora_search_dirs() -> list[Path]:
    folder_paths = _folder_paths()
    if folder_paths is not None:
        return [Path(p) for p in folder_paths.get_folder_paths("loras")]
    return [loras_dir()]


def runs_dir() -> Path:
    """Where runs keep epoch files and resume state."""
    folder_paths = _folder_paths()
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory()) / "style_lora_runs"
    env = os.environ.get("STYLE_LORA_OUTPUT_DIR")
    return (Path(env) if env else Path.cwd() / "style_lora_output") / "style_lora_runs"


def temp_dir() -> Path:
    """Where preview images go (training samples, the grid shown in its node): ComfyUI's temp folder,
    which ComfyUI's ``/view?type=temp`` serves and wipes at start-up."""
    folder_paths = _folder_paths()
    if folder_paths is not None:
        return Path(folder_paths.get_temp_directory())
    env = os.environ.get("STYLE_LORA_OUTPUT_DIR")
    return (Path(env) if env else Path.cwd() / "style_lora_output") / "temp"

"""Kohya-format LoRA files: names, epoch selection, ``ss_*``/``modelspec.*`` metadata, atomic I/O.

Every epoch file is numbered, the last one too (``name-000020.safetensors``): kohya leaves the
last epoch unnumbered, which breaks epoch grids (sd-scripts#572).
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .config import TrainConfig
from .errors import ConfigError, StyleLoRAError

EPOCH_DIGITS = 6
MAX_NAME_LENGTH = 100
SELECT_MODES = ("all", "every_n", "last_k")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._ -]")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}
_KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")

BASE_MODEL_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
MODELSPEC_ARCHITECTURE = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}
# sd-scripts' sai_model_spec: SD1 LoRAs are "diffusers", SDXL LoRAs the Stability reference code.
MODELSPEC_IMPLEMENTATION = {"sd15": "diffusers", "sdxl": "https://github.com/Stability-AI/generative-models"}
_PREDICTION_TYPES = {"epsilon": "epsilon", "v_prediction": "v", "v": "v"}


# ---------------------------------------------------------------------------------------------
# names


def _clean_stem(stem: str) -> tuple[str, list[str]]:
    """``stem`` made safe as a file or folder name ('' if nothing usable is left), and what changed."""
    changes = []
    safe = _UNSAFE_CHARS.sub("_", stem)
    if safe != stem:
        changes.append("changed to use only letters, digits, '_', '-', '.' and spaces")
    undotted = re.sub(r"\.{2,}", ".", safe).lstrip(". ")  # no ".." anywhere, no hidden files
    cut = undotted[:MAX_NAME_LENGTH]
    out = cut.rstrip(". ")  # Windows drops trailing dots/spaces
    if undotted != safe or out != cut:
        changes.append("stripped of repeated dots and of dots or spaces at its start or end")
    if len(undotted) > MAX_NAME_LENGTH:
        changes.append(f"shortened to {MAX_NAME_LENGTH} characters")
    if not out.strip("_-"):
        return "", changes
    if out.split(".")[0].upper() in _WINDOWS_RESERVED:
        out = "_" + out[: MAX_NAME_LENGTH - 1]
        changes.append("given a leading '_' (Windows reserves names like CON and NUL)")
    return out, changes


def _change_note(saved: str, changes: list[str], what: str = "name") -> str:
    return f"saved as {saved!r} (the {what} was {'; '.join(changes)})" if changes else ""


def explain_sanitized_name(name: object, field: str = "name") -> tuple[str, str]:
    """:func:`sanitize_name` and a note saying how the name was changed ('' if only the spaces around
    it or a '.safetensors' ending were dropped), e.g. "saved as 'x' (the name was shortened to 100
    characters)": a node shows it so a changed name is never a surprise. Errors name ``field``."""
    if not isinstance(name, str):
        raise ConfigError(f"{field}: the LoRA name must be text, got {type(name).__name__}.")
    stem = name.strip()
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")].strip()
    if "/" in stem or "\\" in stem or stem in (".", ".."):
        raise ConfigError(
            f"{field} {name!r} looks like a path. Use a plain name such as 'my_style'; "
            "files are always written to the output folder."
        )
    safe, changes = _clean_stem(stem)
    if not safe:
        raise ConfigError(
            f"{field} {name!r} has no usable characters. Use letters, digits, '_', '-', '.' or spaces, "
            "e.g. 'my_style'."
        )
    return safe, _change_note(safe, changes)


def sanitize_name(name: str, field: str = "name") -> str:
    """A safe file stem from a user-typed LoRA name (``field``: the option it came from, for errors).

    Path-like names (``a/b``, ``/abs``, ``../x``, ``..``) are refused rather than silently
    rewritten: the user meant a location, and the output folder is chosen elsewhere.
    """
    return explain_sanitized_name(name, field)[0]


def sanitize_subfolder(subfolder: object, field: str = "subfolder") -> tuple[tuple[str, ...], str]:
    """The folders of a user-typed subfolder inside the loras folder (none for ''), each made safe like
    a name, and a note if that changed them. Absolute paths, drives, '..' and NUL are refused: they
    mean a place outside the loras folder, which must not be rewritten into one inside it."""
    if not isinstance(subfolder, str):
        raise ConfigError(f"{field} must be text (a folder inside the loras folder), got {subfolder!r}.")
    text = subfolder.strip()
    fix = "Use a folder inside the loras folder such as 'styles' or 'styles/sd15', or leave it empty."
    if "\0" in text:
        raise ConfigError(f"{field} {subfolder!r} contains a NUL character. {fix}")
    unified = text.replace("\\", "/")
    if unified.startswith("/") or re.match(r"[A-Za-z]:", unified):
        raise ConfigError(f"{field} {subfolder!r} is an absolute path (or names a drive); LoRAs are always "
                          f"saved in the loras folder. {fix}")
    parts = [p.strip() for p in unified.split("/") if p.strip() not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"{field} {subfolder!r} leads out of the loras folder ('..'). {fix}")
    safe_parts, changes = [], []
    for part in parts:
        safe, part_changes = _clean_stem(part)
        if not safe:
            raise ConfigError(f"{field} {subfolder!r}: the folder name {part!r} has no usable characters. "
                              f"Use letters, digits, '_', '-', '.' or spaces. {fix}")
        safe_parts.append(safe)
        changes.extend(c for c in part_changes if c not in changes)
    return tuple(safe_parts), _change_note("/".join(safe_parts), changes, "subfolder")


def epoch_file_name(name: str, epoch: int) -> str:
    """``<name>-000012.safetensors`` for every epoch, the last one too."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
    return f"{name}-{epoch:0{EPOCH_DIGITS}d}.safetensors"


def list_epoch_files(folder: Path, name: str) -> dict[int, Path]:
    """``{epoch: path}`` of ``<name>-NNNNNN.safetensors`` files in ``folder`` (exact pattern only).

    Temp files (``.<name>.<random>.tmp``) and other runs' files never match.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    pattern = re.compile(re.escape(name) + r"-(\d{" + str(EPOCH_DIGITS) + r",})\.safetensors")
    found: dict[int, Path] = {}
    for entry in folder.iterdir():
        m = pattern.fullmatch(entry.name)
        # The round trip rejects spellings epoch_file_name would never write (e.g. 0000012).
        if m and entry.name == epoch_file_name(name, int(m[1])) and entry.is_file():
            found[int(m[1])] = entry
    return dict(sorted(found.items()))


def select_epochs(epochs: list[int], mode: str, n: int) -> list[int]:
    """Which epochs go into the grid, ascending.

    ``all``: every epoch; ``every_n``: epochs divisible by ``n`` plus always the last;
    ``last_k``: the ``n`` highest.
    """
    if mode not in SELECT_MODES:
        raise ConfigError(f"Unknown epoch selection {mode!r}; choose one of {', '.join(SELECT_MODES)}.")
    unique = sorted(set(int(e) for e in epochs))
    if not unique or mode == "all":
        return unique
    if n < 1:
        raise ConfigError(f"The epoch selection '{mode}' needs n >= 1, got {n}.")
    if mode == "every_n":
        chosen = {e for e in unique if e % n == 0}
        chosen.add(unique[-1])
        return sorted(chosen)
    return unique[-n:]


# ---------------------------------------------------------------------------------------------
# metadata


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=False, ensure_ascii=False)


def build_metadata(
    *,
    config: TrainConfig,
    arch: str,
    output_name: str,
    epoch: int,
    num_epochs: int,
    steps: int,
    num_batches_per_epoch: int,
    num_train_images: int,
    dataset_dirs: dict[str, dict],
    tag_frequency: dict[str, dict[str, int]],
    bucket_info: dict | None,
    shuffle_caption: bool,
    keep_tokens: int,
    caption_separator: str,
    resolution: tuple[int, int],
    optimizer_repr: str,
    base_model_name: str,
    training_comment: str,
    session_id: str,
    started_at: float,
    seed: int,
    prediction_type: str = "epsilon",
    finished_at: float | None = None,
) -> dict[str, str]:
    """kohya's ``ss_*`` keys and the SAI ``modelspec.*`` keys; every value a ``str``.

    Nested values (dataset dirs, tag frequency, bucket info, network args) are JSON, as kohya
    writes them, so A1111/ComfyUI metadata viewers and civitai read them.
    ``num_train_images`` counts repeats (kohya's meaning). ``resolution`` is (width, height).
    """
    if arch not in BASE_MODEL_VERSION:
        raise ConfigError(f"Unknown architecture {arch!r}; expected one of {', '.join(BASE_MODEL_VERSION)}.")
    if prediction_type not in _PREDICTION_TYPES:
        raise ConfigError(f"Unknown prediction type {prediction_type!r} (epsilon or v_prediction).")
    width, height = (int(resolution[0]), int(resolution[1]))
    finished = time.time() if finished_at is None else finished_at
    meta: dict[str, Any] = {
        # kohya's minimum set (kept even with --no_metadata)
        "ss_network_module": "networks.lora",
        "ss_network_dim": config.rank,
        "ss_network_alpha": float(config.alpha),
        "ss_network_args": _json({}),  # plain LoRA, kohya's default targets: no extra args
        "ss_v2": False,
        "ss_base_model_version": BASE_MODEL_VERSION[arch],
        # run
        "ss_session_id": session_id,
        "ss_output_name": output_name,
        "ss_training_started_at": started_at,
        "ss_training_finished_at": finished,
        "ss_training_comment": training_comment,
        "ss_sd_model_name": base_model_name,
        "ss_epoch": epoch,
        "ss_num_epochs": num_epochs,
        "ss_steps": steps,
        "ss_max_train_steps": num_batches_per_epoch * num_epochs,
        "ss_num_train_images": num_train_images,
        "ss_num_batches_per_epoch": num_batches_per_epoch,
        "ss_total_batch_size": config.batch_size,
        "ss_gradient_accumulation_steps": 1,
        "ss_seed": seed,
        # optimisation
        "ss_optimizer": optimizer_repr,
        "ss_learning_rate": config.learning_rate,
        "ss_unet_lr": config.learning_rate,
        # U-Net only: the text encoder is frozen, so its effective learning rate is 0.
        "ss_text_encoder_lr": 0.0,
        "ss_network_train_unet_only": True,
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": config.lr_warmup_steps,
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_mixed_precision": config.mixed_precision,
        "ss_full_fp16": False,
        "ss_gradient_checkpointing": config.gradient_checkpointing,
        "ss_cache_latents": config.cache_latents,
        # dataset
        "ss_resolution": str((width, height)),
        "ss_enable_bucket": bucket_info is not None,
        "ss_dataset_dirs": _json(dataset_dirs),
        "ss_tag_frequency": _json(tag_frequency),
        "ss_bucket_info": _json(bucket_info),
        "ss_shuffle_caption": shuffle_caption,
        "ss_keep_tokens": keep_tokens,
        "ss_caption_separator": caption_separator,
        # SAI model spec 1.0.1, as sd-scripts writes it for a LoRA
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": MODELSPEC_ARCHITECTURE[arch],
        "modelspec.implementation": MODELSPEC_IMPLEMENTATION[arch],
        "modelspec.title": output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(started_at)).isoformat(),
        "modelspec.prediction_type": _PREDICTION_TYPES[prediction_type],
    }
    for optional in ("noise_offset", "min_snr_gamma"):  # only if the config grows these options
        if hasattr(config, optional):
            meta[f"ss_{optional}"] = getattr(config, optional)
    if training_comment:
        meta["modelspec.description"] = training_comment
    return {key: value if isinstance(value, str) else str(value) for key, value in meta.items()}


# ---------------------------------------------------------------------------------------------
# file I/O


def _write_safetensors(tmp: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write the file (the seam the tests break to simulate a failed write)."""
    from safetensors.torch import save_file

    save_file(tensors, str(tmp), metadata=metadata)


def save_lora_file(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write a safetensors LoRA atomically (``atomic.atomic_path``: temp file beside it, fsync, rename).

    On any failure, Ctrl-C included, the temp file is removed and whatever was at ``path``
    before is left untouched: never a partial file at ``path``.
    """
    path = Path(path)
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise StyleLoRAError(f"LoRA metadata values must be text; not text: {', '.join(map(str, bad))}.")
    if not tensors:
        raise StyleLoRAError(f"Refusing to write {path}: the LoRA has no tensors.")
    # safetensors needs contiguous, non-aliasing CPU-serialisable tensors.
    prepared = {k: v.detach().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        _write_safetensors(tmp, prepared, dict(metadata))


def read_lora_metadata(path: Path) -> dict[str, str]:
    """The file's ``__metadata__`` (``ss_*``, ``modelspec.*``) from the header only: no tensors read.

    safetensors' own reader checks the header (length, JSON, offsets against the file size)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        raise StyleLoRAError(f"{path} is a folder, not a LoRA file.")
    if not path.exists():
        raise StyleLoRAError(f"LoRA file not found: {path}.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise StyleLoRAError(f"{path} is not a valid safetensors file ({exc}). Re-save or delete it.") from exc
    return dict(meta)


def _check_kohya_keys(path: Path, keys: list[str]) -> None:
    if not keys:
        raise StyleLoRAError(f"{path} holds no tensors; it is not a LoRA.")
    foreign = [k for k in keys if not k.startswith("lora_") or not k.endswith(_KOHYA_SUFFIXES)]
    if foreign or not any(k.endswith(".lora_down.weight") for k in keys):
        example = foreign[0] if foreign else keys[0]
        raise StyleLoRAError(
            f"{path} is not a kohya-format LoRA (unexpected tensor {example!r}); "
            "expected lora_unet_*.lora_down/.lora_up/.alpha keys."
        )


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a kohya-format LoRA; :class:`StyleLoRAError` naming the file if not."""
    path = Path(path)
    metadata = read_lora_metadata(path)  # also validates the header
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise StyleLoRAError(f"{path} is not a readable safetensors file ({exc}). Re-save or delete it.") from exc
    _check_kohya_keys(path, list(tensors))
    return tensors, metadata

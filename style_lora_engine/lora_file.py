"""Kohya-format LoRA files: names, epoch selection, ``ss_*``/``modelspec.*`` metadata, atomic I/O.

Every epoch file is numbered, the last one too (``name-000020.safetensors``): kohya leaves the
last epoch unnumbered, which breaks epoch grids (sd-scripts#572).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .buckets import BucketSettings
from .config import TrainConfig
from .errors import ConfigError, StyleLoRAError
from .train_options import NUM_TRAIN_TIMESTEPS, TrainOptions

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
#
# What kohya's sd-scripts train_network.py writes (its ``metadata`` dict, the --train_data_dir dataset
# keys, network_args, model name; then ss_epoch/ss_steps/ss_training_finished_at and the
# modelspec.* keys at every save; networks/lora.py's save_weights adds the sshs_* hashes), with its
# value forms: every value is ``str(python value)``, so an option left at kohya's default None reads
# "None", a flag "True"/"False", nested values JSON. docs/kohya-metadata.md lists every key.

KOHYA_MIXED_PRECISION = {"fp32": "no", "no": "no", "bf16": "bf16", "fp16": "fp16"}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# LyCORIS's module set equal to kohya's networks.lora default (Linear and 1x1 convs in Transformer2DModel).
LYCORIS_KOHYA_PRESET = "attn-mlp"
RESIZE_INTERPOLATION = "lanczos"  # images.prepare_image: PIL LANCZOS, which is kohya's "lanczos"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=False, ensure_ascii=False)


def _off_is_none(value: float | int, kind: type = float) -> float | int | None:
    """kohya's form of an option that is off by default: None (its argparse default) when off."""
    return kind(value) if value else None


def _typed(value: float | int) -> str:
    """A number as a kohya user types it in ``--network_args`` (``conv_dim=8 conv_alpha=1``): kohya
    stores those arguments as the typed strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def kohya_network(options: TrainOptions, *, dora_wd_on_output: bool = True) -> tuple[str, dict[str, Any] | None]:
    """``(ss_network_module, network_args)`` as kohya writes them for a run with ``options``.

    Plain LoRA and LoCon are kohya's ``networks.lora`` (conv_dim / conv_alpha, rank_dropout /
    module_dropout in network_args). DoRA is not in ``networks.lora``; its file layout (``dora_scale``
    beside lora_down/lora_up/alpha) is LyCORIS's, so it is written as kohya writes a LyCORIS DoRA run:
    ``lycoris.kohya`` with ``algo=lora dora_wd=True`` (plus ``preset=attn-mlp``, kohya's module set,
    when there is no conv_dim; ``wd_on_output=False`` if the magnitude is per input channel).
    ``network_args`` is None when kohya would have none (then it writes no ss_network_args); when
    there are some, kohya adds ``"dropout"``: --network_dropout as a number, or null.
    """
    args: dict[str, Any] = {}
    if options.use_dora:
        module = "lycoris.kohya"
        if not options.conv_dim:
            args["preset"] = LYCORIS_KOHYA_PRESET
        args["algo"] = "lora"
        args["dora_wd"] = "True"
        if not dora_wd_on_output:
            args["wd_on_output"] = "False"
    else:
        module = "networks.lora"
    if options.conv_dim:
        args["conv_dim"] = _typed(options.conv_dim)
        args["conv_alpha"] = _typed(options.conv_alpha)
    for name in ("rank_dropout", "module_dropout"):
        if getattr(options, name):
            args[name] = _typed(getattr(options, name))
    if not args:
        return module, None
    args["dropout"] = _off_is_none(options.network_dropout)  # train_network.py: net_kwargs["dropout"]
    return module, args


def kohya_bucket_info(dataset: Any) -> dict[str, Any] | None:
    """kohya's ``ss_bucket_info`` for a :class:`~.dataset.Dataset`: None without bucketing, else
    ``{"buckets": {index: {"resolution": [w, h], "count": images x repeats}}, "mean_img_ar_error": e}``.

    As kohya's BucketManager: the index is the bucket's place among the buckets in use sorted by
    (width, height), and the error is the mean of |bucket aspect ratio - image aspect ratio| over the
    images (without repeats)."""
    settings = dataset.buckets
    if not settings.enabled:
        return None
    counts: dict[tuple[int, int], int] = {}
    errors = []
    for item in dataset.items:
        bucket = tuple(item.bucket)
        counts[bucket] = counts.get(bucket, 0) + dataset.repeats
        errors.append(abs(bucket[0] / bucket[1] - item.width / item.height))
    buckets = {index: {"resolution": list(reso), "count": counts[reso]} for index, reso in enumerate(sorted(counts))}
    return {"buckets": buckets, "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0}


def checkpoint_hashes(path: Path) -> tuple[str, str]:
    """``(ss_sd_model_hash, ss_new_sd_model_hash)`` of a checkpoint file, as kohya computes them
    (train_util.model_hash: SHA-256 of 64 KiB at 1 MiB, first 8 hex digits; calculate_sha256: the
    whole file). Reads the whole file: seconds for a multi-GB checkpoint."""
    full = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        legacy = hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
        fh.seek(0)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            full.update(chunk)
    return legacy, full.hexdigest()


def _kohya_tag_frequency(tag_frequency: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """kohya counts tags lowercased (train_util.set_tag_frequency): merge case variants the same way."""
    merged: dict[str, dict[str, int]] = {}
    for folder, counts in tag_frequency.items():
        target = merged.setdefault(folder, {})
        for tag, count in counts.items():
            target[tag.lower()] = target.get(tag.lower(), 0) + int(count)
    return merged


@functools.lru_cache(maxsize=1)
def _pack_version() -> str:
    """``style-lora-trainer/<version>`` from pyproject.toml (kohya writes ``sd-scripts/<commit>``)."""
    try:
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "style-lora-trainer/unknown"
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return f"style-lora-trainer/{found[1] if found else 'unknown'}"


def _mixed_precision(value: str | torch.dtype | None, config: TrainConfig) -> str:
    name = _DTYPE_NAMES.get(value, value) if isinstance(value, torch.dtype) else value
    name = config.mixed_precision if name is None else name
    if name not in KOHYA_MIXED_PRECISION:
        if name == "auto":
            return "auto"  # unresolved (a caller that does not pass the precision in use)
        raise ConfigError(f"Unknown mixed precision {value!r}; expected fp32, bf16 or fp16.")
    return KOHYA_MIXED_PRECISION[name]


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
    buckets: BucketSettings | None = None,
    mixed_precision: str | torch.dtype | None = None,
    clip_skip: int | None = None,
    max_token_length: int | None = None,
    dora_wd_on_output: bool = True,
    sd_model_hash: str | None = None,
    new_sd_model_hash: str | None = None,
    processes: int = 1,
) -> dict[str, str]:
    """kohya's ``ss_*`` keys and the SAI ``modelspec.*`` keys; every value a ``str``.

    Nested values (dataset dirs, tag frequency, bucket info, network args) are JSON, as kohya
    writes them, so A1111/ComfyUI metadata viewers and civitai read them.
    ``num_train_images`` counts repeats (kohya's meaning). ``resolution`` is (width, height).
    ``bucket_info``: :func:`kohya_bucket_info` (None without bucketing). ``finished_at``: when this
    epoch's file is saved (now if not given).

    Optional, for what only the caller knows (left out, the keys they feed are as noted):

    * ``buckets``: the dataset's :class:`BucketSettings` (ss_min/max_bucket_reso, ss_bucket_no_upscale;
      left out without it);
    * ``mixed_precision``: the precision in use, "fp32"/"bf16"/"fp16" or a torch dtype ("auto"
      resolved); default ``config.mixed_precision``;
    * ``clip_skip``: the text encoder layer counted from the end (2 = penultimate), None = the
      model's default layer (kohya's None);
    * ``max_token_length``: where the text encoding cuts a caption (225 for 3 CLIP windows); None
      when it cuts nowhere (ComfyUI's CLIP): kohya has no value for that (its "None" means 75
      tokens), so ss_max_token_length is left out;
    * ``dora_wd_on_output``: whether a DoRA file's ``dora_scale`` is per output channel (peft's
      layout, LyCORIS's default) or per input channel;
    * ``sd_model_hash`` / ``new_sd_model_hash``: :func:`checkpoint_hashes` of the base model file
      (kohya writes them only when it has the file).
    """
    if arch not in BASE_MODEL_VERSION:
        raise ConfigError(f"Unknown architecture {arch!r}; expected one of {', '.join(BASE_MODEL_VERSION)}.")
    if prediction_type not in _PREDICTION_TYPES:
        raise ConfigError(f"Unknown prediction type {prediction_type!r} (epsilon or v_prediction).")
    width, height = (int(resolution[0]), int(resolution[1]))
    finished = time.time() if finished_at is None else finished_at
    options = config.options
    v_pred = _PREDICTION_TYPES[prediction_type] == "v"
    network_module, network_args = kohya_network(options, dora_wd_on_output=dora_wd_on_output)
    # kohya refuses "constant" with warmup steps; constant + warmup is its "constant_with_warmup".
    scheduler = config.lr_scheduler
    if scheduler == "constant" and config.lr_warmup_steps > 0:
        scheduler = "constant_with_warmup"
    enable_bucket = buckets.enabled if buckets is not None else bucket_info is not None
    meta: dict[str, Any] = {
        # kohya's minimum set (kept even with --no_metadata); ss_network_args only with network args
        "ss_network_module": network_module,
        "ss_network_dim": config.rank,
        "ss_network_alpha": float(config.alpha),
        "ss_v2": False,
        # kohya: model_util.get_model_version_str_for_sd1_sd2 adds "_v" for v-prediction; SDXL has one name.
        "ss_base_model_version": BASE_MODEL_VERSION[arch] + ("_v" if v_pred and arch == "sd15" else ""),
        # run
        "ss_session_id": session_id,
        "ss_output_name": output_name,
        "ss_training_started_at": started_at,
        "ss_training_finished_at": finished,
        "ss_training_comment": training_comment or None,  # kohya: None without --training_comment
        "ss_sd_model_name": base_model_name,
        "ss_epoch": epoch,
        "ss_num_epochs": num_epochs,
        "ss_steps": steps,
        "ss_max_train_steps": num_batches_per_epoch * num_epochs,
        "ss_num_train_images": num_train_images,
        "ss_num_validation_images": 0,
        "ss_num_reg_images": 0,
        "ss_num_batches_per_epoch": num_batches_per_epoch,
        "ss_batch_size_per_device": config.batch_size,
        "ss_total_batch_size": config.batch_size * processes,  # data-parallel processes; no accumulation
        "ss_gradient_accumulation_steps": 1,
        "ss_seed": seed,
        # optimisation
        "ss_optimizer": optimizer_repr,
        "ss_learning_rate": config.learning_rate,
        "ss_unet_lr": config.learning_rate,
        # U-Net only: no text encoder learning rate, as kohya writes it with --network_train_unet_only.
        "ss_text_encoder_lr": None,
        "ss_network_train_unet_only": True,  # not a kohya key: kohya's flag is not in its metadata
        "ss_lr_scheduler": scheduler,
        "ss_lr_warmup_steps": config.lr_warmup_steps,
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_scale_weight_norms": None,
        "ss_network_dropout": _off_is_none(options.network_dropout),
        # precision and memory
        "ss_mixed_precision": _mixed_precision(mixed_precision, config),
        "ss_full_fp16": False,  # the LoRA weights train in fp32 (only the frozen model is half)
        "ss_fp8_base": False,
        "ss_fp8_base_unet": False,
        "ss_gradient_checkpointing": config.gradient_checkpointing,
        "ss_cache_latents": config.cache_latents,
        "ss_lowram": False,
        # text encoder
        "ss_clip_skip": clip_skip,
        # noise
        "ss_noise_offset": _off_is_none(options.noise_offset),
        "ss_noise_offset_random_strength": options.noise_offset_random_strength,
        "ss_adaptive_noise_scale": _off_is_none(options.adaptive_noise_scale),
        "ss_multires_noise_iterations": _off_is_none(options.multires_noise_iterations, int),
        "ss_multires_noise_discount": float(options.multires_noise_discount),
        "ss_ip_noise_gamma": None,
        "ss_ip_noise_gamma_random_strength": False,
        "ss_zero_terminal_snr": False,
        # loss
        "ss_min_snr_gamma": _off_is_none(options.min_snr_gamma),
        "ss_debiased_estimation": options.debiased_estimation_loss,
        "ss_loss_type": options.loss_type,
        "ss_huber_schedule": options.huber_schedule,
        "ss_huber_scale": float(options.huber_scale),
        "ss_huber_c": float(options.huber_c),
        "ss_masked_loss": options.masked_loss,  # not a kohya key: kohya does not record --masked_loss
        "ss_prior_loss_weight": 1.0,  # kohya's default; there are no regularisation images
        # validation: none
        "ss_validation_seed": None,
        "ss_validation_split": 0.0,
        "ss_max_validation_steps": None,
        "ss_validate_every_n_epochs": None,
        "ss_validate_every_n_steps": None,
        # dataset (kohya's --train_data_dir keys)
        "ss_resolution": str((width, height)),
        "ss_enable_bucket": enable_bucket,
        "ss_dataset_dirs": _json(dataset_dirs),
        "ss_reg_dataset_dirs": _json({}),
        "ss_tag_frequency": _json(_kohya_tag_frequency(tag_frequency)),
        "ss_bucket_info": _json(bucket_info),
        "ss_shuffle_caption": shuffle_caption,
        "ss_keep_tokens": keep_tokens,
        "ss_caption_separator": caption_separator,  # not a kohya key (kohya does not record it)
        "ss_caption_dropout_rate": 0.0,
        "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": 0.0,
        "ss_color_aug": False,
        "ss_flip_aug": False,
        "ss_random_crop": False,  # images are cover-resized and centre-cropped
        "ss_face_crop_aug_range": None,
        "ss_resize_interpolation": RESIZE_INTERPOLATION,
    }
    if buckets is not None:
        eff = buckets.effective(max(width, height))
        meta["ss_bucket_no_upscale"] = bool(eff.enabled and eff.no_upscale)
        meta["ss_min_bucket_reso"] = eff.min_size if eff.enabled else None
        meta["ss_max_bucket_reso"] = eff.max_size if eff.enabled else None
    if max_token_length is not None:
        meta["ss_max_token_length"] = int(max_token_length)
    if network_args is not None:
        meta["ss_network_args"] = _json(network_args)
    if sd_model_hash is not None:
        meta["ss_sd_model_hash"] = sd_model_hash
    if new_sd_model_hash is not None:
        meta["ss_new_sd_model_hash"] = new_sd_model_hash
    # SAI model spec 1.0.1, as sd-scripts writes it for a LoRA (library/sai_model_spec.py)
    meta.update({
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": MODELSPEC_ARCHITECTURE[arch],
        "modelspec.implementation": MODELSPEC_IMPLEMENTATION[arch],
        "modelspec.title": output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(finished)).isoformat(),  # kohya: at each save
        "modelspec.prediction_type": _PREDICTION_TYPES[prediction_type],
        "modelspec.implementation_version": _pack_version(),
    })
    if training_comment:
        meta["modelspec.description"] = training_comment
    if (options.min_timestep, options.max_timestep) != (0, NUM_TRAIN_TIMESTEPS):
        meta["modelspec.timestep_range"] = f"{options.min_timestep},{options.max_timestep}"
    if clip_skip is not None:
        meta["modelspec.encoder_layer"] = str(clip_skip)
    return {key: value if isinstance(value, str) else str(value) for key, value in meta.items()}


# ---------------------------------------------------------------------------------------------
# file I/O


def _write_safetensors(tmp: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write the file (the seam the tests break to simulate a failed write)."""
    from safetensors.torch import save_file

    save_file(tensors, str(tmp), metadata=metadata)


def kohya_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """``sshs_model_hash`` / ``sshs_legacy_hash``, which kohya's networks/lora.py ``save_weights`` adds
    to every file so sd-webui-additional-networks need not hash it: the SHA-256 of the tensor data,
    and the first 8 hex digits of the SHA-256 of 64 KiB at 1 MiB, of the file safetensors makes from
    the tensors and only the ``ss_*`` keys (train_util.precalculate_safetensors_hashes)."""
    from safetensors.torch import save

    data = save(dict(tensors), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    return {"sshs_model_hash": hashlib.sha256(memoryview(data)[8 + header:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]}


def save_lora_file(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write a safetensors LoRA atomically (``atomic.atomic_path``: temp file beside it, fsync, rename).

    Metadata with kohya's ``ss_*`` keys gets kohya's ``sshs_*`` hashes too (:func:`kohya_hashes`; this
    serialises the LoRA once more in memory, as kohya does). On any failure, Ctrl-C included, the temp
    file is removed and whatever was at ``path`` before is left untouched: never a partial file at ``path``.
    """
    path = Path(path)
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise StyleLoRAError(f"LoRA metadata values must be text; not text: {', '.join(map(str, bad))}.")
    if not tensors:
        raise StyleLoRAError(f"Refusing to write {path}: the LoRA has no tensors.")
    # safetensors needs contiguous, non-aliasing CPU-serialisable tensors.
    prepared = {k: v.detach().contiguous() for k, v in tensors.items()}
    metadata = dict(metadata)
    if any(key.startswith("ss_") for key in metadata):
        metadata.update(kohya_hashes(prepared, metadata))
    with atomic_path(path) as tmp:
        _write_safetensors(tmp, prepared, metadata)


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

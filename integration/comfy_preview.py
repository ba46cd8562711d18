"""Render epoch × weight grid cells with ComfyUI's own nodes, called as a graph would call them.

Each cell is ``LoraLoader.load_lora`` (strength_model = strength_clip = the cell's weight) →
``CLIPTextEncode.encode`` → ``EmptyLatentImage.generate`` (width × height, batch = images per
prompt) → ``common_ksampler`` (KSampler: seed, steps, cfg, sampler, scheduler, denoise 1) →
``VAEDecode.decode``, converted to 8-bit the way ``SaveImage``/``PreviewImage`` convert. The same
functions as the user's own LoraLoader + KSampler graph, so the cells equal it by construction (the
e2e tier also compares pixels). Sampling reports progress, previews and Stop through ComfyUI's own
callback.

One LoraLoader serves the whole grid: it keeps the last file it read, so each epoch file is read
once. The prompts are encoded once for every cell, again per cell only when a file also carries
text-encoder keys. Cells cannot share one sampling batch: LoraLoader applies the strength as a
weight patch, so each strength is its own model.

ComfyUI is reached only through ``comfy_modules``; nothing here imports ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from . import comfy_modules, progress
from . import images as images_io
from .socket_types import EpochFile

# kohya / ComfyUI prefixes of text-encoder LoRA keys.
_TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "text_encoders.", "lora_te1_", "lora_te2_")


def has_text_encoder_keys(path: Path) -> bool:
    """Whether a LoRA file also patches the text encoder (its header only, no tensors read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return any(k.startswith(_TEXT_ENCODER_PREFIXES) for k in fh.keys())


def render_grid_cells_comfy(
    model: Any,
    clip: Any,
    vae: Any,
    epoch_files: list[EpochFile],
    weights: list[float],
    prompts: list[str],
    *,
    negative: str = "",
    seed: int = 0,
    images_per_prompt: int = 1,
    steps: int = 20,
    cfg: float = 7.0,
    sampler: str = "euler",
    scheduler: str = "normal",
    width: int = 512,
    height: int = 512,
    on_cell: Callable[[int, int], None] | None = None,
) -> dict[tuple[int, float], list[Image.Image]]:
    """{(epoch, weight): images (prompt-major, then batch index)} for every epoch file and weight.

    Per prompt, the ``images_per_prompt`` images are one KSampler batch from ``seed`` (as an
    EmptyLatentImage batch of that size gives in ComfyUI). Epoch files are found by their
    ``lora_name`` in the loras folders, as LoraLoader finds them.
    """
    nodes = comfy_modules.require_comfy_module("nodes")
    encode = nodes.CLIPTextEncode().encode
    loader = nodes.LoraLoader()
    base_conds = [encode(clip, p)[0] for p in prompts]
    base_negative = encode(clip, negative)[0]
    cells: dict[tuple[int, float], list[Image.Image]] = {}
    total, done = len(epoch_files) * len(weights), 0
    for epoch_file in epoch_files:
        text_keys = has_text_encoder_keys(epoch_file.path)
        for weight in weights:
            cell_model, cell_clip = loader.load_lora(model, clip, epoch_file.lora_name, weight, weight)
            if text_keys and cell_clip is not clip:
                conds = [encode(cell_clip, p)[0] for p in prompts]
                negative_cond = encode(cell_clip, negative)[0]
            else:
                conds, negative_cond = base_conds, base_negative
            cells[(epoch_file.epoch, weight)] = _sample_prompts(
                nodes, cell_model, vae, conds, negative_cond, seed=seed, images_per_prompt=images_per_prompt,
                steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler, width=width, height=height)
            done += 1
            if on_cell:
                on_cell(done, total)
            del cell_model, cell_clip
    return cells


def _sample_prompts(nodes: Any, cell_model: Any, vae: Any, conds: list, negative_cond: Any, *, seed: int,
                    images_per_prompt: int, steps: int, cfg: float, sampler: str, scheduler: str, width: int,
                    height: int) -> list[Image.Image]:
    """One cell: per prompt, EmptyLatentImage → KSampler → VAEDecode, as the user's graph would run them."""
    images: list[Image.Image] = []
    for positive in conds:
        progress.check_interrupt()
        (latent,) = nodes.EmptyLatentImage().generate(width, height, images_per_prompt)
        (sampled,) = nodes.common_ksampler(cell_model, seed, steps, cfg, sampler, scheduler, positive,
                                           negative_cond, latent, denoise=1.0)
        (decoded,) = nodes.VAEDecode().decode(vae, sampled)
        images.extend(images_io.image_to_pil(decoded))
    return images


def render_samples_comfy(model: Any, clip: Any, vae: Any, lora_path: Path | None, weights: list[float],
                         prompts: list[str], *, negative: str = "", seed: int = 0, images_per_prompt: int = 1,
                         steps: int = 20, cfg: float = 7.0, sampler: str = "euler", scheduler: str = "normal",
                         width: int = 512, height: int = 512) -> list[tuple[float | None, list[Image.Image]]]:
    """Samples of one epoch file while training runs: [(weight, images)] per weight, or [(None, images)]
    of the base model for ``lora_path`` None.

    The file is read and applied with the two ComfyUI functions ``LoraLoader.load_lora`` calls
    (``comfy.utils.load_torch_file`` and ``comfy.sd.load_lora_for_models``): the run folder is not a loras
    folder, so LoraLoader itself cannot find it by name; the model is then what LoraLoader would give for
    the same file once Save Epochs has published it."""
    nodes = comfy_modules.require_comfy_module("nodes")
    encode = nodes.CLIPTextEncode().encode
    settings = dict(seed=seed, images_per_prompt=images_per_prompt, steps=steps, cfg=cfg, sampler=sampler,
                    scheduler=scheduler, width=width, height=height)
    if lora_path is None:
        conds = [encode(clip, p)[0] for p in prompts]
        return [(None, _sample_prompts(nodes, model, vae, conds, encode(clip, negative)[0], **settings))]
    utils = comfy_modules.require_comfy_module("comfy.utils")
    sd = comfy_modules.require_comfy_module("comfy.sd")
    lora, metadata = utils.load_torch_file(str(lora_path), safe_load=True, return_metadata=True)
    out: list[tuple[float | None, list[Image.Image]]] = []
    for weight in weights:
        if weight == 0:  # LoraLoader returns the model itself at strength 0
            cell_model, cell_clip = model, clip
        else:
            cell_model, cell_clip = sd.load_lora_for_models(model, clip, lora, weight, weight, lora_metadata=metadata)
        conds = [encode(cell_clip, p)[0] for p in prompts]
        out.append((weight, _sample_prompts(nodes, cell_model, vae, conds, encode(cell_clip, negative)[0],
                                            **settings)))
        del cell_model, cell_clip
    return out

"""The one place that talks to ComfyUI. Every ComfyUI import is lazy, inside a function, so the
nodes import and run without ComfyUI (demo, CLI, tests) with sensible fallbacks.

Folders outside ComfyUI come from environment variables (the demo and tests set them):
``STYLE_LORA_DATASET_ROOTS`` (os.pathsep-separated), ``STYLE_LORA_LORAS_DIR``,
``STYLE_LORA_OUTPUT_DIR``. Inside ComfyUI the dataset roots are ComfyUI's input directory plus
``STYLE_LORA_DATASET_ROOTS``; LoRAs go to the first ``loras`` folder; runs to the output directory.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .canvas_contract import EVENT_END, EVENT_EPOCH, EVENT_START, EVENT_STEP  # noqa: F401 - re-exported

log = logging.getLogger("style_lora_trainer")


FALLBACK_SAMPLERS = ["euler", "euler_ancestral", "ddim", "dpmpp_2m", "uni_pc"]
FALLBACK_SCHEDULERS = ["normal", "karras"]


def _comfy(module: str) -> Any | None:
    """Import a ComfyUI module if we are running inside ComfyUI, else None."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def comfy_module(module: str) -> Any | None:
    """A ComfyUI module (``"comfy.sample"``, ``"comfy.model_management"``, ...) or None outside ComfyUI.

    The ComfyUI-specific modules of the pack (``comfy_backend``, ``comfy_preview``) get ComfyUI only
    through this, so they import without it and tests can stand in for it.
    """
    return _comfy(module)


def require_comfy_module(module: str) -> Any:
    """Like :func:`comfy_module`, but a clear error when ComfyUI is not there."""
    found = _comfy(module)
    if found is None:
        from ..style_lora_engine.errors import StyleLoRAError

        raise StyleLoRAError(f"This needs ComfyUI's {module!r}, which is not importable here.")
    return found


def is_comfy_model(model: Any) -> bool:
    """A ComfyUI MODEL (a ModelPatcher around a BaseModel with a ``diffusion_model``), by shape."""
    inner = getattr(model, "model", None)
    return (inner is not None and hasattr(inner, "diffusion_model") and hasattr(model, "clone")
            and hasattr(model, "get_model_object"))


def in_comfyui() -> bool:
    return _comfy("folder_paths") is not None and _comfy("comfy.model_management") is not None


def _env_dirs(name: str) -> list[Path]:
    value = os.environ.get(name, "")
    return [Path(p).resolve() for p in value.split(os.pathsep) if p.strip()]


def dataset_roots() -> list[Path]:
    roots = []
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        roots.append(Path(folder_paths.get_input_directory()).resolve())
    roots.extend(_env_dirs("STYLE_LORA_DATASET_ROOTS"))
    if not roots:
        roots.append(Path.cwd().resolve())
    return roots


def is_within(directory: Path, target: Path) -> bool:
    """``target`` inside (or equal to) ``directory`` after resolving links; inside ComfyUI by its own
    ``folder_paths.is_within_directory``, so the pack confines paths exactly as ComfyUI does."""
    folder_paths = _comfy("folder_paths")
    check = getattr(folder_paths, "is_within_directory", None) if folder_paths is not None else None
    if check is not None:
        return bool(check(str(directory), str(target)))
    root, path = Path(directory).resolve(), Path(target).resolve()
    return path == root or root in path.parents


def loras_dir() -> Path:
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_folder_paths("loras")[0])
    env = os.environ.get("STYLE_LORA_LORAS_DIR")
    return Path(env) if env else Path.cwd() / "loras"


def lora_search_dirs() -> list[Path]:
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return [Path(p) for p in folder_paths.get_folder_paths("loras")]
    return [loras_dir()]


def runs_dir() -> Path:
    """Where runs keep epoch files and resume state: ComfyUI's output dir (its temp dir is wiped)."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory()) / "style_lora_runs"
    env = os.environ.get("STYLE_LORA_OUTPUT_DIR")
    return (Path(env) if env else Path.cwd() / "style_lora_output") / "style_lora_runs"


def sampler_names() -> list[str]:
    samplers = _comfy("comfy.samplers")
    return list(samplers.KSampler.SAMPLERS) if samplers else list(FALLBACK_SAMPLERS)


def scheduler_names() -> list[str]:
    samplers = _comfy("comfy.samplers")
    return list(samplers.KSampler.SCHEDULERS) if samplers else list(FALLBACK_SCHEDULERS)


class Progress:
    """ComfyUI's progress bar when available (it also raises on Stop), else nothing."""

    def __init__(self, total: int, node_id: str | None = None) -> None:
        utils = _comfy("comfy.utils")
        self._bar = utils.ProgressBar(total, node_id=node_id) if utils else None

    def update_absolute(self, value: int, total: int | None = None) -> None:
        if self._bar is not None:
            self._bar.update_absolute(value, total)


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Stop."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def is_interrupt(exc: BaseException) -> bool:
    """True for the user's Stop (ComfyUI's InterruptProcessingException) or Ctrl-C."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    mm = _comfy("comfy.model_management")
    interrupt = getattr(mm, "InterruptProcessingException", None) if mm is not None else None
    return interrupt is not None and isinstance(exc, interrupt)


def send_event(event: str, payload: dict) -> None:
    server = _comfy("server")
    if server is not None and getattr(server.PromptServer, "instance", None) is not None:
        server.PromptServer.instance.send_sync(event, payload)


def send_status_text(text: str, node_id: str | None) -> None:
    server = _comfy("server")
    if node_id and server is not None and getattr(server.PromptServer, "instance", None) is not None:
        sender = getattr(server.PromptServer.instance, "send_progress_text", None)
        if sender is not None:
            sender(text, node_id)


def token_counter(clip: Any) -> Callable[[str], int] | None:
    """Count a caption's text-encoder tokens (without start/end tokens), or None if unknown."""
    if clip is None:
        return None
    tokenizer = getattr(clip, "tokenizer", None)
    if tokenizer is not None and callable(tokenizer):  # diffusers model bundle
        from ..style_lora_engine.text_chunks import count_caption_tokens

        return lambda text: count_caption_tokens(tokenizer, text)
    if hasattr(clip, "tokenize"):  # ComfyUI CLIP: tokens come in 77-token windows with start/end
        def count(text: str) -> int:
            tokens = clip.tokenize(text)
            first = tokens["l"] if "l" in tokens else next(iter(tokens.values()))  # SDXL: CLIP-L
            return sum(max(0, sum(1 for t in window if _token_id(t) not in (49406, 49407)))
                       for window in first)

        return count
    return None


def token_cap(clip: Any) -> int | None:
    """Where text encoding cuts a caption: the diffusers path's 3 windows, ComfyUI's CLIP nowhere."""
    if clip is not None and callable(getattr(clip, "tokenizer", None)):
        from ..style_lora_engine.text_chunks import MAX_TOKENS

        return MAX_TOKENS
    return None


def _token_id(token: Any) -> int:
    return int(token[0]) if isinstance(token, (tuple, list)) else int(token)


def training_backend(model: Any, clip: Any, vae: Any) -> Any:
    """The engine backend for the node's MODEL/CLIP/VAE inputs: ComfyUI's objects from a Load
    Checkpoint node, or a diffusers model bundle (demo/CLI/tests)."""
    from ..style_lora_engine.diffusers_backend import DiffusersBackend
    from ..style_lora_engine.errors import ConfigError
    from ..style_lora_engine.model_bundle import DiffusersSD

    if isinstance(model, DiffusersSD):
        return DiffusersBackend(model)
    if is_comfy_model(model):
        from .comfy_backend import ComfyBackend

        return ComfyBackend(model, clip, vae)
    raise ConfigError(
        f"Cannot train a {type(model).__name__}: connect the MODEL, CLIP and VAE outputs of a Load "
        "Checkpoint node (SD1.5 or SDXL)."
    )


@functools.lru_cache(maxsize=1)
def caption_token_counter() -> Callable[[str], int] | None:
    """Count caption tokens with ComfyUI's bundled CLIP tokenizer (the one SD1.5/SDXL use), so the
    caption editor's length badges match what the text encoder sees; None outside ComfyUI."""
    sd1_clip = _comfy("comfy.sd1_clip")
    if sd1_clip is None:
        return None
    folder = Path(sd1_clip.__file__).parent / "sd1_tokenizer"
    try:
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - badges without token counts beat a broken panel
        log.warning("Style LoRA: no caption token counts (%s)", exc)
        return None
    from ..style_lora_engine.text_chunks import make_token_counter

    return make_token_counter(tokenizer)


def register_routes() -> bool:
    """Add the canvas routes (docs/CANVAS.md) to ComfyUI's server; False outside ComfyUI."""
    server = _comfy("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None) if server is not None else None
    if instance is None:
        return False
    if getattr(instance, "_style_lora_routes", False):  # the pack imported twice: aiohttp refuses duplicates
        return True
    from .canvas_routes import add_routes

    add_routes(instance.routes, server.web, token_counter=caption_token_counter)
    instance._style_lora_routes = True
    return True

"""The MODEL, CLIP and VAE that ComfyUI already holds for a checkpoint file: Load Checkpoint's outputs, kept
alive by its prompt cache after a run. The canvas's Measure warms up on them, as a queued Train LoRA would,
instead of loading a second copy whose memory the plan would then count twice.

ComfyUI's loader tags what it returns with the function and arguments that would load it again
(``cached_patcher_init``: the file path first, then the options); its clones (LoraLoader, CLIP Set Last
Layer) carry the same tag and a ``parent``, so only the loader's own, unchanged outputs match.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

# The reload functions comfy.sd tags Load Checkpoint's three outputs with.
MODEL_LOADER = "load_checkpoint_guess_config"
CLIP_LOADER = "load_checkpoint_clip_patcher"
VAE_LOADER = "load_checkpoint_vae_patcher"


class HeldCheckpoint(NamedTuple):
    model: Any
    clip: Any
    vae: Any


def _loaded_plainly(patcher: Any, loader: str, path: str) -> bool:
    """``patcher`` is what ``loader`` made from ``path`` with default options, not a clone nor patched since."""
    try:
        init = patcher.cached_patcher_init
        function, args = init[0], init[1]
        if getattr(function, "__name__", None) != loader or str(args[0]) != path:
            return False
        if any(isinstance(arg, dict) and arg for arg in args):  # model / text-encoder options: another dtype, ...
            return False
        # (object_patches are not looked at: the loader itself sets the CLIP's manual_cast_dtype there.)
        return patcher.parent is None and not patcher.patches
    except Exception:  # noqa: BLE001  (anything shaped otherwise is simply not a match)
        return False


def find_held_checkpoint(path: Path | str, objects: Iterable[Any]) -> HeldCheckpoint | None:
    """Load Checkpoint's MODEL, CLIP and VAE of ``path`` among ``objects`` (``gc.get_objects()``), or None
    unless all three are there."""
    path = str(path)
    model = clip = vae = None
    for obj in objects:
        module = getattr(type(obj), "__module__", None)  # a str, but not for every type in the heap
        if not (isinstance(module, str) and module.startswith("comfy")):
            continue
        if model is None and _loaded_plainly(obj, MODEL_LOADER, path):
            model = obj
        patcher = getattr(obj, "patcher", None) if (clip is None or vae is None) else None
        if patcher is None:
            continue
        if clip is None and hasattr(obj, "tokenize") and _loaded_plainly(patcher, CLIP_LOADER, path):
            clip = obj
        elif vae is None and hasattr(obj, "encode") and _loaded_plainly(patcher, VAE_LOADER, path):
            vae = obj
        if model is not None and clip is not None and vae is not None:
            break
    if model is None or clip is None or vae is None:
        return None
    return HeldCheckpoint(model, clip, vae)

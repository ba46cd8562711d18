"""Images shown in the canvas while (or after) a node runs: PNGs in ComfyUI's temp folder, named the way
``PreviewImage`` names them, so ``/view?filename=…&subfolder=…&type=temp`` serves them and a node's
``{"ui": {"images": [...]}}`` output shows them to the frontend and to API clients."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from PIL import Image

from ..style_lora_engine.atomic import atomic_path
from . import paths

SUBFOLDER = "style_lora"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def image_ref(filename: str, subfolder: str = SUBFOLDER) -> dict[str, str]:
    """What ComfyUI's frontend and ``/view`` take to find a temp image."""
    return {"filename": filename, "subfolder": subfolder, "type": "temp"}


def save_temp_images(images: list[Image.Image], prefix: str) -> list[dict[str, str]]:
    """Write ``images`` as PNGs into ``<temp>/style_lora/`` and return their image refs, in order.

    Names are ``<prefix>_<random>_<index>.png``: unique per call (two runs never overwrite each other's
    previews), with only safe characters whatever the prefix holds."""
    folder = Path(paths.temp_dir()) / SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    stem = _UNSAFE.sub("_", prefix).strip("._")[:80] or "preview"
    token = uuid.uuid4().hex[:8]
    refs = []
    for index, image in enumerate(images):
        name = f"{stem}_{token}_{index:03d}.png"
        with atomic_path(folder / name) as tmp:
            image.convert("RGB").save(tmp, format="PNG", compress_level=1)
        refs.append(image_ref(name))
    return refs

"""ComfyUI IMAGE tensors (``[B, H, W, C]`` float32 in [0, 1]) ⇄ PIL images, converted the way
ComfyUI's own LoadImage (to IMAGE) and SaveImage/PreviewImage (to 8-bit) convert."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def pil_to_image(img: Image.Image) -> torch.Tensor:
    """One PIL image as an IMAGE batch of 1: ``[1, H, W, 3]`` float32 in [0, 1] (LoadImage's way)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).unsqueeze(0)


def image_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """An IMAGE (``[B, H, W, C]`` or ``[H, W, C]``, C = 1/3/4) as 8-bit PIL images, exactly as
    SaveImage/PreviewImage write them (``255 * x``, clipped, truncated to uint8)."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected an IMAGE tensor [B, H, W, C] with C in 1/3/4, got {tuple(images.shape)}.")
    out = []
    for image in images:
        arr = np.clip(255.0 * image.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(np.ascontiguousarray(arr[..., 0] if arr.shape[-1] == 1 else arr)))
    return out

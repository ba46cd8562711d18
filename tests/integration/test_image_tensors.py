"""IMAGE tensors ⇄ PIL, converted as ComfyUI's LoadImage and SaveImage convert."""

import numpy as np
import pytest
import torch
from PIL import Image

from style_lora_trainer.integration.images import image_to_pil, pil_to_image


def test_tensor_round_trip() -> None:
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8))
    t = pil_to_image(src)
    assert t.shape == (1, 12, 20, 3) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    back = image_to_pil(t)
    assert len(back) == 1 and back[0].size == (20, 12)
    assert np.array_equal(np.asarray(back[0]), np.asarray(src))


def test_image_to_pil_batches_and_modes() -> None:
    batch = torch.rand(3, 8, 9, 3) * 1.4 - 0.2  # out of range values are clamped
    imgs = image_to_pil(batch)
    assert len(imgs) == 3 and all(i.size == (9, 8) and i.mode == "RGB" for i in imgs)
    assert image_to_pil(torch.rand(8, 9, 4))[0].mode == "RGBA"
    assert image_to_pil(torch.rand(1, 8, 9, 1))[0].mode == "L"
    rgba = pil_to_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    assert rgba.shape == (1, 4, 4, 3)
    with pytest.raises(ValueError):
        image_to_pil(torch.rand(1, 3, 8, 8))  # BCHW is not an IMAGE


def test_save_image_conversion_truncates_like_comfyui():
    image = torch.tensor([[[[0.0, 0.5, 1.0], [0.99999, 1.2, -0.1]]]])
    (pil,) = image_to_pil(image)
    assert np.asarray(pil).tolist() == [[[0, 127, 255], [254, 255, 0]]]

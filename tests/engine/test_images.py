from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from style_lora_trainer.style_lora_engine.errors import DatasetError
from style_lora_trainer.style_lora_engine.images import (
    IMAGE_EXTENSIONS,
    image_size,
    is_image_file,
    open_image_rgb,
    prepare_image,
    to_rgb,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def halves(w: int, h: int, left=RED, right=BLUE) -> Image.Image:
    """Left half ``left``, right half ``right``."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2 :] = right
    return Image.fromarray(arr, "RGB")


def close(pixel, expected, tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True))


def test_extensions_case_insensitive() -> None:
    assert IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".webp", ".bmp")
    assert is_image_file("A.PNG") and is_image_file("b.JpEg") and is_image_file("c.webp")
    assert not is_image_file("a.txt") and not is_image_file("a.gif") and not is_image_file("png")


def test_exif_rotated_jpeg_is_upright(tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display = stored rotated 90 degrees clockwise
    halves(40, 20).save(path, exif=exif.tobytes(), quality=95)
    assert image_size(path) == (20, 40)
    img = open_image_rgb(path)
    assert img.mode == "RGB" and img.size == (20, 40)
    # Clockwise rotation moves the stored left (red) half to the top.
    assert close(img.getpixel((10, 5)), RED, 40)
    assert close(img.getpixel((10, 35)), BLUE, 40)


def test_image_size_without_exif_and_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plain.png"
    halves(30, 10).save(path)

    def no_decode(self):  # image_size must not need the pixels
        raise AssertionError("decoded pixels")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    assert image_size(path) == (30, 10)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[:, :2] = (255, 0, 0, 255)  # opaque red
    arr[:, 2:] = (0, 0, 0, 0)  # fully transparent black
    arr[0, 3] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    path = tmp_path / "a.png"
    Image.fromarray(arr, "RGBA").save(path)
    img = open_image_rgb(path)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == RED
    assert img.getpixel((3, 3)) == WHITE
    assert close(img.getpixel((3, 0)), (127, 127, 127), 2)


def test_la_composited_on_white() -> None:
    img = Image.new("LA", (2, 1), (0, 0))
    img.putpixel((1, 0), (0, 255))
    out = to_rgb(img)
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == (0, 0, 0)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 2), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 1)
    img.info["transparency"] = 0
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    out = open_image_rgb(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == RED
    assert out.getpixel((3, 1)) == WHITE  # transparent index is white, not black


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 2), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    path = tmp_path / "p.bmp"
    img.save(path)
    out = open_image_rgb(path)
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (0, 255, 0)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    img16 = Image.fromarray(arr)
    assert img16.mode.startswith("I;16")
    assert [to_rgb(img16).getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), WHITE]
    path = tmp_path / "deep.png"
    img16.save(path)
    out = open_image_rgb(path)
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), WHITE]


def test_32_bit_integer_mode() -> None:
    eight_bit = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")
    assert to_rgb(eight_bit).getpixel((1, 0)) == (100, 100, 100)
    sixteen = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    assert to_rgb(sixteen).getpixel((1, 0)) == WHITE


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink = white
    cmyk.paste((0, 255, 255, 0), (0, 0, 4, 8))  # magenta + yellow = red
    path = tmp_path / "c.jpg"
    cmyk.save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = open_image_rgb(path)
    assert out.mode == "RGB"
    assert close(out.getpixel((7, 4)), WHITE, 20)
    assert close(out.getpixel((1, 4)), RED, 30)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_gray_and_bilevel(tmp_path: Path, mode: str) -> None:
    img = Image.new(mode, (2, 1), 0)
    img.putpixel((1, 0), 255)
    path = tmp_path / f"{mode}.png"
    img.save(path)
    out = open_image_rgb(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == WHITE


def test_corrupt_file_error_names_file_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not an image")
    with pytest.raises(DatasetError) as info:
        open_image_rgb(path)
    text = str(info.value)
    assert "broken.png" in text and "Re-save it as PNG or JPEG" in text and "remove it" in text
    with pytest.raises(DatasetError, match="broken.png"):
        image_size(path)


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:300])
    with pytest.raises(DatasetError, match="cut.png"):
        open_image_rgb(cut)


def test_prepare_image_covers_and_centre_crops() -> None:
    t = prepare_image(halves(100, 50), 64, 64)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert tuple(t.shape) == (3, 64, 64)
    assert t.min() >= -1.0 and t.max() <= 1.0
    # 100x50 -> 128x64, crop columns 32..96: left half of the crop red, right half blue.
    assert torch.allclose(t[:, 32, 5], torch.tensor([1.0, -1.0, -1.0]), atol=0.05)
    assert torch.allclose(t[:, 32, 60], torch.tensor([-1.0, -1.0, 1.0]), atol=0.05)


@pytest.mark.parametrize("size, bucket", [((3, 2), (3, 3)), ((10, 4), (7, 7)), ((5, 9), (6, 4)), ((100, 50), (64, 64))])
def test_sdxl_crop_conditioning_is_the_crop_prepare_image_makes(size, bucket) -> None:
    """The crop offset SDXL is told (crop_geometry) is where prepare_image really cut: checked on
    pixels, with sizes whose cover scale lands on .5 (3x2 into 3x3 resizes to 4.5 -> 5 wide)."""
    from style_lora_trainer.style_lora_engine.backend import crop_geometry

    w, h = size
    rng = np.random.default_rng(w * 100 + h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    g = crop_geometry(w, h, bucket)
    assert g.original_hw == (h, w) and g.target_hw == (bucket[1], bucket[0])
    top, left = g.crop_top_left
    scale = max(bucket[0] / w, bucket[1] / h)
    resized = img.resize((max(bucket[0], int(w * scale + 0.5)), max(bucket[1], int(h * scale + 0.5))),
                         Image.Resampling.LANCZOS)
    expected = np.asarray(resized.crop((left, top, left + bucket[0], top + bucket[1])), dtype=np.float32)
    got = prepare_image(img, *bucket)
    assert torch.equal(got, torch.from_numpy(expected.transpose(2, 0, 1) / 127.5 - 1.0))


def test_prepare_image_exact_values_and_non_square_bucket() -> None:
    img = Image.new("RGB", (32, 48), WHITE)
    img.putpixel((0, 0), (0, 0, 0))
    t = prepare_image(img, 32, 48)
    assert tuple(t.shape) == (3, 48, 32)
    assert t[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert t[:, 47, 31].tolist() == [1.0, 1.0, 1.0]
    wide = prepare_image(halves(100, 50), 32, 48)  # scale 0.96 -> 96x48, crop width
    assert tuple(wide.shape) == (3, 48, 32)


def test_prepare_image_converts_odd_modes() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    t = prepare_image(rgba, 8, 8)
    assert torch.allclose(t, torch.ones(3, 8, 8))

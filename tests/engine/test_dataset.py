import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.dataset import (
    Dataset,
    check_caption_extension,
    folder_signature,
    load_dataset,
    normalize_caption,
    normalize_caption_extension,
)
from style_lora_trainer.style_lora_engine.errors import DatasetError, StyleLoRAError
from style_lora_trainer.style_lora_engine.shuffle import ShuffleSettings


def make_image(path: Path, size=(64, 64), color=(200, 30, 30)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def make_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "style"
    folder.mkdir()
    make_image(folder / "b.png", (96, 32), (10, 20, 30))
    (folder / "b.txt").write_text("second image, wide", encoding="utf-8")
    make_image(folder / "A.JPG", (48, 96), (200, 10, 10))
    (folder / "A.txt").write_text("first image, tall", encoding="utf-8")
    make_image(folder / "c.webp", (64, 64), (0, 200, 0))  # no caption file
    (folder / "notes.md").write_text("ignore me")
    make_image(folder / ".hidden.png")
    sub = folder / "10_sub"
    sub.mkdir()
    make_image(sub / "nested.png")
    return folder


def test_load_dataset_order_captions_and_sizes(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    ds = load_dataset(folder, repeats=10, resolution=64, buckets=BucketSettings(min_size=32, step=32))
    names = [item.image_path.name for item in ds.items]
    assert names == ["A.JPG", "b.png", "c.webp"]  # sorted, uppercase ext found, hidden/subfolder ignored
    a, b, c = ds.items
    assert a.caption == "first image, tall" and a.original_caption == a.caption and not a.caption_missing
    assert (a.width, a.height) == (48, 96)
    assert a.caption_path == folder / "A.txt"
    assert c.caption == "" and c.caption_missing and c.caption_path == folder / "c.txt"
    assert b.bucket[0] > b.bucket[1] and a.bucket[0] < a.bucket[1]  # wide and tall buckets
    assert ds.num_train_images() == 30
    assert ds.caption_extension == ".txt"
    assert ds.skipped == ()


def test_pixel_hash_detects_identical_pixels(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    make_image(folder / "one.png", color=(1, 2, 3))
    make_image(folder / "two.bmp", color=(1, 2, 3))
    make_image(folder / "three.png", color=(1, 2, 4))
    ds = load_dataset(folder, resolution=64)
    hashes = {item.image_path.name: item.pixel_hash for item in ds.items}
    assert hashes["one.png"] == hashes["two.bmp"]
    assert hashes["one.png"] != hashes["three.png"]


def test_exif_orientation_applied_to_size(tmp_path: Path) -> None:
    folder = tmp_path / "exif"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (80, 40), (50, 50, 50)).save(folder / "r.jpg", exif=exif.tobytes())
    item = load_dataset(folder, resolution=64).items[0]
    assert (item.width, item.height) == (40, 80)


def test_caption_bom_and_normalisation(tmp_path: Path) -> None:
    folder = tmp_path / "cap"
    folder.mkdir()
    make_image(folder / "x.png")
    (folder / "x.caption").write_bytes("\ufeffsepia photograph,\n  storefront   with\tmannequins \r\n\nby Atget\n".encode())
    ds = load_dataset(folder, caption_extension=".caption", resolution=64)
    assert ds.caption_extension == ".caption"
    assert ds.items[0].caption == "sepia photograph, storefront with mannequins, by Atget"


def test_normalize_caption() -> None:
    assert normalize_caption("  a  b  ") == "a b"
    assert normalize_caption("a\nb\n\nc") == "a, b, c"
    assert normalize_caption("a,\nb") == "a, b"
    assert normalize_caption("\n \n") == ""


def test_caption_extension_validation() -> None:
    assert normalize_caption_extension(".txt") == ".txt"
    assert normalize_caption_extension("txt") == normalize_caption_extension(" .txt ") == ".txt"
    for bad in ["", ".", "../x", "a/b", ".tar.gz", "7", ".7"]:
        with pytest.raises(DatasetError):
            normalize_caption_extension(bad)


def test_invalid_utf8_caption(tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    folder.mkdir()
    make_image(folder / "x.png")
    (folder / "x.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DatasetError) as info:
        load_dataset(folder, resolution=64)
    assert "x.txt" in str(info.value) and "UTF-8" in str(info.value)


def test_missing_folder_and_no_images(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset(tmp_path / "file.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match="No images"):
        load_dataset(empty)
    (empty / "10_style").mkdir()
    with pytest.raises(DatasetError, match="10_style"):
        load_dataset(empty)
    with pytest.raises(DatasetError, match="No dataset folder"):
        load_dataset("")


@pytest.mark.parametrize("repeats", [0, 101, -1, 2.5, True])
def test_repeats_validated(tmp_path: Path, repeats) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    make_image(folder / "x.png")
    with pytest.raises(DatasetError, match="repeats"):
        load_dataset(folder, repeats=repeats)


def test_repeats_bounds_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    make_image(folder / "x.png")
    assert load_dataset(folder, repeats=1, resolution=64).num_train_images() == 1
    assert load_dataset(folder, repeats=100, resolution=64).num_train_images() == 100


def test_unreadable_image_raises_or_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    make_image(folder / "good.png")
    (folder / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="bad.jpg"):
        load_dataset(folder, resolution=64)
    ds = load_dataset(folder, resolution=64, skip_unreadable=True)
    assert [i.image_path.name for i in ds.items] == ["good.png"]
    assert len(ds.skipped) == 1 and ds.skipped[0][0].name == "bad.jpg" and "bad.jpg" in ds.skipped[0][1]
    (folder / "good.png").unlink()
    with pytest.raises(DatasetError, match="unreadable"):
        load_dataset(folder, resolution=64, skip_unreadable=True)


def test_dataset_is_immutable_and_with_methods_copy(tmp_path: Path) -> None:
    ds = load_dataset(make_folder(tmp_path), resolution=64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.repeats = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.items[0].caption = "x"  # type: ignore[misc]
    new = ds.with_captions(["one", "two", "three"])
    assert new is not ds and new.captions() == ["one", "two", "three"]
    assert ds.captions() == ["first image, tall", "second image, wide", ""]
    assert new.items[0].original_caption == "first image, tall"
    with pytest.raises(StyleLoRAError, match="2 captions for 3 images"):
        ds.with_captions(["a", "b"])
    shuffled = ds.with_shuffle(ShuffleSettings(seed=4))
    assert shuffled.shuffle == ShuffleSettings(seed=4) and ds.shuffle is None
    assert isinstance(hash(ds), int)  # usable as a cache key


def test_bucket_counts_and_summary(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    arr = np.full((128, 256, 3), 9, dtype=np.uint8)
    for name in ("w1.png", "w2.png"):
        Image.fromarray(arr).save(folder / name)
    make_image(folder / "sq.png", (128, 128))
    settings = BucketSettings(min_size=32, step=32)
    ds = load_dataset(folder, repeats=12, resolution=128, buckets=settings).with_shuffle(ShuffleSettings())
    # 2:1 images go to the nearest-ratio bucket 160x96 (1.67); keys sorted.
    assert list(ds.bucket_counts().items()) == [((128, 128), 1), ((160, 96), 2)]
    groups = ds.items_by_bucket()
    assert [len(v) for v in groups.values()] == [1, 2] and sorted(i for v in groups.values() for i in v) == [0, 1, 2]
    assert all(ds.items[i].bucket == b for b, v in groups.items() for i in v)
    summary = ds.summary()
    json.dumps(summary)  # JSON-able
    assert summary["folder"] == "s" and summary["images"] == 3 and summary["repeats"] == 12
    assert summary["train_images_per_epoch"] == 36
    assert summary["buckets"] == {"128x128": 1, "160x96": 2}
    assert summary["shuffle"]["keep_tokens"] == 1
    assert str(tmp_path) not in json.dumps(summary)


def test_bucketing_disabled_uses_square(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    ds = load_dataset(folder, resolution=64, buckets=BucketSettings(enabled=False))
    assert {item.bucket for item in ds.items} == {(64, 64)}


def test_dataset_type_exported() -> None:
    fields = {f.name for f in dataclasses.fields(Dataset)}
    assert fields == {
        "folder", "items", "repeats", "resolution", "caption_extension", "buckets", "skipped", "shuffle", "masks",
        "validation",
    }


# --------------------------------------------------------------------------- hostile inputs


def _two_image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "sig"
    folder.mkdir()
    make_image(folder / "a.png")
    (folder / "a.txt").write_text("a red square", encoding="utf-8")
    make_image(folder / "b.png", color=(1, 2, 3))
    return folder


def test_folder_signature_follows_images_and_captions_and_nothing_else(tmp_path: Path) -> None:
    folder = _two_image_folder(tmp_path)
    first = folder_signature(folder, ".txt")
    assert folder_signature(folder, ".txt") == first  # stable
    (folder / "notes.md").write_text("not read")
    (folder / ".hidden.png").write_bytes(b"not read")
    (folder / "a.caption").write_text("another extension")
    (folder / "sub").mkdir()
    make_image(folder / "sub" / "nested.png")
    assert folder_signature(folder, ".txt") == first  # files the loader does not read change nothing

    make_image(folder / "c.png")  # added
    added = folder_signature(folder, ".txt")
    assert added != first
    (folder / "c.png").unlink()  # removed again
    assert folder_signature(folder, ".txt") == first

    (folder / "b.txt").write_text("a caption for b", encoding="utf-8")  # a caption file appears
    with_b = folder_signature(folder, ".txt")
    assert with_b != first
    (folder / "a.txt").write_text("a red square, edited", encoding="utf-8")  # size changes
    edited = folder_signature(folder, ".txt")
    assert edited != with_b
    stat = (folder / "a.txt").stat()
    os.utime(folder / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same size, newer
    assert folder_signature(folder, ".txt") != edited
    assert folder_signature(folder, ".caption") != folder_signature(folder, ".txt")


def test_folder_signature_of_a_bad_folder_or_extension_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        folder_signature(tmp_path / "missing", ".txt")
    with pytest.raises(DatasetError, match="caption_extension"):
        folder_signature(_two_image_folder(tmp_path), "../x")


def test_a_caption_that_is_not_utf8_is_skipped_with_skip_unreadable(tmp_path: Path) -> None:
    folder = _two_image_folder(tmp_path)
    (folder / "a.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match=r"a\.txt.*Re-save it as UTF-8"):
        load_dataset(folder, resolution=64)
    ds = load_dataset(folder, resolution=64, skip_unreadable=True)
    assert [item.image_path.name for item in ds.items] == ["b.png"]
    (path, reason), = ds.skipped
    assert path.name == "a.png" and "a.txt" in reason and "Re-save it as UTF-8" in reason
    (folder / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"All 1 images .* skipped.*a\.txt.*UTF-8"):
        load_dataset(folder, resolution=64, skip_unreadable=True)


@pytest.mark.parametrize("good", [".txt", ".caption", ".TXT", "._1", "." + "a" * 16])
def test_check_caption_extension_accepts_plain_extensions(good: str) -> None:
    assert check_caption_extension(good) == good


@pytest.mark.parametrize("bad", [7, "7", ".7", "../x", ".a/b", "", ".txt\x00", ".", "." + "a" * 17, ".tar.gz",
                                 "..txt", ".t xt", ".é", None, True, [".txt"], ".a\\b"])
def test_check_caption_extension_refuses_anything_else_naming_the_widget(tmp_path: Path, bad) -> None:
    with pytest.raises(DatasetError, match="caption_extension") as info:
        check_caption_extension(bad)
    assert "'.txt'" in str(info.value)  # the fix
    with pytest.raises(DatasetError, match="caption_extension"):
        load_dataset(_two_image_folder(tmp_path), caption_extension=bad, resolution=64)


def test_check_caption_extension_completes_the_dot_as_older_workflows_wrote_it() -> None:
    assert check_caption_extension("txt") == check_caption_extension(" .txt ") == ".txt"


def test_an_image_linking_outside_the_folder_is_refused_or_skipped(tmp_path: Path) -> None:
    folder = _two_image_folder(tmp_path)
    outside = make_image(tmp_path / "secret.png")
    os.symlink(outside, folder / "c.png")
    with pytest.raises(DatasetError, match=r"c\.png: it is a link to .*secret\.png, outside the dataset folder; "
                                           r"copy the file into the folder instead"):
        load_dataset(folder, resolution=64)
    ds = load_dataset(folder, resolution=64, skip_unreadable=True)
    assert [item.image_path.name for item in ds.items] == ["a.png", "b.png"]
    assert ds.skipped[0][0].name == "c.png" and "outside the dataset folder" in ds.skipped[0][1]


def test_links_inside_the_folder_are_fine(tmp_path: Path) -> None:
    folder = _two_image_folder(tmp_path)
    (folder / "originals").mkdir()
    make_image(folder / "originals" / "d.png", color=(9, 9, 9))
    os.symlink(folder / "originals" / "d.png", folder / "d.png")
    os.symlink("a.txt", folder / "b.txt")  # relative link to a caption in the folder
    ds = load_dataset(folder, resolution=64)
    assert [item.image_path.name for item in ds.items] == ["a.png", "b.png", "d.png"]
    assert ds.items[1].caption == "a red square"


def test_a_caption_linking_outside_the_folder_is_refused_or_skipped(tmp_path: Path) -> None:
    folder = _two_image_folder(tmp_path)
    (tmp_path / "elsewhere.txt").write_text("someone else's text", encoding="utf-8")
    os.symlink(tmp_path / "elsewhere.txt", folder / "b.txt")
    with pytest.raises(DatasetError, match=r"b\.txt: it is a link to .*elsewhere\.txt, outside the dataset folder"):
        load_dataset(folder, resolution=64)
    ds = load_dataset(folder, resolution=64, skip_unreadable=True)
    assert [item.image_path.name for item in ds.items] == ["a.png"]
    assert "b.txt" in ds.skipped[0][1]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"resolution": float("nan")}, "resolution"),
        ({"resolution": 64.0}, "resolution"),
        ({"resolution": True}, "resolution"),
        ({"resolution": 10**9}, "resolution"),
        ({"resolution": 100}, "multiple of 8"),
        ({"repeats": float("inf")}, "repeats"),
        ({"skip_unreadable": "no"}, "skip_unreadable"),
        ({"buckets": BucketSettings(max_size=10**9)}, "max_bucket_size"),
        ({"buckets": BucketSettings(min_size=-5)}, "min_bucket_size"),
        ({"buckets": BucketSettings(step=4)}, "bucket_step"),
        ({"buckets": BucketSettings(step=60)}, "bucket_step"),
        ({"buckets": BucketSettings(enabled="yes")}, "enable_bucket"),
        ({"buckets": BucketSettings(no_upscale=1)}, "bucket_no_upscale"),
    ],
)
def test_loader_options_are_checked_naming_the_widget(tmp_path: Path, kwargs, named) -> None:
    args = {"resolution": 64, **kwargs}
    with pytest.raises(DatasetError, match=named):
        load_dataset(_two_image_folder(tmp_path), **args)


def test_a_folder_that_is_not_text_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="folder must be text"):
        load_dataset(7)  # type: ignore[arg-type]

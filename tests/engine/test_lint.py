from pathlib import Path

from PIL import Image

from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.dataset import Dataset, DatasetItem, load_dataset
from style_lora_trainer.style_lora_engine.lint import LintMessage, LintReport, lint_dataset

GOOD = "sepia photograph of a storefront, mannequins in dresses, reflective glass, by Atget"


def item(name: str, caption: str = GOOD, size=(512, 512), pixel_hash: str | None = None, missing=False) -> DatasetItem:
    folder = Path("/data/style")
    return DatasetItem(
        image_path=folder / name,
        caption_path=folder / (Path(name).stem + ".txt"),
        caption=caption,
        original_caption=caption,
        width=size[0],
        height=size[1],
        bucket=(512, 512),
        pixel_hash=pixel_hash or name,
        caption_missing=missing,
    )


def dataset(items, repeats: int = 10, skipped=()) -> Dataset:
    return Dataset(
        folder=Path("/data/style"),
        items=tuple(items),
        repeats=repeats,
        resolution=512,
        caption_extension=".txt",
        buckets=BucketSettings(),
        skipped=tuple(skipped),
    )


def good_items(n: int):
    return [item(f"img{i:03d}.png") for i in range(n)]


def codes(report: LintReport) -> list[str]:
    return [m.code for m in report.messages]


def test_clean_dataset_only_info() -> None:
    report = lint_dataset(dataset(good_items(40)), count_tokens=lambda s: len(s.split()))
    assert report.counts == {"error": 0, "warning": 0, "info": 1}
    assert not report.has_errors
    summary = report.by_code("summary")[0]
    assert summary.level == "info"
    assert "40 images x 10 repeats = 400 steps per epoch at batch size 1" in summary.text
    assert "512x512 (40)" in summary.text


def test_image_count_outside_guide() -> None:
    small = lint_dataset(dataset(good_items(29)))
    assert "too_few_images" in codes(small)
    assert "30-100 high-resolution images" in small.by_code("too_few_images")[0].text
    assert "too_few_images" not in codes(lint_dataset(dataset(good_items(30))))
    assert "too_many_images" not in codes(lint_dataset(dataset(good_items(100))))
    big = lint_dataset(dataset(good_items(101)))
    assert "too_many_images" in codes(big) and "30-100" in big.by_code("too_many_images")[0].text


def test_repeats_outside_guide() -> None:
    for repeats, flagged in [(7, True), (8, False), (10, False), (20, False), (21, True)]:
        report = lint_dataset(dataset(good_items(30), repeats=repeats))
        assert ("repeats_outside_guide" in codes(report)) is flagged, repeats
    text = lint_dataset(dataset(good_items(30), repeats=3)).by_code("repeats_outside_guide")[0].text
    assert "10" in text and "8" in text


def test_small_images_either_side() -> None:
    items = good_items(30) + [item("tall_thin.png", size=(300, 900)), item("wide_low.png", size=(900, 500))]
    report = lint_dataset(dataset(items))
    small = report.by_code("image_too_small")
    assert [m.file for m in small] == ["tall_thin.png", "wide_low.png"]
    assert "512" in small[0].text and "300x900" in small[0].text and "no_upscale" in small[0].text


def test_caption_checks() -> None:
    items = good_items(30) + [
        item("nocap.png", caption="", missing=True),
        item("empty.png", caption="   "),
        item("short.png", caption="A red apple"),
        item("five.png", caption="one two three four five"),
    ]
    report = lint_dataset(dataset(items), min_words=5)
    assert report.by_code("caption_missing")[0].file == "nocap.png"
    assert "nocap.txt" in report.by_code("caption_missing")[0].text
    assert report.by_code("caption_empty")[0].file == "empty.png"
    short = report.by_code("caption_short")
    assert [m.file for m in short] == ["short.png"]
    assert "glossy red apple with droplets of water" in short[0].text
    assert "subject" in short[0].text and "backdrop" in short[0].text


def test_caption_token_length() -> None:
    items = good_items(30) + [item("long.png", caption="w " * 100), item("huge.png", caption="w " * 300)]
    # The diffusers path cuts after 3 windows (225 tokens).
    report = lint_dataset(dataset(items), count_tokens=lambda s: len(s.split()), max_tokens=75, token_cap=225)
    long = report.by_code("caption_long")
    assert [m.file for m in long] == ["long.png"]
    assert "3 chunks of 75 tokens" in long[0].text and "225" in long[0].text
    huge = report.by_code("caption_truncated")
    assert [m.file for m in huge] == ["huge.png"] and huge[0].level == "warning"
    assert "225" in huge[0].text
    # ComfyUI's CLIP encodes every window: long captions are noted, none is called cut.
    comfy = lint_dataset(dataset(items), count_tokens=lambda s: len(s.split()), max_tokens=75)
    assert "caption_truncated" not in codes(comfy)
    notes = comfy.by_code("caption_long")
    assert [m.file for m in notes] == ["long.png", "huge.png"]
    assert "2 windows" in notes[0].text and "4 windows" in notes[1].text
    assert all("nothing is cut" in m.text and "225" not in m.text for m in notes)
    untokenized = lint_dataset(dataset(items))
    assert "caption_long" not in codes(untokenized) and "tokens_not_checked" in codes(untokenized)


def test_duplicates_skipped_and_shared_captions() -> None:
    items = good_items(30) + [
        item("dup_a.png", pixel_hash="same"),
        item("dup_b.png", pixel_hash="same"),
        item("x.png"),
        item("x.jpg"),
    ]
    report = lint_dataset(dataset(items, skipped=[(Path("/data/style/broken.png"), "cannot read")]))
    dup = report.by_code("duplicate_image")
    assert len(dup) == 1 and dup[0].file == "dup_b.png" and "dup_a.png" in dup[0].text
    skipped = report.by_code("image_skipped")
    assert skipped[0].file == "broken.png" and "cannot read" in skipped[0].text
    shared = report.by_code("caption_file_shared")
    assert len(shared) == 1 and "x.txt" in shared[0].text


def test_to_text_grouped_one_line_per_finding() -> None:
    items = good_items(27) + [item("short.png", caption="bird"), item("tiny.png", size=(100, 100))]
    report = lint_dataset(dataset(items, repeats=5))
    text = report.to_text()
    lines = text.splitlines()
    assert lines[0].startswith("Dataset check: 0 error(s), 4 warning(s)")
    assert text.index("Warnings:") < text.index("Info:")
    assert "Errors:" not in text
    finding_lines = [ln for ln in lines if ln.startswith("  [")]
    assert len(finding_lines) == len(report.messages)
    assert any("short.png:" in ln and "[WARNING]" in ln for ln in finding_lines)
    assert report.counts["warning"] == 4


def test_lint_message_line_and_error_group() -> None:
    report = LintReport((LintMessage("error", "boom", "it broke", "a.png"), LintMessage("info", "n", "note")))
    assert report.has_errors
    text = report.to_text()
    assert "Errors:\n  [ERROR] a.png: it broke (boom)" in text
    assert "  [INFO] note (n)" in text
    assert text.index("Errors:") < text.index("Info:")


def test_lint_on_loaded_folder(tmp_path: Path) -> None:
    folder = tmp_path / "real"
    folder.mkdir()
    Image.new("RGB", (64, 64), (1, 1, 1)).save(folder / "a.png")
    Image.new("RGB", (64, 64), (1, 1, 1)).save(folder / "b.png")
    (folder / "a.txt").write_text(GOOD, encoding="utf-8")
    report = lint_dataset(load_dataset(folder, resolution=64))
    assert set(codes(report)) >= {"too_few_images", "caption_missing", "duplicate_image", "summary"}
    assert "image_too_small" not in codes(report)

import json
from pathlib import Path

import pytest
from PIL import Image

from style_lora_trainer.style_lora_engine.captions import (
    CaptionEdits,
    apply_caption_list,
    apply_edits,
    edit_caption,
    tag_frequency,
    unknown_overrides,
    write_captions,
)
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.errors import StyleLoRAError


def make_dataset(tmp_path: Path):
    folder = tmp_path / "ds"
    folder.mkdir()
    for name, caption in [("a.png", "man in green coat, smoking pipe"), ("b.png", "calm water, rowboat"), ("c.png", None)]:
        Image.new("RGB", (32, 32), (len(name), 0, 0) if caption else (9, 9, 9)).save(folder / name)
        if caption is not None:
            (folder / name.replace(".png", ".txt")).write_text(caption, encoding="utf-8")
    return load_dataset(folder, resolution=32)


def test_from_json_round_trip() -> None:
    text = json.dumps(
        {"prefix": "by Daumier", "suffix": "lithography", "find": "man", "replace": "gentleman",
         "overrides": {"z.png": "zebra, stripes", "a.png": "apple, é"}}
    )
    edits = CaptionEdits.from_json(text)
    assert edits.prefix == "by Daumier" and edits.replace == "gentleman"
    assert edits.overrides == (("a.png", "apple, é"), ("z.png", "zebra, stripes"))  # sorted
    assert CaptionEdits.from_json(edits.to_json()) == edits
    assert "é" in edits.to_json()  # readable in the widget, not \u-escaped
    assert CaptionEdits.from_json("") == CaptionEdits()
    assert CaptionEdits.from_json("  \n") == CaptionEdits()
    assert CaptionEdits.from_json('{"overrides": [["x.png", "cap"]]}').overrides == (("x.png", "cap"),)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"prefx": "a"}', "'prefx'"),
        ('{"prefix": 3}', "'prefix' must be text"),
        ('{"overrides": "a.png"}', "overrides"),
        ('{"overrides": {"a.png": 5}}', "a.png"),
    ],
)
def test_from_json_errors_explain_fix(text: str, fragment: str) -> None:
    with pytest.raises(StyleLoRAError) as info:
        CaptionEdits.from_json(text)
    assert fragment in str(info.value)


def test_edit_caption_order_and_idempotence() -> None:
    edits = CaptionEdits(prefix="by Daumier", suffix="lithography", find="man", replace="woman")
    once = edit_caption("man with beard, crowd", edits, "a.png")
    assert once == "by Daumier, woman with beard, crowd, lithography"
    # find/replace is all occurrences; running again must not stack the prefix or suffix
    assert edit_caption("by Daumier, crowd, lithography", edits, "a.png") == "by Daumier, crowd, lithography"
    assert edit_caption("a man, a man", CaptionEdits(find="man", replace="dog"), "x") == "a dog, a dog"


def test_prefix_idempotence_matches_whole_part_only() -> None:
    edits = CaptionEdits(prefix="art")
    assert edit_caption("artwork of a cat", edits, "x") == "art, artwork of a cat"
    assert edit_caption("art, a cat", edits, "x") == "art, a cat"
    assert edit_caption("art ,a cat", edits, "x") == "art ,a cat"
    assert edit_caption("a cat, cat", CaptionEdits(suffix="cat"), "x") == "a cat, cat"
    assert edit_caption("bobcat", CaptionEdits(suffix="cat"), "x") == "bobcat, cat"


def test_override_replaces_then_other_edits_apply() -> None:
    edits = CaptionEdits(prefix="style", find="red", replace="blue", overrides=(("a.png", "red apple,\nleaves"),))
    assert edit_caption("ignored", edits, "a.png") == "style, blue apple, leaves"
    assert edit_caption("red cat", edits, "b.png") == "style, blue cat"


def test_empty_caption_and_custom_separator() -> None:
    assert edit_caption("", CaptionEdits(prefix="p", suffix="s"), "x") == "p, s"
    edits = CaptionEdits(prefix="p")
    assert edit_caption("a | b", edits, "x", separator="|") == "p| a | b"
    assert edit_caption("a | b", edits, "x", separator=" | ") == "p | a | b"
    assert edit_caption("p | a", edits, "x", separator=" | ") == "p | a"
    assert edit_caption("unchanged", CaptionEdits(), "x") == "unchanged"


def test_apply_edits_returns_new_dataset(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    edits = CaptionEdits(prefix="by Rowlandson", overrides=(("c.png", "empty room"), ("gone.png", "x")))
    new = apply_edits(ds, edits)
    assert new is not ds
    assert new.captions() == [
        "by Rowlandson, man in green coat, smoking pipe",
        "by Rowlandson, calm water, rowboat",
        "by Rowlandson, empty room",
    ]
    assert ds.captions()[0] == "man in green coat, smoking pipe"
    assert unknown_overrides(ds, edits) == ["gone.png"]


def test_apply_caption_list(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    new = apply_caption_list(ds, ["one\ntwo", "three", "four"])
    assert new.captions() == ["one, two", "three", "four"]
    with pytest.raises(StyleLoRAError) as info:
        apply_caption_list(ds, ["only one"])
    assert "1 entries" in str(info.value) and "3 images" in str(info.value)
    with pytest.raises(StyleLoRAError, match="single text"):
        apply_caption_list(ds, "a caption")  # type: ignore[arg-type]
    with pytest.raises(StyleLoRAError, match="b.png"):
        apply_caption_list(ds, ["a", None, "c"])  # type: ignore[list-item]


def test_write_captions_only_changed(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    assert write_captions(ds) == []  # nothing changed, missing caption stays missing
    assert not (ds.folder / "c.txt").exists()
    edited = ds.with_captions(["man in green coat, smoking pipe", "calm lake, rowboat", "new caption é"])
    written = write_captions(edited)
    assert [p.name for p in written] == ["b.txt", "c.txt"]
    assert (ds.folder / "b.txt").read_text(encoding="utf-8") == "calm lake, rowboat"
    assert (ds.folder / "c.txt").read_bytes() == "new caption é".encode()
    assert (ds.folder / "a.txt").read_text(encoding="utf-8") == "man in green coat, smoking pipe"
    reloaded = load_dataset(ds.folder, resolution=32)
    assert reloaded.captions() == edited.captions()
    all_written = write_captions(reloaded, only_changed=False)
    assert len(all_written) == 3
    assert not [p for p in ds.folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_write_captions_refuses_outside_folder(tmp_path: Path) -> None:
    import dataclasses

    ds = make_dataset(tmp_path)
    evil_item = dataclasses.replace(ds.items[0], caption="x", caption_path=tmp_path / "outside.txt")
    evil = dataclasses.replace(ds, items=(evil_item,))
    with pytest.raises(StyleLoRAError, match="outside.txt"):
        write_captions(evil)
    assert not (tmp_path / "outside.txt").exists()


def test_write_captions_shared_caption_file_conflict(tmp_path: Path) -> None:
    folder = tmp_path / "dup"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "x.png")
    Image.new("RGB", (32, 32)).save(folder / "x.jpg")
    ds = load_dataset(folder, resolution=32)
    with pytest.raises(StyleLoRAError, match="share the caption file x.txt"):
        write_captions(ds.with_captions(["one", "two"]))
    assert [p.name for p in write_captions(ds.with_captions(["same", "same"]))] == ["x.txt"]


def test_tag_frequency(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path).with_captions(["a, b, c", "b,c", "c ,  d, , "])
    assert tag_frequency(ds) == {"c": 3, "b": 2, "a": 1, "d": 1}
    assert list(tag_frequency(ds)) == ["c", "b", "a", "d"]
    piped = ds.with_captions(["x | y", "y", ""])
    assert tag_frequency(piped, separator="|") == {"y": 2, "x": 1}


@pytest.mark.parametrize("key", ["prefix", "suffix", "find", "replace"])
def test_caption_edits_refuse_non_text_naming_the_widget(key: str) -> None:
    with pytest.raises(StyleLoRAError, match=f"{key} must be text"):
        CaptionEdits(**{key: 7})
    with pytest.raises(StyleLoRAError, match="edits must be text"):
        CaptionEdits.from_json(7)  # type: ignore[arg-type]


def test_write_captions_checks_the_caption_extension(tmp_path: Path) -> None:
    import dataclasses

    from style_lora_trainer.style_lora_engine.captions import check_caption_extension

    assert check_caption_extension(".txt") == ".txt"  # exported here for the nodes and the canvas routes
    ds = dataclasses.replace(make_dataset(tmp_path), caption_extension="../x")
    with pytest.raises(StyleLoRAError, match="caption_extension"):
        write_captions(ds.with_captions(["one", "two", "three"]))

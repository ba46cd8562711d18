"""The canvas panels' server side (docs/CANVAS.md): the plain functions, the aiohttp routes, and the
training history the live panel redraws from after a page reload. No ComfyUI needed."""

import io
import os
import re

import pytest
from PIL import Image
from route_client import serve_routes

from style_lora_trainer.canvas_server import gallery
from style_lora_trainer.canvas_server.gallery import CanvasError
from style_lora_trainer.canvas_server.training_history import TrainingHistory
from style_lora_trainer.style_lora_engine.errors import StyleLoRAError
from style_lora_trainer.style_lora_engine.text_chunks import make_token_counter


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """An input folder holding a three-image dataset, and a secret file outside it."""
    inp = tmp_path / "input"
    ds = inp / "style"
    ds.mkdir(parents=True)
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (64 + 16 * i, 48), colour).save(ds / f"img{i}.png")
    (ds / "img0.txt").write_text("a red square, plain backdrop, flat colour, thick outline", encoding="utf-8")
    (ds / "img1.txt").write_text("green", encoding="utf-8")  # too short
    (ds / "notes.md").write_text("not an image")
    (tmp_path / "secret.txt").write_text("keep out")
    Image.new("RGB", (8, 8), "white").save(tmp_path / "outside.png")
    monkeypatch.setenv("STYLE_LORA_DATASET_ROOTS", str(inp))
    return tmp_path


def test_listing_shows_images_captions_sizes_and_badges(roots, clip_tokenizer):
    listing = gallery.dataset_listing("style", ".txt", make_token_counter(clip_tokenizer))
    assert [i["file"] for i in listing["items"]] == ["img0.png", "img1.png", "img2.png"]
    first, short, missing = listing["items"]
    assert first["caption"].startswith("a red square") and first["has_caption_file"]
    assert (first["width"], first["height"]) == (64, 48) and (missing["width"], missing["height"]) == (96, 48)
    assert first["tokens"] == len(clip_tokenizer(first["caption"], add_special_tokens=False)["input_ids"])
    assert first["issues"] == []
    assert [i["code"] for i in short["issues"]] == ["caption_short"]
    assert not missing["has_caption_file"] and missing["caption_file"] == "img2.txt"
    assert [i["code"] for i in missing["issues"]] == ["caption_missing"]
    assert listing["token_limit"] == 75 and listing["min_words"] == 5


def test_listing_without_tokenizer_leaves_tokens_unknown(roots):
    items = gallery.dataset_listing("style")["items"]
    assert all(i["tokens"] is None for i in items)


@pytest.mark.parametrize("folder", ["..", "../..", "/etc", "style/../../", ""])
def test_folders_outside_the_roots_are_refused(roots, folder):
    with pytest.raises(StyleLoRAError, match="outside|No dataset folder") as err:
        gallery.dataset_listing(folder)
    assert getattr(err.value, "status", 400) == 400  # the routes answer these with 400


def test_missing_folder_is_404_with_the_fix(roots):
    with pytest.raises(CanvasError, match="does not exist.*input folder") as err:
        gallery.dataset_listing("nope")
    assert err.value.status == 404


def test_thumbnail_is_a_small_jpeg_of_the_right_image(roots):
    data = gallery.thumbnail_jpeg("style", "img2.png", 32)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and max(img.size) == 32 and img.size == (32, 16)
    r, g, b = img.convert("RGB").getpixel((16, 8))
    assert b > 200 and r < 40 and g < 40


@pytest.mark.parametrize("file", ["../outside.png", "../secret.txt", "notes.md", "/etc/passwd", "sub/x.png",
                                  "nothere.png", "", None])
def test_thumbnail_refuses_anything_but_an_image_in_the_folder(roots, file):
    with pytest.raises(StyleLoRAError):
        gallery.thumbnail_jpeg("style", file)


def test_thumbnail_does_not_follow_a_symlink_out_of_the_folder(roots):
    link = roots / "input" / "style" / "link.png"
    os.symlink(roots / "outside.png", link)
    with pytest.raises(StyleLoRAError, match="outside"):
        gallery.thumbnail_jpeg("style", "link.png")


def test_writing_captions_is_atomic_per_file_and_skips_unchanged(roots):
    ds = roots / "input" / "style"
    before = (ds / "img0.txt").stat().st_mtime_ns
    result = gallery.write_caption_files("style", ".txt", {
        "img0.png": "a red square, plain backdrop, flat colour, thick outline",  # unchanged
        "img1.png": "a green circle,\n  striped backdrop",  # normalised like LoadDataset reads it
        "img2.png": "a blue rectangle, plain backdrop"})
    assert result == {"written": ["img1.txt", "img2.txt"], "unchanged": ["img0.txt"]}
    assert (ds / "img1.txt").read_text(encoding="utf-8") == "a green circle, striped backdrop"
    assert (ds / "img2.txt").read_text(encoding="utf-8") == "a blue rectangle, plain backdrop"
    assert (ds / "img0.txt").stat().st_mtime_ns == before
    assert not [p for p in ds.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.mark.parametrize("bad", [{"../outside.png": "x"}, {"notes.md": "x"}, {"img0.png": 3},
                                 {"img0.png": "x" * (gallery.MAX_CAPTION_CHARS + 1)}, {"gone.png": "x"},
                                 ["img0.png"]])
def test_a_refused_entry_writes_nothing(roots, bad):
    ds = roots / "input" / "style"
    payload = {"img1.png": "changed text"} | bad if isinstance(bad, dict) else bad
    with pytest.raises(StyleLoRAError):
        gallery.write_caption_files("style", ".txt", payload)
    assert (ds / "img1.txt").read_text(encoding="utf-8") == "green"
    assert (roots / "secret.txt").read_text() == "keep out"


def test_two_images_sharing_a_caption_file_are_refused(roots):
    ds = roots / "input" / "style"
    Image.new("RGB", (8, 8)).save(ds / "img1.jpg")
    with pytest.raises(CanvasError, match="share one caption file"):
        gallery.write_caption_files("style", ".txt", {"img1.png": "a", "img1.jpg": "b"})
    assert (ds / "img1.txt").read_text(encoding="utf-8") == "green"


def test_a_folder_named_like_a_caption_file_is_refused_with_the_fix(roots):
    (roots / "input" / "style" / "img2.txt").mkdir()
    # The listing still lists every image; the problem is on the one image it belongs to.
    items = gallery.dataset_listing("style")["items"]
    assert [p["code"] for i in items for p in i["problems"]] == ["caption_unreadable"]
    assert re.search("img2.txt is a folder.*Rename or remove", items[2]["problems"][0]["message"])
    with pytest.raises(StyleLoRAError, match="Rename or remove"):
        gallery.write_caption_files("style", ".txt", {"img2.png": "a blue box"})


def test_caption_extension_cannot_be_a_path(roots):
    with pytest.raises(StyleLoRAError, match="not a file extension"):
        gallery.write_caption_files("style", "/../../x", {"img1.png": "a"})


def test_lint_counts_tokens_and_flags_like_the_dataset_report(clip_tokenizer):
    long = ", ".join(f"detail number {i}" for i in range(40))
    out = gallery.lint_captions(["", "two words", "a glossy red apple with droplets of water", long],
                                   make_token_counter(clip_tokenizer))
    codes = [[i["code"] for i in r["issues"]] for r in out["results"]]
    assert codes == [["caption_missing"], ["caption_short"], [], ["caption_long"]]
    assert out["results"][3]["tokens"] > 75 and out["results"][0]["tokens"] == 0


def test_shuffle_preview_is_what_training_sees():
    from style_lora_trainer.style_lora_engine.shuffle import ShuffleSettings, shuffle_caption

    caption = "trigger, red apple, green leaves, water droplets, soft light"
    out = gallery.shuffle_preview({"captions": [caption], "keep_tokens": 1, "seed": 7, "count": 4})
    settings = ShuffleSettings(keep_tokens=1, seed=7)
    assert out["examples"][0]["shuffles"] == [shuffle_caption(caption, settings, s, 0) for s in range(4)]
    assert all(s.startswith("trigger, ") for s in out["examples"][0]["shuffles"])
    assert len(set(out["examples"][0]["shuffles"])) > 1
    assert "keep_tokens 1" in out["text"]
    with pytest.raises(CanvasError):
        gallery.shuffle_preview({"captions": [caption], "separator": ""})


# --------------------------------------------------------------------------- training history

def test_history_keeps_the_current_run_and_ignores_stale_events():
    h = TrainingHistory()
    assert h.snapshot("5")["state"] == "idle"
    h.start("5", "run1", total_steps=4, num_epochs=2, steps_per_epoch=2, start_step=0)
    for step in (1, 2):
        h.step("5", "run1", step=step, epoch=1, loss=0.1 * step, lr=1.0, dlr=1e-4, eta_seconds=3.0)
    h.epoch("5", "run1", epoch=1, step=2, file="x-000001.safetensors", mean_loss=0.15)
    h.step("5", "old-run", step=9, epoch=9, loss=9, lr=9, dlr=9, eta_seconds=0)  # a previous run's straggler
    snap = h.snapshot("5")
    assert [p["step"] for p in snap["points"]] == [1, 2] and snap["epochs"][0]["epoch"] == 1
    assert snap["state"] == "running" and snap["total_steps"] == 4
    h.end("5", "run1", "stopped", "Stopped")
    assert h.snapshot("5")["state"] == "stopped"
    h.start("5", "run2", total_steps=4, num_epochs=2, steps_per_epoch=2, start_step=2)
    assert h.snapshot("5")["points"] == [] and h.snapshot("5")["start_step"] == 2
    with pytest.raises(ValueError):
        h.end("5", "run2", "exploded")


def test_history_thins_old_points_of_very_long_runs():
    h = TrainingHistory(max_points=100)
    h.start("1", "r", total_steps=1000, num_epochs=1, steps_per_epoch=1000, start_step=0)
    for step in range(1, 1001):
        h.step("1", "r", step=step, epoch=1, loss=1.0, lr=1.0, dlr=1.0, eta_seconds=0)
    steps = [p["step"] for p in h.snapshot("1")["points"]]
    assert len(steps) <= 100 and steps[-1] == 1000 and steps == sorted(steps) and steps[0] == 1


# --------------------------------------------------------------------------- HTTP routes

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (ComfyUI's server library) is in requirements-dev.txt")


def _serve(coro_factory, history=None, token_counter=lambda: None):
    return serve_routes(coro_factory, token_counter=token_counter, **({"history": history} if history else {}))


def test_routes_serve_the_gallery_and_save_captions(roots, clip_tokenizer):
    counter = make_token_counter(clip_tokenizer)

    async def go(client):
        r = await client.get("/style_lora/dataset", params={"folder": "style"})
        listing = await r.json()
        assert r.status == 200 and listing["items"][0]["tokens"] > 5
        r = await client.get("/style_lora/thumbnail", params={"folder": "style", "file": "img0.png", "size": "40"})
        assert r.status == 200 and r.content_type == "image/jpeg"
        assert Image.open(io.BytesIO(await r.read())).size == (40, 30)
        r = await client.post("/style_lora/captions", json={"folder": "style", "captions": {"img2.png": "a blue box"}})
        assert r.status == 200 and (await r.json())["written"] == ["img2.txt"]
        r = await client.post("/style_lora/lint", json={"captions": ["a blue box"]})
        assert (await r.json())["results"][0]["tokens"] == 3
        r = await client.post("/style_lora/shuffle_preview", json={"captions": ["a, b, c, d"], "count": 2})
        assert len((await r.json())["examples"][0]["shuffles"]) == 2

    _serve(go, token_counter=lambda: counter)
    assert (roots / "input" / "style" / "img2.txt").read_text(encoding="utf-8") == "a blue box"


def test_routes_answer_refusals_with_json_errors(roots):
    async def go(client):
        r = await client.get("/style_lora/dataset", params={"folder": "../"})
        assert r.status == 400 and "outside" in (await r.json())["error"]
        r = await client.get("/style_lora/thumbnail", params={"folder": "style", "file": "../outside.png"})
        assert r.status == 400 and "error" in await r.json()
        r = await client.post("/style_lora/captions", json={"folder": "style", "captions": {"../secret.txt": "x"}})
        assert r.status == 400
        r = await client.post("/style_lora/captions", data="not json")
        assert r.status == 400 and "not JSON" in (await r.json())["error"]
        r = await client.get("/style_lora/training")
        assert r.status == 400

    _serve(go)
    assert (roots / "secret.txt").read_text() == "keep out"


def test_training_route_returns_the_nodes_history():
    h = TrainingHistory()
    h.start("12", "r", total_steps=2, num_epochs=1, steps_per_epoch=2, start_step=0)
    h.step("12", "r", step=1, epoch=1, loss=0.5, lr=1.0, dlr=1e-5, eta_seconds=1.0)

    async def go(client):
        r = await client.get("/style_lora/training", params={"node": "12"})
        data = await r.json()
        assert data["state"] == "running" and data["points"][0]["loss"] == 0.5
        r = await client.get("/style_lora/training", params={"node": "13"})
        assert (await r.json())["state"] == "idle"

    _serve(go, history=h)


def test_server_registers_the_routes_once_on_comfyuis_server(monkeypatch):
    import sys
    import types

    from aiohttp import web
    from pack_loader import load_pack

    from style_lora_trainer import canvas_server

    assert canvas_server.register_routes() is False  # no ComfyUI server here
    instance = types.SimpleNamespace(routes=web.RouteTableDef())
    fake_server = types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=instance), web=web)
    monkeypatch.setitem(sys.modules, "server", fake_server)
    # The pack's __init__, run as ComfyUI runs it (a fresh copy under another name), registers every route.
    fresh = "style_lora_trainer_routes_check"
    try:
        load_pack(fresh)
        assert getattr(instance, "_style_lora_routes", False)
        assert canvas_server.register_routes() is True  # a second import of the pack adds nothing
    finally:
        for name in [m for m in sys.modules if m == fresh or m.startswith(fresh + ".")]:
            del sys.modules[name]
    paths = sorted((r.method, r.path) for r in instance.routes)
    assert paths == [("GET", "/style_lora/dataset"), ("GET", "/style_lora/thumbnail"), ("GET", "/style_lora/training"),
                     ("POST", "/style_lora/captions"), ("POST", "/style_lora/lint"), ("POST", "/style_lora/plan"),
                     ("POST", "/style_lora/shuffle_preview")]

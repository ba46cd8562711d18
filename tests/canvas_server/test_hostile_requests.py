"""Hostile and broken input to the canvas routes (found against a real ComfyUI): one bad image or
caption file is reported on its own gallery item, and every bad request answers 4xx JSON naming the
field or file and the fix; never a 500, never a file touched outside the dataset folder."""

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from route_client import serve_routes

from style_lora_trainer.canvas_server import gallery
from style_lora_trainer.canvas_server.gallery import CanvasError
from style_lora_trainer.style_lora_engine.errors import StyleLoRAError
from style_lora_trainer.style_lora_engine.images import open_image_rgb


def _png_header(width: int, height: int) -> bytes:
    """A PNG that only claims to be ``width`` x ``height``: Pillow refuses it from the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture
def ds(tmp_path, monkeypatch):
    """input/style with one good image, a decompression bomb, a 16-bit PNG and an undecodable file."""
    folder = tmp_path / "input" / "style"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 48), "red").save(folder / "a_good.png")
    (folder / "a_good.txt").write_text("a red square, plain backdrop, flat colour", encoding="utf-8")
    (folder / "b_huge.png").write_bytes(_png_header(100_000, 100_000))
    Image.fromarray(np.full((48, 64), 32896, dtype=np.uint16)).save(folder / "c_deep.png")  # mid grey
    (folder / "d_broken.png").write_bytes(b"not a png at all")
    (tmp_path / "secret.txt").write_text("keep out")
    Image.new("RGB", (8, 8), "white").save(tmp_path / "outside.png")
    monkeypatch.setenv("STYLE_LORA_DATASET_ROOTS", str(tmp_path / "input"))
    return folder


def _serve(go):
    return serve_routes(go)


def _items(listing):
    return {item["file"]: item for item in listing["items"]}


# --------------------------------------------------------------------------- 1. one image's problem

def test_listing_lists_every_image_and_puts_each_problem_on_its_image(ds):
    items = _items(gallery.dataset_listing("style"))
    assert sorted(items) == ["a_good.png", "b_huge.png", "c_deep.png", "d_broken.png"]
    assert items["a_good.png"]["problems"] == [] and items["c_deep.png"]["problems"] == []
    assert (items["c_deep.png"]["width"], items["c_deep.png"]["height"]) == (64, 48)
    [huge] = items["b_huge.png"]["problems"]
    assert huge["level"] == "error" and huge["code"] == "image_too_large"
    assert "b_huge.png" in huge["message"] and "Downscale" in huge["message"]
    [broken] = items["d_broken.png"]["problems"]
    assert broken["code"] == "image_unreadable" and "d_broken.png" in broken["message"]
    assert "Re-save" in broken["message"]
    assert items["b_huge.png"]["width"] is None and items["a_good.png"]["caption"].startswith("a red square")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_image_above_pillows_limit_that_still_loads_is_a_warning(ds, monkeypatch):
    Image.new("RGB", (100, 60), "blue").save(ds / "e_big.png")  # 6000 pixels: above 4000, below 2 x 4000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    items = _items(gallery.dataset_listing("style"))
    [big] = items["e_big.png"]["problems"]
    assert big["level"] == "warning" and big["code"] == "image_huge"
    assert "e_big.png" in big["message"] and "100×60" in big["message"] and "4,000" in big["message"]
    assert (items["e_big.png"]["width"], items["e_big.png"]["height"]) == (100, 60)
    assert items["a_good.png"]["problems"] == []  # 3072 pixels
    open_image_rgb(ds / "e_big.png")  # the loader loads it, so the thumbnail must too
    assert Image.open(io.BytesIO(gallery.thumbnail_jpeg("style", "e_big.png", 50))).size == (50, 30)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_where_pillows_warning_is_an_error_the_image_is_too_large_not_the_listing(ds, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # a_good.png (3072 pixels) now only warns
    items = _items(gallery.dataset_listing("style"))
    assert [p["code"] for p in items["a_good.png"]["problems"]] == ["image_too_large"]
    with pytest.raises(CanvasError, match="Downscale") as err:
        gallery.thumbnail_jpeg("style", "a_good.png")
    assert err.value.status == 422


def test_thumbnail_of_a_16_bit_png_is_converted_like_the_loader(ds):
    thumb = Image.open(io.BytesIO(gallery.thumbnail_jpeg("style", "c_deep.png", 32))).convert("RGB")
    expected = open_image_rgb(ds / "c_deep.png").getpixel((0, 0))
    assert expected == (128, 128, 128)  # scaled from 16 bits, not clipped to white
    assert thumb.size == (32, 24)
    assert all(abs(a - b) <= 3 for a, b in zip(thumb.getpixel((16, 12)), expected))


def test_thumbnail_of_an_image_that_cannot_be_decoded_is_422_naming_the_file_and_the_fix(ds):
    for file, fix in [("b_huge.png", "Downscale"), ("d_broken.png", "Re-save")]:
        with pytest.raises(CanvasError, match=fix) as err:
            gallery.thumbnail_jpeg("style", file)
        assert err.value.status == 422 and file in str(err.value)


def test_routes_list_a_folder_with_a_bomb_and_refuse_only_its_thumbnail(ds):
    async def go(client):
        r = await client.get("/style_lora/dataset", params={"folder": "style"})
        assert r.status == 200 and len((await r.json())["items"]) == 4
        r = await client.get("/style_lora/thumbnail", params={"folder": "style", "file": "b_huge.png"})
        assert r.status == 422 and "b_huge.png" in (await r.json())["error"]
        r = await client.get("/style_lora/thumbnail", params={"folder": "style", "file": "c_deep.png"})
        assert r.status == 200 and r.content_type == "image/jpeg"

    _serve(go)


def test_caption_file_problems_are_on_their_image_too(ds, tmp_path):
    (ds / "c_deep.txt").write_bytes(b"caf\xe9 latte")  # Latin-1, not UTF-8
    (ds / "d_broken.txt").mkdir()
    os.symlink(tmp_path / "secret.txt", ds / "b_huge.txt")
    items = _items(gallery.dataset_listing("style"))
    assert items["a_good.png"]["problems"] == [] and items["a_good.png"]["has_caption_file"]
    for file, text in [("c_deep.png", "UTF-8"), ("d_broken.png", "folder"), ("b_huge.png", "outside")]:
        codes = [p["code"] for p in items[file]["problems"]]
        assert "caption_unreadable" in codes, file
        message = next(p["message"] for p in items[file]["problems"] if p["code"] == "caption_unreadable")
        assert text in message and items[file]["caption"] == "" and not items[file]["has_caption_file"]
    assert "keep out" not in json.dumps(items)


def test_an_image_linked_from_outside_the_folder_is_listed_but_not_read(ds, tmp_path):
    os.symlink(tmp_path / "outside.png", ds / "e_link.png")
    item = _items(gallery.dataset_listing("style"))["e_link.png"]
    assert item["width"] is None and [p["code"] for p in item["problems"]] == ["image_outside"]
    assert "e_link.png" in item["problems"][0]["message"] and "Copy" in item["problems"][0]["message"]


def test_a_huge_caption_file_is_not_sent_to_the_panel(ds):
    (ds / "c_deep.txt").write_text("word " * 500_000, encoding="utf-8")  # 2.5 MB
    item = _items(gallery.dataset_listing("style"))["c_deep.png"]
    assert item["caption"] == "" and [p["code"] for p in item["problems"]] == ["caption_unreadable"]
    assert "c_deep.txt" in item["problems"][0]["message"]


# --------------------------------------------------------------------------- 2. bodies and NUL bytes

@pytest.mark.parametrize("path", ["captions", "lint", "shuffle_preview"])
def test_a_body_that_is_not_utf8_is_400(ds, path):
    async def go(client):
        r = await client.post(f"/style_lora/{path}", data=b'{"folder": "style", "captions": ["caf\xe9"]}',
                              headers={"Content-Type": "application/json"})
        assert r.status == 400 and "UTF-8" in (await r.json())["error"]

    _serve(go)


@pytest.mark.parametrize("params", [{"folder": "style", "file": "a\x00.png"}, {"folder": "st\x00yle", "file": "a.png"},
                                    {"folder": "style", "file": "a_good.png\x00.txt"}])
def test_a_nul_byte_in_a_query_name_is_400(ds, params):
    async def go(client):
        r = await client.get("/style_lora/thumbnail", params=params)
        assert r.status == 400 and "NUL" in (await r.json())["error"]
        r = await client.get("/style_lora/dataset", params={"folder": params["folder"], "caption_extension": ".t\x00"})
        named = "NUL" if "\x00" in params["folder"] else "caption_extension"
        assert r.status == 400 and named in (await r.json())["error"]

    _serve(go)


@pytest.mark.parametrize("body", [{"folder": "style", "captions": {"a_good\x00.png": "x"}},
                                  {"folder": "sty\x00le", "captions": {"a_good.png": "x"}}])
def test_a_nul_byte_in_a_json_name_is_400_and_writes_nothing(ds, body):
    async def go(client):
        r = await client.post("/style_lora/captions", json=body)
        assert r.status == 400 and "NUL" in (await r.json())["error"]

    _serve(go)
    assert (ds / "a_good.txt").read_text(encoding="utf-8").startswith("a red square")


# --------------------------------------------------------------------------- 3. caption_extension

@pytest.mark.parametrize("value", [7, 7.5, None, True, [".txt"], {"x": 1}, "", ".", "..txt", ".t/x", ".t\\x",
                                   "a.b", ".tx t", ".t\x00", "." + "x" * 17, "../x", ".tx-t", ".ĉ", "7", ".7"])
def test_check_caption_extension_refuses_anything_but_a_plain_extension(value):
    with pytest.raises(StyleLoRAError, match="caption_extension") as err:
        gallery.check_caption_extension(value)
    assert ".txt" in str(err.value)  # the fix


@pytest.mark.parametrize("value", [".txt", ".caption", ".TXT_2", "." + "x" * 16])
def test_check_caption_extension_accepts_a_plain_extension(value):
    assert gallery.check_caption_extension(value) == value
    assert gallery.check_caption_extension(" " + value.lstrip(".")) == value  # older workflows' "txt"


@pytest.mark.parametrize("value", [7, None, [".txt"], "", ".t x"])
def test_the_routes_refuse_a_bad_caption_extension_and_write_nothing(ds, value):
    async def go(client):
        r = await client.post("/style_lora/captions", json={"folder": "style", "caption_extension": value,
                                                            "captions": {"a_good.png": "a blue box"}})
        assert r.status == 400 and "caption_extension" in (await r.json())["error"]
        if isinstance(value, str):
            r = await client.get("/style_lora/dataset", params={"folder": "style", "caption_extension": value})
            assert r.status == 400 and "caption_extension" in (await r.json())["error"]

    _serve(go)
    assert sorted(p.name for p in ds.iterdir()) == ["a_good.png", "a_good.txt", "b_huge.png", "c_deep.png",
                                                    "d_broken.png"]


# --------------------------------------------------------------------------- 4. every other field

BAD_POSTS = [
    ("captions", {"folder": "style", "captions": {"a_good.png": "a \ud800 b"}}, "a_good.png"),
    ("captions", {"folder": "style", "captions": {"a" * 300 + ".png": "x"}}, "too long"),
    ("captions", {"folder": "x" * 5000, "captions": {"a_good.png": "x"}}, "folder"),
    ("captions", {"folder": "style", "captions": {".hidden.png": "x"}}, "hidden"),
    ("lint", {"captions": ["fine", "a \udfff b"]}, "captions"),
    ("shuffle_preview", {"captions": ["a \ud800"]}, "captions"),
    ("shuffle_preview", {"captions": ["a, b"], "separator": None}, "separator"),
    ("shuffle_preview", {"captions": ["a, b"], "separator": 7}, "separator"),
    ("shuffle_preview", {"captions": ["a, b"], "enabled": "false"}, "enabled"),
    ("shuffle_preview", {"captions": ["a, b"], "keep_tokens": "3"}, "keep_tokens"),
    ("shuffle_preview", {"captions": ["a, b"], "keep_tokens": 1.5}, "keep_tokens"),
    ("shuffle_preview", {"captions": ["a, b"], "keep_tokens": 10**9}, "keep_tokens"),
    ("shuffle_preview", {"captions": ["a, b"], "seed": -1}, "seed"),
    ("shuffle_preview", {"captions": ["a, b"], "seed": 2**64}, "seed"),
    ("shuffle_preview", {"captions": ["a, b"], "count": None}, "count"),
    ("shuffle_preview", {"captions": ["a, b"], "count": True}, "count"),
]


@pytest.mark.parametrize(("path", "body", "named"), BAD_POSTS)
def test_wrong_types_and_values_in_a_body_are_400_naming_the_field(ds, path, body, named):
    async def go(client):
        r = await client.post(f"/style_lora/{path}", data=json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status == 400 and named in (await r.json())["error"]

    _serve(go)
    assert (ds / "a_good.txt").read_text(encoding="utf-8").startswith("a red square")


def test_an_error_quoting_a_huge_value_is_cut_short(ds):
    async def go(client):
        r = await client.post("/style_lora/captions", json={"folder": "style", "caption_extension": "." + "x" * 100_000,
                                                            "captions": {"a_good.png": "x"}})
        message = (await r.json())["error"]
        assert r.status == 400 and "caption_extension" in message and len(message) < 3000

    _serve(go)


@pytest.mark.parametrize("raw", ['{"captions": [], "seed": 1e400}', '{"captions": [], "count": Infinity}',
                                 '{"captions": [' + "9" * 5000 + "]}",
                                 "[" * 100_000])
def test_json_python_reads_but_no_client_should_send_is_400(ds, raw):
    async def go(client):
        r = await client.post("/style_lora/shuffle_preview", data=raw, headers={"Content-Type": "application/json"})
        assert r.status == 400 and "error" in await r.json()

    _serve(go)


def test_a_body_over_the_servers_limit_is_413_json(ds):
    async def go(client):
        # aiohttp's own limit (1 MiB here; ComfyUI raises it) answers before the pack's 8 MiB check.
        r = await client.post("/style_lora/lint", data=b'{"captions": ["' + b"x" * 2 * 2**20 + b'"]}')
        assert r.status == 413 and "MiB" in (await r.json())["error"]

    _serve(go)


@pytest.mark.parametrize("params", [{"folder": "style", "file": "a" * 300 + ".png"}, {"folder": "y" * 5000, "file": "a.png"},
                                    {"folder": "style", "file": "loop.png"}, {"folder": "loop", "file": "a.png"}])
def test_long_names_and_symlink_loops_are_4xx(ds, params):
    os.symlink("loop.png", ds / "loop.png")
    os.symlink("loop", ds.parent / "loop")

    async def go(client):
        r = await client.get("/style_lora/thumbnail", params=params)
        assert 400 <= r.status < 500 and "error" in await r.json()
        r = await client.get("/style_lora/dataset", params={"folder": params["folder"]})
        assert r.status < 500 and (r.status == 200) == (params["folder"] == "style")

    _serve(go)


def test_a_caption_file_that_is_a_symlink_loop_is_on_its_image(ds):
    os.symlink("c_deep.txt", ds / "c_deep.txt")
    item = _items(gallery.dataset_listing("style"))["c_deep.png"]
    assert [p["code"] for p in item["problems"]] == ["caption_unreadable"]


@pytest.mark.parametrize("node", ["1\x00", "x" * 300])
def test_training_route_refuses_a_node_id_that_no_node_has(node):
    async def go(client):
        r = await client.get("/style_lora/training", params={"node": node})
        assert r.status == 400 and "node" in (await r.json())["error"]

    _serve(go)

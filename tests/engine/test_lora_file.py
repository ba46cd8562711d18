"""Epoch file names, name sanitising, epoch selection, kohya metadata and atomic LoRA files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from style_lora_trainer.style_lora_engine import lora_file
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.errors import StyleLoRAError
from style_lora_trainer.style_lora_engine.lora_file import (
    build_metadata,
    epoch_file_name,
    explain_sanitized_name,
    list_epoch_files,
    read_lora_file,
    read_lora_metadata,
    sanitize_name,
    sanitize_subfolder,
    save_lora_file,
    select_epochs,
)


def kohya_tensors(value: float = 1.0) -> dict[str, torch.Tensor]:
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    return {
        f"{name}.lora_down.weight": torch.full((4, 32), value, dtype=torch.float16),
        f"{name}.lora_up.weight": torch.full((32, 4), value, dtype=torch.float16),
        f"{name}.alpha": torch.tensor(2.0, dtype=torch.float16),
    }


def metadata(**overrides) -> dict[str, str]:
    kwargs = dict(
        config=TrainConfig(),
        arch="sd15",
        output_name="my_style",
        epoch=3,
        num_epochs=20,
        steps=300,
        num_batches_per_epoch=100,
        num_train_images=400,
        dataset_dirs={"10_mystyle": {"n_repeats": 10, "img_count": 40}},
        tag_frequency={"10_mystyle": {"mystyle": 40, "a tree": 12, "café": 1}},
        bucket_info={"buckets": {"0": {"resolution": [512, 512], "count": 400}}, "mean_img_ar_error": 0.0},
        shuffle_caption=True,
        keep_tokens=1,
        caption_separator=",",
        resolution=(512, 512),
        optimizer_repr="dadaptation.dadapt_adam.DAdaptAdam(decouple=True,weight_decay=0.01)",
        base_model_name="v1-5-pruned-emaonly.safetensors",
        training_comment="trigger: mystyle",
        session_id="abc123",
        started_at=1_700_000_000.5,
        seed=42,
    )
    kwargs.update(overrides)
    return build_metadata(**kwargs)


# --------------------------------------------------------------------------------------------
# names


def test_epoch_file_name_numbers_every_epoch() -> None:
    assert epoch_file_name("my_style", 1) == "my_style-000001.safetensors"
    assert epoch_file_name("my_style", 20) == "my_style-000020.safetensors"
    with pytest.raises(ValueError):
        epoch_file_name("x", -1)


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b", "..", "a\\b", "..\\x", "."])
def test_sanitize_rejects_paths(bad: str) -> None:
    with pytest.raises(StyleLoRAError, match="plain name"):
        sanitize_name(bad)


@pytest.mark.parametrize("bad", ["", "   ", "...", "???", ".safetensors"])
def test_sanitize_rejects_empty(bad: str) -> None:
    with pytest.raises(StyleLoRAError):
        sanitize_name(bad)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("my_style", "my_style"),
        ("My Style v2", "My Style v2"),
        ("  spaced  ", "spaced"),
        (".hidden", "hidden"),
        ("a..b", "a.b"),
        ("style:*?<>|\"name", "style_______name"),
        ("café", "caf_"),
        ("mystyle.safetensors", "mystyle"),
        ("trailing.", "trailing"),
        ("CON", "_CON"),
    ],
)
def test_sanitize_cleans(raw: str, expected: str) -> None:
    assert sanitize_name(raw) == expected


def test_sanitize_limits_length_and_charset() -> None:
    out = sanitize_name("x" * 300)
    assert len(out) == 100
    for raw in ["a\x00b", "tab\there", "ünïcödé-名前", "a" * 99 + ".."]:
        out = sanitize_name(raw)
        assert out and len(out) <= 100
        assert all(c.isascii() and (c.isalnum() or c in "._ -") for c in out)
        assert ".." not in out and not out.startswith(".") and "/" not in out


def test_list_epoch_files_exact_pattern(tmp_path: Path) -> None:
    for e in (1, 2, 10):
        (tmp_path / epoch_file_name("style", e)).write_bytes(b"x")
    for other in [
        "style.safetensors",  # kohya's unnumbered last epoch: not ours
        "style-000003.safetensors.tmp-123",
        ".style-000004.safetensors.tmp-99",
        ".style-000009.safetensors.k2j4x8.tmp",  # the atomic writer's temp name
        "style-0000005.safetensors",  # 7 digits with a leading zero: never written by us
        "style-00006.safetensors",
        "other-000007.safetensors",
        "style_b-000008.safetensors",
        "style-000009.ckpt",
    ]:
        (tmp_path / other).write_bytes(b"x")
    (tmp_path / epoch_file_name("style", 11)).mkdir()  # a folder is not a file
    found = list_epoch_files(tmp_path, "style")
    assert list(found) == [1, 2, 10]
    assert found[10] == tmp_path / "style-000010.safetensors"
    assert list_epoch_files(tmp_path / "missing", "style") == {}
    # regex characters in the name are literal
    (tmp_path / epoch_file_name("a.b", 1)).write_bytes(b"x")
    (tmp_path / "axb-000001.safetensors").write_bytes(b"x")
    assert list(list_epoch_files(tmp_path, "a.b")) == [1]


def test_select_epochs() -> None:
    epochs = list(range(1, 21))
    assert select_epochs(epochs, "all", 0) == epochs
    assert select_epochs(epochs, "every_n", 5) == [5, 10, 15, 20]
    assert select_epochs(epochs, "every_n", 3) == [3, 6, 9, 12, 15, 18, 20]  # last always in
    assert select_epochs(list(range(1, 8)), "every_n", 10) == [7]
    assert select_epochs(epochs, "last_k", 3) == [18, 19, 20]
    assert select_epochs([3, 1, 2], "last_k", 10) == [1, 2, 3]
    assert select_epochs([2, 2, 1], "all", 1) == [1, 2]
    assert select_epochs([], "every_n", 2) == []
    with pytest.raises(StyleLoRAError):
        select_epochs(epochs, "every_n", 0)
    with pytest.raises(StyleLoRAError):
        select_epochs(epochs, "best", 1)


# --------------------------------------------------------------------------------------------
# metadata

REQUIRED = [
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_v2",
    "ss_base_model_version", "ss_optimizer", "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr",
    "ss_lr_scheduler", "ss_lr_warmup_steps", "ss_epoch", "ss_num_epochs", "ss_steps",
    "ss_num_train_images", "ss_num_batches_per_epoch", "ss_dataset_dirs", "ss_tag_frequency",
    "ss_bucket_info", "ss_shuffle_caption", "ss_keep_tokens", "ss_caption_separator", "ss_resolution",
    "ss_mixed_precision", "ss_seed", "ss_output_name", "ss_session_id", "ss_training_started_at",
    "ss_training_finished_at", "ss_training_comment", "ss_sd_model_name", "ss_network_train_unet_only",
    "ss_max_grad_norm", "modelspec.sai_model_spec", "modelspec.architecture",
    "modelspec.implementation", "modelspec.title", "modelspec.resolution", "modelspec.date",
]


def test_metadata_has_every_key_all_strings() -> None:
    meta = metadata()
    missing = [k for k in REQUIRED if k not in meta]
    assert not missing
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "32" and meta["ss_network_alpha"] == "16.0"
    assert meta["ss_v2"] == "False"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_train_unet_only"] == "True"
    assert meta["ss_epoch"] == "3" and meta["ss_num_epochs"] == "20" and meta["ss_steps"] == "300"
    assert meta["ss_resolution"] == "(512, 512)"
    assert meta["ss_shuffle_caption"] == "True" and meta["ss_keep_tokens"] == "1"
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.resolution"] == "512x512"
    assert meta["modelspec.title"] == "my_style"
    assert meta["modelspec.date"].startswith("2023-11-1")
    float(meta["ss_training_started_at"])
    float(meta["ss_training_finished_at"])
    for key in ("ss_dataset_dirs", "ss_tag_frequency", "ss_bucket_info", "ss_network_args"):
        json.loads(meta[key])
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_mystyle": {"n_repeats": 10, "img_count": 40}}
    assert json.loads(meta["ss_tag_frequency"])["10_mystyle"]["café"] == 1


def test_metadata_sdxl_and_no_buckets() -> None:
    meta = metadata(arch="sdxl", bucket_info=None, resolution=(1024, 768), prediction_type="v_prediction")
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.resolution"] == "1024x768"
    assert meta["modelspec.prediction_type"] == "v"
    assert json.loads(meta["ss_bucket_info"]) is None
    assert meta["ss_enable_bucket"] == "False"
    with pytest.raises(StyleLoRAError):
        metadata(arch="sd21")


# --------------------------------------------------------------------------------------------
# files


def test_save_and_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / epoch_file_name("style", 1)
    tensors, meta = kohya_tensors(), metadata()
    save_lora_file(path, tensors, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp left behind
    got, got_meta = read_lora_file(path)
    assert got_meta == meta
    assert read_lora_metadata(path) == meta
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype


def test_save_makes_non_contiguous_tensors_contiguous(tmp_path: Path) -> None:
    name = "lora_unet_mid_block_attentions_0_proj_in"
    tensors = {
        f"{name}.lora_down.weight": torch.randn(32, 4).t(),
        f"{name}.lora_up.weight": torch.randn(32, 4),
        f"{name}.alpha": torch.tensor(2.0),
    }
    save_lora_file(tmp_path / "a.safetensors", tensors, {})
    got, meta = read_lora_file(tmp_path / "a.safetensors")
    assert meta == {}
    assert torch.equal(got[f"{name}.lora_down.weight"], tensors[f"{name}.lora_down.weight"])


def test_save_rejects_non_string_metadata(tmp_path: Path) -> None:
    with pytest.raises(StyleLoRAError, match="text"):
        save_lora_file(tmp_path / "a.safetensors", kohya_tensors(), {"ss_epoch": 3})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_save_failure_keeps_previous_file(tmp_path: Path, monkeypatch, error: BaseException) -> None:
    path = tmp_path / epoch_file_name("style", 2)
    save_lora_file(path, kohya_tensors(1.0), metadata(epoch=2))
    before = path.read_bytes()
    written: list[Path] = []

    def broken_writer(tmp: Path, tensors, meta) -> None:  # noqa: ANN001
        written.append(tmp)
        with open(tmp, "wb") as fh:  # some bytes reach the temp file, then the write dies
            fh.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{partial")
        raise error

    monkeypatch.setattr(lora_file, "_write_safetensors", broken_writer)
    with pytest.raises(type(error)):
        save_lora_file(path, kohya_tensors(5.0), metadata(epoch=2))
    assert written and written[0].parent == tmp_path
    assert written[0].name.startswith(".") and written[0].name.endswith(".tmp")
    assert not written[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert path.read_bytes() == before
    tensors, _ = read_lora_file(path)
    down = next(k for k in tensors if k.endswith(".lora_down.weight"))
    assert float(tensors[down].flatten()[0]) == 1.0


def test_atomic_save_failure_with_no_previous_file(tmp_path: Path, monkeypatch) -> None:
    def broken_writer(tmp: Path, tensors, meta) -> None:  # noqa: ANN001
        tmp.write_bytes(b"half")
        raise OSError("boom")

    monkeypatch.setattr(lora_file, "_write_safetensors", broken_writer)
    with pytest.raises(OSError):
        save_lora_file(tmp_path / "x.safetensors", kohya_tensors(), {})
    assert list(tmp_path.iterdir()) == []


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(StyleLoRAError, match="nope.safetensors"):
        read_lora_file(missing)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(StyleLoRAError, match="junk.safetensors"):
        read_lora_metadata(junk)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01")
    with pytest.raises(StyleLoRAError, match="short.safetensors"):
        read_lora_file(short)
    header = json.dumps({"__metadata__": {"a": "b"}, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
    truncated = tmp_path / "trunc.safetensors"  # header promises 16 bytes of data, file has 4
    truncated.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\x00" * 4)
    with pytest.raises(StyleLoRAError, match="trunc.safetensors"):
        read_lora_file(truncated)
    with pytest.raises(StyleLoRAError, match="folder"):
        read_lora_file(tmp_path)


def test_read_rejects_non_kohya_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    diffusers_style = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora.down.weight": torch.zeros(4, 32)},
              str(diffusers_style))
    with pytest.raises(StyleLoRAError, match="kohya"):
        read_lora_file(diffusers_style)
    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(2)}, str(checkpoint))
    with pytest.raises(StyleLoRAError, match="model.safetensors"):
        read_lora_file(checkpoint)
    assert read_lora_metadata(checkpoint) == {}


def test_temp_name_never_matches_epoch_pattern(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / epoch_file_name("style", 4)
    seen: list[dict] = []
    real_writer = lora_file._write_safetensors

    def writer(tmp: Path, tensors, meta) -> None:  # noqa: ANN001
        real_writer(tmp, tensors, meta)
        seen.append(list_epoch_files(tmp_path, "style"))  # mid-save: the finished temp file is there

    monkeypatch.setattr(lora_file, "_write_safetensors", writer)
    save_lora_file(path, kohya_tensors(), metadata(epoch=4))
    assert seen == [{}]
    assert list(list_epoch_files(tmp_path, "style")) == [4]


# --------------------------------------------------------------------------------------------
# names: which widget, and what changed


@pytest.mark.parametrize("field", ["name", "output_name"])
@pytest.mark.parametrize("bad", ["a/b", "???", "", 7])
def test_name_errors_name_the_widget(field: str, bad) -> None:
    with pytest.raises(StyleLoRAError, match=f"^{field}"):
        sanitize_name(bad, field)


@pytest.mark.parametrize(
    ("raw", "safe", "note"),
    [
        ("my_style", "my_style", ""),
        ("  my style.safetensors ", "my style", ""),  # only what everyone expects to be dropped
        ("x" * 150, "x" * 100, "saved as '" + "x" * 100 + "' (the name was shortened to 100 characters)"),
        ("style:v2", "style_v2", "only letters, digits"),
        ("a\x00b", "a_b", "only letters, digits"),
        (".hidden", "hidden", "dots"),
        ("CON", "_CON", "Windows"),
    ],
)
def test_explain_sanitized_name_says_what_changed(raw: str, safe: str, note: str) -> None:
    got_safe, got_note = explain_sanitized_name(raw, "output_name")
    assert got_safe == safe == sanitize_name(raw)
    assert (note in got_note) if note else got_note == ""
    if note:
        assert got_note.startswith(f"saved as {safe!r} (the name was ")


@pytest.mark.parametrize(("raw", "parts"), [("", ()), ("  ", ()), ("styles", ("styles",)),
                                            ("styles/sd15", ("styles", "sd15")), ("a\\b", ("a", "b")),
                                            ("./styles/", ("styles",))])
def test_sanitize_subfolder_keeps_ordinary_folders(raw: str, parts) -> None:
    assert sanitize_subfolder(raw) == (parts, "")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [("/tmp/x", "absolute path"), ("\\tmp\\x", "absolute path"), ("C:/loras", "absolute path"),
     ("C:x", "absolute path"), ("//server/share", "absolute path"), ("../x", "'..'"), ("a/../../x", "'..'"),
     ("a/..", "'..'"), ("a\x00b", "NUL"), ("???", "no usable characters"), ("a/.../b", "no usable characters"),
     (7, "must be text")],
)
def test_sanitize_subfolder_refuses_places_outside_the_loras_folder(raw, fragment: str) -> None:
    with pytest.raises(StyleLoRAError, match="^subfolder") as info:
        sanitize_subfolder(raw)
    assert fragment in str(info.value) and "LoRA name" not in str(info.value)


def test_sanitize_subfolder_says_what_changed() -> None:
    parts, note = sanitize_subfolder("my styles/v:2")
    assert parts == ("my styles", "v_2")
    assert note.startswith("saved as 'my styles/v_2' (the subfolder was changed to use only letters")

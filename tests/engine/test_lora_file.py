"""Epoch file names, name sanitising, epoch selection, kohya metadata and atomic LoRA files."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from style_lora_trainer.style_lora_engine import lora_file
from style_lora_trainer.style_lora_engine.buckets import BucketSettings, assign_bucket
from style_lora_trainer.style_lora_engine.config import TrainConfig, TrainOptions
from style_lora_trainer.style_lora_engine.errors import StyleLoRAError
from style_lora_trainer.style_lora_engine.lora_file import (
    build_metadata,
    checkpoint_hashes,
    epoch_file_name,
    explain_sanitized_name,
    kohya_bucket_info,
    kohya_hashes,
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
        finished_at=1_700_003_600.25,
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
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_v2",
    "ss_base_model_version", "ss_optimizer", "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr",
    "ss_lr_scheduler", "ss_lr_warmup_steps", "ss_epoch", "ss_num_epochs", "ss_steps",
    "ss_num_train_images", "ss_num_batches_per_epoch", "ss_dataset_dirs", "ss_tag_frequency",
    "ss_bucket_info", "ss_shuffle_caption", "ss_keep_tokens", "ss_caption_separator", "ss_resolution",
    "ss_mixed_precision", "ss_seed", "ss_output_name", "ss_session_id", "ss_training_started_at",
    "ss_training_finished_at", "ss_training_comment", "ss_sd_model_name", "ss_network_train_unet_only",
    "ss_max_grad_norm", "modelspec.sai_model_spec", "modelspec.architecture",
    "modelspec.implementation", "modelspec.title", "modelspec.resolution", "modelspec.date",
]

# Copied by hand from kohya sd-scripts train_network.py (the ``metadata = {...}`` dict, then the
# --train_data_dir dataset keys, the model name, the keys set at each save) and library/sai_model_spec.py:
# the keys kohya writes in an SD1.5/SDXL LoRA trained without --dataset_config, --vae, --network_args
# or --metadata_* options. Two are left out on purpose (docs/kohya-metadata.md):
# ss_sd_scripts_commit_hash (this is not sd-scripts) and ss_max_token_length (only when the caller
# says where captions are cut; tested below).
KOHYA_KEYS = [
    # train_network.py: metadata = {...}
    "ss_session_id", "ss_training_started_at", "ss_output_name", "ss_learning_rate", "ss_text_encoder_lr",
    "ss_unet_lr", "ss_num_train_images", "ss_num_validation_images", "ss_num_reg_images",
    "ss_num_batches_per_epoch", "ss_num_epochs", "ss_gradient_checkpointing", "ss_gradient_accumulation_steps",
    "ss_max_train_steps", "ss_lr_warmup_steps", "ss_lr_scheduler", "ss_network_module", "ss_network_dim",
    "ss_network_alpha", "ss_network_dropout", "ss_mixed_precision", "ss_full_fp16", "ss_v2",
    "ss_base_model_version", "ss_clip_skip", "ss_cache_latents", "ss_seed", "ss_lowram",
    "ss_noise_offset", "ss_multires_noise_iterations", "ss_multires_noise_discount", "ss_adaptive_noise_scale",
    "ss_zero_terminal_snr", "ss_training_comment", "ss_optimizer", "ss_max_grad_norm",
    "ss_caption_dropout_rate", "ss_caption_dropout_every_n_epochs", "ss_caption_tag_dropout_rate",
    "ss_face_crop_aug_range", "ss_prior_loss_weight", "ss_min_snr_gamma", "ss_scale_weight_norms",
    "ss_ip_noise_gamma", "ss_debiased_estimation", "ss_noise_offset_random_strength",
    "ss_ip_noise_gamma_random_strength", "ss_loss_type", "ss_huber_schedule", "ss_huber_scale", "ss_huber_c",
    "ss_fp8_base", "ss_fp8_base_unet", "ss_validation_seed", "ss_validation_split", "ss_max_validation_steps",
    "ss_validate_every_n_epochs", "ss_validate_every_n_steps", "ss_resize_interpolation",
    # train_network.py: metadata.update({...}) without --dataset_config
    "ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug", "ss_flip_aug",
    "ss_random_crop", "ss_shuffle_caption", "ss_enable_bucket", "ss_keep_tokens", "ss_dataset_dirs",
    "ss_reg_dataset_dirs", "ss_tag_frequency", "ss_bucket_info",
    # model name; at each save
    "ss_sd_model_name", "ss_training_finished_at", "ss_steps", "ss_epoch",
    # sai_model_spec.build_metadata for a LoRA
    "modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation", "modelspec.title",
    "modelspec.resolution", "modelspec.date", "modelspec.prediction_type", "modelspec.implementation_version",
]
# The bucket keys of the same dataset.update (written when the caller passes the bucket settings).
KOHYA_BUCKET_KEYS = ["ss_bucket_no_upscale", "ss_min_bucket_reso", "ss_max_bucket_reso"]

# What a kohya sd-scripts v0.10.1 run with the pack's default settings (networks.lora, no network_args,
# --network_train_unet_only, no bucketing, no noise/loss options, bf16) wrote for the keys that
# mean "off": read back from its file, written here by hand.
KOHYA_DEFAULT_RUN = {
    "ss_network_module": "networks.lora", "ss_network_dropout": "None", "ss_text_encoder_lr": "None",
    "ss_noise_offset": "None", "ss_noise_offset_random_strength": "False", "ss_adaptive_noise_scale": "None",
    "ss_multires_noise_iterations": "None", "ss_multires_noise_discount": "0.3", "ss_min_snr_gamma": "None",
    "ss_debiased_estimation": "False", "ss_loss_type": "l2", "ss_huber_schedule": "snr", "ss_huber_c": "0.1",
    "ss_huber_scale": "1.0", "ss_ip_noise_gamma": "None", "ss_ip_noise_gamma_random_strength": "False",
    "ss_zero_terminal_snr": "False", "ss_scale_weight_norms": "None", "ss_clip_skip": "None",
    "ss_full_fp16": "False", "ss_fp8_base": "False", "ss_fp8_base_unet": "False", "ss_lowram": "False",
    "ss_gradient_accumulation_steps": "1", "ss_mixed_precision": "bf16", "ss_v2": "False",
    "ss_base_model_version": "sd_v1", "ss_caption_dropout_rate": "0.0", "ss_caption_dropout_every_n_epochs": "0",
    "ss_caption_tag_dropout_rate": "0.0", "ss_face_crop_aug_range": "None", "ss_color_aug": "False",
    "ss_flip_aug": "False", "ss_random_crop": "False", "ss_prior_loss_weight": "1.0", "ss_num_reg_images": "0",
    "ss_num_validation_images": "0", "ss_validation_seed": "None", "ss_validation_split": "0.0",
    "ss_max_validation_steps": "None", "ss_validate_every_n_epochs": "None", "ss_validate_every_n_steps": "None",
    "ss_reg_dataset_dirs": "{}", "ss_training_comment": "None", "ss_lr_scheduler": "constant",
    "ss_lr_warmup_steps": "0", "ss_max_grad_norm": "1.0", "ss_cache_latents": "True",
    "ss_gradient_checkpointing": "False", "ss_enable_bucket": "False", "ss_bucket_info": "null",
    "ss_bucket_no_upscale": "False", "ss_min_bucket_reso": "None", "ss_max_bucket_reso": "None",
    "modelspec.prediction_type": "epsilon", "modelspec.implementation": "diffusers",
}


def options_config(**options) -> TrainConfig:
    return TrainConfig(options=TrainOptions(**options).validate())


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
    assert meta["modelspec.implementation_version"].startswith("style-lora-trainer/")
    float(meta["ss_training_started_at"])
    float(meta["ss_training_finished_at"])
    for key in ("ss_dataset_dirs", "ss_tag_frequency", "ss_bucket_info"):
        json.loads(meta[key])
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_mystyle": {"n_repeats": 10, "img_count": 40}}
    assert json.loads(meta["ss_tag_frequency"])["10_mystyle"]["café"] == 1
    assert "ss_network_args" not in meta  # kohya writes it only when there are network args


def test_metadata_sdxl_and_no_buckets() -> None:
    meta = metadata(arch="sdxl", bucket_info=None, resolution=(1024, 768), prediction_type="v_prediction")
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.resolution"] == "1024x768"
    assert meta["modelspec.prediction_type"] == "v"
    assert json.loads(meta["ss_bucket_info"]) is None
    assert meta["ss_enable_bucket"] == "False"
    with pytest.raises(StyleLoRAError):
        metadata(arch="sd21")


def test_metadata_holds_every_kohya_key() -> None:
    meta = metadata(buckets=BucketSettings(), max_token_length=225)
    missing = sorted(set(KOHYA_KEYS + KOHYA_BUCKET_KEYS + ["ss_max_token_length"]) - set(meta))
    assert not missing
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert len(meta) >= 90
    plain = metadata()  # a caller that passes none of the optional arguments still gets kohya's main set
    assert not sorted(set(KOHYA_KEYS) - set(plain))
    # kohya's conditional keys: only with what they describe
    assert not {"ss_network_args", "ss_sd_model_hash", "ss_new_sd_model_hash", "ss_max_token_length",
                "modelspec.timestep_range", "modelspec.encoder_layer"} & set(plain)


def test_default_options_read_as_a_kohya_default_run() -> None:
    meta = metadata(bucket_info=None, buckets=BucketSettings(enabled=False), mixed_precision="bf16",
                    training_comment="")
    wrong = {k: (meta.get(k), v) for k, v in KOHYA_DEFAULT_RUN.items() if meta.get(k) != v}
    assert not wrong
    assert "modelspec.description" not in meta


def test_each_option_in_its_kohya_key() -> None:
    meta = metadata(config=options_config(
        min_snr_gamma=5, debiased_estimation_loss=True, noise_offset=0.05, noise_offset_random_strength=True,
        adaptive_noise_scale=0.005, multires_noise_iterations=6, multires_noise_discount=0.25,
        min_timestep=200, max_timestep=900, loss_type="huber", huber_schedule="exponential", huber_c=0.2,
        huber_scale=1.5, masked_loss=True, conv_dim=8, conv_alpha=1.0, network_dropout=0.1, rank_dropout=0.2,
        module_dropout=0.05))
    expected = {
        "ss_min_snr_gamma": "5.0", "ss_debiased_estimation": "True", "ss_noise_offset": "0.05",
        "ss_noise_offset_random_strength": "True", "ss_adaptive_noise_scale": "0.005",
        "ss_multires_noise_iterations": "6", "ss_multires_noise_discount": "0.25", "ss_loss_type": "huber",
        "ss_huber_schedule": "exponential", "ss_huber_c": "0.2", "ss_huber_scale": "1.5",
        "ss_masked_loss": "True", "ss_network_dropout": "0.1", "ss_network_module": "networks.lora",
        # kohya has no ss_ key for the timestep range: sai_model_spec writes "min,max"
        "modelspec.timestep_range": "200,900",
    }
    assert {k: meta.get(k) for k in expected} == expected
    # the typed strings of --network_args conv_dim=8 conv_alpha=1 rank_dropout=0.2 module_dropout=0.05,
    # then kohya's own "dropout" (--network_dropout as a number)
    assert meta["ss_network_args"] == ('{"conv_dim": "8", "conv_alpha": "1", "rank_dropout": "0.2", '
                                       '"module_dropout": "0.05", "dropout": 0.1}')
    assert all(isinstance(v, str) for v in meta.values())


@pytest.mark.parametrize(("options", "network_args", "network_dropout"), [
    ({"conv_dim": 4}, {"conv_dim": "4", "conv_alpha": "1", "dropout": None}, "None"),
    ({"conv_dim": 16, "conv_alpha": 0.5}, {"conv_dim": "16", "conv_alpha": "0.5", "dropout": None}, "None"),
    ({"rank_dropout": 0.1}, {"rank_dropout": "0.1", "dropout": None}, "None"),
    ({"network_dropout": 0.1}, None, "0.1"),  # --network_dropout alone: kohya writes no network_args
])
def test_network_args_as_kohya_writes_them(options, network_args, network_dropout) -> None:
    meta = metadata(config=options_config(**options))
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dropout"] == network_dropout
    if network_args is None:
        assert "ss_network_args" not in meta
    else:
        assert json.loads(meta["ss_network_args"]) == network_args


def test_dora_is_described_as_lycoris() -> None:
    meta = metadata(config=options_config(use_dora=True))
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"]) == {"preset": "attn-mlp", "algo": "lora", "dora_wd": "True",
                                                   "dropout": None}
    meta = metadata(config=options_config(use_dora=True, conv_dim=8, network_dropout=0.1, module_dropout=0.1),
                    dora_wd_on_output=False)
    assert json.loads(meta["ss_network_args"]) == {
        "algo": "lora", "dora_wd": "True", "wd_on_output": "False", "conv_dim": "8", "conv_alpha": "1",
        "module_dropout": "0.1", "dropout": 0.1}
    assert meta["ss_network_dim"] == "32" and meta["ss_network_alpha"] == "16.0"


def test_training_facts_in_kohya_form() -> None:
    meta = metadata(config=TrainConfig(lr_warmup_steps=50, gradient_checkpointing=True, batch_size=2,
                                       mixed_precision="auto"),
                    mixed_precision=torch.float32, clip_skip=2, max_token_length=225,
                    sd_model_hash="7daca209", new_sd_model_hash="4b94" + "0" * 60)
    assert meta["ss_lr_scheduler"] == "constant_with_warmup"  # kohya refuses plain constant with warmup
    assert meta["ss_lr_warmup_steps"] == "50"
    assert meta["ss_mixed_precision"] == "no"  # kohya's name for fp32
    assert meta["ss_gradient_checkpointing"] == "True"
    assert meta["ss_batch_size_per_device"] == "2" and meta["ss_total_batch_size"] == "2"
    assert meta["ss_clip_skip"] == "2" and meta["modelspec.encoder_layer"] == "2"
    assert meta["ss_max_token_length"] == "225"
    assert meta["ss_sd_model_hash"] == "7daca209" and meta["ss_new_sd_model_hash"].startswith("4b94")
    assert metadata(config=TrainConfig(lr_scheduler="cosine", lr_warmup_steps=5))["ss_lr_scheduler"] == "cosine"
    assert metadata(mixed_precision="fp16")["ss_mixed_precision"] == "fp16"
    assert metadata(mixed_precision=torch.bfloat16)["ss_mixed_precision"] == "bf16"
    with pytest.raises(StyleLoRAError):
        metadata(mixed_precision="fp64")


def test_v_prediction_model_version_and_comment() -> None:
    assert metadata(prediction_type="v_prediction")["ss_base_model_version"] == "sd_v1_v"  # kohya's name
    meta = metadata(training_comment="trigger: mystyle")
    assert meta["ss_training_comment"] == "trigger: mystyle" == meta["modelspec.description"]
    assert metadata(finished_at=1_700_100_000.0)["modelspec.date"] == datetime.datetime.fromtimestamp(
        1_700_100_000).isoformat()  # kohya dates each file when it is saved


def test_tag_frequency_counted_lowercase_like_kohya() -> None:
    meta = metadata(tag_frequency={"10_mystyle": {"Mystyle": 3, "mystyle": 2, "A Tree": 1}})
    assert json.loads(meta["ss_tag_frequency"]) == {"10_mystyle": {"mystyle": 5, "a tree": 1}}


def test_bucket_settings_keys() -> None:
    meta = metadata(buckets=BucketSettings(min_size=256, max_size=1024, step=64, no_upscale=True))
    assert (meta["ss_enable_bucket"], meta["ss_bucket_no_upscale"]) == ("True", "True")
    assert (meta["ss_min_bucket_reso"], meta["ss_max_bucket_reso"]) == ("256", "1024")


SIZES = [(640, 480), (480, 640), (1024, 1024), (300, 900), (1920, 1080), (512, 512), (700, 333)]


@pytest.mark.parametrize(("no_upscale", "repeats", "expected"), [
    # what kohya's BucketManager (select_bucket, add_image per repeat, sort) and the dataset's
    # bucket_info code give for these image sizes at 512 px, min 256, max 1024, step 64
    (False, 3, {"buckets": {"0": {"resolution": [256, 832], "count": 3}, "1": {"resolution": [448, 576], "count": 3},
                            "2": {"resolution": [512, 512], "count": 6}, "3": {"resolution": [576, 448], "count": 3},
                            "4": {"resolution": [640, 384], "count": 3}, "5": {"resolution": [704, 320], "count": 3}},
                "mean_img_ar_error": 0.04429240857812282}),
    (True, 2, {"buckets": {"0": {"resolution": [256, 768], "count": 2}, "1": {"resolution": [384, 512], "count": 2},
                           "2": {"resolution": [512, 384], "count": 2}, "3": {"resolution": [512, 512], "count": 4},
                           "4": {"resolution": [640, 320], "count": 2}, "5": {"resolution": [640, 384], "count": 2}},
               "mean_img_ar_error": 0.030459030459030454}),
])
def test_kohya_bucket_info_matches_kohya(no_upscale: bool, repeats: int, expected: dict) -> None:
    settings = BucketSettings(True, 256, 1024, 64, no_upscale)
    items = [SimpleNamespace(width=w, height=h, bucket=assign_bucket(w, h, 512, settings)) for w, h in SIZES]
    info = kohya_bucket_info(SimpleNamespace(buckets=settings, items=items, repeats=repeats, resolution=512))
    got = json.loads(json.dumps(info))
    assert got["buckets"] == expected["buckets"]
    assert got["mean_img_ar_error"] == pytest.approx(expected["mean_img_ar_error"], rel=1e-12)
    meta = metadata(bucket_info=info)
    assert json.loads(meta["ss_bucket_info"]) == got and meta["ss_enable_bucket"] == "True"
    off = BucketSettings(enabled=False)
    assert kohya_bucket_info(SimpleNamespace(buckets=off, items=items, repeats=1, resolution=512)) is None


def test_kohya_hashes_match_kohya() -> None:
    # kohya's train_util.precalculate_safetensors_hashes gave these for the same tensors and metadata
    meta = {"ss_network_dim": "4", "ss_epoch": "1", "modelspec.title": "t"}  # modelspec.* is not hashed
    small = {"lora_unet_a.lora_down.weight": torch.arange(4 * 32, dtype=torch.float16).reshape(4, 32),
             "lora_unet_a.alpha": torch.tensor(2.0, dtype=torch.float16)}
    assert kohya_hashes(small, meta) == {
        "sshs_model_hash": "4a074f42bc76613e838bc1c816de9b51d87ea5242414df879249e1b842326b6b",
        "sshs_legacy_hash": "e3b0c442"}  # a file under 1 MiB: the hash of no bytes, as kohya's
    big = {"lora_unet_b.lora_down.weight": (torch.arange(128 * 8192) % 251).to(torch.float16).reshape(128, 8192),
           "lora_unet_b.alpha": torch.tensor(4.0, dtype=torch.float16)}
    assert kohya_hashes(big, meta) == {
        "sshs_model_hash": "1107061b00e4b91b1f6ca88d027e939232d2124a323068c309695a43cf595730",
        "sshs_legacy_hash": "a97ab981"}


def test_checkpoint_hashes_match_kohya(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(range(256)) * 12000)
    # kohya's train_util.model_hash and calculate_sha256 of the same bytes
    assert checkpoint_hashes(path) == ("7daca209", "4b946083e4726eb822210f4318d02261e43fd44f2f4f90149926986a9cdaa46f")


# --------------------------------------------------------------------------------------------
# files


def test_save_and_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / epoch_file_name("style", 1)
    tensors, meta = kohya_tensors(), metadata()
    save_lora_file(path, tensors, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp left behind
    got, got_meta = read_lora_file(path)
    hashes = kohya_hashes(tensors, meta)  # added to every file with ss_* keys, as kohya's save_weights does
    assert got_meta == {**meta, **hashes} and set(hashes) == {"sshs_model_hash", "sshs_legacy_hash"}
    assert read_lora_metadata(path) == got_meta
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

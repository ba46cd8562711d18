"""ComfyUI's own classes in-process (ComfyUI on sys.path, run with $COMFYUI_PYTHON): the sampling maths,
SDXL (real model_base.SDXL / SDXL CLIP / VAE with random bf16 weights: one training step and LoraLoader's
key loading) and fp32 training on fp16 weights. See inprocess_checks.py."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parent / "inprocess_checks.py"
DATA = Path(__file__).resolve().parents[1] / "data" / "comfyui_unet_module_names.json"


def _run(comfy_env, case: str, work: Path, *extra: str, timeout: float = 3600) -> dict:
    comfy, python = comfy_env
    started = time.time()
    proc = subprocess.run([python, str(SCRIPT), "--comfyui-dir", str(comfy), "--case", case, "--work", str(work),
                           *extra], capture_output=True, text=True, timeout=timeout, cwd=str(comfy))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{case} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"\n{case}: {time.time() - started:.0f} s: "
          + json.dumps({k: v for k, v in result.items() if k != "patched_keys"})[:800])
    return result


def test_sampling_maths_against_diffusers(comfy_env, tmp_path):
    result = _run(comfy_env, "sampling", tmp_path)
    for kind in ("eps", "v"):
        assert result[kind]["timesteps_equal"]
        assert result[kind]["input_max_err"] < 1e-5
        assert result[kind]["target_max_err"] < 1e-4
        assert result[kind]["denoised_max_err"] < 1e-4


def test_sdxl_one_step_and_loraloader_keys(comfy_env, tmp_path):
    result = _run(comfy_env, "sdxl", tmp_path)
    assert (result["arch"], result["naming"], result["model_class"], result["config_class"]) == \
        ("sdxl", "ldm", "SDXL", "SDXL")
    assert result["steps"] == 1 and all(abs(x) < 1e6 for x in result["losses"])
    assert result["n_keys"] == 3 * 722
    assert result["key_prefixes"] == ["input", "middle", "output"]
    assert result["base_model_version"] == "sdxl_base_v1-0"
    assert result["lora_up_nonzero"]
    assert result["warnings"] == []
    assert result["patched_weights"] == 722 and result["clip_patches"] == 0
    expected = {m["path"] + ".weight" for m in json.loads(DATA.read_text())["sdxl"]["transformer_linear_modules"]}
    assert set(result["patched_keys"]) == expected
    assert result["digest_unchanged"]


def test_fp32_and_bf16_training_on_fp16_weights_leave_the_model_unchanged(comfy_env, sd15_checkpoint, tmp_path):
    result = _run(comfy_env, "sd15_fp16", tmp_path, "--checkpoint", str(sd15_checkpoint))
    assert result["weight_dtype"] == "torch.float16"
    assert result["losses"] and all(abs(x) < 1e6 for x in result["losses"])
    assert result["digest_unchanged"] and result["cast_flags_unchanged"] and result["image_unchanged"]
    bf16 = result["bf16"]
    assert bf16["losses"] and all(abs(x) < 1e6 for x in bf16["losses"])
    assert bf16["weight_dtypes"] == ["torch.bfloat16"]  # trained from the bf16 copy
    assert bf16["sdpa_calls"] > 0 and bf16["sampling_attention"] != "attention_pytorch"
    assert bf16["weight_dtype_after"] == "torch.float16"
    assert bf16["digest_unchanged"] and bf16["cast_flags_unchanged"] and bf16["image_unchanged"]
    # the text encoder computed in bf16 from a bf16 copy (ComfyUI: fp16 weights cast to fp32 per layer)
    assert bf16["text_encoder_dtypes"] == [["torch.bfloat16", "torch.bfloat16"]]
    assert bf16["clip_unchanged"]
    # with a LoRA on the CLIP upstream, the patched CLIP encodes exactly as before training
    assert result["clip_lora"] == {"patched_keys": 1, "patch_changes_cond": True, "cond_unchanged": True,
                                   "clip_unchanged": True}

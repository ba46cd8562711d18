"""In-process checks with ComfyUI's own classes (run by test_inprocess.py with ``$COMFYUI_PYTHON``).

    $COMFYUI_PYTHON tests/e2e/inprocess_checks.py --comfyui-dir $COMFYUI_DIR --case sdxl --work /tmp/x

Cases (each prints one JSON line, "RESULT {...}", for the test to check):

* ``sampling`` — noise, U-Net input and target from ComfyUI's real SD1.5 model_sampling (eps and
  v) against diffusers' DDPMScheduler at the same timesteps.
* ``sdxl`` — ComfyUI's real SDXL classes (model_base.SDXL in a ModelPatcher, CLIP-L + CLIP-G, VAE)
  with random bf16 weights: one training step at 64 px through the pack's backend, then the saved
  file through ``comfy.sd.load_lora_for_models`` (LoraLoader's call): every tensor must load (no
  "lora key not loaded"), 722 U-Net weights patched; the MODEL's digest is unchanged.
* ``sd15_fp16`` — the e2e SD1.5 checkpoint loaded with fp16 weights and trained in fp32 (ComfyUI's
  manual-cast path), then in bf16 (from a bf16 copy of the weights, attention through PyTorch SDPA);
  after each the MODEL's digest, its layers' cast flags and a sampled image are unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(HERE))


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _dataset(work: Path, size: int, count: int):
    import numpy as np
    from PIL import Image

    from style_lora_trainer.style_lora_engine.buckets import BucketSettings
    from style_lora_trainer.style_lora_engine.dataset import load_dataset

    folder = work / "dataset"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"i{i}.png")
        (folder / f"i{i}.txt").write_text(f"flat style, object {i}, (bold) outlines", "utf-8")
    return load_dataset(folder, repeats=1, resolution=size, buckets=BucketSettings(min_size=size, max_size=size,
                                                                                    step=size))


def case_sampling(args) -> dict:
    import comfy.model_base
    import comfy.supported_models
    import torch
    from diffusers import DDPMScheduler

    from style_lora_trainer.integration.comfy_backend import noisy_input_and_target, parameterisation

    out = {}
    config = comfy.supported_models.SD15({})
    for kind, model_type, prediction in (("eps", comfy.model_base.ModelType.EPS, "epsilon"),
                                         ("v", comfy.model_base.ModelType.V_PREDICTION, "v_prediction")):
        ms = comfy.model_base.model_sampling(config, model_type)
        assert parameterisation(ms) == kind
        sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type=prediction)
        gen = torch.Generator().manual_seed(1)
        latents, noise = torch.randn(8, 4, 8, 8, generator=gen), torch.randn(8, 4, 8, 8, generator=gen)
        t = torch.tensor([0, 1, 17, 250, 500, 750, 998, 999])
        x_in, t_in, target = noisy_input_and_target(ms, latents, noise, t, kind)
        expected = noise if kind == "eps" else sched.get_velocity(latents, noise, t)
        out[kind] = {"timesteps_equal": bool(torch.equal(t_in, t.float())),
                     "input_max_err": float((x_in - sched.add_noise(latents, noise, t)).abs().max()),
                     "target_max_err": float((target - expected).abs().max())}
        # the target is what makes ComfyUI's own calculate_denoised return the clean latent
        sigma = ms.sigma(t.float())
        x = ms.noise_scaling(sigma, noise, latents)
        out[kind]["denoised_max_err"] = float((ms.calculate_denoised(sigma, target, x) - latents).abs().max())
    return out


def _train(backend, dataset, work: Path, **overrides) -> tuple:
    import torch

    from style_lora_trainer.style_lora_engine.config import TrainConfig
    from style_lora_trainer.style_lora_engine.trainer import train_lora

    config = TrainConfig(**{"rank": 4, "alpha": 2.0, "epochs": 1, "batch_size": 1, "optimizer": "AdamW",
                            "learning_rate": 1e-3, **overrides})
    started = time.time()
    with torch.inference_mode():  # as ComfyUI runs a node
        result = train_lora(backend, dataset, config, runs_root=work / "runs", output_name="inproc")
    return result, time.time() - started


def case_sdxl(args) -> dict:
    import comfy.sd
    import comfy.utils
    import torch
    from comfy_random_models import build_sdxl
    from helper_nodes import model_digest
    from safetensors import safe_open

    from style_lora_trainer.integration import host

    work = Path(args.work)
    started = time.time()
    with torch.inference_mode():
        model, clip, vae = build_sdxl(seed=0, dtype=torch.bfloat16)
    build_s = time.time() - started
    digest_before = model_digest(model)
    backend = host.training_backend(model, clip, vae)
    info = {"arch": backend.arch, "naming": backend.naming, "prediction_type": backend.prediction_type,
            "model_class": type(model.model).__name__, "config_class": type(model.model.model_config).__name__,
            "build_s": round(build_s, 1)}
    result, train_s = _train(backend, _dataset(work, 64, 1), work, mixed_precision="bf16",
                             gradient_checkpointing=True)
    info.update(losses=result.losses, train_s=round(train_s, 1), steps=len(result.losses))
    path = result.epoch_files[1]
    with safe_open(str(path), "pt") as fh:
        keys = list(fh.keys())
        meta = fh.metadata()
        ups = [float(fh.get_tensor(k).abs().max()) for k in keys if k.endswith("lora_up.weight")]
    info.update(n_keys=len(keys), key_prefixes=sorted({k.split("_")[2] for k in keys}),
                base_model_version=meta.get("ss_base_model_version"), lora_up_nonzero=any(u > 0 for u in ups))
    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        lora, lora_meta = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
        with torch.inference_mode():
            patched_model, patched_clip = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0,
                                                                        lora_metadata=lora_meta)
    finally:
        logging.getLogger().removeHandler(capture)
    info.update(patched_weights=len(patched_model.patches), clip_patches=len(patched_clip.patcher.patches),
                patched_keys=sorted(patched_model.patches),
                warnings=[w for w in capture.lines if "lora key not loaded" in w or "NOT LOADED" in w])
    info["digest_unchanged"] = model_digest(model) == digest_before
    return info


def case_sd15_fp16(args) -> dict:
    import comfy.model_management as mm
    import comfy.sample
    import comfy.sd
    import numpy as np
    import torch
    from helper_nodes import model_digest, module_digest

    from style_lora_trainer.integration import host

    work = Path(args.work)
    with torch.inference_mode():
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            args.checkpoint, model_options={"dtype": torch.float16})[:3]

    def cast_flags():
        return {n: (getattr(m, "comfy_cast_weights", None), "prev_comfy_cast_weights" in m.__dict__)
                for n, m in model.model.diffusion_model.named_modules() if hasattr(m, "comfy_cast_weights")}

    def sample_image():
        with torch.inference_mode():
            positive = clip.encode_from_tokens_scheduled(clip.tokenize("red"))
            negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
            latent = torch.zeros([1, 4, 8, 8])
            noise = comfy.sample.prepare_noise(latent, 3)
            out = comfy.sample.sample(model, noise, 1, 2.0, "euler", "normal", positive, negative, latent,
                                      disable_pbar=True, seed=3)
            return vae.decode(out).numpy()

    image_before = sample_image()
    mm.unload_all_models()
    flags_before, digest_before = cast_flags(), model_digest(model)
    backend = host.training_backend(model, clip, vae)
    result, train_s = _train(backend, _dataset(work, 64, 1), work, mixed_precision="fp32")
    mm.unload_all_models()
    info = {"weight_dtype": str(model.model_dtype()), "manual_cast_dtype": str(model.model.manual_cast_dtype),
            "losses": result.losses, "train_s": round(train_s, 1),
            "digest_unchanged": model_digest(model) == digest_before, "cast_flags_unchanged": cast_flags() == flags_before}
    info["image_unchanged"] = bool(np.array_equal(sample_image(), image_before))

    # bf16 on the same fp16 weights: training runs from a bf16 copy through PyTorch SDPA (ComfyUI picked
    # another attention for sampling on this CPU), and the fp16 weights come back bit for bit.
    import comfy.ldm.modules.attention as attention

    real_sdpa, sdpa_calls, weight_dtypes = attention.attention_pytorch, [], set()

    def counting_sdpa(*a, **k):
        sdpa_calls.append(1)
        return real_sdpa(*a, **k)

    unet = model.model.diffusion_model
    attention.attention_pytorch = counting_sdpa
    hook = unet.register_forward_pre_hook(lambda m, a: weight_dtypes.add(str(m.out[2].weight.dtype)))
    # the text encoder's first layer: the dtype it computes in and the dtype of its weights
    text_layer = clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers[0]
    text_dtypes = set()
    text_hook = text_layer.register_forward_pre_hook(
        lambda m, a: text_dtypes.add((str(a[0].dtype), str(m.mlp.fc1.weight.dtype))))
    clip_before = module_digest(clip.cond_stage_model)
    try:
        result, _ = _train(host.training_backend(model, clip, vae), _dataset(work / "bf16", 64, 1), work / "bf16",
                           mixed_precision="bf16")
    finally:
        hook.remove()
        text_hook.remove()
        attention.attention_pytorch = real_sdpa
    mm.unload_all_models()
    info["bf16"] = {"losses": result.losses, "weight_dtypes": sorted(weight_dtypes), "sdpa_calls": len(sdpa_calls),
                    "sampling_attention": attention.optimized_attention.__name__,
                    "weight_dtype_after": str(model.model_dtype()),
                    "digest_unchanged": model_digest(model) == digest_before,
                    "cast_flags_unchanged": cast_flags() == flags_before,
                    "text_encoder_dtypes": sorted(text_dtypes),
                    "clip_unchanged": module_digest(clip.cond_stage_model) == clip_before,
                    "image_unchanged": bool(np.array_equal(sample_image(), image_before))}

    # A LoRA on the CLIP upstream (LoraLoader patches the CLIP too): ComfyUI patches the CLIP from the
    # bf16 copy while training; afterwards it encodes from the user's weights again.
    patched = clip.clone()
    key = next(k for k in patched.patcher.model_state_dict() if k.endswith("layers.0.mlp.fc1.weight"))
    shape = patched.patcher.model_state_dict()[key].shape
    added = patched.add_patches({key: ("diff", (torch.full(shape, 0.01),))}, 1.0)

    def encode(c):
        with torch.inference_mode():
            return c.encode_from_tokens(c.tokenize("red"))

    cond_before = encode(patched)
    mm.unload_all_models()
    clip_patched_before = module_digest(clip.cond_stage_model)  # ComfyUI's unpatching clears requires_grad
    _train(host.training_backend(model, patched, vae), _dataset(work / "clip_lora", 64, 1), work / "clip_lora",
           mixed_precision="bf16")
    mm.unload_all_models()
    clip_unchanged = module_digest(clip.cond_stage_model) == clip_patched_before  # before encode() patches it
    info["clip_lora"] = {"patched_keys": len(added), "patch_changes_cond": not torch.equal(cond_before, encode(clip)),
                         "cond_unchanged": torch.equal(encode(patched), cond_before), "clip_unchanged": clip_unchanged}
    return info


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui-dir", required=True)
    parser.add_argument("--case", required=True, choices=["sampling", "sdxl", "sd15_fp16"])
    parser.add_argument("--work", required=True)
    parser.add_argument("--checkpoint")
    args = parser.parse_args()
    from comfy_random_models import setup_comfy

    setup_comfy(args.comfyui_dir)
    import torch

    torch.manual_seed(0)
    from pack_loader import load_pack

    load_pack()
    result = {"sampling": case_sampling, "sdxl": case_sdxl, "sd15_fp16": case_sd15_fp16}[args.case](args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Finding Load Checkpoint's MODEL, CLIP and VAE that ComfyUI still holds, the way comfy.sd tags them."""

from __future__ import annotations

import gc

from style_lora_trainer.integration.held_checkpoint import find_held_checkpoint

CKPT = "/models/checkpoints/a.safetensors"


# comfy.sd's reload functions: only their names and argument shapes matter.
def load_checkpoint_guess_config(*args):
    raise AssertionError("never called")


def load_checkpoint_clip_patcher(*args):
    raise AssertionError("never called")


def load_checkpoint_vae_patcher(*args):
    raise AssertionError("never called")


class ModelPatcher:
    __module__ = "comfy.model_patcher"

    def __init__(self, init, parent=None):
        self.cached_patcher_init, self.parent = init, parent
        self.patches, self.object_patches = {}, {}

    def clone(self):
        return ModelPatcher(self.cached_patcher_init, parent=self)


class VAE:
    __module__ = "comfy.sd"

    def __init__(self, patcher):
        self.patcher = patcher

    def encode(self, pixels):
        return pixels


class CLIP(VAE):  # (comfy.sd.CLIP has an encode too)
    __module__ = "comfy.sd"  # (a class's own, not inherited)

    def tokenize(self, text):
        return text

    def clone(self):
        return CLIP(self.patcher.clone())


def load_checkpoint(path=CKPT, model_options=None):
    """What comfy.sd.load_checkpoint_guess_config returns for Load Checkpoint, tagged as it tags them."""
    options = model_options or {}
    model = ModelPatcher((load_checkpoint_guess_config, (path, False, False, False, ["emb"], True, options, {}), 0))
    clip = CLIP(ModelPatcher((load_checkpoint_clip_patcher, (path, ["emb"], options, {}))))
    clip.patcher.object_patches["manual_cast_dtype"] = "float32"  # as the loader sets it
    vae = VAE(ModelPatcher((load_checkpoint_vae_patcher, (path, ["emb"], options, {}))))
    return model, clip, vae


def test_finds_the_loaders_three_outputs_among_clones_and_other_checkpoints():
    other = load_checkpoint("/models/checkpoints/b.safetensors")
    model, clip, vae = load_checkpoint()
    lora_model, lora_clip = model.clone(), clip.clone()  # LoraLoader's outputs, listed first
    lora_model.patches = {"k": [1]}
    held = find_held_checkpoint(CKPT, [object(), *other, lora_model, lora_clip, vae, clip, model])
    assert held is not None
    assert held.model is model and held.clip is clip and held.vae is vae


def test_nothing_unless_all_three_are_held():
    model, clip, vae = load_checkpoint()
    assert find_held_checkpoint(CKPT, [model, clip]) is None
    assert find_held_checkpoint(CKPT, [clip, vae]) is None
    assert find_held_checkpoint(CKPT, [model.clone(), clip, vae]) is None  # only a clone of the MODEL


def test_not_a_model_loaded_with_other_options_or_patched_in_place():
    fp8 = load_checkpoint(model_options={"dtype": "float8_e4m3fn"})
    assert find_held_checkpoint(CKPT, fp8) is None
    model, clip, vae = load_checkpoint()
    model.patches = {"k": [1]}
    assert find_held_checkpoint(CKPT, [model, clip, vae]) is None


def test_objects_of_other_shapes_are_skipped():
    model, clip, vae = load_checkpoint()
    odd = ModelPatcher(None)  # untagged (a custom loader)
    broken = ModelPatcher((load_checkpoint_guess_config, ()))
    held = find_held_checkpoint(CKPT, [odd, broken, model, clip, vae])
    assert held is not None and held.model is model


def test_finds_them_in_the_live_heap():
    outputs = load_checkpoint()  # held here, as ComfyUI's cache holds a node's outputs
    gc.collect()
    held = find_held_checkpoint(CKPT, gc.get_objects())
    assert held is not None and tuple(held) == outputs

"""Test-only ComfyUI nodes for the e2e tier (linked into the test ComfyUI's custom_nodes; never shipped).

* ``StyleLoRATestGate`` passes its MODEL through unchanged (the very same object) once ``wait_for``
  exists, so a graph can order "sample before training", "train", "sample after training" on one
  in-memory MODEL within a single prompt.
* ``StyleLoRATestModelDigest`` hashes everything about a MODEL that training could change: every
  U-Net tensor's bytes, module names and classes, train/eval flags, requires_grad, the patcher's
  weight patches and object patches.
* ``StyleLoRATestShowText`` shows a STRING (an output node), so a graph of dataset nodes alone runs.
"""

import hashlib

import torch


class StyleLoRATestGate:
    CATEGORY = "Style LoRA/testing"
    FUNCTION = "run"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "wait_for": ("*",)}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True

    def run(self, model, wait_for):
        return (model,)


def module_digest(module) -> str:
    """Names, classes, train flags, per-instance forwards, requires_grad flags, dtypes, shapes and bytes of
    a module, by name (ComfyUI's patching re-registers patched weights, which may change their order)."""
    h = hashlib.blake2b(digest_size=20)
    for name, sub in sorted(module.named_modules(), key=lambda item: item[0]):
        h.update(f"{name}:{type(sub).__module__}.{type(sub).__qualname__}:{sub.training};".encode())
        h.update(f"fwd={'forward' in sub.__dict__};".encode())
    for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
        h.update(f"{name}:{param.requires_grad};".encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_digest(model):
    h = hashlib.blake2b(digest_size=20)
    h.update(module_digest(model.model.diffusion_model).encode())
    h.update(repr(sorted(model.patches)).encode())
    h.update(repr(sorted(model.object_patches)).encode())
    h.update(repr(sorted(model.backup)).encode())
    return h.hexdigest()


class _TextResultNode:
    """A test node whose result is one text, also shown in the node (the API's outputs carry it)."""

    CATEGORY = "Style LoRA/testing"
    FUNCTION = "run"
    RETURN_TYPES = ("STRING",)
    OUTPUT_NODE = True

    @staticmethod
    def shown(text):
        return {"ui": {"text": [text]}, "result": (text,)}


class StyleLoRATestModelDigest(_TextResultNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "wait_for": ("*",)}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True

    def run(self, model, wait_for):
        return self.shown(model_digest(model))


class StyleLoRATestShowText:
    CATEGORY = "Style LoRA/testing"
    FUNCTION = "run"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    def run(self, text):
        return {"ui": {"text": [text]}}


class StyleLoRATestPatchedKeys(_TextResultNode):
    """The weight keys a LoRA loader patched on a MODEL (its ModelPatcher's ``patches``), one per line."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def run(self, model):
        return self.shown("\n".join(sorted(model.patches)))


NODE_CLASS_MAPPINGS = {
    "StyleLoRATestGate": StyleLoRATestGate,
    "StyleLoRATestModelDigest": StyleLoRATestModelDigest,
    "StyleLoRATestShowText": StyleLoRATestShowText,
    "StyleLoRATestPatchedKeys": StyleLoRATestPatchedKeys,
}

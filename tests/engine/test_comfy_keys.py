"""Our kohya key names against ComfyUI's own U-Net module list and LoRA key map (recorded from
ComfyUI 0.33.0 / 783545f6 by /work/scratch/tools/dump_unet_modules.py; no ComfyUI needed here).

For every Linear / 1x1 Conv2d inside a SpatialTransformer of ComfyUI's SD1.5 and SDXL U-Nets, the
name the trainer writes (from the LDM module path, as the ComfyUI backend trains it) must be a key
of ``comfy.lora.model_lora_keys_unet`` that targets exactly that module's weight: then LoraLoader
loads every tensor and logs no "lora key not loaded".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from style_lora_trainer.style_lora_engine.lora_keys import find_lora_targets, kohya_key, peft_to_kohya

DATA = json.loads((Path(__file__).parents[1] / "data" / "comfyui_unet_module_names.json").read_text())
PREFIX = "diffusion_model."
COUNTS = {"sd15": 192, "sdxl": 722}
# kohya's naming: SD1.5 files use diffusers block names, SDXL files LDM block names.
KOHYA_BLOCKS = {"sd15": ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_"),
                "sdxl": ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")}
LAYERS_PER_BLOCK = 2  # num_res_blocks of both U-Nets


def _modules(arch: str) -> list[dict]:
    return DATA[arch]["transformer_linear_modules"]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_every_module_name_maps_to_its_comfyui_weight(arch):
    key_map = DATA[arch]["lora_unet_keys"]
    modules = _modules(arch)
    assert len(modules) == COUNTS[arch]
    names = set()
    for module in modules:
        ldm_path = module["path"][len(PREFIX):]
        name = kohya_key(ldm_path, arch, LAYERS_PER_BLOCK, naming="ldm")
        assert name.startswith(KOHYA_BLOCKS[arch]), name
        assert key_map.get(name) == module["path"] + ".weight", (name, module["path"])
        names.add(name)
    assert len(names) == COUNTS[arch]  # one distinct name per module


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_peft_state_from_ldm_paths_converts_to_loadable_kohya_file(arch):
    key_map = DATA[arch]["lora_unet_keys"]
    rank = 2
    peft_state = {}
    for module in _modules(arch):
        path = module["path"][len(PREFIX):]
        conv = module["type"] == "Conv2d1x1"
        down_shape = (rank, module["in"], 1, 1) if conv else (rank, module["in"])
        up_shape = (module["out"], rank, 1, 1) if conv else (module["out"], rank)
        peft_state[f"{path}.lora_A.weight"] = torch.zeros(down_shape)
        peft_state[f"{path}.lora_B.weight"] = torch.zeros(up_shape)
    out = peft_to_kohya(peft_state, alpha=1.0, arch=arch, layers_per_block=LAYERS_PER_BLOCK, source_naming="ldm",
                        dtype=torch.float16)
    assert len(out) == 3 * COUNTS[arch]
    targets = {m["path"] + ".weight": m for m in _modules(arch)}
    for key, tensor in out.items():
        name, suffix = key.split(".", 1)
        module = targets[key_map[name]]
        if suffix == "lora_down.weight":
            assert tensor.shape[:2] == (rank, module["in"])
        elif suffix == "lora_up.weight":
            assert tensor.shape[:2] == (module["out"], rank)
        else:
            assert suffix == "alpha" and tensor.dim() == 0


def _build_tree(arch: str) -> tuple[nn.Module, list[str]]:
    """A module tree with ComfyUI's paths: SpatialTransformer blocks holding the recorded layers (on
    the meta device), plus look-alike layers outside any transformer that must not be targeted."""

    class SpatialTransformer(nn.Module):
        pass

    root = nn.Module()

    def node(path: str, transformer_depth: int) -> nn.Module:
        current = root
        parts = path.split(".")
        for i, part in enumerate(parts):
            child = current._modules.get(part)
            if child is None:
                child = SpatialTransformer() if i == transformer_depth else nn.Module()
                current.add_module(part, child)
            current = child
        return current

    paths = []
    for module in _modules(arch):
        path = module["path"][len(PREFIX):]
        parts = path.split(".")
        depth = 1 if parts[0] == "middle_block" else 2  # input_blocks.N.1 / middle_block.1 / output_blocks.N.1
        parent = node(".".join(parts[:-1]), depth)
        if module["type"] == "Conv2d1x1":
            layer = nn.Conv2d(module["in"], module["out"], 1, device="meta")
        else:
            layer = nn.Linear(module["in"], module["out"], device="meta")
        parent.add_module(parts[-1], layer)
        if parts[-1] == "to_q":
            parent.add_module("norm_probe", nn.LayerNorm(module["in"], device="meta"))
        paths.append(path)
    root.add_module("time_embed", nn.Sequential(nn.Linear(320, 1280, device="meta")))
    root.add_module("out", nn.Conv2d(320, 4, 1, device="meta"))
    return root, paths


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_find_lora_targets_on_comfyui_paths(arch):
    root, paths = _build_tree(arch)
    assert sorted(find_lora_targets(root)) == sorted(paths)

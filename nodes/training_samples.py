"""TrainingSamples: what Train LoRA renders while it trains (prompts, KSampler settings, weights, when)."""

from __future__ import annotations

from typing import Any

from ..integration import samplers
from ..integration.socket_types import CATEGORY, SAMPLES
from ..style_lora_engine.config import check_text
from ..style_lora_engine.sample_settings import SampleSettings, parse_weight_list


class StyleLoRATrainingSamples:
    DESCRIPTION = ("Samples while Train LoRA runs: after every N epochs (and before training: the base model) each "
                   "prompt is rendered with ComfyUI's KSampler at each LoRA weight, exactly as LoraLoader + "
                   "KSampler render the saved epoch file. They appear in the training panel as a strip per epoch "
                   "and as the node's preview. Sampling time is reported apart from training time.")
    CATEGORY = CATEGORY
    FUNCTION = "configure"
    RETURN_TYPES = (SAMPLES,)
    RETURN_NAMES = ("samples",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        d = SampleSettings(prompts=("",))
        return {
            "required": {
                "prompts": ("STRING", {"default": "a lighthouse on a cliff at dusk", "multiline": True,
                            "tooltip": "One prompt per line, without the style's words: does the style show anyway?"}),
                "negative": ("STRING", {"default": "", "multiline": True}),
                "weights": ("STRING", {"default": "0.8, 1.0", "tooltip":
                            "LoRA weights to sample; the guide compares 0.8 to 1.0."}),
                "every_n_epochs": ("INT", {"default": d.every_n_epochs, "min": 1, "max": 1000, "tooltip":
                                   "Sample after every N-th epoch and after the last."}),
                "include_base": ("BOOLEAN", {"default": d.include_base, "tooltip":
                                 "Also sample the base model before training (epoch 0), to compare against."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False}),
                "steps": ("INT", {"default": d.steps, "min": 1, "max": 150}),
                "cfg": ("FLOAT", {"default": d.cfg, "min": 0.0, "max": 100.0, "step": 0.1}),
                "sampler_name": (samplers.sampler_names(),),
                "scheduler": (samplers.scheduler_names(),),
                "width": ("INT", {"default": d.width, "min": 16, "max": 4096, "step": 8}),
                "height": ("INT", {"default": d.height, "min": 16, "max": 4096, "step": 8}),
            },
        }

    def configure(self, prompts: str, negative: str, weights: str, every_n_epochs: int, include_base: bool,
                  seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, width: int,
                  height: int) -> tuple[SampleSettings]:
        lines = tuple(p.strip() for p in check_text(prompts, "prompts").splitlines() if p.strip())
        settings = SampleSettings(prompts=lines, negative=check_text(negative, "negative"),
                                  weights=parse_weight_list(weights), every_n_epochs=every_n_epochs,
                                  include_base=include_base, seed=seed, steps=steps, cfg=cfg, sampler=sampler_name,
                                  scheduler=scheduler, width=width, height=height)
        return (settings.validate(),)

"""The sampler and scheduler names ComfyUI offers (its KSampler's lists), with a fallback outside it."""

from __future__ import annotations

from . import comfy_modules

FALLBACK_SAMPLERS = ["euler", "euler_ancestral", "ddim", "dpmpp_2m", "uni_pc"]
FALLBACK_SCHEDULERS = ["normal", "karras"]


def sampler_names() -> list[str]:
    samplers = comfy_modules.comfy_module("comfy.samplers")
    return list(samplers.KSampler.SAMPLERS) if samplers else list(FALLBACK_SAMPLERS)


def scheduler_names() -> list[str]:
    samplers = comfy_modules.comfy_module("comfy.samplers")
    return list(samplers.KSampler.SCHEDULERS) if samplers else list(FALLBACK_SCHEDULERS)

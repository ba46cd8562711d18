"""TrainOptions: kohya's advanced training options, plugged into Train LoRA's optional ``options`` input.

One widget per option, named after its sd-scripts flag; every default is "off", so a Train LoRA without
this node (or with it at its defaults) trains exactly as before.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..integration.socket_types import CATEGORY, TRAIN_OPTIONS
from ..style_lora_engine.train_options import HUBER_SCHEDULES, LOSS_TYPES, NUM_TRAIN_TIMESTEPS, TrainOptions

# Widget tooltips: the kohya flag and what the option does.
TOOLTIPS: dict[str, str] = {
    "min_snr_gamma": "kohya --min_snr_gamma: weight each step's loss by min(SNR, γ)/SNR (v-pred: /(SNR+1)). "
                     "5 is usual; 0 is off.",
    "debiased_estimation_loss": "kohya --debiased_estimation_loss: weight the loss by 1/sqrt(SNR).",
    "noise_offset": "kohya --noise_offset: add a per-channel constant to the noise (darker darks, brighter "
                    "brights). 0.0357-0.1 are usual; 0 is off.",
    "noise_offset_random_strength": "kohya --noise_offset_random_strength: a random offset in [0, noise_offset) "
                                    "each step.",
    "adaptive_noise_scale": "kohya --adaptive_noise_scale: add this times each latent channel's |mean| to the "
                            "offset (needs noise_offset).",
    "multires_noise_iterations": "kohya --multires_noise_iterations: pyramid noise levels (6-10 usual); 0 is off.",
    "multires_noise_discount": "kohya --multires_noise_discount: weight of each coarser level (0.3 default).",
    "min_timestep": "kohya --min_timestep: lowest timestep trained (0-999).",
    "max_timestep": "kohya --max_timestep: timesteps are drawn below this (1-1000).",
    "loss_type": "kohya --loss_type: l2 (MSE, the default), huber, smooth_l1 or l1.",
    "huber_schedule": "kohya --huber_schedule: how huber_c varies with the timestep (snr, exponential, constant).",
    "huber_c": "kohya --huber_c: the Huber threshold (0.1 default).",
    "huber_scale": "kohya --huber_scale: multiplies huber_c (1.0 default).",
    "masked_loss": "kohya --masked_loss: weight the loss by each image's mask (Load Dataset's masks: alpha "
                   "channel or a masks/ folder). White trains, black is ignored.",
    "conv_dim": "LoCon (kohya network_args conv_dim): also train the ResNet blocks' 3x3 convolutions at this "
                "rank; 0 is off (attention only, the guide's setting).",
    "conv_alpha": "LoCon (kohya network_args conv_alpha): alpha of the convolution LoRA (kohya's default 1).",
    "use_dora": "DoRA (LyCORIS dora_wd): learn a magnitude per input channel as well; the file carries "
                "dora_scale keys that ComfyUI's LoraLoader applies.",
    "network_dropout": "kohya --network_dropout: dropout on each LoRA's down-projection output.",
    "rank_dropout": "kohya network_args rank_dropout: drop whole ranks per sample (rescaled).",
    "module_dropout": "kohya network_args module_dropout: skip a module's LoRA with this probability per step.",
}

_RANGES: dict[str, dict[str, Any]] = {
    "min_snr_gamma": {"min": 0.0, "max": 100.0, "step": 0.5},
    "noise_offset": {"min": 0.0, "max": 1.0, "step": 0.001},
    "adaptive_noise_scale": {"min": -1.0, "max": 1.0, "step": 0.001},
    "multires_noise_iterations": {"min": 0, "max": 64},
    "multires_noise_discount": {"min": 0.0, "max": 1.0, "step": 0.01},
    "min_timestep": {"min": 0, "max": NUM_TRAIN_TIMESTEPS - 1},
    "max_timestep": {"min": 1, "max": NUM_TRAIN_TIMESTEPS},
    "huber_c": {"min": 0.001, "max": 10.0, "step": 0.001},
    "huber_scale": {"min": 0.001, "max": 10.0, "step": 0.01},
    "conv_dim": {"min": 0, "max": 256},
    "conv_alpha": {"min": 0.01, "max": 256.0, "step": 0.5},
    "network_dropout": {"min": 0.0, "max": 0.99, "step": 0.01},
    "rank_dropout": {"min": 0.0, "max": 0.99, "step": 0.01},
    "module_dropout": {"min": 0.0, "max": 0.99, "step": 0.01},
}
_CHOICES = {"loss_type": LOSS_TYPES, "huber_schedule": HUBER_SCHEDULES}


def _widget(field: dataclasses.Field) -> tuple:
    default = field.default
    extra = {"default": default, "tooltip": TOOLTIPS[field.name]}
    if field.name in _CHOICES:
        return (list(_CHOICES[field.name]), extra)
    if isinstance(default, bool):
        return ("BOOLEAN", extra)
    if isinstance(default, int):
        return ("INT", {**extra, **_RANGES[field.name]})
    return ("FLOAT", {**extra, **_RANGES[field.name], "round": False})


class StyleLoRATrainOptions:
    DESCRIPTION = ("kohya's advanced training options for Train LoRA (connect to its 'options' input): loss "
                   "weighting (min-SNR, debiased), noise offset and multires noise, timestep range, loss type "
                   "(L2, Huber, L1), masked loss, LoCon, DoRA and dropouts. Each widget is named after its kohya "
                   "flag and means the same; all default to off, which is the guide's recipe.")
    CATEGORY = CATEGORY
    FUNCTION = "options"
    RETURN_TYPES = (TRAIN_OPTIONS,)
    RETURN_NAMES = ("options",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {f.name: _widget(f) for f in dataclasses.fields(TrainOptions)}}

    def options(self, **values: Any) -> tuple[TrainOptions]:
        return (TrainOptions.from_dict(values).validate(),)

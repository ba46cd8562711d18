"""kohya's loss options (loss types, Huber schedules, masked loss, min-SNR, debiased estimation) on small
tensors whose expected losses are worked out by hand from kohya's formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from style_lora_trainer.style_lora_engine.loss_functions import huber_c_for, snr, training_loss
from style_lora_trainer.style_lora_engine.train_options import TrainOptions

# A DDPM schedule with chosen values at the timesteps the tests use; SNR = a / (1 - a):
#   t=0: a=0.9999 -> SNR 9999;  t=10: a=0.8 -> SNR 4;  t=20: a=0.96 -> SNR 24;
#   t=500: a=0.5 -> SNR 1;  t=900: a=0.1 -> SNR 1/9.
ALPHAS = torch.linspace(0.9999, 0.01, 1000)
for _t, _a in {0: 0.9999, 10: 0.8, 20: 0.96, 500: 0.5, 900: 0.1}.items():
    ALPHAS[_t] = _a

SHAPE = (3, 4, 2, 2)
RTOL = 1e-5


def offset_pred(errors: list[float], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """pred - target = errors[i] everywhere in sample i (so each sample's MSE is errors[i]**2)."""
    target = torch.zeros(SHAPE, dtype=dtype)
    pred = torch.tensor(errors, dtype=dtype)[:, None, None, None].expand(SHAPE).clone()
    return pred, target


def loss(pred, target, timesteps, options, prediction_type="epsilon", mask=None) -> float:
    return training_loss(pred, target, torch.tensor(timesteps), options=options, alphas_cumprod=ALPHAS,
                         prediction_type=prediction_type, mask=mask).item()


# --- defaults ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_loss_is_exactly_mse(dtype):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(SHAPE, generator=g).to(dtype), torch.randn(SHAPE, generator=g).to(dtype)
    got = training_loss(pred, target, torch.tensor([3, 500, 999]), options=TrainOptions(), alphas_cumprod=ALPHAS,
                        prediction_type="epsilon")
    assert got.dtype == torch.float32 and got.ndim == 0
    assert torch.equal(got, F.mse_loss(pred.float(), target.float()))


def test_default_loss_ignores_prediction_type():
    pred, target = offset_pred([1.0, 2.0, 0.5])
    eps = loss(pred, target, [10, 500, 900], TrainOptions())
    v = loss(pred, target, [10, 500, 900], TrainOptions(), prediction_type="v_prediction")
    assert eps == v == pytest.approx((1 + 4 + 0.25) / 3, rel=RTOL)


def test_unknown_prediction_type_is_an_error():
    pred, target = offset_pred([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="prediction_type"):
        loss(pred, target, [1, 2, 3], TrainOptions(), prediction_type="sample")


# --- SNR, min-SNR, debiased --------------------------------------------------------------------------------------

def test_snr_is_alpha_over_one_minus_alpha():
    got = snr(torch.tensor([10, 20, 500, 900]), ALPHAS)
    assert torch.allclose(got, torch.tensor([4.0, 24.0, 1.0, 1 / 9]), rtol=RTOL)


def test_min_snr_gamma_epsilon():
    # weight = min(SNR, 5) / SNR: t=20 (SNR 24) -> 5/24; t=500 (SNR 1) -> 1; t=900 (SNR 1/9) -> 1
    pred, target = offset_pred([1.0, 2.0, 0.5])
    expected = (1.0 * 5 / 24 + 4.0 * 1 + 0.25 * 1) / 3
    assert loss(pred, target, [20, 500, 900], TrainOptions(min_snr_gamma=5.0)) == pytest.approx(expected, rel=RTOL)


def test_min_snr_gamma_v_prediction():
    # kohya's v-prediction variant: weight = min(SNR, 5) / (SNR + 1): 5/25, 1/2, (1/9)/(10/9) = 1/10
    pred, target = offset_pred([1.0, 2.0, 0.5])
    expected = (1.0 * 5 / 25 + 4.0 / 2 + 0.25 / 10) / 3
    got = loss(pred, target, [20, 500, 900], TrainOptions(min_snr_gamma=5.0), prediction_type="v_prediction")
    assert got == pytest.approx(expected, rel=RTOL)


def test_debiased_estimation_epsilon_clamps_snr_at_1000():
    # weight = 1 / sqrt(min(SNR, 1000)): t=0 (SNR 9999 -> 1000), t=10 (SNR 4) -> 1/2, t=900 (SNR 1/9) -> 3
    pred, target = offset_pred([1.0, 2.0, 0.5])
    expected = (1.0 / math.sqrt(1000) + 4.0 / 2 + 0.25 * 3) / 3
    got = loss(pred, target, [0, 10, 900], TrainOptions(debiased_estimation_loss=True))
    assert got == pytest.approx(expected, rel=RTOL)


def test_debiased_estimation_v_prediction():
    # weight = 1 / (min(SNR, 1000) + 1): 1/1001, 1/5, 9/10
    pred, target = offset_pred([1.0, 2.0, 0.5])
    expected = (1.0 / 1001 + 4.0 / 5 + 0.25 * 0.9) / 3
    got = loss(pred, target, [0, 10, 900], TrainOptions(debiased_estimation_loss=True), prediction_type="v_prediction")
    assert got == pytest.approx(expected, rel=RTOL)


def test_min_snr_and_debiased_multiply():
    # t=20: 5/24 * 1/sqrt(24); t=10: min(4,5)/4 * 1/2; t=500: 1 * 1
    pred, target = offset_pred([1.0, 2.0, 0.5])
    expected = (1.0 * (5 / 24) / math.sqrt(24) + 4.0 * 0.5 + 0.25 * 1) / 3
    got = loss(pred, target, [20, 10, 500], TrainOptions(min_snr_gamma=5.0, debiased_estimation_loss=True))
    assert got == pytest.approx(expected, rel=RTOL)


# --- loss types and Huber thresholds --------------------------------------------------------------------------

def test_l1_loss():
    pred, target = offset_pred([1.0, -2.0, 0.5])
    assert loss(pred, target, [1, 2, 3], TrainOptions(loss_type="l1")) == pytest.approx(3.5 / 3, rel=RTOL)


def huber(d: float, c: float) -> float:
    return 2 * c * (math.sqrt(d * d + c * c) - c)


def smooth_l1(d: float, c: float) -> float:
    return 2 * (math.sqrt(d * d + c * c) - c)


def test_huber_loss_constant_schedule():
    c = 0.3 * 2.0  # constant schedule: huber_c * huber_scale
    options = TrainOptions(loss_type="huber", huber_schedule="constant", huber_c=0.3, huber_scale=2.0)
    pred, target = offset_pred([1.0, -2.0, 0.5])
    expected = (huber(1.0, c) + huber(2.0, c) + huber(0.5, c)) / 3
    assert loss(pred, target, [1, 2, 3], options) == pytest.approx(expected, rel=RTOL)


def test_smooth_l1_loss_constant_schedule():
    c = 0.1
    options = TrainOptions(loss_type="smooth_l1", huber_schedule="constant", huber_c=0.1)
    pred, target = offset_pred([1.0, -2.0, 0.5])
    expected = (smooth_l1(1.0, c) + smooth_l1(2.0, c) + smooth_l1(0.5, c)) / 3
    assert loss(pred, target, [1, 2, 3], options) == pytest.approx(expected, rel=RTOL)


def test_huber_loss_snr_schedule_per_sample_threshold():
    # snr schedule: sigma = sqrt((1-a)/a); c_t = (1 - c) / (1 + sigma)**2 + c
    c = 0.1
    c10, c500, c900 = (1 - c) / 1.5**2 + c, (1 - c) / 2**2 + c, (1 - c) / 4**2 + c  # sigma 0.5, 1, 3
    pred, target = offset_pred([1.0, -2.0, 0.5])
    expected = (huber(1.0, c10) + huber(2.0, c500) + huber(0.5, c900)) / 3
    assert loss(pred, target, [10, 500, 900], TrainOptions(loss_type="huber")) == pytest.approx(expected, rel=RTOL)


def test_huber_threshold_constant():
    options = TrainOptions(loss_type="huber", huber_schedule="constant", huber_c=0.3, huber_scale=2.0)
    got = huber_c_for(torch.tensor([0, 500, 999]), options, ALPHAS)
    assert torch.allclose(got, torch.full((3,), 0.6), rtol=RTOL)


def test_huber_threshold_exponential():
    # alpha = -ln(c) / 1000; c_t = exp(-alpha * t) * scale = c**(t/1000) * scale
    options = TrainOptions(loss_type="smooth_l1", huber_schedule="exponential", huber_c=0.2, huber_scale=1.5)
    got = huber_c_for(torch.tensor([0, 500, 1000]), options, ALPHAS)
    assert torch.allclose(got, torch.tensor([1.5, math.sqrt(0.2) * 1.5, 0.2 * 1.5]), rtol=RTOL)


def test_huber_threshold_snr_ignores_huber_scale_like_kohya():
    c = 0.1
    expected = torch.tensor([(1 - c) / 1.5**2 + c, (1 - c) / 2**2 + c, (1 - c) / 4**2 + c])
    for scale in (1.0, 3.0):  # kohya's snr schedule does not multiply by huber_scale
        options = TrainOptions(loss_type="huber", huber_schedule="snr", huber_c=c, huber_scale=scale)
        assert torch.allclose(huber_c_for(torch.tensor([10, 500, 900]), options, ALPHAS), expected, rtol=RTOL)


@pytest.mark.parametrize("loss_type", ["l2", "l1"])
def test_no_huber_threshold_for_l1_l2(loss_type):
    assert huber_c_for(torch.tensor([1, 2]), TrainOptions(loss_type=loss_type), ALPHAS) is None


def test_huber_in_bf16_is_computed_in_float32():
    options = TrainOptions(loss_type="huber", huber_schedule="constant")
    p32, t32 = offset_pred([1.0, -2.0, 0.5])
    p16, t16 = offset_pred([1.0, -2.0, 0.5], torch.bfloat16)  # these errors are exact in bf16
    assert loss(p16, t16, [1, 2, 3], options) == loss(p32, t32, [1, 2, 3], options)


# --- masked loss -----------------------------------------------------------------------------------------------

def region_error(rows: slice, cols: slice, value: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.zeros(SHAPE)
    pred = target.clone()
    pred[:, :, rows, cols] = value
    return pred, target


def left_half_mask(size: int) -> torch.Tensor:
    mask = torch.zeros(SHAPE[0], 1, size, size)
    mask[..., : size // 2] = 1.0
    return mask


@pytest.mark.parametrize("size", [2, 16], ids=["latent_size", "pixel_size"])
def test_error_only_where_mask_is_zero_gives_zero_loss(size):
    pred, target = region_error(slice(None), slice(1, 2))  # right column: mask 0 there
    assert loss(pred, target, [1, 2, 3], TrainOptions(), mask=left_half_mask(size)) == 0.0


@pytest.mark.parametrize("size", [2, 16], ids=["latent_size", "pixel_size"])
@pytest.mark.parametrize("options", [TrainOptions(), TrainOptions(loss_type="l1"), TrainOptions(min_snr_gamma=5.0)],
                         ids=["l2", "l1", "min_snr"])
def test_error_where_mask_is_one_counts_as_unmasked(size, options):
    pred, target = region_error(slice(None), slice(0, 1))  # left column: mask 1 there
    masked = loss(pred, target, [20, 500, 900], options, mask=left_half_mask(size))
    assert masked == pytest.approx(loss(pred, target, [20, 500, 900], options), rel=RTOL)


def test_pixel_mask_is_area_averaged_to_latent_size():
    # 16x16 mask, one quarter of the top-left 8x8 block is 1: the top-left latent pixel gets weight 1/4.
    mask = torch.zeros(SHAPE[0], 1, 16, 16)
    mask[..., :4, :4] = 1.0
    pred, target = region_error(slice(0, 1), slice(0, 1), 2.0)  # squared error 4 in 1 of 4 latent pixels
    expected = 4.0 * 0.25 / 4  # per sample: mean over C*H*W of 4 * 1/4 on a quarter of the pixels
    assert loss(pred, target, [1, 2, 3], TrainOptions(), mask=mask) == pytest.approx(expected, rel=RTOL)


def test_soft_mask_weights_each_sample():
    mask = torch.tensor([1.0, 0.5, 0.0])[:, None, None, None].expand(SHAPE[0], 1, 2, 2)
    pred, target = offset_pred([1.0, 2.0, 3.0])
    expected = (1.0 * 1 + 4.0 * 0.5 + 9.0 * 0) / 3
    assert loss(pred, target, [1, 2, 3], TrainOptions(), mask=mask) == pytest.approx(expected, rel=RTOL)


# --- determinism -----------------------------------------------------------------------------------------------

def test_same_inputs_same_loss():
    options = TrainOptions(loss_type="huber", min_snr_gamma=5.0, debiased_estimation_loss=True)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    mask = torch.rand(SHAPE[0], 1, 16, 16, generator=torch.Generator().manual_seed(6))

    def run(g):
        pred, target = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
        t = torch.randint(0, 1000, (SHAPE[0],), generator=g)
        return training_loss(pred, target, t, options=options, alphas_cumprod=ALPHAS, prediction_type="v_prediction",
                             mask=mask)

    assert torch.equal(run(g1), run(g2))

"""kohya's noise options (noise offset, random strength, adaptive scale, multires noise) and timestep range,
checked against the formulas with the same numbers drawn by hand from a same-seed generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from style_lora_trainer.style_lora_engine.noise import draw_noise, draw_timesteps
from style_lora_trainer.style_lora_engine.train_options import TrainOptions

SHAPE = (2, 4, 8, 6)
SEED = 1234


def gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def latents() -> torch.Tensor:
    return torch.randn(SHAPE, generator=gen(99)) * 0.8 + 0.2


def same_state(a: torch.Generator, b: torch.Generator) -> bool:
    return torch.equal(a.get_state(), b.get_state())


# --- defaults: exactly the plain calls, nothing else drawn ---------------------------------------------------

def test_default_noise_is_plain_randn_and_draws_nothing_else():
    g, ref = gen(), gen()
    noise = draw_noise(latents(), g, TrainOptions())
    assert torch.equal(noise, torch.randn(SHAPE, generator=ref))
    assert noise.dtype == torch.float32
    assert same_state(g, ref)


@pytest.mark.parametrize("num_timesteps", [1000, 500])
def test_default_timesteps_are_plain_randint_and_draw_nothing_else(num_timesteps):
    g, ref = gen(), gen()
    t = draw_timesteps(5, g, TrainOptions(), num_timesteps)
    expected = torch.randint(0, num_timesteps, (5,), generator=ref)
    assert torch.equal(t, expected) and t.dtype == torch.int64
    assert same_state(g, ref)


def test_default_step_sequence_is_randn_then_randint():
    g, ref = gen(), gen()
    noise = draw_noise(latents(), g, TrainOptions())
    t = draw_timesteps(SHAPE[0], g, TrainOptions())
    assert torch.equal(noise, torch.randn(SHAPE, generator=ref))
    assert torch.equal(t, torch.randint(0, 1000, (SHAPE[0],), generator=ref))


# --- noise offset ---------------------------------------------------------------------------------------

def test_noise_offset_adds_offset_times_per_channel_randn():
    ref = gen()
    base = torch.randn(SHAPE, generator=ref)
    per_channel = torch.randn((SHAPE[0], SHAPE[1], 1, 1), generator=ref)
    expected = base + 0.05 * per_channel
    got = draw_noise(latents(), gen(), TrainOptions(noise_offset=0.05))
    assert torch.equal(got, expected)
    # the offset is one value per (sample, channel): the difference to the plain noise is constant over H, W
    diff = got - base
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-7)


def test_noise_offset_random_strength_scales_offset_by_one_uniform_draw():
    ref = gen()
    base = torch.randn(SHAPE, generator=ref)
    strength = torch.rand(1, generator=ref).item()  # kohya: torch.rand(1) * noise_offset
    per_channel = torch.randn((SHAPE[0], SHAPE[1], 1, 1), generator=ref)
    expected = base + (strength * 0.1) * per_channel
    got = draw_noise(latents(), gen(), TrainOptions(noise_offset=0.1, noise_offset_random_strength=True))
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_adaptive_noise_scale_grows_offset_by_abs_channel_mean_clamped_at_zero():
    # Latents constant per channel, so |channel mean| is known: sample 0 [1, -2, 0.5, 0], sample 1 [-0.3, ...].
    means = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-0.3, 0.3, 4.0, -4.0]])
    lat = means[:, :, None, None].expand(SHAPE).clone()
    ref = gen()
    base = torch.randn(SHAPE, generator=ref)
    per_channel = torch.randn((SHAPE[0], SHAPE[1], 1, 1), generator=ref)

    # +0.1: offset = 0.05 + 0.1 * |mean|
    offsets = torch.tensor([[0.05 + 0.1, 0.05 + 0.2, 0.05 + 0.05, 0.05],
                            [0.05 + 0.03, 0.05 + 0.03, 0.05 + 0.4, 0.05 + 0.4]])
    got = draw_noise(lat, gen(), TrainOptions(noise_offset=0.05, adaptive_noise_scale=0.1))
    assert torch.allclose(got, base + offsets[:, :, None, None] * per_channel, atol=1e-6, rtol=0)

    # -0.1: offset = max(0, 0.05 - 0.1 * |mean|): only |mean| < 0.5 keeps some offset
    offsets = torch.tensor([[0.0, 0.0, 0.0, 0.05],
                            [0.05 - 0.03, 0.05 - 0.03, 0.0, 0.0]])
    got = draw_noise(lat, gen(), TrainOptions(noise_offset=0.05, adaptive_noise_scale=-0.1))
    assert torch.allclose(got, base + offsets[:, :, None, None] * per_channel, atol=1e-6, rtol=0)


# --- multires (pyramid) noise -----------------------------------------------------------------------------

def test_multires_one_iteration_adds_a_full_size_draw_then_unit_std():
    # i = 0: r**0 = 1, so the level is full size (bilinear to the same size is the identity), weight discount**0 = 1.
    ref = gen()
    base = torch.randn(SHAPE, generator=ref)
    torch.rand(1, generator=ref, dtype=torch.float64)  # r, unused at i = 0
    level0 = torch.randn(SHAPE, generator=ref)
    total = base + level0
    got = draw_noise(latents(), gen(), TrainOptions(multires_noise_iterations=1))
    assert torch.allclose(got, total / total.std(), atol=1e-6, rtol=0)


def test_multires_two_iterations_follow_kohyas_formula():
    ref = gen()
    b, c, h, w = SHAPE
    noise = torch.randn(SHAPE, generator=ref)
    for i in range(2):
        r = torch.rand(1, generator=ref, dtype=torch.float64).item() * 2 + 2  # kohya: random.random() * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        level = torch.randn(b, c, hn, wn, generator=ref)
        noise = noise + F.interpolate(level, size=(h, w), mode="bilinear", align_corners=False) * 0.3**i
    got = draw_noise(latents(), gen(), TrainOptions(multires_noise_iterations=2, multires_noise_discount=0.3))
    assert torch.allclose(got, noise / noise.std(), atol=1e-6, rtol=0)


def test_multires_stops_after_the_one_pixel_level():
    # 2x2 latents: level 1 is int(2 / r) = 1 pixel (r >= 2), so of 10 iterations only 2 draw anything.
    shape = (1, 4, 2, 2)
    g, ref = gen(), gen()
    draw_noise(torch.zeros(shape), g, TrainOptions(multires_noise_iterations=10))
    torch.randn(shape, generator=ref)
    torch.rand(1, generator=ref, dtype=torch.float64)
    torch.randn(shape, generator=ref)
    torch.rand(1, generator=ref, dtype=torch.float64)
    torch.randn((1, 4, 1, 1), generator=ref)
    assert same_state(g, ref)


def test_multires_keeps_shape_and_unit_std():
    shape = (2, 4, 32, 24)
    got = draw_noise(torch.zeros(shape), gen(), TrainOptions(multires_noise_iterations=8, multires_noise_discount=0.4))
    assert got.shape == shape and got.dtype == torch.float32
    assert abs(got.std().item() - 1.0) < 1e-5
    assert not torch.allclose(got, torch.randn(shape, generator=gen()))


def test_noise_offset_comes_before_multires():
    # kohya's order: randn, offset draw, then the pyramid (here one full-size level).
    ref = gen()
    base = torch.randn(SHAPE, generator=ref)
    per_channel = torch.randn((SHAPE[0], SHAPE[1], 1, 1), generator=ref)
    torch.rand(1, generator=ref, dtype=torch.float64)
    level0 = torch.randn(SHAPE, generator=ref)
    total = base + 0.05 * per_channel + level0
    got = draw_noise(latents(), gen(), TrainOptions(noise_offset=0.05, multires_noise_iterations=1))
    assert torch.allclose(got, total / total.std(), atol=1e-6, rtol=0)


def test_draw_noise_leaves_the_latents_alone():
    lat = latents()
    before = lat.clone()
    draw_noise(lat, gen(), TrainOptions(noise_offset=0.05, adaptive_noise_scale=0.1, multires_noise_iterations=4))
    assert torch.equal(lat, before)


# --- timesteps -----------------------------------------------------------------------------------------------

def test_timestep_range_is_min_inclusive_max_exclusive():
    options = TrainOptions(min_timestep=100, max_timestep=400)
    t = draw_timesteps(4000, gen(), options)
    assert torch.equal(t, torch.randint(100, 400, (4000,), generator=gen()))
    assert t.min().item() == 100 and t.max().item() == 399  # 4000 draws over 300 values reach both ends


@pytest.mark.parametrize(("low", "high"), [(998, 999), (0, 1)])
def test_one_wide_timestep_range_gives_that_timestep(low, high):
    t = draw_timesteps(6, gen(), TrainOptions(min_timestep=low, max_timestep=high))
    assert torch.equal(t, torch.full((6,), low, dtype=torch.long))


def test_max_timestep_past_the_model_range_is_cut_to_it():
    t = draw_timesteps(3000, gen(), TrainOptions(min_timestep=10, max_timestep=800), num_timesteps=500)
    assert torch.equal(t, torch.randint(10, 500, (3000,), generator=gen()))


# --- reproducibility -------------------------------------------------------------------------------------------

ALL_NOISE = TrainOptions(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.05,
                         multires_noise_iterations=6, multires_noise_discount=0.3, min_timestep=50, max_timestep=950)


@pytest.mark.parametrize("options", [TrainOptions(), ALL_NOISE], ids=["default", "all_on"])
def test_same_seed_same_noise_and_timesteps(options):
    def step(seed):
        g = gen(seed)
        return draw_noise(latents(), g, options), draw_timesteps(SHAPE[0], g, options)

    (n1, t1), (n2, t2), (n3, _) = step(7), step(7), step(8)
    assert torch.equal(n1, n2) and torch.equal(t1, t2)
    assert not torch.equal(n1, n3)

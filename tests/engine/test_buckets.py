import pytest

from style_lora_trainer.style_lora_engine.buckets import BucketSettings, assign_bucket, make_buckets
from style_lora_trainer.style_lora_engine.errors import ConfigError


def test_make_buckets_matches_kohya_for_512() -> None:
    buckets = make_buckets(512)
    # kohya's make_bucket_resolutions((512, 512), 256, 1024, 64)
    expected = {
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640),
        (448, 576), (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256),
        (896, 256), (960, 256), (1024, 256),
    }
    assert set(buckets) == expected
    assert buckets == sorted(buckets)


@pytest.mark.parametrize("resolution", [512, 768, 1024])
def test_make_buckets_invariants(resolution: int) -> None:
    settings = BucketSettings()
    buckets = make_buckets(resolution, settings)
    assert (resolution, resolution) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert 256 <= w <= 1024 and 256 <= h <= 1024
        assert w * h <= resolution * resolution
        assert (h, w) in buckets  # both orientations


def test_small_resolutions_are_clamped() -> None:
    assert make_buckets(64) == [(64, 64)]
    assert make_buckets(32) == [(32, 32)]  # step 64 clamped to 32
    assert assign_bucket(40, 80, 32) == (32, 32)
    buckets = make_buckets(128, BucketSettings(min_size=32, step=32))
    assert (128, 128) in buckets and (64, 256) in buckets and (256, 64) in buckets
    assert all(w * h <= 128 * 128 for w, h in buckets)


def test_resolution_above_max_size_still_has_square() -> None:
    assert (1280, 1280) in make_buckets(1280, BucketSettings(max_size=1024))


def test_assign_bucket_picks_nearest_aspect_ratio() -> None:
    assert assign_bucket(1000, 1000, 512) == (512, 512)
    assert assign_bucket(2000, 1000, 512) == (704, 320)  # 2.2 is closer to 2.0 than 1.67
    assert assign_bucket(1000, 2000, 512) == (320, 704)
    assert assign_bucket(1200, 900, 512) == (576, 448)  # 4:3 -> 1.29 bucket


def test_assign_bucket_disabled_is_square() -> None:
    settings = BucketSettings(enabled=False)
    assert assign_bucket(2000, 500, 512, settings) == (512, 512)
    assert make_buckets(512, settings) == [(512, 512)]


def test_no_upscale_small_image_keeps_own_size_rounded_down() -> None:
    settings = BucketSettings(no_upscale=True)
    assert assign_bucket(300, 200, 512, settings) == (256, 192)
    assert assign_bucket(512, 400, 512, settings) == (512, 384)
    # Smaller than one step: never an empty bucket.
    assert assign_bucket(20, 500, 512, settings) == (64, 448)


def test_no_upscale_large_image_is_shrunk_to_area() -> None:
    settings = BucketSettings(no_upscale=True)
    w, h = assign_bucket(4000, 3000, 512, settings)
    assert (w, h) == (512, 384)
    w, h = assign_bucket(3000, 1000, 512, settings)
    assert w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0
    assert w <= 3000 and h <= 1000
    assert abs(w / h - 3.0) < 0.5


@pytest.mark.parametrize(
    "settings",
    [BucketSettings(step=0), BucketSettings(min_size=2048, max_size=1024), BucketSettings(min_size=0)],
)
def test_invalid_settings_raise(settings: BucketSettings) -> None:
    with pytest.raises(ConfigError):
        make_buckets(512, settings)


def test_invalid_sizes_raise() -> None:
    with pytest.raises(ConfigError):
        make_buckets(0)
    with pytest.raises(ConfigError):
        assign_bucket(0, 100, 512)

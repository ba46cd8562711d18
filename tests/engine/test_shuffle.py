from collections import Counter

import pytest

from style_lora_trainer.style_lora_engine.errors import ConfigError
from style_lora_trainer.style_lora_engine.shuffle import (
    ShuffleSettings,
    preview_shuffles,
    shuffle_caption,
    split_caption,
)

GUIDE = (
    "caricature of a man with a long beard, hands clasped in front, large crowd in the background, "
    "lithography, by Honoré Daumier"
)


def test_split_caption_parts_and_joiner() -> None:
    assert split_caption("a, b, c", ",") == (["a", "b", "c"], ", ")
    assert split_caption("a,b,c", ",") == (["a", "b", "c"], ",")
    assert split_caption("a | b | c", "|") == (["a", "b", "c"], " | ")
    assert split_caption("a | b | c", " | ") == (["a", "b", "c"], " | ")
    assert split_caption(" a, , b ,", ",")[0] == ["a", "b"]  # empty parts dropped
    assert split_caption("", ",")[0] == []
    assert split_caption("single part", ",") == (["single part"], ", ")


def test_first_part_stays_and_multiset_preserved() -> None:
    settings = ShuffleSettings(keep_tokens=1, seed=3)
    parts, _ = split_caption(GUIDE, ",")
    for step in range(30):
        out = shuffle_caption(GUIDE, settings, step, 0)
        out_parts, joiner = split_caption(out, ",")
        assert out_parts[0] == parts[0]
        assert Counter(out_parts) == Counter(parts)
        assert joiner == ", "


def test_keep_tokens_two_keeps_two_parts() -> None:
    settings = ShuffleSettings(keep_tokens=2)
    for step in range(20):
        out_parts, _ = split_caption(shuffle_caption("a, b, c, d, e, f", settings, step, 1), ",")
        assert out_parts[:2] == ["a", "b"]
        assert sorted(out_parts[2:]) == ["c", "d", "e", "f"]


def test_duplicate_parts_each_kept() -> None:
    caption = "x, red, red, blue, green"
    for step in range(10):
        out_parts, _ = split_caption(shuffle_caption(caption, ShuffleSettings(), step, 0), ",")
        assert Counter(out_parts) == Counter(["x", "red", "red", "blue", "green"])


@pytest.mark.parametrize(("caption", "sep"), [("a,b,c,d,e", ","), ("a | b | c | d | e", "|"), ("a;  b;  c;  d", ";")])
def test_separator_spacing_preserved(caption: str, sep: str) -> None:
    settings = ShuffleSettings(separator=sep, keep_tokens=0)
    outs = {shuffle_caption(caption, settings, step, 0) for step in range(20)}
    _, joiner = split_caption(caption, sep)
    for out in outs:
        assert joiner.join(split_caption(out, sep)[0]) == out
        assert out.count(joiner) == caption.count(joiner)
    assert len(outs) > 1


def test_reproducible_and_uses_no_global_rng() -> None:
    import random

    settings = ShuffleSettings(seed=7)
    random.seed(1)
    first = shuffle_caption(GUIDE, settings, 5, 2)
    state = random.getstate()
    random.seed(999)
    second = shuffle_caption(GUIDE, settings, 5, 2)
    assert first == second
    random.seed(1)
    assert shuffle_caption(GUIDE, settings, 5, 2) == first
    random.setstate(state)
    before = random.getstate()
    shuffle_caption(GUIDE, settings, 6, 2)
    assert random.getstate() == before


def test_varies_between_steps_items_and_seeds() -> None:
    settings = ShuffleSettings(seed=0)
    by_step = {shuffle_caption(GUIDE, settings, step, 0) for step in range(20)}
    assert len(by_step) >= 5
    by_item = {shuffle_caption(GUIDE, settings, 0, i) for i in range(20)}
    assert len(by_item) >= 5
    by_seed = {shuffle_caption(GUIDE, ShuffleSettings(seed=s), 0, 0) for s in range(20)}
    assert len(by_seed) >= 5


def test_disabled_and_too_few_parts_unchanged() -> None:
    assert shuffle_caption(GUIDE, ShuffleSettings(enabled=False), 3, 0) == GUIDE
    assert shuffle_caption("a,b ,  c", ShuffleSettings(keep_tokens=3), 3, 0) == "a,b ,  c"
    assert shuffle_caption("a,b ,  c", ShuffleSettings(keep_tokens=5), 3, 0) == "a,b ,  c"
    # Only one part would move: nothing to shuffle, caption kept byte for byte.
    assert shuffle_caption("a,b ,  c", ShuffleSettings(keep_tokens=2), 3, 0) == "a,b ,  c"
    assert shuffle_caption("", ShuffleSettings(), 0, 0) == ""


def test_settings_validation() -> None:
    with pytest.raises(ConfigError):
        ShuffleSettings(keep_tokens=-1)
    with pytest.raises(ConfigError):
        ShuffleSettings(separator="")


def test_preview_shuffles_text() -> None:
    captions = [GUIDE, "a, b, c", ""]
    text = preview_shuffles(captions, ShuffleSettings(seed=1), count=2)
    assert "keep_tokens 1" in text
    assert f"original: {GUIDE}" in text
    assert "step 0:" in text and "step 1:" in text and "step 2:" not in text
    assert shuffle_caption(GUIDE, ShuffleSettings(seed=1), 1, 0) in text
    assert "(empty caption)" in text
    off = preview_shuffles(captions, ShuffleSettings(enabled=False))
    assert "off" in off and "step 0" not in off
    many = preview_shuffles([f"c{i}, x, y" for i in range(8)], ShuffleSettings(), max_captions=5)
    assert "3 more caption" in many
    assert "(no captions)" in preview_shuffles([], ShuffleSettings())

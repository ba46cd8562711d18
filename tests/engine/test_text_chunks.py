import pytest

from style_lora_trainer.style_lora_engine.text_chunks import (
    chunk_token_ids,
    count_caption_tokens,
    make_token_counter,
)

BOS, EOS, PAD = 49406, 49407, 0


def test_empty_text_gives_one_padded_window() -> None:
    chunks = chunk_token_ids([], BOS, EOS, PAD)
    assert chunks == [[BOS, EOS] + [PAD] * 75]


def test_short_text_one_window() -> None:
    chunks = chunk_token_ids([1, 2, 3], BOS, EOS, PAD)
    assert len(chunks) == 1
    assert chunks[0][:5] == [BOS, 1, 2, 3, EOS]
    assert len(chunks[0]) == 77 and chunks[0][5:] == [PAD] * 72


def test_exactly_75_and_76_tokens() -> None:
    ids = list(range(1, 77))
    one = chunk_token_ids(ids[:75], BOS, EOS, PAD)
    assert len(one) == 1 and one[0] == [BOS, *ids[:75], EOS]
    two = chunk_token_ids(ids, BOS, EOS, PAD)
    assert len(two) == 2
    assert two[1][:3] == [BOS, 76, EOS] and len(two[1]) == 77


def test_long_text_truncated_to_three_chunks() -> None:
    ids = list(range(1, 301))
    chunks = chunk_token_ids(ids, BOS, EOS, PAD)
    assert len(chunks) == 3
    assert all(len(c) == 77 and c[0] == BOS and c[-1] == EOS for c in chunks)
    inner = [t for c in chunks for t in c[1:-1]]
    assert inner == ids[:225]


def test_custom_window_and_chunks() -> None:
    chunks = chunk_token_ids([5, 6, 7, 8, 9], 1, 2, 3, window=5, max_chunks=2)
    assert chunks == [[1, 5, 6, 7, 2], [1, 8, 9, 2, 3]]
    with pytest.raises(ValueError):
        chunk_token_ids([], 1, 2, 3, window=2)
    with pytest.raises(ValueError):
        chunk_token_ids([], 1, 2, 3, max_chunks=0)


class FakeTokenizer:
    """Mimics a Hugging Face tokenizer: one id per word, BOS/EOS only when asked."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [len(w) for w in text.replace(",", " , ").split()]
        if add_special_tokens:
            ids = [BOS, *ids, EOS]
        return {"input_ids": ids}


def test_count_caption_tokens_excludes_specials() -> None:
    tok = FakeTokenizer()
    assert count_caption_tokens(tok, "a red apple, leaves") == 5
    assert count_caption_tokens(tok, "") == 0
    assert make_token_counter(tok)("one two three") == 3

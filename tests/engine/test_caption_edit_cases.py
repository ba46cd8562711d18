"""The caption edit table that the JS caption editor is also tested against (tests/js/captions.test.mjs):
the editor's previews must be what the node trains on, so Python's rules must give the same table."""

import json
from pathlib import Path

from style_lora_trainer.style_lora_engine.captions import CaptionEdits, edit_caption
from style_lora_trainer.style_lora_engine.dataset import normalize_caption
from style_lora_trainer.style_lora_engine.shuffle import split_caption

CASES = json.loads((Path(__file__).parents[1] / "data" / "caption_edit_cases.json").read_text(encoding="utf-8"))


def test_table_is_substantial_and_covers_each_rule():
    edits = CASES["edit_caption"]
    assert len(edits) > 100 and len(CASES["normalize_caption"]) > 10 and len(CASES["split_caption"]) > 20
    for key in ("prefix", "suffix", "find", "overrides"):
        assert any(key in c["edits"] for c in edits), key
    assert any(c["caption"] != c["expected"] for c in edits) and any(c["caption"] == c["expected"] for c in edits)


def test_edit_caption_matches_the_table():
    wrong = []
    for case in CASES["edit_caption"]:
        edits = CaptionEdits.from_json(json.dumps(case["edits"]))
        got = edit_caption(case["caption"], edits, case["file"], case["separator"])
        if got != case["expected"]:
            wrong.append((case, got))
    assert wrong == []


def test_normalize_and_split_match_the_table():
    for case in CASES["normalize_caption"]:
        assert normalize_caption(case["text"]) == case["expected"], case
    for case in CASES["split_caption"]:
        assert split_caption(case["caption"], case["separator"]) == (case["parts"], case["joiner"]), case

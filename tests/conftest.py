import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))  # shared fakes (comfy_fakes) for the tests in its subfolders
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a model hub

from pack_loader import load_pack  # noqa: E402

load_pack()

# Built once per machine and reused (gitignored): the CLIP tokenizer files and the tiny pretrained model.
CACHE_DIR = Path(os.environ.get("STYLE_LORA_CACHE", ROOT / ".cache"))


@pytest.fixture(scope="session")
def clip_tokenizer():
    from style_lora_trainer.dev.tiny_model import build_clip_tokenizer

    return build_clip_tokenizer(CACHE_DIR)


@pytest.fixture(scope="session")
def pretrained_tiny():
    """The demo's tiny SD1.5 model (pretrained once, ~2 minutes, then cached)."""
    from style_lora_trainer.dev.tiny_model import pretrained_tiny_sd15

    return pretrained_tiny_sd15(CACHE_DIR, progress=False)

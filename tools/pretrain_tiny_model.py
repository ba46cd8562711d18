"""Rebuild the shipped tiny model (dev/assets/tiny-sd15-v1.safetensors) and print its sha256.

Only when the pretraining recipe changes on purpose: the file is shipped so every machine starts
from the same weights (pretraining takes another path on another CPU). Put the printed hash in
``dev/tiny_model.py`` (SHIPPED_SHA256), then rerun the style test and the demo.

    python tools/pretrain_tiny_model.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from pack_loader import load_pack  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=ROOT / ".cache", help="where the pretraining is cached")
    args = p.parse_args()
    load_pack()
    from style_lora_trainer.dev.tiny_model import SHIPPED_MODEL, pretrained_tiny_sd15, save_shipped_model

    model = pretrained_tiny_sd15(args.cache, progress=True, shipped=False)
    digest = save_shipped_model(model)
    print(f"wrote {SHIPPED_MODEL} ({SHIPPED_MODEL.stat().st_size / 2**20:.1f} MiB)\nSHIPPED_SHA256 = \"{digest}\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())

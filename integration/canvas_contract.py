"""Facts the canvas extension, the nodes and the workflow generator share, read from the one source
``js/lib/contract.json`` (the JS imports the same file): event names and panel sizes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONTRACT_FILE = Path(__file__).resolve().parent.parent / "js" / "lib" / "contract.json"
CONTRACT: dict[str, Any] = json.loads(CONTRACT_FILE.read_text(encoding="utf-8"))

EVENT_START: str = CONTRACT["events"]["train_start"]
EVENT_STEP: str = CONTRACT["events"]["train_step"]
EVENT_EPOCH: str = CONTRACT["events"]["train_epoch"]
EVENT_END: str = CONTRACT["events"]["train_end"]
# A validation loss (epoch 0 = before training) and the sample images of one epoch (issue 9).
EVENT_VALIDATION: str = CONTRACT["events"]["train_validation"]
EVENT_SAMPLE: str = CONTRACT["events"]["train_sample"]
# Per node type: the panel widget's name, the node's minimum width/height and the panel's height.
PANELS: dict[str, dict[str, Any]] = CONTRACT["panels"]
RESULT_TEXT_MIN_HEIGHT: int = CONTRACT["result_text"]["min_height"]

"""One process of the 2-process test run (``accelerate launch`` starts two): the headless CLI itself, with
the checkpoint loader swapped for the shipped tiny model so that a CPU trains it in seconds.

    accelerate launch --multi_gpu --num_processes 2 tests/headless/ddp_worker.py <cli arguments>

STYLE_LORA_TEST_STOP_AT=N makes every process raise KeyboardInterrupt at step N (a Ctrl-C); each
process writes what it saw to $STYLE_LORA_TEST_REPORT.<rank>.json.
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from pack_loader import load_pack  # noqa: E402

load_pack()

from style_lora_trainer.dev.tiny_model import pretrained_tiny_sd15  # noqa: E402
from style_lora_trainer.headless import checkpoint, cli  # noqa: E402
from style_lora_trainer.integration import canvas_contract, events  # noqa: E402

CACHE = Path(os.environ.get("STYLE_LORA_CACHE", ROOT / ".cache"))
checkpoint.load_checkpoint = lambda path, **_: pretrained_tiny_sd15(CACHE, progress=False)

stop_at = int(os.environ.get("STYLE_LORA_TEST_STOP_AT", "0"))
seen = {"steps": [], "losses": [], "epochs": []}


def record(event: str, payload: dict) -> None:
    if event == canvas_contract.EVENT_STEP:
        seen["steps"].append([payload["step"], payload["steps_per_epoch"], payload["total_steps"]])
        seen["losses"].append(payload["loss"])
        if payload["step"] == stop_at:
            raise KeyboardInterrupt
    elif event == canvas_contract.EVENT_EPOCH:
        seen["epochs"].append(payload["epoch"])


events.add_listener(record)
code = cli.main(sys.argv[1:])
rank = os.environ.get("RANK", "0")
report = os.environ.get("STYLE_LORA_TEST_REPORT")
if report:
    Path(f"{report}.{rank}.json").write_text(json.dumps({**seen, "code": code, "world": os.environ.get("WORLD_SIZE")}))
sys.exit(code)

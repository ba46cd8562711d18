"""js/lib/contract.json is the one source of event names and panel sizes for Python, JS and the
workflow generator: each side must read it, and the shipped workflows must leave the panels room."""

import json
from pathlib import Path

from style_lora_trainer.nodes import canvas_contract, comfy_bridge

ROOT = Path(__file__).resolve().parent.parent


def test_python_event_names_are_the_contracts():
    events = json.loads((ROOT / "js" / "lib" / "contract.json").read_text(encoding="utf-8"))["events"]
    assert [comfy_bridge.EVENT_START, comfy_bridge.EVENT_STEP, comfy_bridge.EVENT_EPOCH, comfy_bridge.EVENT_END] == [
        events["train_start"], events["train_step"], events["train_epoch"], events["train_end"]]
    assert len(set(events.values())) == 4


def test_no_python_module_spells_an_event_name():
    names = set(canvas_contract.CONTRACT["events"].values())
    for path in [*ROOT.glob("nodes/*.py"), *ROOT.glob("style_lora_engine/*.py"), *ROOT.glob("tools/*.py")]:
        text = path.read_text(encoding="utf-8")
        assert not [n for n in names if n in text], f"{path.name} repeats an event name; use canvas_contract"


def test_generated_workflows_leave_each_panel_its_contract_size():
    seen = set()
    for wf_path in sorted((ROOT / "workflows").glob("*.json")):
        for node in json.loads(wf_path.read_text(encoding="utf-8"))["nodes"]:
            panel = canvas_contract.PANELS.get(node["type"])
            if panel is None:
                continue
            seen.add(node["type"])
            width, height = node["size"]
            assert width >= panel["min_width"], (wf_path.name, node["type"])
            assert height >= panel["min_height"], (wf_path.name, node["type"])
    assert seen == set(canvas_contract.PANELS)

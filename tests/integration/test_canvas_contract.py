"""js/lib/contract.json is the one source of event names and panel sizes for Python, JS and the
workflow generator: each side must read it, and the shipped workflows must leave the panels room."""

import json
from pathlib import Path

from style_lora_trainer.integration import canvas_contract, events

ROOT = Path(__file__).resolve().parents[2]


def test_python_event_names_are_the_contracts():
    names = json.loads((ROOT / "js" / "lib" / "contract.json").read_text(encoding="utf-8"))["events"]
    assert [events.EVENT_START, events.EVENT_STEP, events.EVENT_EPOCH, events.EVENT_END] == [
        names["train_start"], names["train_step"], names["train_epoch"], names["train_end"]]
    assert [canvas_contract.EVENT_VALIDATION, canvas_contract.EVENT_SAMPLE] == [
        names["train_validation"], names["train_sample"]]
    assert len(set(names.values())) == 6


def test_no_python_module_spells_an_event_name():
    names = set(canvas_contract.CONTRACT["events"].values())
    for path in [*ROOT.glob("nodes/*.py"), *ROOT.glob("integration/*.py"), *ROOT.glob("canvas_server/*.py"),
                 *ROOT.glob("style_lora_engine/*.py"), *ROOT.glob("tools/*.py")]:
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

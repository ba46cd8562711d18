"""Headless settings: the nodes' widgets from defaults, a workflow, a TOML/JSON file and --set."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from style_lora_trainer.headless.settings import (
    ROLES,
    Settings,
    build_settings,
    node_widgets,
    workflow_sections,
)
from style_lora_trainer.style_lora_engine.errors import ConfigError

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
TRAINING_WORKFLOWS = ["style_lora_full_guide_sd15.json", "style_lora_full_guide_sdxl.json",
                      "style_lora_low_vram_sd15.json"]


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text(encoding="utf-8"))


def named_values(workflow: dict, node_type: str) -> dict:
    """What the workflow generator recorded beside widgets_values (an independent name mapping)."""
    (node,) = [n for n in workflow["nodes"] if n["type"] == node_type]
    return node["widgets_values_named"]


@pytest.mark.parametrize("name", TRAINING_WORKFLOWS)
def test_a_shipped_workflow_gives_each_node_its_own_widget_values(name, tmp_path):
    workflow = load(name)
    for node in workflow["nodes"]:
        node.pop("widgets_values_named", None)  # the frontend saves widgets_values only
    path = tmp_path / name
    path.write_text(json.dumps(workflow), encoding="utf-8")
    sections = workflow_sections(path)
    original = load(name)
    for role in ("load_dataset", "caption_editor", "shuffle_caption", "train_lora", "training_samples",
                 "save_epochs", "grid"):
        assert sections[role] == named_values(original, ROLES[role]), role
    assert "train_options" not in sections  # not linked in these workflows


def test_the_full_guide_workflow_trains_as_the_guide_says():
    settings = build_settings(WORKFLOWS / "style_lora_full_guide_sd15.json")
    train = settings.values["train_lora"]
    assert (train["rank"], train["alpha"], train["optimizer"], train["learning_rate"], train["epochs"]) == (
        32, 16.0, "DAdaptAdamW", 1.0, 20)
    assert settings.values["load_dataset"]["repeats"] == 10
    assert settings.values["shuffle_caption"]["keep_tokens"] == 1
    assert settings.values["save_epochs"]["save"] == "all"
    assert "training_samples" in settings.enabled
    assert settings.sources["train_lora.rank"] == "workflow style_lora_full_guide_sd15.json"


def test_defaults_are_the_nodes_defaults():
    settings = Settings.defaults()
    for role, node_type in ROLES.items():
        for widget in node_widgets(node_type):
            assert settings.values[role][widget.name] == widget.default()
    assert settings.enabled == set()


def test_a_file_overrides_the_workflow_and_set_overrides_both(tmp_path):
    toml = tmp_path / "style.toml"
    toml.write_text('[train_lora]\nrank = 16\nalpha = 8.0\nepochs = 10\n\n[train_options]\nmin_snr_gamma = 5.0\n',
                    encoding="utf-8")
    settings = build_settings(WORKFLOWS / "style_lora_full_guide_sd15.json", toml,
                              ["train_lora.epochs=12", "save_epochs.name=2024", "caption_editor.prefix=by Daumier"])
    train = settings.values["train_lora"]
    assert (train["rank"], train["alpha"], train["epochs"], train["batch_size"]) == (16, 8.0, 12, 2)
    assert settings.values["save_epochs"]["name"] == "2024"  # a text widget keeps "2024" as text
    assert settings.values["caption_editor"]["prefix"] == "by Daumier"
    assert "train_options" in settings.enabled
    assert settings.sources["train_lora.epochs"] == "--set train_lora.epochs"
    assert settings.sources["train_lora.rank"] == "file style.toml"
    text = settings.describe()
    assert 'rank = 16  # file style.toml' in text and "epochs = 12  # --set train_lora.epochs" in text


def test_a_json_settings_file_reads_like_toml(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"load_dataset": {"resolution": 768}, "grid": {"weights": "0.8, 1.0"}}),
                    encoding="utf-8")
    settings = build_settings(settings_file=path)
    assert settings.values["load_dataset"]["resolution"] == 768
    assert "grid" in settings.enabled


@pytest.mark.parametrize(("assignment", "message"), [
    ("train_lora.rnak=4", "train_lora has no widget 'rnak'; its widgets: preset, output_name, rank"),
    ("train_lora.rank=0", r"train_lora.rank = 0: must be between 1 and 256"),
    ("train_lora.rank=2.5", "train_lora.rank = 2.5: expected a whole number"),
    ("train_lora.optimizer=Adam", "expected one of \\['DAdaptAdamW'"),
    ("train_lora.cache_latents=maybe", "expected true or false"),
    ("trainer.rank=4", "Unknown settings section 'trainer': use one of load_dataset"),
    ("rank=4", "write it as section.widget=value"),
])
def test_a_bad_setting_is_refused_naming_it_and_the_fix(assignment, message):
    with pytest.raises(ConfigError, match=message):
        build_settings(assignments=[assignment])


def test_bad_files_are_refused_naming_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train_lora\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        build_settings(settings_file=bad)
    with pytest.raises(ConfigError, match="Cannot read the settings file .*missing.toml"):
        build_settings(settings_file=tmp_path / "missing.toml")
    not_workflow = tmp_path / "w.json"
    not_workflow.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="w.json is not a ComfyUI workflow"):
        build_settings(not_workflow)
    with pytest.raises(ConfigError, match="no Train LoRA"):
        build_settings(WORKFLOWS / "style_lora_captioning_only.json")


def write(tmp_path: Path, workflow: dict) -> Path:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow), encoding="utf-8")
    return path


def test_a_bypassed_node_is_skipped_and_the_chain_followed_upstream(tmp_path):
    workflow = load("style_lora_full_guide_sd15.json")
    shuffle = next(n for n in workflow["nodes"] if n["type"] == "StyleLoRAShuffleCaption")
    shuffle["mode"] = 4
    samples = next(n for n in workflow["nodes"] if n["type"] == "StyleLoRATrainingSamples")
    samples["mode"] = 4
    sections = workflow_sections(write(tmp_path, workflow))
    assert "shuffle_caption" not in sections and "training_samples" not in sections
    assert sections["load_dataset"]["folder"] == "my_style_dataset"


def test_several_train_nodes_need_one_chosen(tmp_path):
    workflow = load("style_lora_full_guide_sd15.json")
    train = next(n for n in workflow["nodes"] if n["type"] == "StyleLoRATrain")
    twin = copy.deepcopy(train)
    twin["id"] = 99
    twin["widgets_values"][2] = 8  # rank
    for socket in twin["inputs"]:
        socket["link"] = None
    workflow["nodes"].append(twin)
    path = write(tmp_path, workflow)
    with pytest.raises(ConfigError, match=r"2 Train LoRA nodes \(ids 11, 99\).*--train-node"):
        workflow_sections(path)
    assert workflow_sections(path, "11")["train_lora"]["rank"] == 32
    with pytest.raises(ConfigError, match="no Load Dataset upstream"):
        workflow_sections(path, "99")


def test_widget_values_from_another_version_are_refused(tmp_path):
    workflow = load("style_lora_full_guide_sd15.json")
    train = next(n for n in workflow["nodes"] if n["type"] == "StyleLoRATrain")
    train["widgets_values"].append("an extra widget")
    with pytest.raises(ConfigError, match="node 11 \\(StyleLoRATrain\\) has 16 widget values but this version of the pack expects 15"):
        workflow_sections(write(tmp_path, workflow))


def test_an_api_format_prompt_is_read_too(tmp_path):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "2": {"class_type": "StyleLoRALoadDataset", "inputs": {"folder": "cats", "repeats": 12, "clip": ["1", 1]}},
        "3": {"class_type": "StyleLoRATrain", "inputs": {"dataset": ["2", 0], "rank": 8, "model": ["1", 0]}},
        "4": {"class_type": "StyleLoRASaveEpochs", "inputs": {"run": ["3", 0], "save": "last_k"}},
    }
    settings = build_settings(write(tmp_path, prompt))
    assert settings.values["load_dataset"]["folder"] == "cats"
    assert settings.values["load_dataset"]["repeats"] == 12
    assert settings.values["train_lora"]["rank"] == 8
    assert settings.values["save_epochs"]["save"] == "last_k"

"""The nodes follow ComfyUI's classic-API rules, checked without ComfyUI."""

import inspect
from pathlib import Path

import pytest

import style_lora_trainer
from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

EXPECTED_IDS = {
    "StyleLoRALoadDataset", "StyleLoRACaptionEditor", "StyleLoRAShuffleCaption",
    "StyleLoRATrain", "StyleLoRATrainOptions", "StyleLoRASaveEpochs", "StyleLoRAEpochWeightGrid",
    "StyleLoRAPickEpoch", "StyleLoRATrainingSamples",
}
CORE_TYPES = {"MODEL", "CLIP", "VAE", "IMAGE", "STRING", "INT", "FLOAT", "BOOLEAN", "LATENT", "CONDITIONING"}
# Core node ids already taken (ComfyUI's training and LoRA nodes): ours must not collide.
CORE_TRAINING_NODES = {
    "TrainLoraNode", "LoraModelLoader", "SaveLoRA", "LossGraphNode", "MakeTrainingDataset",
    "SaveTrainingDataset", "LoadTrainingDataset", "LoadImageDataSetFromFolder",
    "LoadImageTextDataSetFromFolder", "SaveImageDataSetToFolder", "SaveImageTextDataSetToFolder",
    "ResolutionBucket", "ShuffleDataset", "ShuffleImageTextDataset", "LoraSave", "LoraLoader",
    "LoraLoaderModelOnly",
}


def test_pack_entry_points():
    assert style_lora_trainer.WEB_DIRECTORY == "./js"
    assert (Path(style_lora_trainer.__file__).parent / "js").is_dir()
    assert set(NODE_CLASS_MAPPINGS) == EXPECTED_IDS
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == EXPECTED_IDS
    assert not EXPECTED_IDS & CORE_TRAINING_NODES
    for name in NODE_DISPLAY_NAME_MAPPINGS.values():
        assert name.endswith("(Style LoRA)"), name


def _walk_inputs(cls):
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}, spec.keys()
    for section, entries in spec.items():
        for name, entry in entries.items():
            yield section, name, entry


@pytest.mark.parametrize("node_id", sorted(EXPECTED_IDS))
def test_input_types_follow_comfyui_rules(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert cls.CATEGORY == "Style LoRA"
    assert isinstance(cls.RETURN_TYPES, tuple)
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    for rt in cls.RETURN_TYPES:
        assert rt in CORE_TYPES or rt.startswith("STYLE_LORA_"), rt
    fn = getattr(cls, cls.FUNCTION)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for section, name, entry in _walk_inputs(cls):
        assert name in params or takes_any, f"{node_id}.{cls.FUNCTION} does not accept input {name!r}"
        if section == "optional":
            assert params[name].default is not inspect.Parameter.empty, f"optional {name} needs a default"
        if section == "hidden":
            assert isinstance(entry, str)
            continue
        assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, (name, entry)
        kind = entry[0]
        opts = entry[1] if len(entry) == 2 else {}
        assert isinstance(opts, dict)
        if isinstance(kind, list):  # combo
            assert kind and all(isinstance(v, str) for v in kind)
            if "default" in opts:
                assert opts["default"] in kind
            continue
        assert isinstance(kind, str)
        assert kind in CORE_TYPES or kind.startswith("STYLE_LORA_"), kind
        if kind in ("INT", "FLOAT") and "default" in opts:
            assert opts.get("min", float("-inf")) <= opts["default"] <= opts.get("max", float("inf")), name
            if kind == "INT":
                assert isinstance(opts["default"], int)
        if kind == "BOOLEAN" and "default" in opts:
            assert isinstance(opts["default"], bool)
        if kind == "STRING" and "default" in opts:
            assert isinstance(opts["default"], str)
    # Every required parameter of the function is an input (ComfyUI passes only declared inputs).
    declared = {name for _, name, _ in _walk_inputs(cls)}
    for name, p in params.items():
        if name != "self" and p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD:
            assert name in declared, f"{node_id}.{cls.FUNCTION} needs {name!r} but it is not an input"


def test_seed_widgets_do_not_randomize():
    # A seed that changes after each queue would defeat resuming a run with the same settings.
    for cls in NODE_CLASS_MAPPINGS.values():
        for _, name, entry in _walk_inputs(cls):
            if name == "seed":
                assert entry[1].get("control_after_generate") is False


def test_guide_defaults_in_widgets():
    train = NODE_CLASS_MAPPINGS["StyleLoRATrain"].INPUT_TYPES()["required"]
    assert train["rank"][1]["default"] == 32 and train["alpha"][1]["default"] == 16
    assert train["optimizer"][1]["default"] == "DAdaptAdamW"
    assert train["learning_rate"][1]["default"] == 1.0 and train["epochs"][1]["default"] == 20
    load = NODE_CLASS_MAPPINGS["StyleLoRALoadDataset"].INPUT_TYPES()["required"]
    assert load["repeats"][1]["default"] == 10
    shuffle = NODE_CLASS_MAPPINGS["StyleLoRAShuffleCaption"].INPUT_TYPES()["required"]
    assert shuffle["keep_tokens"][1]["default"] == 1
    grid = NODE_CLASS_MAPPINGS["StyleLoRAEpochWeightGrid"].INPUT_TYPES()["required"]
    assert grid["weights"][1]["default"] == "0.6, 0.8, 1.0"


def test_no_comfyui_module_is_shadowed_or_imported():
    import sys

    root = Path(style_lora_trainer.__file__).parent
    for name in ("comfy", "folder_paths", "server", "utils", "execution"):
        assert not (root / f"{name}.py").exists() and not (root / name).is_dir()
        assert name not in sys.modules or "style_lora" not in str(getattr(sys.modules[name], "__file__", ""))
    assert "nodes" not in sys.modules  # our nodes live only as style_lora_trainer.nodes

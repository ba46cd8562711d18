"""Train LoRA's validation numbers and samples as the canvas and API clients see them (no ComfyUI)."""

import numpy as np
import pytest
from node_env import load_node_dataset, node_env
from PIL import Image

from style_lora_trainer.dev.synthetic_data import make_style_dataset
from style_lora_trainer.dev.tiny_model import build_tiny_sd15
from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS as NODES
from style_lora_trainer.style_lora_engine.errors import ConfigError, DatasetError

SAMPLE_ARGS = dict(prompts="a red circle\n\na blue square", negative="", weights="0.8, 1.0", every_n_epochs=2,
                   include_base=True, seed=1, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal",
                   width=32, height=32)


@pytest.fixture
def env(tmp_path, monkeypatch):
    return node_env(tmp_path, monkeypatch, count=5)


_load = load_node_dataset


def _train(model, dataset, **kw):
    args = dict(model=model, clip=model, vae=model, dataset=dataset, preset="custom (use the widgets)",
                output_name="samples", rank=2, alpha=1.0, optimizer="DAdaptAdamW", learning_rate=1.0,
                lr_scheduler="constant", lr_warmup_steps=0, epochs=3, batch_size=2, seed=0, mixed_precision="auto",
                gradient_checkpointing=False, cache_latents=True, unique_id="31")
    return NODES["StyleLoRATrain"]().train(**(args | kw))


def test_training_samples_node_checks_its_widgets():
    node = NODES["StyleLoRATrainingSamples"]()
    (settings,) = node.configure(**SAMPLE_ARGS)
    assert settings.prompts == ("a red circle", "a blue square") and settings.weights == (0.8, 1.0)
    with pytest.raises(ConfigError, match="no prompt"):
        node.configure(**(SAMPLE_ARGS | {"prompts": "  \n "}))
    with pytest.raises(ConfigError, match="weights must be numbers"):
        node.configure(**(SAMPLE_ARGS | {"weights": "0.8, strong"}))
    with pytest.raises(ConfigError, match="every_n_epochs"):
        node.configure(**(SAMPLE_ARGS | {"every_n_epochs": 0}))


def test_train_node_sends_validation_and_samples_and_keeps_them_for_reloads(env, clip_tokenizer, monkeypatch):
    from style_lora_trainer.canvas_server.training_history import HISTORY
    from style_lora_trainer.integration import events, paths

    sent = []
    monkeypatch.setattr(events, "send_event", lambda name, payload: sent.append((name, payload)))
    model = build_tiny_sd15(clip_tokenizer, seed=0)
    dataset, _ = _load()
    (samples,) = NODES["StyleLoRATrainingSamples"]().configure(**SAMPLE_ARGS)
    out = _train(model, dataset, samples=samples)
    run, _, summary, _plan = out["result"]

    names = [n for n, _ in sent]
    assert names[0] == "style_lora.train_start"  # before the epoch-0 validation and the base samples
    validation = [p for n, p in sent if n == "style_lora.train_validation"]
    assert [v["epoch"] for v in validation] == [0, 1, 2, 3]
    assert [v["validation_loss"] for v in validation] == [loss for _, _, loss in run.validation]
    assert validation[0]["source"] == "training images (5 of 5)"
    epochs = [p for n, p in sent if n == "style_lora.train_epoch"]
    assert [e["validation_loss"] for e in epochs] == [v["validation_loss"] for v in validation[1:]]

    sample_events = [p for n, p in sent if n == "style_lora.train_sample"]
    assert [s["epoch"] for s in sample_events] == [0, 2, 3]  # base, every 2nd epoch, the last
    assert [c["weight"] for c in sample_events[0]["cells"]] == [None]
    assert [c["weight"] for c in sample_events[1]["cells"]] == [0.8, 1.0]
    temp = paths.temp_dir()
    for event in sample_events:
        assert event["seconds"] > 0 and event["prompts"] == ["a red circle", "a blue square"]
        for cell in event["cells"]:
            assert len(cell["images"]) == 2  # one per prompt
            for ref in cell["images"]:
                assert ref["type"] == "temp"
                with Image.open(temp / ref["subfolder"] / ref["filename"]) as img:
                    assert img.size == (32, 32)
    # The epoch-2 sample at weight 0.8 is what the saved file gives when rendered again afterwards.
    again = model.render_samples(run.epoch_files[2], [0.8], ["a red circle"], seed=1, steps=2, cfg=1.0,
                                 width=32, height=32)[0][1][0]
    shown = sample_events[1]["cells"][0]["images"][0]
    with Image.open(temp / shown["subfolder"] / shown["filename"]) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(again.convert("RGB")))

    snap = HISTORY.snapshot("31")
    assert [v["epoch"] for v in snap["validation"]] == [0, 1, 2, 3]
    assert [s["epoch"] for s in snap["samples"]] == [0, 2, 3]
    assert out["ui"]["style_lora_samples"] == [{k: v for k, v in s.items() if k not in ("node", "run")}
                                               for s in sample_events]
    assert "Validation loss on training images (5 of 5): base: " in summary
    assert "Lowest validation loss: epoch " in summary and "sampling" in summary


def test_load_dataset_holds_out_images_or_reads_a_validation_folder(env):
    held, report = _load(validation="hold out", hold_out=2)
    assert len(held.items) == 3 and len(held.validation_set().items) == 2
    assert "Validation loss on held out (2 images, not trained on)." in report
    make_style_dataset(env / "input" / "extra", count=2, size=32, seed=7)
    folder, report = _load(validation="folder", validation_folder="extra")
    assert len(folder.items) == 5 and folder.validation_set().describe() == "folder extra (2 images)"
    with pytest.raises(DatasetError, match="validation_folder is empty"):
        _load(validation="folder", validation_folder=" ")
    with pytest.raises(DatasetError, match="outside"):
        _load(validation="folder", validation_folder="/etc")
    with pytest.raises(DatasetError, match="leaving none"):
        _load(validation="hold out", hold_out=5)
    # A changed validation folder is a changed input for ComfyUI's cache.
    node = NODES["StyleLoRALoadDataset"]
    before = node.IS_CHANGED(folder="style", caption_extension=".txt", validation="folder", validation_folder="extra")
    make_style_dataset(env / "input" / "extra", count=3, size=32, seed=7)
    after = node.IS_CHANGED(folder="style", caption_extension=".txt", validation="folder", validation_folder="extra")
    assert before != after

"""The node functions, called as ComfyUI calls them, without ComfyUI."""

import json
import logging
import sys

import pytest
import torch
from node_env import load_node_dataset, node_env
from safetensors.torch import load_file

from style_lora_trainer.dev.tiny_model import build_tiny_sd15
from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS as NODES
from style_lora_trainer.nodes.epoch_weight_grid import find_saved_epochs, parse_epoch_selection, parse_weights
from style_lora_trainer.style_lora_engine.errors import ConfigError, DatasetError, StyleLoRAError


@pytest.fixture
def env(tmp_path, monkeypatch):
    return node_env(tmp_path, monkeypatch, count=4)


_load = load_node_dataset


def test_load_dataset_node_reads_folder_under_input_and_lints(env):
    dataset, report = _load()
    assert len(dataset.items) == 4 and dataset.repeats == 2
    assert "30" in report  # the guide's 30-100 images advice for a 4-image set


@pytest.mark.parametrize("folder", ["../outside", "/etc", "style/../../x"])
def test_load_dataset_node_refuses_folders_outside_the_roots(env, folder):
    with pytest.raises((DatasetError, StyleLoRAError)):
        _load(folder=folder)


def test_caption_editor_applies_bulk_edits_overrides_and_writes_back_atomically(env):
    dataset, _ = _load()
    first = dataset.items[0]
    edits = json.dumps({"overrides": {first.image_path.name: "a custom caption, with parts"}})
    editor = NODES["StyleLoRACaptionEditor"]()
    edited, text = editor.edit(dataset=[dataset], prefix=["sks"], suffix=["by Test Artist"], find=["painting"],
                               replace=["picture"], write_back=[True], edits=[edits])
    assert edited.items[0].caption == "sks, a custom caption, with parts, by Test Artist"
    for item in edited.items[1:]:
        assert item.caption.startswith("sks, ") and item.caption.endswith(", by Test Artist")
        assert "painting" not in item.caption
    assert first.caption_path.read_text(encoding="utf-8") == edited.items[0].caption
    assert "wrote 4 caption file(s)" in text
    assert dataset.items[0].caption == first.caption  # the input dataset is not mutated
    assert not [p for p in first.caption_path.parent.iterdir() if ".tmp" in p.name]


def test_caption_editor_takes_captions_from_another_node(env):
    dataset, _ = _load()
    captions = [f"caption {i}, detail" for i in range(4)]
    edited, _ = NODES["StyleLoRACaptionEditor"]().edit(
        dataset=[dataset], prefix=[""], suffix=[""], find=[""], replace=[""], write_back=[False], edits=["{}"],
        captions=captions)
    assert edited.captions() == captions
    with pytest.raises(StyleLoRAError, match="2 entries but the dataset has 4 images"):
        NODES["StyleLoRACaptionEditor"]().edit(
            dataset=[dataset], prefix=[""], suffix=[""], find=[""], replace=[""], write_back=[False],
            edits=["{}"], captions=captions[:2])


def test_shuffle_node_attaches_settings_and_previews_real_captions(env):
    dataset, _ = _load()
    out = NODES["StyleLoRAShuffleCaption"]().configure(
        dataset=dataset, enabled=True, separator=",", keep_tokens=1, seed=0, preview_count=2)
    shuffled, preview = out["result"]
    assert shuffled.shuffle.keep_tokens == 1 and dataset.shuffle is None
    assert dataset.items[0].caption.split(",")[0] in preview
    assert out["ui"]["text"] == [preview]  # shown in the node after it runs


def test_train_save_and_grid_nodes_end_to_end(env, clip_tokenizer, caplog):
    model = build_tiny_sd15(clip_tokenizer, seed=0)
    dataset, _ = _load()
    dataset, _ = NODES["StyleLoRAShuffleCaption"]().configure(
        dataset=dataset, enabled=True, separator=",", keep_tokens=1, seed=0, preview_count=1)["result"]
    caplog.set_level(logging.INFO, logger="style_lora_trainer")
    out = NODES["StyleLoRATrain"]().train(
        model=model, clip=model, vae=model, dataset=dataset, preset="custom (use the widgets)",
        output_name="my style", rank=4, alpha=2.0, optimizer="DAdaptAdamW", learning_rate=1.0,
        lr_scheduler="constant", lr_warmup_steps=0, epochs=3, batch_size=2, seed=0, mixed_precision="auto",
        gradient_checkpointing=False, cache_latents=True)
    run, loss_plot, summary, plan_output = out["result"]
    assert loss_plot.ndim == 4 and loss_plot.shape[-1] == 3 and 0 <= float(loss_plot.min()) <= 1
    assert "3 epoch file(s)" in summary and out["ui"]["text"] == [summary]
    plan = next(r.getMessage() for r in caplog.records if "Pre-flight plan" in r.getMessage())
    assert f"-> {run.steps_per_epoch} steps per epoch, {3 * run.steps_per_epoch} steps in 3 epochs" in plan
    assert "[!!] 3 epochs (the guide: 20, each saved)" in plan and "disk:" in plan
    # The plan output: the same plan, the device's free memory, and the peak measured while training.
    assert plan_output.startswith(plan.split("Style LoRA Train: ", 1)[-1].split("\n  memory")[0])
    assert "free now" in plan_output and "measured while training on cpu:" in plan_output
    assert (run.run_dir / "loss.png").is_file()

    saved = NODES["StyleLoRASaveEpochs"]().save(run=run, name="my style", save="every_n", n=2, subfolder="styles",
                                                overwrite=False)
    epochs, names = saved["result"]
    assert epochs.epochs() == [2, 3]
    assert names.splitlines() == ["styles/my style-000002.safetensors", "styles/my style-000003.safetensors"]
    target = env / "loras" / "styles" / "my style-000003.safetensors"
    assert load_file(str(target)).keys() == load_file(str(run.epoch_files[3])).keys()
    # Saving again is idempotent; another run's file with the same name is not overwritten.
    NODES["StyleLoRASaveEpochs"]().save(run=run, name="my style", save="every_n", n=2, subfolder="styles",
                                        overwrite=False)
    target.write_bytes(b"someone else's lora")
    with pytest.raises(StyleLoRAError, match="overwrite"):
        NODES["StyleLoRASaveEpochs"]().save(run=run, name="my style", save="all", n=1, subfolder="styles",
                                            overwrite=False)
    assert target.read_bytes() == b"someone else's lora"
    NODES["StyleLoRASaveEpochs"]().save(run=run, name="my style", save="all", n=1, subfolder="styles",
                                        overwrite=True)
    assert load_file(str(target)).keys() == load_file(str(run.epoch_files[3])).keys()

    grid_node = NODES["StyleLoRAEpochWeightGrid"]()
    kwargs = dict(model=model, clip=model, vae=model, prompts="a red circle\na blue square", negative="",
                  weights="0, 1.0", epochs_to_show="all", seed=1, images_per_prompt=1, steps=2, cfg=1.0,
                  sampler_name="euler", scheduler="normal", width=32, height=32)
    grid, table = grid_node.render(epochs=epochs, **kwargs)["result"]
    assert grid.ndim == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3
    assert [r["lora_name"] for r in json.loads(table)["rows"]] == names.splitlines()
    # The same grid from files saved earlier, found by name in the loras folder.
    again, again_table = grid_node.render(lora_name="styles/my style", **{**kwargs, "epochs_to_show": "2, 3"})["result"]
    assert again.shape == grid.shape
    assert torch.equal(again, grid) and again_table == table


def test_grid_input_parsing():
    assert parse_weights("0.6, 0.8 1.0") == [0.6, 0.8, 1.0]
    with pytest.raises(ConfigError):
        parse_weights("0.6, heavy")
    assert parse_epoch_selection("all", [3, 1, 2]) == [1, 2, 3]
    assert parse_epoch_selection("5, 10-12", list(range(1, 21))) == [5, 10, 11, 12]
    with pytest.raises(ConfigError):
        parse_epoch_selection("30", [1, 2])
    with pytest.raises(ConfigError):
        parse_epoch_selection("x-y", [1])


def test_saved_epochs_lookup_stays_inside_the_loras_folder(env):
    with pytest.raises(StyleLoRAError):
        find_saved_epochs("../output/anything")
    with pytest.raises(StyleLoRAError, match="No files"):
        find_saved_epochs("missing_name")


def test_train_node_streams_start_step_epoch_end_and_keeps_history_for_reloads(env, clip_tokenizer, monkeypatch):
    from style_lora_trainer.canvas_server.training_history import HISTORY
    from style_lora_trainer.integration import events, progress

    sent = []
    monkeypatch.setattr(events, "send_event", lambda name, payload: sent.append((name, payload)))
    model = build_tiny_sd15(clip_tokenizer, seed=0)
    dataset, _ = _load()
    args = dict(model=model, clip=model, vae=model, dataset=dataset, preset="custom (use the widgets)",
                output_name="events", rank=2, alpha=1.0, optimizer="AdamW", learning_rate=1e-4,
                lr_scheduler="constant", lr_warmup_steps=0, epochs=2, batch_size=4, seed=0, mixed_precision="auto",
                gradient_checkpointing=False, cache_latents=True, unique_id="17")
    NODES["StyleLoRATrain"]().train(**args)
    names = [n for n, _ in sent]
    assert names[0] == "style_lora.train_start" and names[-1] == "style_lora.train_end"
    assert names.count("style_lora.train_step") == 4 and names.count("style_lora.train_epoch") == 2
    run = sent[0][1]["run"]
    assert all(p["run"] == run and p["node"] == "17" for _, p in sent)
    snap = HISTORY.snapshot("17")
    assert snap["state"] == "finished" and snap["run"] == run
    assert [p["step"] for p in snap["points"]] == [1, 2, 3, 4] and [e["epoch"] for e in snap["epochs"]] == [1, 2]

    # Stop during a fresh run (another name): the panel learns it stopped, the exception goes on to ComfyUI.
    sent.clear()

    def stop():
        raise KeyboardInterrupt

    monkeypatch.setattr(progress, "check_interrupt", stop)
    with pytest.raises(KeyboardInterrupt):
        NODES["StyleLoRATrain"]().train(**(args | {"output_name": "events2"}))
    assert sent[-1][0] == "style_lora.train_end" and sent[-1][1]["state"] == "stopped"
    assert HISTORY.snapshot("17")["state"] == "stopped"


def test_train_node_failing_before_its_first_step_tells_the_panel(env, clip_tokenizer, monkeypatch):
    from style_lora_trainer.canvas_server.training_history import HISTORY
    from style_lora_trainer.integration import events
    from style_lora_trainer.nodes import train_lora as train_node

    sent = []
    monkeypatch.setattr(events, "send_event", lambda name, payload: sent.append((name, payload)))

    def out_of_memory(*args, **kwargs):
        raise StyleLoRAError("Out of memory while caching latents. Try a lower resolution.")

    monkeypatch.setattr(train_node, "train_lora", out_of_memory)
    model = build_tiny_sd15(clip_tokenizer, seed=0)
    dataset, _ = _load()
    with pytest.raises(StyleLoRAError, match="Out of memory"):
        NODES["StyleLoRATrain"]().train(
            model=model, clip=model, vae=model, dataset=dataset, preset="custom (use the widgets)",
            output_name="oom", rank=2, alpha=1.0, optimizer="AdamW", learning_rate=1e-4, lr_scheduler="constant",
            lr_warmup_steps=0, epochs=2, batch_size=4, seed=0, mixed_precision="auto",
            gradient_checkpointing=False, cache_latents=True, unique_id="23")
    assert [n for n, _ in sent] == ["style_lora.train_start", "style_lora.train_end"]
    assert sent[0][1]["run"] == sent[1][1]["run"]  # the page switches to the new run, then sees it fail
    assert sent[1][1]["state"] == "failed" and "Out of memory" in sent[1][1]["message"]
    assert HISTORY.snapshot("23")["state"] == "failed"


def test_dataset_folder_confinement_uses_comfyuis_check_inside_comfyui(tmp_path, monkeypatch) -> None:
    import types

    from style_lora_trainer.integration.paths import resolve_dataset_folder

    inside, outside = tmp_path / "input" / "style", tmp_path / "elsewhere"
    inside.mkdir(parents=True)
    outside.mkdir()
    calls = []

    def is_within_directory(directory: str, target: str) -> bool:
        calls.append((directory, target))
        return target.startswith(directory + "/")

    fake = types.SimpleNamespace(get_input_directory=lambda: str(tmp_path / "input"),
                                 is_within_directory=is_within_directory)
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    monkeypatch.delenv("STYLE_LORA_DATASET_ROOTS", raising=False)
    assert resolve_dataset_folder(str(inside)) == inside.resolve()
    with pytest.raises(DatasetError, match="outside the folders"):
        resolve_dataset_folder(str(outside))
    assert (str((tmp_path / "input").resolve()), str(inside.resolve())) in calls
    assert any(target == str(outside.resolve()) for _, target in calls)

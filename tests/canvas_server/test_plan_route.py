"""POST /style_lora/plan: the Train LoRA panel's pre-flight plan before Queue. The counts are the nodes' own,
the disk figure comes from the checkpoint's header, and Measure runs the real warm-up (here on the tiny
diffusers model, standing in for the checkpoint ComfyUI would load). No ComfyUI needed."""

from __future__ import annotations

import pytest
import torch
from node_env import load_node_dataset, node_env
from route_client import serve_routes
from safetensors.torch import save_file

from style_lora_trainer.canvas_server.plan import CanvasPlanner
from style_lora_trainer.headless.diffusers_backend import DiffusersBackend
from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS
from style_lora_trainer.nodes.train_lora import train_config
from style_lora_trainer.style_lora_engine.checkpoint_header import lora_parameter_count, tensor_shapes
from style_lora_trainer.style_lora_engine.errors import ConfigError
from style_lora_trainer.style_lora_engine.training_plan import disk_need_for, make_plan, plan_counts

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (ComfyUI's server library) is in requirements-dev.txt")

DATASET = {"folder": "style", "repeats": 3, "resolution": 32, "min_bucket_size": 32, "max_bucket_size": 64,
           "bucket_step": 32}
TRAIN = {"preset": "custom (use the widgets)", "rank": 4, "alpha": 2.0, "epochs": 2, "batch_size": 2,
         "mixed_precision": "fp32", "output_name": "plan me"}
CHECKPOINT = "tiny.safetensors"


def tiny_ldm_checkpoint(path):
    prefix = "model.diffusion_model.input_blocks.1.1."
    save_file({prefix + "transformer_blocks.0.attn1.to_q.weight": torch.zeros(16, 8),
               prefix + "transformer_blocks.0.ff.net.2.weight": torch.zeros(8, 32),
               prefix + "proj_in.weight": torch.zeros(8, 4, 1, 1),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(4)}, str(path))
    return path


class FakeHost:
    """ComfyUI's side of the plan: a checkpoints folder of one file, the CPU, a queue, and the warm-up on the
    tiny diffusers model."""

    def __init__(self, checkpoint, model=None):
        self.checkpoint = checkpoint
        self.model = model
        self.queue = 0
        self.warm_ups = []

    def checkpoint_path(self, name):
        if name != CHECKPOINT:
            raise ConfigError(f"{name!r} is not in ComfyUI's checkpoints folder")
        return self.checkpoint

    def device(self):
        return torch.device("cpu")

    def free_memory(self):
        return 12 * 2**30

    def busy(self):
        return f"{self.queue} prompt(s) are queued or running" if self.queue else None

    def warm_up(self, checkpoint, dataset, config, *, output_name, save_mode, save_n):
        self.warm_ups.append((checkpoint, output_name, config.rank))
        return make_plan(DiffusersBackend(self.model), dataset, config, runs_root=self.checkpoint.parent / "runs",
                         output_name=output_name, save_mode=save_mode, save_n=save_n)


@pytest.fixture
def env(tmp_path, monkeypatch):
    node_env(tmp_path, monkeypatch, count=5)
    return tmp_path


def serve(planner, coro_factory):
    return serve_routes(coro_factory, planner=planner)


def test_the_plan_before_queue_counts_what_training_would(env):
    host = FakeHost(tiny_ldm_checkpoint(env / CHECKPOINT))
    body = {"load_dataset": DATASET, "train_lora": TRAIN, "save_epochs": {"save": "last_k", "n": 1},
            "checkpoint": CHECKPOINT}

    async def go(client):
        r = await client.post("/style_lora/plan", json=body)
        return r.status, await r.json()

    status, plan = serve(CanvasPlanner(host, NODE_CLASS_MAPPINGS), go)
    assert status == 200, plan
    dataset, _ = load_node_dataset(**{k: v for k, v in DATASET.items() if k != "folder"})
    config = train_config(**{**TRAIN_DEFAULTS(), **TRAIN})
    counts = plan_counts(dataset, config)
    assert (plan["images"], plan["repeats"], plan["steps_per_epoch"], plan["total_steps"]) == (
        5, 3, counts.steps_per_epoch, counts.total_steps)
    assert [c["ok"] for c in plan["checks"]] == [False, False, False]
    params = lora_parameter_count(tensor_shapes(host.checkpoint), 4)
    expected = disk_need_for(params, config, "last_k", 1, env / "output")
    assert plan["disk_bytes"] == expected.total and expected.files_published == 1
    assert plan["measured"] is False and plan["estimated_peak"] is None and plan["free_memory"] == 12 * 2**30
    assert f"{counts.steps_per_epoch} steps per epoch" in plan["text"]
    assert "model: tiny.safetensors (sd15)" in plan["text"] and "12.00 GiB free now" in plan["text"]
    assert "Measure runs a short warm-up" in plan["text"]
    assert host.warm_ups == []  # nothing was loaded or trained


def TRAIN_DEFAULTS():
    from style_lora_trainer.integration.widget_spec import role_widgets

    return {name: w.default() for name, w in role_widgets("train_lora", NODE_CLASS_MAPPINGS).items()}


@pytest.mark.slow
def test_measure_runs_the_warm_up_and_the_panel_sees_it_again_until_a_setting_changes(env, pretrained_tiny):
    host = FakeHost(tiny_ldm_checkpoint(env / CHECKPOINT), pretrained_tiny)
    body = {"load_dataset": DATASET, "train_lora": TRAIN, "checkpoint": CHECKPOINT}

    async def go(client):
        measured = await (await client.post("/style_lora/plan", json=body | {"measure": True})).json()
        again = await (await client.post("/style_lora/plan", json=body)).json()
        changed = await (await client.post("/style_lora/plan", json=body | {
            "train_lora": TRAIN | {"rank": 8}})).json()
        host.queue = 1
        r = await client.post("/style_lora/plan", json=body | {"measure": True})
        busy = (r.status, await r.json())
        return measured, again, changed, busy

    measured, again, changed, busy = serve(CanvasPlanner(host, NODE_CLASS_MAPPINGS), go)
    assert measured["measured"] is True, measured
    assert host.warm_ups == [(CHECKPOINT, "plan me", 4)]
    assert measured["estimated_peak"] > 0 and measured["seconds_per_step"] > 0
    assert 0 < measured["stepping_peak"] <= measured["estimated_peak"]
    assert "memory on cpu: about" in measured["text"] and "s/step (warm-up)" in measured["text"]
    assert again == measured  # a reload of the page shows the measurement
    assert changed["measured"] is False and changed["estimated_peak"] is None and changed["stepping_peak"] is None
    assert busy[0] == 409 and "queued or running" in busy[1]["error"]
    assert len(host.warm_ups) == 1
    assert not (env / "runs").exists()  # the warm-up trains in a scratch folder, and nothing is kept


@pytest.mark.parametrize(("change", "status", "message"), [
    ({"train_lora": {"rank": 0}}, 400, "train_lora.rank = 0: must be between 1 and 256"),
    ({"train_lora": {"ranks": 4}}, 400, "train_lora has no widget 'ranks'"),
    ({"load_dataset": {"folder": "../../etc"}}, 400, "outside"),
    ({"load_dataset": "style"}, 400, "'load_dataset' must be an object"),
    ({"checkpoint": 5}, 400, "'checkpoint' must be a Load Checkpoint name"),
    ({"checkpoint": None, "measure": True}, 400, "connect Train LoRA's model input to a Load Checkpoint"),
])
def test_bad_requests_say_what_to_fix(env, change, status, message):
    host = FakeHost(tiny_ldm_checkpoint(env / CHECKPOINT))
    body = {"load_dataset": DATASET, "train_lora": TRAIN, "checkpoint": CHECKPOINT}
    for key, value in change.items():
        body[key] = (body[key] | value) if isinstance(value, dict) and isinstance(body.get(key), dict) else value

    async def go(client):
        r = await client.post("/style_lora/plan", json=body)
        return r.status, await r.json()

    got_status, answer = serve(CanvasPlanner(host, NODE_CLASS_MAPPINGS), go)
    assert got_status == status and message in answer["error"], answer
    assert host.warm_ups == []


def test_a_checkpoint_not_in_the_folder_is_a_note_not_a_failure(env):
    host = FakeHost(tiny_ldm_checkpoint(env / CHECKPOINT))
    planner = CanvasPlanner(host, NODE_CLASS_MAPPINGS)
    plan = planner.plan({"load_dataset": DATASET, "train_lora": TRAIN, "checkpoint": "../other.safetensors"})
    assert plan["disk_bytes"] is None and "not in ComfyUI's checkpoints folder" in plan["text"]
    bare = planner.plan({"load_dataset": DATASET, "train_lora": TRAIN, "checkpoint": None})
    assert "connect Train LoRA's model to a Load Checkpoint node" in bare["text"]

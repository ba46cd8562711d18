"""A kill at any instant of training: the re-run resumes, leaves no temp file and never rewrites a
finished epoch. Kills are simulated by copying the run folder at every write point of a run (just
before each rename, with the temp file half written, and just after it), which is what a kill -9
at that instant leaves on disk: no ``finally`` block runs."""

import dataclasses
import errno
import hashlib
import os
import shutil
import threading

import pytest
import torch
from safetensors.torch import load_file

from style_lora_trainer.dev.synthetic_data import make_style_dataset
from style_lora_trainer.dev.tiny_model import build_tiny_sd15
from style_lora_trainer.headless.diffusers_backend import DiffusersBackend
from style_lora_trainer.style_lora_engine import atomic, folder_lock
from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.errors import StyleLoRAError
from style_lora_trainer.style_lora_engine.resume_state import TENSORS_FILE, load_resume_state
from style_lora_trainer.style_lora_engine.shuffle import ShuffleSettings
from style_lora_trainer.style_lora_engine.trainer import TrainCallbacks, train_lora

CONFIG = TrainConfig(rank=4, alpha=2.0, epochs=3, batch_size=2, seed=3)
NAME = "k"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    make_style_dataset(folder, count=4, size=32, seed=1)
    ds = load_dataset(folder, repeats=1, resolution=32, buckets=BucketSettings(min_size=32, step=32))
    return ds.with_shuffle(ShuffleSettings(keep_tokens=1, seed=5))


@pytest.fixture(scope="module")
def model(clip_tokenizer):
    return build_tiny_sd15(clip_tokenizer, seed=0)


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob(f"{NAME}-*.safetensors")}


def _epoch_tensors(result):
    return {e: load_file(str(p)) for e, p in result.epoch_files.items()}


@pytest.fixture(scope="module")
def kill_points(tmp_path_factory, dataset, model):
    """A whole run, with a copy of its folder at every instant a kill would leave something new."""
    root = tmp_path_factory.mktemp("recorded")
    snapshots = []
    lock = threading.Lock()  # the resume state is renamed on a background thread
    real_replace = atomic.os.replace

    def snapshot(label, half_written=None):
        with lock:
            run_dir = next(root.iterdir())
            copy = tmp_path_factory.mktemp("kill") / run_dir.name
            shutil.copytree(run_dir, copy)
            if half_written is not None:
                part = copy / os.path.basename(half_written)
                part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
            snapshots.append((label, copy))

    def recording_replace(src, dst):
        name = os.path.basename(dst)
        snapshot(f"before renaming {name}", half_written=src)
        real_replace(src, dst)
        snapshot(f"after renaming {name}")

    atomic.os.replace = recording_replace
    try:
        reference = train_lora(DiffusersBackend(model), dataset, CONFIG, runs_root=root, output_name=NAME)
    finally:
        atomic.os.replace = real_replace
    return reference, snapshots


def test_a_kill_at_any_write_point_resumes_without_rewriting_a_finished_epoch(kill_points, dataset, model):
    reference, snapshots = kill_points
    labels = [label for label, _ in snapshots]
    # config.json, then per epoch its file and its resume state: 1 + 3 × 2 renames.
    assert len(snapshots) == 2 * (1 + 2 * CONFIG.epochs), labels
    assert any("resume" in label for label in labels) and any(f"{NAME}-000003" in label for label in labels)
    expected = _epoch_tensors(reference)
    torn = 0
    for label, run_dir in snapshots:
        before = _digests(run_dir)
        state = load_resume_state(run_dir, run_dir.name.rsplit("-", 1)[1])
        torn += len(before) > (state.epoch if state else 0)  # files the resume state does not cover
        messages = []
        result = train_lora(DiffusersBackend(model), dataset, CONFIG, runs_root=run_dir.parent,
                            output_name=NAME, callbacks=TrainCallbacks(on_message=messages.append))
        after = _digests(run_dir)
        assert sorted(result.epoch_files) == [1, 2, 3], label
        assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")], label
        assert {k: after[k] for k in before} == before, f"{label}: a finished epoch was rewritten"
        got = _epoch_tensors(result)
        for epoch in (1, 2, 3):
            assert all(torch.equal(got[epoch][k], expected[epoch][k]) for k in expected[epoch]), (label, epoch)
        if len(before) < 3:  # with every epoch file there, nothing is trained and the state stays
            assert load_resume_state(run_dir, run_dir.name.rsplit("-", 1)[1]).epoch == 3, label
        if len(before) > (state.epoch if state else 0) and len(before) < 3:
            assert any("kept unchanged" in m and "same weights" in m for m in messages), (label, messages)
    assert torn >= 2  # the instants the issue names (an epoch file newer than the resume state) were tried


def test_no_resume_state_at_all_keeps_the_epoch_files_and_trains_only_what_is_missing(tmp_path, dataset, model):
    config = dataclasses.replace(CONFIG, epochs=2)
    first = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path, output_name=NAME)
    run_dir = first.run_dir
    (run_dir / TENSORS_FILE).write_bytes(b"not a safetensors file")  # a damaged disk
    expected_two = load_file(str(first.epoch_files[2]))
    (run_dir / f"{NAME}-000002.safetensors").unlink()
    epoch_one = (run_dir / f"{NAME}-000001.safetensors").read_bytes()
    messages = []
    again = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path, output_name=NAME,
                       callbacks=TrainCallbacks(on_message=messages.append))
    assert (run_dir / f"{NAME}-000001.safetensors").read_bytes() == epoch_one
    assert sorted(again.epoch_files) == [1, 2]
    assert any("cannot be used" in m and "cannot be read" in m for m in messages), messages
    got_two = load_file(str(again.epoch_files[2]))  # trained from scratch again: the same weights on CPU
    assert got_two.keys() == expected_two.keys() and all(torch.equal(got_two[k], expected_two[k]) for k in got_two)


def test_all_epoch_files_there_means_nothing_to_train_even_without_a_resume_state(tmp_path, dataset, model):
    config = dataclasses.replace(CONFIG, epochs=1)
    first = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path, output_name=NAME)
    (first.run_dir / TENSORS_FILE).unlink()
    steps = []
    again = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path, output_name=NAME,
                       callbacks=TrainCallbacks(on_step=steps.append))
    assert not steps and sorted(again.epoch_files) == [1]


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_trains(tmp_path, dataset, model):
    config = dataclasses.replace(CONFIG, epochs=1)
    first = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path, output_name=NAME)
    before = _digests(first.run_dir)
    with folder_lock.folder_lock(first.run_dir):  # what another process training there holds
        with pytest.raises(StyleLoRAError, match="Another training run is writing") as err:
            train_lora(DiffusersBackend(model), dataset, dataclasses.replace(config), runs_root=tmp_path,
                       output_name=NAME)
    assert "output_name" in str(err.value)
    assert _digests(first.run_dir) == before
    # Released (as when that process ends or is killed): the folder is usable again.
    assert train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path,
                      output_name=NAME).epoch_files


def test_temp_files_left_in_other_run_folders_are_removed_unless_that_run_is_training(tmp_path, dataset, model):
    idle, busy = tmp_path / "old-aaaa", tmp_path / "other-bbbb"
    for folder in (idle, busy):
        folder.mkdir()
        (folder / f".{NAME}-000001.safetensors.x1.tmp").write_bytes(b"half")
        (folder / "old-000001.safetensors").write_bytes(b"finished")
    with folder_lock.folder_lock(busy):
        train_lora(DiffusersBackend(model), dataset, dataclasses.replace(CONFIG, epochs=1), runs_root=tmp_path,
                   output_name=NAME)
    assert not list(idle.glob("*.tmp")) and (idle / "old-000001.safetensors").read_bytes() == b"finished"
    assert list(busy.glob("*.tmp")), "a folder another run holds was touched"


@pytest.mark.parametrize("failure", ["os", "safetensors"])
def test_a_full_disk_names_the_folder_keeps_finished_epochs_and_the_rerun_resumes(tmp_path, dataset, model,
                                                                                    monkeypatch, failure):
    from style_lora_trainer.style_lora_engine import lora_file

    real = lora_file._write_safetensors
    calls = []

    def disk_full_at_epoch_two(tmp, tensors, metadata):
        calls.append(tmp)
        if len(calls) == 2:
            if failure == "os":
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
            from safetensors import SafetensorError
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')
        real(tmp, tensors, metadata)

    monkeypatch.setattr(lora_file, "_write_safetensors", disk_full_at_epoch_two)
    with pytest.raises(StyleLoRAError) as err:
        train_lora(DiffusersBackend(model), dataset, CONFIG, runs_root=tmp_path, output_name=NAME)
    text = str(err.value)
    run_dir = next(tmp_path.iterdir())
    assert "disk is full" in text and str(run_dir) in text and "Finished epoch 1 is kept" in text, text
    assert {p.name for p in run_dir.glob("*.safetensors")} == {TENSORS_FILE, f"{NAME}-000001.safetensors"}
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(lora_file, "_write_safetensors", real)
    again = train_lora(DiffusersBackend(model), dataset, CONFIG, runs_root=tmp_path, output_name=NAME)
    assert again.resumed_from_epoch == 1 and sorted(again.epoch_files) == [1, 2, 3]


def test_epoch_files_and_the_resume_state_follow_the_umask(tmp_path, dataset, model):
    old = os.umask(0o027)
    try:
        result = train_lora(DiffusersBackend(model), dataset, dataclasses.replace(CONFIG, epochs=1),
                            runs_root=tmp_path, output_name=NAME)
    finally:
        os.umask(old)
    for path in (result.epoch_files[1], result.run_dir / TENSORS_FILE, result.run_dir / "config.json"):
        assert path.stat().st_mode & 0o777 == 0o640, path

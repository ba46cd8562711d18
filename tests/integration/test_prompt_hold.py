"""Measure's hold on ComfyUI's prompt worker: a prompt queued during the warm-up waits for it to end."""

from __future__ import annotations

import threading
import time

import pytest

from style_lora_trainer.integration.prompt_hold import prompts_held_back
from style_lora_trainer.style_lora_engine.errors import ConfigError


class PromptQueue:
    """The parts of ComfyUI's execution.PromptQueue the worker and the hold use, with its locking."""

    def __init__(self):
        self.mutex = threading.RLock()
        self.not_empty = threading.Condition(self.mutex)
        self.queue, self.flags = [], {}

    def put(self, item):
        with self.mutex:
            self.queue.append(item)
            self.not_empty.notify()

    def get(self, timeout=None):
        with self.not_empty:
            while len(self.queue) == 0:
                self.not_empty.wait(timeout=timeout)
                if timeout is not None and len(self.queue) == 0:
                    return None
            return self.queue.pop(0)

    def set_flag(self, name, data):
        with self.mutex:
            self.flags[name] = data
            self.not_empty.notify()

    def get_flags(self):
        with self.mutex:
            flags, self.flags = self.flags, {}
            return flags


class Worker(threading.Thread):
    """main.py's prompt_worker loop: take a prompt (long timeout), run it, read the flags."""

    def __init__(self, queue, run_seconds=0.0):
        super().__init__(daemon=True)
        self.q, self.run_seconds, self.ran, self.stop = queue, run_seconds, [], False

    def run(self):
        while not self.stop:
            item = self.q.get(timeout=1000.0)
            if item is not None:
                time.sleep(self.run_seconds)
                self.ran.append((item, time.monotonic()))
            self.q.get_flags()


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_a_prompt_queued_during_the_hold_runs_after_it():
    queue = PromptQueue()
    worker = Worker(queue)
    worker.start()
    time.sleep(0.1)  # the worker waits inside get
    with prompts_held_back(queue):
        queue.put("during")
        time.sleep(0.3)
        assert worker.ran == []  # accepted, not started
        ended = time.monotonic()
    assert _wait(lambda: len(worker.ran) == 1)
    assert worker.ran[0][0] == "during" and worker.ran[0][1] >= ended
    assert "get" not in queue.__dict__  # the queue is itself again
    queue.put("after")
    assert _wait(lambda: len(worker.ran) == 2)
    worker.stop = True
    queue.put(None)


def test_the_hold_ends_on_an_error_too():
    queue = PromptQueue()
    worker = Worker(queue)
    worker.start()
    time.sleep(0.1)
    with pytest.raises(RuntimeError), prompts_held_back(queue):
        queue.put("during")
        raise RuntimeError("the warm-up failed")
    assert _wait(lambda: len(worker.ran) == 1)
    worker.stop = True
    queue.put(None)


def test_refused_while_the_worker_runs_a_prompt():
    queue = PromptQueue()
    worker = Worker(queue, run_seconds=1.5)
    worker.start()
    queue.put("long")
    time.sleep(0.1)  # taken, running
    with pytest.raises(ConfigError, match="A prompt started running"), prompts_held_back(queue, timeout=0.3):
        pass
    queue.put("next")  # the worker is not held afterwards
    assert _wait(lambda: [item for item, _ in worker.ran] == ["long", "next"])
    worker.stop = True
    queue.put(None)

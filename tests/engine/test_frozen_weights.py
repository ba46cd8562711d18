"""Half-precision training copies of frozen weights, with the originals set aside losslessly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from style_lora_trainer.style_lora_engine.frozen_weights import HalfPrecisionWeights

ROOT = Path(__file__).resolve().parents[2]


def _module(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).to(dtype)
    module.requires_grad_(False)
    module[2].bias.requires_grad_(True)  # a trainable parameter stays as it is
    module.tied = module[0].weight  # the same Parameter under a second name is handled once
    return module


@pytest.mark.parametrize("spill", [True, False], ids=["spilled to disk", "kept in RAM"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_copy_in_bf16_then_originals_back_bit_for_bit(tmp_path, dtype, spill):
    module = _module(dtype)
    params = dict(module.named_parameters(remove_duplicate=False))
    before = {n: p.detach().clone() for n, p in params.items()}
    weights = HalfPrecisionWeights(module, torch.bfloat16, spill_dir=tmp_path if spill else None)
    frozen_bytes = sum(p.numel() * p.element_size() for n, p in params.items() if n not in ("2.bias", "tied"))
    assert weights.apply() == frozen_bytes
    assert weights.apply() == frozen_bytes  # idempotent
    for name, p in params.items():
        if name == "2.bias":
            assert p.dtype == dtype
        else:
            assert p.dtype == torch.bfloat16 and torch.equal(p, before[name].to(torch.bfloat16)), name
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training: the trainable bias stays as it was
        assert module(torch.randn(2, 16)).dtype == torch.bfloat16
    assert list(tmp_path.iterdir()) == []  # an unlinked file: nothing to leave behind
    weights.restore()
    weights.restore()
    for name, p in module.named_parameters(remove_duplicate=False):
        assert p is params[name] and p.dtype == dtype and torch.equal(p, before[name]), name
    if dtype == torch.float16:  # what the copy avoids: casting the user's weights in place loses bits
        lossy = before["0.weight"].to(torch.bfloat16).to(dtype)
        assert not torch.equal(lossy, before["0.weight"])


def test_a_failure_while_applying_puts_everything_back(tmp_path, monkeypatch):
    module = _module(torch.float32)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    weights = HalfPrecisionWeights(module, torch.bfloat16, spill_dir=tmp_path)
    calls = []
    real = HalfPrecisionWeights._spill

    def failing(self, tensor):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, tensor)

    monkeypatch.setattr(HalfPrecisionWeights, "_spill", failing)
    with pytest.raises(OSError, match="disk full"):
        weights.apply()
    for name, p in module.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[name]), name


_RSS_CHILD = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import conftest  # loads the pack the way ComfyUI does
from style_lora_trainer.style_lora_engine.frozen_weights import HalfPrecisionWeights

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

torch.manual_seed(0)
module = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048, bias=False) for _ in range(8)]).requires_grad_(False)
start = rss()
weights = HalfPrecisionWeights(module, torch.bfloat16, spill_dir=sys.argv[2])
weights.apply()
during = rss()
weights.restore()
after = rss()
print("RESULT " + json.dumps({"start": start, "during": during, "after": after}))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read the RSS")
def test_on_the_cpu_ram_holds_only_the_copy_and_gets_it_back_after(tmp_path):
    """128 MiB of fp32 weights: while training RAM holds the 64 MiB bf16 copy (the originals are on disk),
    and after restore the copy is freed. A fixed malloc mmap threshold makes freed blocks go back to
    the OS at once, so RSS shows what is held."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    child = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(ROOT / "tests"), str(tmp_path)],
                           capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert child.returncode == 0, child.stderr[-3000:]
    line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT "))
    rss = json.loads(line[len("RESULT "):])
    mib = 1 << 20
    assert rss["during"] < rss["start"] - 48 * mib  # 128 MiB of fp32 out, 64 MiB of bf16 in
    assert abs(rss["after"] - rss["start"]) < 16 * mib  # the copy is freed, the originals are back


def test_restore_hands_the_freed_copies_back_as_it_goes(tmp_path, monkeypatch):
    """The half-precision blocks freed while the originals come back are too small to hold them: left to the
    allocator, the process ends up holding both (measured on SD1.5 in ComfyUI: +1.1 GiB after a bf16 run)."""
    from style_lora_trainer.style_lora_engine import cpu_heap, frozen_weights

    trims = []
    monkeypatch.setattr(cpu_heap, "trim", lambda: trims.append(len(weights._entries)))
    monkeypatch.setattr(frozen_weights, "TRIM_EVERY_BYTES", 8 * 32 * 2)  # the last layer's bf16 weight, restored first
    module = _module(torch.float32)
    weights = HalfPrecisionWeights(module, torch.bfloat16, spill_dir=tmp_path)
    weights.apply()
    trims.clear()
    weights.restore()
    assert len(trims) >= 2 and trims[-1] == 0 and any(t > 0 for t in trims)  # during the restore, and at its end

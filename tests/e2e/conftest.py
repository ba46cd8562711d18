"""Fixtures of the e2e tier: a real ComfyUI (``$COMFYUI_DIR``, run by ``$COMFYUI_PYTHON``).

Skipped, with the reason, unless both variables are set (``make e2e`` sets nothing itself: export
them or pass them on the make command line). The random-weight SD1.5 checkpoint is built once
and cached in ``$COMFYUI_E2E_CACHE`` (default: ``<tmp>/style_lora_e2e_cache``), outside the repo.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(E2E_DIR))

from comfy_harness import REPO, ComfyServer  # noqa: E402


def _comfy_env() -> tuple[Path, str]:
    comfy_dir, python = os.environ.get("COMFYUI_DIR"), os.environ.get("COMFYUI_PYTHON")
    if not comfy_dir or not python:
        pytest.skip("e2e tier: set COMFYUI_DIR (a ComfyUI checkout) and COMFYUI_PYTHON (its interpreter) "
                    "to run it, e.g. make e2e COMFYUI_DIR=... COMFYUI_PYTHON=...")
    comfy = Path(comfy_dir).expanduser().resolve()
    if not (comfy / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={comfy} has no main.py")
    return comfy, python


@pytest.fixture(scope="session")
def comfy_env() -> tuple[Path, str]:
    return _comfy_env()


@pytest.fixture(scope="session")
def e2e_cache() -> Path:
    cache = Path(os.environ.get("COMFYUI_E2E_CACHE") or Path(tempfile.gettempdir()) / "style_lora_e2e_cache")
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def sd15_checkpoint(comfy_env, e2e_cache) -> Path:
    comfy, python = comfy_env
    path = e2e_cache / "sd15_random_e2e.safetensors"
    subprocess.run([python, str(REPO / "tools" / "make_sd15_checkpoint.py"), "--comfyui-dir", str(comfy),
                    "--out", str(path)], check=True, timeout=1800)
    return path


@pytest.fixture(scope="session")
def comfy_server(comfy_env, sd15_checkpoint, tmp_path_factory):
    comfy, python = comfy_env
    base = tmp_path_factory.mktemp("comfy_base")
    server = ComfyServer(comfy, python, base, sd15_checkpoint)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        keep = os.environ.get("COMFYUI_E2E_KEEP_LOG")
        if keep:
            Path(keep).write_text(server.log_text(), encoding="utf-8")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs against a real ComfyUI (COMFYUI_DIR / COMFYUI_PYTHON)")


def pytest_collection_modifyitems(session, config, items):
    """The browser module runs last: it shares the session's ComfyUI and writes its own files into
    models/loras and input/, which the API-level tests list exactly."""
    items.sort(key=lambda item: item.path.name == "test_browser.py")

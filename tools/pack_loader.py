"""Load the repo as the package ``style_lora_trainer``, the way ComfyUI loads a custom-node folder.

ComfyUI imports ``custom_nodes/<folder>/__init__.py`` with ``spec_from_file_location``; the pack
is never on ``sys.path``. Tests, the demo and the benchmark do the same, so relative imports and
module names behave exactly as they will inside ComfyUI.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE_NAME = "style_lora_trainer"
ROOT = Path(__file__).resolve().parent.parent


def load_pack(name: str = PACKAGE_NAME) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

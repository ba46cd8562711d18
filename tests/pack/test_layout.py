"""The pack's shape, read from its source: what ComfyUI loads from ``__init__.py`` is exactly the
shipped tree (nothing `.comfyignore` leaves out), the tree has no import cycles, and only one
module imports ComfyUI.

Imports are read statically, function-local ones included (a cycle hidden inside a function is
still a cycle); ``if TYPE_CHECKING:`` blocks are skipped, as Python skips them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACK = "pack"  # the folder's name is ComfyUI's choice; any name works for the graph
COMFYUI_MODULES = ("comfy", "comfy_extras", "comfy_api", "folder_paths", "server", "nodes", "execution", "comfy_execution")
THE_COMFYUI_GATEWAY = f"{PACK}.integration.comfy_modules"


def ignored_prefixes() -> list[str]:
    lines = (ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(rel: str) -> bool:
    return any(rel == p or rel.startswith(p + "/") for p in ignored_prefixes())


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACK, *parts])


def all_modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(".") or "/." in rel or "__pycache__" in rel:
            continue
        found[module_name(path)] = path
    return found


MODULES = all_modules()


def _skip_type_checking(tree: ast.AST) -> list[ast.AST]:
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(modules of the pack, top-level external modules) that module ``name`` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal, external = set(), set()
    for node in _skip_type_checking(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            external.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if not node.level:
                external.add((node.module or "").split(".")[0])
                continue
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                internal.add(sub if sub in MODULES else target)
    return internal, external


def reachable_from(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(2, len(parts)))  # a submodule runs its packages
        todo.extend(imports_of(name)[0])
    return seen


def rel(name: str) -> str:
    return MODULES[name].relative_to(ROOT).as_posix()


SHIPPED = reachable_from(PACK)


def test_the_graph_reader_sees_the_pack():
    # guards the reader itself: if it missed relative imports, every other test here would pass vacuously
    assert {f"{PACK}.nodes.train_lora", f"{PACK}.style_lora_engine.trainer", f"{PACK}.canvas_server.routes",
            f"{PACK}.integration.comfy_backend", THE_COMFYUI_GATEWAY} <= SHIPPED
    assert f"{PACK}.dev.tiny_model" in MODULES and f"{PACK}.dev.tiny_model" not in SHIPPED


def test_comfyignore_leaves_out_exactly_what_comfyui_never_imports():
    loaded_but_ignored = sorted(rel(m) for m in SHIPPED if is_ignored(rel(m)))
    assert loaded_but_ignored == [], "ComfyUI would import these, but .comfyignore leaves them out"
    shipped_but_unused = sorted(rel(m) for m in MODULES if m not in SHIPPED and not is_ignored(rel(m)))
    assert shipped_but_unused == [], "published, but nothing in __init__.py's graph imports them: move to dev/"
    assert is_ignored("dev/tiny_model.py") and is_ignored("tests/conftest.py") and is_ignored("tools/demo.py")


def test_the_shipped_pack_has_no_import_cycles():
    graph = {m: {d for d in imports_of(m)[0] if d in SHIPPED and d != m} for m in SHIPPED}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep.startswith(node + "."):
                continue  # a package's __init__ importing its own submodules is not a cycle
            if state.get(dep) == 1:
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]) if dep in trail else dep)
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("layer, forbidden", [
    ("style_lora_engine", ("nodes", "integration", "canvas_server", "dev")),  # the engine knows nothing of ComfyUI
    ("integration", ("nodes", "canvas_server", "dev")),
    ("canvas_server", ("nodes", "dev")),
])
def test_data_flows_one_way_between_the_folders(layer, forbidden):
    wrong = sorted(f"{rel(m)} imports {d}" for m in MODULES if m.startswith(f"{PACK}.{layer}")
                   for d in imports_of(m)[0] if d.split(".")[1] in forbidden)
    assert wrong == []


def test_only_the_gateway_imports_comfyui():
    offenders = sorted(rel(m) for m in SHIPPED if m != THE_COMFYUI_GATEWAY
                       and imports_of(m)[1] & set(COMFYUI_MODULES))
    assert offenders == []
    gateway_source = MODULES[THE_COMFYUI_GATEWAY].read_text(encoding="utf-8")
    assert "importlib.import_module" in gateway_source


def test_node_modules_hold_node_classes_named_after_their_file():
    from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    files = sorted(p.stem for p in (ROOT / "nodes").glob("*.py") if p.stem != "__init__")
    by_module = sorted(cls.__module__.rpartition(".")[2] for cls in NODE_CLASS_MAPPINGS.values())
    assert files == by_module  # one module per node, no helpers module beside them
    for key, cls in NODE_CLASS_MAPPINGS.items():
        words = cls.__module__.rpartition(".")[2].replace("_", "")
        display = "".join(c for c in NODE_DISPLAY_NAME_MAPPINGS[key].lower() if c.isalnum())
        assert display.startswith(words), (key, cls.__module__)  # "Train LoRA (Style LoRA)" in train_lora.py

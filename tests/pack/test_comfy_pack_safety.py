"""The published pack (everything .comfyignore does not exclude) has no subprocess, eval/exec, network
access or pickle; only tests/ and tools/ (excluded) may start processes or open sockets."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_MODULES = {"subprocess", "socket", "urllib", "http", "requests", "aiohttp", "pickle", "dill",
                     "marshal", "shelve", "ftplib", "smtplib", "telnetlib", "websocket", "multiprocessing"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}  # builtins (re.compile is fine)
FORBIDDEN_ATTRIBUTE_CALLS = {("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "spawnv"),
                             ("builtins", "eval"), ("builtins", "exec")}


def _published_python_files() -> list[Path]:
    excluded = [line.strip().rstrip("/") for line in (ROOT / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    files = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".", "__pycache__")) or "/." in rel:
            continue
        if any(rel == e or rel.startswith(e + "/") for e in excluded):
            continue
        files.append(path)
    return files


def test_published_files_have_no_processes_network_eval_or_pickle():
    files = _published_python_files()
    names = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"integration/comfy_backend.py", "integration/comfy_preview.py", "integration/comfy_modules.py"} <= names
    assert not any(n.startswith(("tests/", "tools/")) for n in names)
    problems = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            else:
                mods = []
            problems += [f"{path.name}: import {m}" for m in mods if m.split(".")[0] in FORBIDDEN_MODULES]
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                    problems.append(f"{path.name}:{node.lineno}: {func.id}()")
                if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                        and (func.value.id, func.attr) in FORBIDDEN_ATTRIBUTE_CALLS):
                    problems.append(f"{path.name}:{node.lineno}: {func.value.id}.{func.attr}()")
    assert problems == []

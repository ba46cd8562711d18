"""Drive ComfyUI's real frontend in headless Chromium (Playwright for Python, the system Chromium).

Used by ``tests/e2e/test_browser.py`` (the browser part of ``make e2e``). Nothing here downloads a
browser: Chromium comes from the system (``/usr/bin/chromium``, or ``$STYLE_LORA_E2E_CHROMIUM``) and
Playwright from PyPI (``requirements-e2e.txt``). The page may only talk to 127.0.0.1: every other
request is aborted and counted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent
ARTIFACTS = Path(os.environ.get("STYLE_LORA_E2E_ARTIFACTS") or E2E_DIR / "artifacts")
CHROMIUM = os.environ.get("STYLE_LORA_E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1600, "height": 1000}

# Frontend 1.49.6 opens the template browser on a first visit unless the tutorial is marked done;
# missing-model warnings are about the example workflows' checkpoint names, which the tests replace.
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Release.Status": "skipped",
    "Comfy.VersionCompatibility.DisableWarnings": True,
    "Comfy.Minimap.Visible": False,  # keeps screenshots clear
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # full node detail (and panels) in zoomed-out screenshots
}

# Marks of the pack's own code in a console message, page error or failed request.
OUR_MARKS = ("style-lora-trainer", "style_lora", "stylelora")


def unavailable_reason() -> str | None:
    """Why the browser tier cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return ("browser e2e: the playwright module is missing (pip install -r requirements-e2e.txt; "
                "`make e2e` does it); no browser is downloaded, the system Chromium is used")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"browser e2e: no Chromium at {CHROMIUM} (apt-get install chromium, or set STYLE_LORA_E2E_CHROMIUM)"
    return None


def is_ours(*texts: str | None) -> bool:
    joined = " ".join(t for t in texts if t).lower()
    return any(mark in joined for mark in OUR_MARKS)


class BrowserSession:
    """One headless Chromium with a fresh profile and one page on a ComfyUI server."""

    def __init__(self, base_url: str, log=print) -> None:
        self.base_url = base_url.rstrip("/")
        self.log = log
        self.blocked: list[str] = []
        self.console: list[dict] = []      # every console message of level error/warning
        self.page_errors: list[dict] = []  # uncaught exceptions
        self.http_errors: list[dict] = []  # responses >= 400
        self.pack_requests: list[dict] = []  # every response of the pack's own routes (/style_lora/...)
        self._profile = Path(tempfile.mkdtemp(prefix="style_lora_chromium_"))
        self._pw = self._context = self.page = None

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> BrowserSession:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._context = self._pw.chromium.launch_persistent_context(
            str(self._profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT, device_scale_factor=1)
        self._context.route("**/*", self._route)
        self.page = self._context.pages[0] if self._context.pages else self._context.new_page()
        self.page.set_default_timeout(60_000)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", self._on_page_error)
        self.page.on("response", self._on_response)
        return self

    def close(self) -> None:
        try:
            if self._context is not None:
                self._context.close()
        finally:
            if self._pw is not None:
                self._pw.stop()
            shutil.rmtree(self._profile, ignore_errors=True)
        self.log(f"browser: {len(self.blocked)} request(s) to other hosts blocked"
                 + (f": {sorted(set(self.blocked))[:10]}" if self.blocked else ""))

    def _route(self, route) -> None:
        url = route.request.url
        if urllib.parse.urlsplit(url).hostname == "127.0.0.1" or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def _on_console(self, msg) -> None:
        if msg.type not in ("error", "warning"):
            return
        loc = msg.location or {}
        self.console.append({"type": msg.type, "text": msg.text, "url": loc.get("url", ""),
                             "line": loc.get("lineNumber"), "t": time.time()})

    def _on_page_error(self, err) -> None:
        self.page_errors.append({"text": str(err), "stack": getattr(err, "stack", "") or "", "t": time.time()})

    def _on_response(self, resp) -> None:
        if "/style_lora/" in resp.url:
            self.pack_requests.append({"status": resp.status, "url": resp.url, "method": resp.request.method,
                                       "t": time.time()})
        if resp.status >= 400:
            self.http_errors.append({"status": resp.status, "url": resp.url, "method": resp.request.method,
                                     "t": time.time()})

    # -- the app --------------------------------------------------------------------------------

    def open(self, timeout: float = 120.0) -> float:
        """Loads (or reloads) ComfyUI and waits for the app, its graph and the pack's node types."""
        started = time.time()
        if self.page.url.startswith(self.base_url):
            self.page.reload(wait_until="domcontentloaded")
        else:
            self.page.goto(self.base_url + "/", wait_until="domcontentloaded")
        self.page.wait_for_function(
            "() => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph"
            " && window.LiteGraph.registered_node_types.StyleLoRATrain"
            " && (window.app.extensions || []).some((e) => e.name === 'StyleLoRATrainer'))",
            timeout=timeout * 1000)
        # Let the frontend finish restoring/creating its start-up workflow before the test touches it.
        self.page.wait_for_timeout(1500)
        return time.time() - started

    def eval(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def wait_for(self, script: str, arg=None, timeout: float = 60.0, polling: int = 200):
        handle = self.page.wait_for_function(script, arg=arg, timeout=timeout * 1000, polling=polling)
        return handle.json_value()

    def open_dialogs(self) -> list[str]:
        return self.eval("""() => [...document.querySelectorAll('[role=dialog], [role=alertdialog], .p-dialog')]
            .filter((d) => d.offsetParent !== null || getComputedStyle(d).position === 'fixed')
            .map((d) => d.innerText.replace(/\\s+/g, ' ').slice(0, 300))""")

    # -- evidence -------------------------------------------------------------------------------

    def errors_since(self, t0: float) -> dict:
        """Console errors, page errors and failed requests after ``t0``; ``ours`` are the pack's."""
        console = [c for c in self.console if c["t"] >= t0 and c["type"] == "error"]
        pages = [e for e in self.page_errors if e["t"] >= t0]
        http = [h for h in self.http_errors if h["t"] >= t0]
        ours = ([f"console: {c['text']} ({c['url']}:{c['line']})" for c in console if is_ours(c["text"], c["url"])]
                + [f"page error: {e['text']}\n{e['stack']}" for e in pages if is_ours(e["text"], e["stack"])]
                + [f"HTTP {h['status']} {h['method']} {h['url']}" for h in http if is_ours(h["url"])])
        return {"console": console, "page_errors": pages, "http": http, "ours": ours}

    def screenshot(self, name: str, clip: dict | None = None) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), clip=clip)
        self.log(f"screenshot: {path}")
        return path

    def dump(self, name: str, data) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.json"
        path.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
        return path


def copy_to_docs(paths: list[Path]) -> list[Path]:
    """Copies screenshots to ``$STYLE_LORA_SCREENSHOTS_TO`` (e.g. docs/img) when it is set."""
    target = os.environ.get("STYLE_LORA_SCREENSHOTS_TO")
    if not target:
        return []
    dest = Path(target)
    if not dest.is_absolute():
        dest = E2E_DIR.parents[1] / dest
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        shutil.copyfile(p, dest / p.name)
        out.append(dest / p.name)
    return out

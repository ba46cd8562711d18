"""Start a real ComfyUI with the pack linked in, talk to it over HTTP and its websocket (stdlib only).

Used by the e2e tier (``make e2e``). ComfyUI runs from ``$COMFYUI_DIR`` with ``$COMFYUI_PYTHON``,
on 127.0.0.1 and a free port, with ``--base-directory`` pointing at a temporary folder that holds
its own ``custom_nodes`` (links to this repo and to the test helper nodes), ``models``, ``input``,
``output``, ``temp`` and ``user`` folders, so the user's ComfyUI folders are never touched.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_LINK_NAME = "style-lora-trainer"
HELPERS_LINK_NAME = "style_lora_e2e_helpers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfy_dir: Path, python: str, base: Path, checkpoint: Path) -> None:
        self.comfy_dir, self.python, self.base = Path(comfy_dir), python, Path(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models/checkpoints", "models/loras"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "custom_nodes" / PACK_LINK_NAME).symlink_to(REPO, target_is_directory=True)
        (self.base / "custom_nodes" / HELPERS_LINK_NAME).symlink_to(Path(__file__).parent / "helper_nodes",
                                                                    target_is_directory=True)
        self.checkpoint_name = checkpoint.name
        (self.base / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
        self.log_path = self.base / "comfyui.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-auto-launch", "--disable-api-nodes",
               "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer ends it: no cleanup runs in ComfyUI."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if getattr(self, "_log", None):
            self._log.close()

    def restart(self, timeout: float = 180.0) -> None:
        """Start again on the same folders (models, input, output), on a new port; the old log is kept
        beside the new one as ``comfyui.log.<n>``."""
        self.stop()
        self.restarts = getattr(self, "restarts", 0) + 1
        if self.log_path.exists():
            self.log_path.rename(self.log_path.with_name(f"{self.log_path.name}.{self.restarts}"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if getattr(self, "_log", None):
            self._log.close()

    # -- log ----------------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_text().splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- HTTP ---------------------------------------------------------------------------------

    def get_json(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def post_json(self, path: str, payload: dict | None, timeout: float = 30):
        data = json.dumps(payload or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"POST {path} -> {exc.code}: {exc.read().decode(errors='replace')}") from None
        return json.loads(body) if body else None

    def queue(self, prompt: dict, client_id: str = "e2e") -> str:
        return self.post_json("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 1800) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log_tail()}")
            time.sleep(1.0)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s:\n{self.log_tail()}")

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                        "type": image.get("type", "output")})
        with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=60) as resp:
            return resp.read()

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})


def status_messages(entry: dict) -> list[str]:
    return [m[0] for m in entry.get("status", {}).get("messages", [])]


def error_text(entry: dict) -> str:
    for name, data in entry.get("status", {}).get("messages", []):
        if name == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_message')}\n{''.join(data.get('traceback', []))}"
    return json.dumps(entry.get("status"), indent=1)[:4000]


class WebSocketListener(threading.Thread):
    """Minimal RFC 6455 client (stdlib): records ComfyUI's JSON events and binary progress-text frames."""

    def __init__(self, port: int, client_id: str) -> None:
        super().__init__(daemon=True)
        self.events: list[dict] = []
        self.texts: list[tuple[str, str]] = []  # (node id, text) from send_progress_text
        self.previews: list[dict] = []  # preview images: {"node": id or None, "image": bytes}
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self._sock.recv(1)
            if not chunk:
                raise ConnectionError("websocket handshake failed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")
        self._sock.settimeout(None)
        self._stop = False

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def _send_pong(self, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)

    def run(self) -> None:
        try:
            while not self._stop:
                b1, b2 = self._read(2)
                opcode, length = b1 & 0x0F, b2 & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self._read(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self._read(8))[0]
                payload = self._read(length)
                if opcode == 1:
                    self.events.append(json.loads(payload))
                elif opcode == 2 and len(payload) >= 8:
                    (event_type,) = struct.unpack(">I", payload[:4])
                    if event_type == 3:  # BinaryEventTypes.TEXT: node id length, node id, text
                        (n,) = struct.unpack(">I", payload[4:8])
                        self.texts.append((payload[8:8 + n].decode(), payload[8 + n:].decode(errors="replace")))
                    elif event_type == 1:  # PREVIEW_IMAGE: image type, image bytes
                        self.previews.append({"node": None, "image": payload[8:]})
                    elif event_type == 4:  # PREVIEW_IMAGE_WITH_METADATA: JSON length, JSON, image bytes
                        (n,) = struct.unpack(">I", payload[4:8])
                        meta = json.loads(payload[8:8 + n])
                        self.previews.append({"node": meta.get("node_id"), "image": payload[8 + n:]})
                elif opcode == 9:
                    self._send_pong(payload)
                elif opcode == 8:
                    return
        except (OSError, ConnectionError, ValueError):
            return

    def close(self) -> None:
        self._stop = True
        try:
            self._sock.close()
        except OSError:
            pass


def new_client_id() -> str:
    return uuid.uuid4().hex

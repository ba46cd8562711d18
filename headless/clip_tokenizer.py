"""OpenAI CLIP's tokenizer built offline: the BPE vocabulary SD1.5 and SDXL use, derived from the merges
file that ``open-clip-torch`` ships (no hub access), cached once per machine."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..style_lora_engine.errors import ConfigError

TOKENIZER_DIRNAME = "clip_tokenizer"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (same order as open_clip's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _open_clip_bpe_path() -> Path:
    # find_spec locates the package without importing it: open_clip's __init__ needs torchvision,
    # which a --no-deps install (the recommended one) does not have.
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "The offline CLIP tokenizer needs the BPE file from open-clip-torch. "
            "Install it without its heavy dependencies: pip install --no-deps open-clip-torch"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    raise ConfigError(
        "open-clip-torch is installed but bpe_simple_vocab_16e6.txt.gz is missing; reinstall it with "
        "pip install --no-deps --force-reinstall open-clip-torch"
    )


def _write_clip_vocab(target: Path) -> None:
    """Write vocab.json + merges.txt exactly as OpenAI CLIP's (49408 tokens)."""
    lines = gzip.open(_open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # 48894 merges, as open_clip's SimpleTokenizer uses
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    target.mkdir(parents=True, exist_ok=True)
    (target / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def build_clip_tokenizer(cache_dir: Path, pad_token: str | None = None) -> Any:
    """OpenAI CLIP's tokenizer (ids identical to SD's), built from open_clip's BPE file, cached once.

    Returns a ``transformers.CLIPTokenizer`` with ``model_max_length=77``; ``pad_token`` "!" gives SDXL's
    second tokenizer (OpenCLIP-G pads with id 0), None the end token as SD1.5.
    """
    from transformers import CLIPTokenizer

    target = Path(cache_dir) / TOKENIZER_DIRNAME
    if not ((target / "vocab.json").is_file() and (target / "merges.txt").is_file()):
        # Write into a sibling temp dir and rename, so a concurrent/interrupted run never sees half files.
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".clip_tokenizer-", dir=cache_dir))
        try:
            _write_clip_vocab(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private
            try:
                tmp.rename(target)
            except OSError:
                if not (target / "vocab.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # transformers 5 ignores vocab_file=/merges_file= kwargs (silently giving a 3-token tokenizer);
    # from_pretrained(dir) reads them, but defaults model_max_length to 1e30, hence 77.
    extra = {} if pad_token is None else {"pad_token": pad_token}
    return CLIPTokenizer.from_pretrained(str(target), model_max_length=77, local_files_only=True, **extra)

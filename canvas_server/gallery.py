"""What the canvas panels ask the server for (docs/CANVAS.md), as plain functions.

No ComfyUI and no aiohttp here: ``canvas_server.routes`` wraps these in HTTP handlers. Every folder comes
from a user's widget, so it goes through ``resolve_dataset_folder`` (ComfyUI's input folder and the
configured dataset roots only), and every file must be an image directly inside that folder; the
caption file written is always that image's own ``<stem><caption_extension>`` next to it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from ..integration.paths import resolve_dataset_folder
from ..style_lora_engine.atomic import atomic_write_text, safe_join
from ..style_lora_engine.dataset import (
    caption_file_of,
    dataset_images,
    normalize_caption,
    normalize_caption_extension,
    read_caption_file,
)
from ..style_lora_engine.errors import StyleLoRAError
from ..style_lora_engine.images import IMAGE_EXTENSIONS, image_size, is_image_file
from ..style_lora_engine.lint import MIN_WORDS, caption_issues
from ..style_lora_engine.shuffle import ShuffleSettings, preview_shuffles, shuffle_caption
from ..style_lora_engine.text_chunks import CHUNK_TOKENS

TokenCounter = Callable[[str], int]

MAX_IMAGES_LISTED = 2000
MAX_CAPTION_CHARS = 20_000
MAX_CAPTIONS_PER_REQUEST = 2000
THUMBNAIL_SIZES = (16, 512)
# The routes serve ComfyUI's canvas, where training encodes captions with ComfyUI's CLIP: every
# 75-token window is encoded, nothing is cut.
TOKEN_CAP: int | None = None


class CanvasError(StyleLoRAError):
    """A request the panel made that cannot be served; ``status`` is the HTTP status to answer.

    The engine's own ``StyleLoRAError``s (a folder outside the roots, a bad caption extension, an
    unreadable caption file) pass through unchanged: the routes answer them with 400.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _folder(folder: Any) -> Path:
    if not isinstance(folder, str):
        raise CanvasError("The request needs 'folder': the LoadDataset node's folder text.")
    path = resolve_dataset_folder(folder)
    if not path.is_dir():
        raise CanvasError(f"Dataset folder {path} does not exist. Create it in ComfyUI's input folder and put "
                          "your images there, or fix the folder name on the LoadDataset node.", 404)
    return path


def _extension(caption_extension: Any) -> str:
    return normalize_caption_extension(str(caption_extension or ".txt"))


def _image_in(folder: Path, file: Any) -> Path:
    """``file`` as an image directly inside ``folder``; anything else is refused."""
    if not isinstance(file, str) or not file or "/" in file or "\\" in file or file in (".", ".."):
        raise CanvasError(f"Refusing {file!r}: give the name of an image file directly inside {folder}.")
    if not is_image_file(file):
        raise CanvasError(f"Refusing {file!r}: not an image file ({', '.join(IMAGE_EXTENSIONS)}).")
    path = safe_join(folder, file)
    if path.parent != folder.resolve() or not path.is_file():
        raise CanvasError(f"There is no image {file!r} in {folder}. Reload the gallery.", 404)
    return path


def _caption_file(folder: Path, image: Path, ext: str) -> Path:
    safe_join(folder, image.stem + ext)  # refuses a caption file that is a link out of the folder
    return caption_file_of(image, ext)


def _tokens(caption: str, count_tokens: TokenCounter | None) -> int | None:
    if count_tokens is None:
        return None  # no tokenizer outside ComfyUI: the panel leaves the length badges out
    return count_tokens(caption) if caption else 0


def _issues(caption: str, missing: bool, caption_file: str, count_tokens: TokenCounter | None) -> list[dict]:
    return [{"level": level, "code": code, "message": text}
            for level, code, text in caption_issues(caption, missing, caption_file, count_tokens,
                                                    max_tokens=CHUNK_TOKENS, min_words=MIN_WORDS,
                                                    token_cap=TOKEN_CAP)]


def dataset_listing(folder: Any, caption_extension: Any = ".txt",
                    count_tokens: TokenCounter | None = None) -> dict[str, Any]:
    """Images of a dataset folder (top level, sorted, like ``load_dataset``) with their captions,
    sizes, token counts and the guide's caption findings."""
    path = _folder(folder)
    ext = _extension(caption_extension)
    images = dataset_images(path)
    if len(images) > MAX_IMAGES_LISTED:
        raise CanvasError(f"{path} holds {len(images)} images; the gallery shows at most {MAX_IMAGES_LISTED}. "
                          "The guide uses 30-100 images: move the rest elsewhere.")
    items = []
    for image in images:
        caption_path = _caption_file(path, image, ext)
        missing = not caption_path.is_file()
        caption = "" if missing else read_caption_file(caption_path)
        try:
            width, height = image_size(image)
        except StyleLoRAError:
            width = height = None  # the gallery still lists it; LoadDataset reports why it is unreadable
        items.append({
            "file": image.name, "caption": caption, "caption_file": caption_path.name,
            "has_caption_file": not missing, "width": width, "height": height,
            "tokens": _tokens(caption, count_tokens),
            "issues": _issues(caption, missing, caption_path.name, count_tokens),
        })
    return {"folder": folder, "path": str(path), "caption_extension": ext, "token_limit": CHUNK_TOKENS,
            "token_cap": TOKEN_CAP, "min_words": MIN_WORDS, "items": items}


def thumbnail_jpeg(folder: Any, file: Any, size: Any = 160) -> bytes:
    """A JPEG thumbnail (longest side ``size``) of one dataset image, upright and RGB."""
    try:
        size = int(size)
    except (TypeError, ValueError) as exc:
        raise CanvasError(f"Thumbnail size {size!r} is not a number.") from exc
    size = max(THUMBNAIL_SIZES[0], min(THUMBNAIL_SIZES[1], size))
    path = _image_in(_folder(folder), file)
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster for big photos
            img = ImageOps.exif_transpose(img)
            img.thumbnail((size, size))
            if img.mode not in ("RGB", "L"):
                background = Image.new("RGB", img.size, "white")
                rgba = img.convert("RGBA")
                background.paste(rgba, mask=rgba.getchannel("A"))
                img = background
            out = io.BytesIO()
            img.convert("RGB").save(out, "JPEG", quality=85)
    except (OSError, ValueError) as exc:
        raise CanvasError(f"Cannot read image {path}: {exc}. Re-save it as PNG or JPEG.", 422) from exc
    return out.getvalue()


def write_caption_files(folder: Any, caption_extension: Any, captions: Any) -> dict[str, list[str]]:
    """Write ``{image name: caption}`` to the images' caption files, atomically.

    Every entry is checked before anything is written, so a refused entry writes nothing. Files whose
    text would not change are left alone (their modification time too).
    """
    path = _folder(folder)
    ext = _extension(caption_extension)
    if not isinstance(captions, dict) or not captions:
        raise CanvasError("The request needs 'captions': an object of image file name -> caption text.")
    if len(captions) > MAX_CAPTIONS_PER_REQUEST:
        raise CanvasError(f"At most {MAX_CAPTIONS_PER_REQUEST} captions per request.")
    planned: list[tuple[Path, str]] = []
    for file, text in captions.items():
        if not isinstance(text, str):
            raise CanvasError(f"The caption for {file!r} must be text.")
        if len(text) > MAX_CAPTION_CHARS:
            raise CanvasError(f"The caption for {file!r} is {len(text)} characters; at most {MAX_CAPTION_CHARS}.")
        image = _image_in(path, file)
        planned.append((_caption_file(path, image, ext), normalize_caption(text)))
    targets = [t for t, _ in planned]
    if len(set(targets)) != len(targets):
        raise CanvasError("Two images share one caption file (e.g. a.png and a.jpg both use a.txt); rename one "
                          "image so each has its own caption.")
    written, unchanged = [], []
    for target, text in planned:
        if target.is_file() and target.read_bytes() == text.encode("utf-8"):
            unchanged.append(target.name)
            continue
        atomic_write_text(target, text)
        written.append(target.name)
    return {"written": written, "unchanged": unchanged}


def lint_captions(captions: Any, count_tokens: TokenCounter | None = None) -> dict[str, Any]:
    """Token counts and the guide's findings for captions being edited (same rules as LoadDataset)."""
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise CanvasError("The request needs 'captions': a list of caption texts.")
    if len(captions) > MAX_CAPTIONS_PER_REQUEST:
        raise CanvasError(f"At most {MAX_CAPTIONS_PER_REQUEST} captions per request.")
    results = []
    for raw in captions:
        caption = normalize_caption(raw[:MAX_CAPTION_CHARS])
        results.append({"tokens": _tokens(caption, count_tokens),
                        "issues": _issues(caption, not caption, "", count_tokens)})
    return {"token_limit": CHUNK_TOKENS, "token_cap": TOKEN_CAP, "min_words": MIN_WORDS, "results": results}


def shuffle_preview(body: dict[str, Any]) -> dict[str, Any]:
    """What training will see at steps 0..count-1: the node's preview text and the raw examples."""
    captions = body.get("captions", [])
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise CanvasError("The request needs 'captions': a list of caption texts.")
    if len(captions) > MAX_CAPTIONS_PER_REQUEST:
        raise CanvasError(f"At most {MAX_CAPTIONS_PER_REQUEST} captions per request.")
    try:
        settings = ShuffleSettings(enabled=bool(body.get("enabled", True)), separator=str(body.get("separator", ",")),
                                   keep_tokens=int(body.get("keep_tokens", 1)), seed=int(body.get("seed", 0)))
        count = max(1, min(10, int(body.get("count", 3))))
    except (TypeError, ValueError, StyleLoRAError) as exc:
        raise CanvasError(f"Cannot use these shuffle settings: {exc}") from exc
    normalized = [normalize_caption(c) for c in captions]
    examples = [{"original": c, "shuffles": [shuffle_caption(c, settings, step, i) for step in range(count)]}
                for i, c in enumerate(normalized[:5])]
    return {"text": preview_shuffles(normalized, settings, count=count), "examples": examples}

"""What the canvas panels ask the server for (docs/CANVAS.md), as plain functions.

No ComfyUI and no aiohttp here: ``canvas_server.routes`` wraps these in HTTP handlers. Every folder comes
from a user's widget, so it goes through ``resolve_dataset_folder`` (ComfyUI's input folder and the
configured dataset roots only), and every file must be an image directly inside that folder; the
caption file written is always that image's own ``<stem><caption_extension>`` next to it.

Every value arrives from the browser, so each is checked for its type and size before it touches a
path (a NUL byte, a 5000-byte name or a link loop would otherwise escape as a bare 500), and one
image or caption file that cannot be used is reported on its own listing item, never fails the list.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from ..integration.paths import resolve_dataset_folder
from ..style_lora_engine.atomic import atomic_write_text, safe_join
from ..style_lora_engine.dataset import (
    caption_file_of,
    check_caption_extension,
    dataset_images,
    normalize_caption,
    read_caption_file,
)
from ..style_lora_engine.errors import StyleLoRAError
from ..style_lora_engine.images import IMAGE_EXTENSIONS, image_size, is_image_file, open_image_rgb
from ..style_lora_engine.lint import MIN_WORDS, caption_issues
from ..style_lora_engine.shuffle import ShuffleSettings, preview_shuffles, shuffle_caption
from ..style_lora_engine.text_chunks import CHUNK_TOKENS

TokenCounter = Callable[[str], int]

__all__ = ["CanvasError", "check_caption_extension", "dataset_listing", "lint_captions", "shuffle_preview",
           "thumbnail_jpeg", "write_caption_files"]

MAX_IMAGES_LISTED = 2000
MAX_CAPTION_CHARS = 20_000
MAX_CAPTIONS_PER_REQUEST = 2000
# A caption is a line or two; a bigger "caption file" is something else and would bloat the listing.
MAX_CAPTION_FILE_BYTES = 1024 * 1024
MAX_NAME_BYTES = 255  # one path component on ext4, APFS and NTFS
MAX_FOLDER_BYTES = 4096  # PATH_MAX on Linux
MAX_SEPARATOR_CHARS = 100
THUMBNAIL_SIZES = (16, 512)
# The ShuffleCaptions node's widget ranges (nodes/shuffle_caption.py): the preview takes the same.
KEEP_TOKENS_RANGE = (0, 32)
SEED_RANGE = (0, 0xFFFFFFFF)
PREVIEW_COUNT_RANGE = (1, 10)
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


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut short: messages echo what was sent, and that may be megabytes."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _check_path_text(what: str, text: str, max_bytes: int) -> None:
    """Refuse, by name, what the OS would refuse with a bare ValueError or OSError."""
    if "\x00" in text:
        raise CanvasError(f"{what} {_shown(text)} contains a NUL character, which no file name can hold; "
                          "send the name without it.")
    try:
        size = len(os.fsencode(text))
    except UnicodeEncodeError as exc:  # half of a UTF-16 surrogate pair, e.g. "\ud800"
        raise CanvasError(f"{what} {_shown(text)} holds a broken character ({text[exc.start]!r}); "
                          "send the name as the file system shows it.") from exc
    if size > max_bytes:
        raise CanvasError(f"{what} {_shown(text)} is too long ({size} bytes; at most {max_bytes}). "
                          "Use a shorter name.")


def _folder(folder: Any) -> Path:
    if not isinstance(folder, str):
        raise CanvasError(f"The request needs 'folder': the LoadDataset node's folder text, not {_shown(folder)}.")
    _check_path_text("Dataset folder", folder, MAX_FOLDER_BYTES)
    try:
        path = resolve_dataset_folder(folder)
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, RuntimeError) as exc:  # a link loop, a name part over 255 bytes
        raise CanvasError(f"Cannot open dataset folder {_shown(folder)}: {exc}. Fix the folder name on the "
                          "LoadDataset node (or replace a looping link with the folder itself).") from exc
    if exists and not is_dir:
        raise CanvasError(f"{path} is a file, not a folder; give the folder that holds the images.")
    if not is_dir:
        raise CanvasError(f"Dataset folder {path} does not exist. Create it in ComfyUI's input folder and put "
                          "your images there, or fix the folder name on the LoadDataset node.", 404)
    return path


def _extension(caption_extension: Any) -> str:
    # The engine's check, so the gallery reads and writes exactly the caption files LoadDataset uses.
    return check_caption_extension(caption_extension)


def _image_in(folder: Path, file: Any) -> Path:
    """``file`` as an image directly inside ``folder``; anything else is refused."""
    if not isinstance(file, str) or not file:
        raise CanvasError(f"Refusing {_shown(file)}: give the name of an image file directly inside {folder}.")
    _check_path_text("Image file name", file, MAX_NAME_BYTES)
    if "/" in file or "\\" in file or file in (".", ".."):
        raise CanvasError(f"Refusing {_shown(file)}: give the name of an image file directly inside {folder}.")
    if file.startswith("."):
        raise CanvasError(f"Refusing {_shown(file)}: hidden files are not part of the dataset (LoadDataset "
                          "skips them). Rename it without the leading dot.")
    if not is_image_file(file):
        raise CanvasError(f"Refusing {_shown(file)}: not an image file ({', '.join(IMAGE_EXTENSIONS)}).")
    try:
        path = safe_join(folder, file)  # refuses a link out of the folder
        found = path.parent == folder.resolve() and path.is_file()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise CanvasError(f"Cannot open {_shown(file)} in {folder}: {exc}. Replace the link with the image "
                          "itself.") from exc
    if not found:
        raise CanvasError(f"There is no image {_shown(file)} in {folder}. Reload the gallery.", 404)
    return path


def _caption_file(folder: Path, image: Path, ext: str) -> Path:
    try:
        safe_join(folder, image.stem + ext)  # refuses a caption file that is a link out of the folder
        return caption_file_of(image, ext)
    except (OSError, RuntimeError) as exc:  # a link loop
        raise CanvasError(f"Cannot use caption file {image.stem + ext} of {image.name}: {exc}. Replace it "
                          "with a plain text file.") from exc


def _check_text(text: str, what: str) -> str:
    """``text`` if it can be stored as UTF-8: JSON may carry half of a surrogate pair ("\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanvasError(f"{what} holds a broken character ({text[exc.start]!r} at position {exc.start}, "
                          "half of a UTF-16 pair); delete it and type it again.") from exc
    return text


def _tokens(caption: str, count_tokens: TokenCounter | None) -> int | None:
    if count_tokens is None:
        return None  # no tokenizer outside ComfyUI: the panel leaves the length badges out
    return count_tokens(caption) if caption else 0


def _issues(caption: str, missing: bool, caption_file: str, count_tokens: TokenCounter | None) -> list[dict]:
    return [{"level": level, "code": code, "message": text}
            for level, code, text in caption_issues(caption, missing, caption_file, count_tokens,
                                                    max_tokens=CHUNK_TOKENS, min_words=MIN_WORDS,
                                                    token_cap=TOKEN_CAP)]


def _problem(level: str, code: str, message: str) -> dict[str, str]:
    return {"level": level, "code": code, "message": message}


def _link_outside(folder: Path, image: Path) -> dict[str, str] | None:
    """A problem if ``image`` is a link leading out of ``folder``: the gallery reads nothing there."""
    try:
        safe_join(folder, image.name)
    except StyleLoRAError:
        return _problem("error", "image_outside", f"{image.name} is a link to {os.path.realpath(image)}, outside "
                        f"the dataset folder: neither the gallery nor LoadDataset reads it. Copy the image into "
                        f"{folder} instead of linking it.")
    except (OSError, RuntimeError) as exc:  # a link loop
        return _problem("error", "image_unreadable", f"Cannot follow the link {image.name} ({exc}); replace it "
                        "with the image itself.")
    return None


def _size_warning(image: Path, width: int, height: int) -> dict[str, str] | None:
    """Above Pillow's limit (but below twice it) LoadDataset still loads an image, slowly."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or width * height <= limit:
        return None
    return _problem("warning", "image_huge",
                    f"{image.name} is {width}×{height} pixels ({width * height:,}), above Pillow's safety limit of "
                    f"{limit:,} pixels: LoadDataset still loads it, but slowly and with a lot of memory, and twice "
                    f"the limit is refused. Resize it below {limit:,} pixels (a few thousand per side is plenty).")


def _listed_image(folder: Path, image: Path) -> tuple[int | None, int | None, dict[str, str] | None]:
    """(width, height, problem) from the header only; a problem instead of an exception."""
    outside = _link_outside(folder, image)
    if outside is not None:
        return None, None, outside
    try:
        width, height = image_size(image)
    except StyleLoRAError as exc:
        too_large = isinstance(exc.__cause__, (Image.DecompressionBombError, Image.DecompressionBombWarning))
        return None, None, _problem("error", "image_too_large" if too_large else "image_unreadable", str(exc))
    return width, height, _size_warning(image, width, height)


def _read_listed_caption(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_CAPTION_FILE_BYTES:
        raise CanvasError(f"Caption file {path} is {size:,} bytes; a caption is a line or two of text (the "
                          f"gallery edits at most {MAX_CAPTION_CHARS:,} characters). Shorten it, or move it out "
                          "of the dataset folder if it is not a caption.")
    return read_caption_file(path)


def _listed_caption(folder: Path, image: Path, ext: str) -> tuple[str, bool, dict[str, str] | None]:
    """(caption, has a readable caption file, problem); a bad caption file is that image's problem."""
    try:
        path = _caption_file(folder, image, ext)
        if not path.is_file():
            return "", False, None
        return _read_listed_caption(path), True, None
    except StyleLoRAError as exc:
        return "", False, _problem("error", "caption_unreadable", str(exc))
    except OSError as exc:
        return "", False, _problem("error", "caption_unreadable", f"Cannot read caption file {image.stem + ext}: "
                                   f"{exc}. Check its permissions.")


def _listing_item(folder: Path, image: Path, ext: str, count_tokens: TokenCounter | None) -> dict[str, Any]:
    width, height, image_problem = _listed_image(folder, image)
    caption, has_caption, caption_problem = _listed_caption(folder, image, ext)
    caption_name = image.stem + ext
    return {
        "file": image.name, "caption": caption, "caption_file": caption_name, "has_caption_file": has_caption,
        "width": width, "height": height, "tokens": _tokens(caption, count_tokens),
        "issues": _issues(caption, not has_caption, caption_name, count_tokens),
        "problems": [p for p in (image_problem, caption_problem) if p is not None],
    }


def dataset_listing(folder: Any, caption_extension: Any = ".txt",
                    count_tokens: TokenCounter | None = None) -> dict[str, Any]:
    """Images of a dataset folder (top level, sorted, like ``load_dataset``) with their captions,
    sizes, token counts, the guide's caption findings, and each image's own ``problems`` (an image
    or caption file that cannot be used is listed with the reason and the fix, never fails the list)."""
    path = _folder(folder)
    ext = _extension(caption_extension)
    try:
        images = dataset_images(path)
    except OSError as exc:  # an entry that cannot even be stat'ed
        raise CanvasError(f"Cannot list dataset folder {path}: {exc}. Check its permissions.") from exc
    if len(images) > MAX_IMAGES_LISTED:
        raise CanvasError(f"{path} holds {len(images)} images; the gallery shows at most {MAX_IMAGES_LISTED}. "
                          "The guide uses 30-100 images: move the rest elsewhere.")
    items = [_listing_item(path, image, ext, count_tokens) for image in images]
    return {"folder": folder, "path": str(path), "caption_extension": ext, "token_limit": CHUNK_TOKENS,
            "token_cap": TOKEN_CAP, "min_words": MIN_WORDS, "items": items}


def _thumbnail_size(size: Any) -> int:
    value = None
    if isinstance(size, (str, int)) and not isinstance(size, bool):
        try:
            value = int(size)
        except ValueError:
            value = None
    if value is None:
        low, high = THUMBNAIL_SIZES
        raise CanvasError(f"Thumbnail size {_shown(size)} is not a whole number; use {low}-{high} (pixels).")
    return max(THUMBNAIL_SIZES[0], min(THUMBNAIL_SIZES[1], value))


def thumbnail_jpeg(folder: Any, file: Any, size: Any = 160) -> bytes:
    """A JPEG thumbnail (longest side ``size``) of one dataset image, converted like LoadDataset does
    (upright, alpha on white, 16-bit scaled). An image that cannot be decoded is a 422 naming it."""
    size = _thumbnail_size(size)
    path = _image_in(_folder(folder), file)
    try:
        # draft: a JPEG decodes at a reduced scale, much faster for big photos
        img = open_image_rgb(path, draft=(size, size))
    except StyleLoRAError as exc:
        raise CanvasError(str(exc), 422) from exc
    img.thumbnail((size, size))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def _caption_text(file: Any, text: Any) -> str:
    if not isinstance(text, str):
        raise CanvasError(f"The caption for {_shown(file)} must be text, not {_shown(text)}.")
    if len(text) > MAX_CAPTION_CHARS:
        raise CanvasError(f"The caption for {_shown(file)} is {len(text)} characters; at most {MAX_CAPTION_CHARS}.")
    return _check_text(text, f"The caption for {_shown(file)}")


def _unchanged(target: Path, data: bytes) -> bool:
    # Sizes first: a big file that cannot be equal is not read.
    return target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data


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
        text = _caption_text(file, text)
        image = _image_in(path, file)
        planned.append((_caption_file(path, image, ext), normalize_caption(text)))
    targets = [t for t, _ in planned]
    if len(set(targets)) != len(targets):
        raise CanvasError("Two images share one caption file (e.g. a.png and a.jpg both use a.txt); rename one "
                          "image so each has its own caption.")
    written, unchanged = [], []
    for target, text in planned:
        if _unchanged(target, text.encode("utf-8")):
            unchanged.append(target.name)
            continue
        atomic_write_text(target, text)
        written.append(target.name)
    return {"written": written, "unchanged": unchanged}


def _caption_list(captions: Any) -> list[str]:
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise CanvasError("The request needs 'captions': a list of caption texts.")
    if len(captions) > MAX_CAPTIONS_PER_REQUEST:
        raise CanvasError(f"At most {MAX_CAPTIONS_PER_REQUEST} captions per request.")
    for i, caption in enumerate(captions):
        _check_text(caption, f"Caption {i + 1} of 'captions'")
    return captions


def lint_captions(captions: Any, count_tokens: TokenCounter | None = None) -> dict[str, Any]:
    """Token counts and the guide's findings for captions being edited (same rules as LoadDataset)."""
    results = []
    for raw in _caption_list(captions):
        caption = normalize_caption(raw[:MAX_CAPTION_CHARS])
        results.append({"tokens": _tokens(caption, count_tokens),
                        "issues": _issues(caption, not caption, "", count_tokens)})
    return {"token_limit": CHUNK_TOKENS, "token_cap": TOKEN_CAP, "min_words": MIN_WORDS, "results": results}


def _whole(body: dict[str, Any], key: str, default: int, limits: tuple[int, int]) -> int:
    value = body.get(key, default)
    low, high = limits
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CanvasError(f"'{key}' must be a whole number from {low} to {high} (as on the ShuffleCaptions node), "
                          f"not {_shown(value)}.")
    return value


def _shuffle_settings(body: dict[str, Any]) -> ShuffleSettings:
    enabled, separator = body.get("enabled", True), body.get("separator", ",")
    if not isinstance(enabled, bool):
        raise CanvasError(f"'enabled' must be true or false, not {_shown(enabled)}.")
    if not isinstance(separator, str) or not separator or len(separator) > MAX_SEPARATOR_CHARS:
        raise CanvasError(f"'separator' must be the text between caption parts (1-{MAX_SEPARATOR_CHARS} "
                          f"characters; the guide's captions use ','), not {_shown(separator)}.")
    try:
        return ShuffleSettings(enabled=enabled, separator=_check_text(separator, "'separator'"),
                               keep_tokens=_whole(body, "keep_tokens", 1, KEEP_TOKENS_RANGE),
                               seed=_whole(body, "seed", 0, SEED_RANGE))
    except CanvasError:
        raise
    except StyleLoRAError as exc:
        raise CanvasError(f"Cannot use these shuffle settings: {exc}") from exc


def shuffle_preview(body: dict[str, Any]) -> dict[str, Any]:
    """What training will see at steps 0..count-1: the node's preview text and the raw examples."""
    captions = _caption_list(body.get("captions", []))
    settings = _shuffle_settings(body)
    count = _whole(body, "count", 3, PREVIEW_COUNT_RANGE)
    normalized = [normalize_caption(c) for c in captions]
    examples = [{"original": c, "shuffles": [shuffle_caption(c, settings, step, i) for step in range(count)]}
                for i, c in enumerate(normalized[:5])]
    return {"text": preview_shuffles(normalized, settings, count=count), "examples": examples}

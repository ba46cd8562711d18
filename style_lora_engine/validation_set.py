"""Which images the validation loss is measured on (the sweet-spot finder's numbers).

Three sources, chosen in Load Dataset:

* ``training images`` (default): up to ``MAX_TRAINING_IMAGES`` of the training images, evenly spread
  over the sorted names. A 30-image style dataset is small; holding images out would cost the style
  some of its examples. The numbers then say how well the LoRA fits what it trains on, which still
  shows when training stops improving, not whether it generalises (the output says which).
* ``hold out``: a count (``3``) or a fraction (``0.1``) of the images, evenly spread over the sorted
  names, taken out of training: held-out images never appear in a training batch.
* ``folder``: the images of another folder (same caption rules), for example a few extra pictures of
  the style that are not in the dataset.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config_checks import check_choice, check_float
from .errors import DatasetError

if TYPE_CHECKING:  # dataset.py imports this module for the field type
    from .dataset import Dataset, DatasetItem

VALIDATION_SOURCES = ("training images", "hold out", "folder")
MAX_TRAINING_IMAGES = 8
MAX_HOLD_OUT = 1000.0


@dataclass(frozen=True)
class ValidationSet:
    source: str  # "training images", "held out" or "folder"
    items: tuple[DatasetItem, ...]
    folder_name: str = ""  # for "folder": the folder's name (no absolute paths: it goes into metadata)
    of_images: int = 0  # for "training images": how many training images there are

    def describe(self) -> str:
        """One line for the summary, the chart and the metadata: which images, how many."""
        count = len(self.items)
        noun = "image" if count == 1 else "images"
        if self.source == "held out":
            return f"held out ({count} {noun}, not trained on)"
        if self.source == "folder":
            return f"folder {self.folder_name} ({count} {noun})"
        return f"training images ({count} of {self.of_images})"

    def to_json_dict(self, timesteps: list[int]) -> dict[str, Any]:
        return {"source": self.source, "images": len(self.items), "timesteps": list(timesteps),
                "description": self.describe()}

    def with_captions(self, captions: list[str]) -> ValidationSet:
        items = tuple(dataclasses.replace(item, caption=c) for item, c in zip(self.items, captions, strict=True))
        return dataclasses.replace(self, items=items)


def spread(count: int, total: int) -> list[int]:
    """``count`` indices evenly spread over ``range(total)`` (the middle of each of ``count`` equal parts):
    a stable choice that does not depend on a seed and covers the whole sorted set."""
    return sorted({min(total - 1, int((k + 0.5) * total / count)) for k in range(count)})


def hold_out_count(hold_out: float, total: int) -> int:
    """A count (``hold_out`` ≥ 1) or a fraction (0 < ``hold_out`` < 1, rounded, at least 1) of ``total``."""
    hold_out = check_float(hold_out, "hold_out", 0.0, MAX_HOLD_OUT, low_open=True, error=DatasetError,
                fix="Give a fraction such as 0.1 (10 % of the images) or a count such as 3.")
    count = int(hold_out) if hold_out >= 1 else max(1, round(hold_out * total))
    if hold_out >= 1 and hold_out != int(hold_out):
        raise DatasetError(f"hold_out {hold_out:g} is neither a fraction below 1 nor a whole count; give e.g. "
                           "0.1 (10 % of the images) or 3.")
    if count >= total:
        raise DatasetError(f"hold_out {hold_out:g} would hold out {count} of the {total} images, leaving none to "
                           "train on. Hold out fewer (the guide's datasets have 30-100 images; 10 % is usual), or "
                           "use validation 'training images'.")
    return count


def training_images_validation(items: tuple[DatasetItem, ...]) -> ValidationSet:
    """The default: up to ``MAX_TRAINING_IMAGES`` of the training images, with their current captions
    (computed from the items each time, so caption edits reach it)."""
    chosen = spread(min(MAX_TRAINING_IMAGES, len(items)), len(items))
    return ValidationSet("training images", tuple(items[i] for i in chosen), of_images=len(items))


def with_held_out_validation(dataset: Dataset, hold_out: float) -> Dataset:
    """``dataset`` without the held-out images (they never train), which become its validation set."""
    items = dataset.items
    held = set(spread(hold_out_count(hold_out, len(items)), len(items)))
    keep = [i for i in range(len(items)) if i not in held]
    masks = dataset.masks
    if masks is not None:
        masks = dataclasses.replace(masks, masks=tuple(masks.masks[i] for i in keep))
    return dataclasses.replace(
        dataset, items=tuple(items[i] for i in keep), masks=masks,
        validation=ValidationSet("held out", tuple(items[i] for i in sorted(held))))


def with_folder_validation(dataset: Dataset, validation: Dataset) -> Dataset:
    """Validation on the images of another loaded folder."""
    if validation.folder.resolve() == dataset.folder.resolve():
        raise DatasetError(f"validation_folder {validation.folder} is the dataset folder itself; choose another "
                           "folder, or use validation 'training images'.")
    return dataclasses.replace(dataset, validation=ValidationSet("folder", validation.items,
                                                                 folder_name=validation.folder.name))


def check_source(source: object) -> str:
    return check_choice(source, "validation", VALIDATION_SOURCES, error=DatasetError)


def validation_timesteps(num_train_timesteps: int, count: int = 8) -> list[int]:
    """``count`` evenly spaced integer timesteps over the schedule (the middle of each part): the loss
    at one random timestep swings with t more than with training, a fixed spread does not."""
    return [int(math.floor((k + 0.5) * num_train_timesteps / count)) for k in range(count)]

"""The guide's dataset checks, as a report a ComfyUI node can show in a STRING output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .dataset import Dataset
from .text_chunks import CHUNK_TOKENS

LEVELS = ("error", "warning", "info")

GUIDE_MIN_IMAGES = 30
GUIDE_MAX_IMAGES = 100
GUIDE_MIN_REPEATS = 8
GUIDE_MAX_REPEATS = 20
MIN_WORDS = 5  # fewer words than this is not the guide's detailed caption

_CAPTION_ADVICE = (
    "The guide asks for detailed captions: describe the subject, its context/backdrop and each "
    'distinct element, e.g. "A red apple" -> "A glossy red apple with droplets of water, nestled '
    'among green leaves".'
)


@dataclass(frozen=True)
class LintMessage:
    level: str  # "error" | "warning" | "info"
    code: str  # stable identifier, e.g. "caption_missing"
    text: str
    file: str | None = None  # image (or caption) file name the finding is about

    def line(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"[{self.level.upper()}] {where}{self.text} ({self.code})"


@dataclass(frozen=True)
class LintReport:
    messages: tuple[LintMessage, ...] = field(default_factory=tuple)

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(LEVELS, 0)
        for message in self.messages:
            counts[message.level] = counts.get(message.level, 0) + 1
        return counts

    @property
    def has_errors(self) -> bool:
        return self.counts["error"] > 0

    def by_code(self, code: str) -> list[LintMessage]:
        return [m for m in self.messages if m.code == code]

    def to_text(self) -> str:
        """Errors, then warnings, then info; one line per finding."""
        counts = self.counts
        lines = [
            f"Dataset check: {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} note(s)."
        ]
        titles = {"error": "Errors", "warning": "Warnings", "info": "Info"}
        for level in LEVELS:
            group = [m for m in self.messages if m.level == level]
            if not group:
                continue
            lines.append("")
            lines.append(f"{titles[level]}:")
            lines.extend(f"  {m.line()}" for m in group)
        return "\n".join(lines)


def lint_dataset(
    dataset: Dataset,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int = CHUNK_TOKENS,
    min_words: int = MIN_WORDS,
    token_cap: int | None = None,
) -> LintReport:
    """Check ``dataset`` against the guide. ``count_tokens`` (e.g. ``make_token_counter(tokenizer)``)
    enables the caption-length check; without it that check is skipped and noted. ``token_cap`` is
    where the text encoding cuts a caption (``text_chunks.MAX_TOKENS`` on the diffusers path; None for
    ComfyUI's CLIP, which encodes every 75-token window of a long caption)."""
    messages: list[LintMessage] = []

    def add(level: str, code: str, text: str, file: str | None = None) -> None:
        messages.append(LintMessage(level, code, text, file))

    n_images = len(dataset.items)
    if n_images < GUIDE_MIN_IMAGES:
        add(
            "warning",
            "too_few_images",
            f"Only {n_images} image(s); the guide recommends 30-100 high-resolution images for a style LoRA. "
            "Add more varied examples of the style.",
        )
    elif n_images > GUIDE_MAX_IMAGES:
        add(
            "warning",
            "too_many_images",
            f"{n_images} images; the guide recommends 30-100 high-resolution images. More is slower and "
            "rarely better - keep the best, most varied ones.",
        )

    if not GUIDE_MIN_REPEATS <= dataset.repeats <= GUIDE_MAX_REPEATS:
        add(
            "warning",
            "repeats_outside_guide",
            f"repeats is {dataset.repeats}; the guide repeats each image about 10 times, never below 8, and "
            "8-20 is the useful range (more risks biased, over-fitted output).",
        )

    res = dataset.resolution
    for item in dataset.items:
        name = item.image_path.name
        if item.width < res or item.height < res:
            add(
                "warning",
                "image_too_small",
                f"{item.width}x{item.height} is smaller than the training resolution {res} px on at least "
                "one side; it will be upscaled and look soft. Use a higher-resolution source, remove it, "
                "or turn on bucket no_upscale.",
                name,
            )
        for level, code, text in caption_issues(item.caption, item.caption_missing, item.caption_path.name,
                                                count_tokens, max_tokens=max_tokens, min_words=min_words,
                                                token_cap=token_cap):
            add(level, code, text, name)

    if count_tokens is None:
        add("info", "tokens_not_checked", "Caption token lengths were not checked (no tokenizer given).")

    _check_duplicates(add, dataset)
    _check_shared_caption_files(add, dataset)

    for path, reason in dataset.skipped:
        add("warning", "image_skipped", f"Skipped, unreadable: {reason}", path.name)

    if dataset.masks is not None and dataset.masks.source != "none":
        for file, problem in dataset.masks.problems:
            add("warning", "mask_problem", problem, file)
        add("info", "masks", f"{dataset.masks.count()} of {n_images} images have a loss mask "
            f"({dataset.masks.source}); they count only with Train Options' masked_loss on.")

    buckets = ", ".join(f"{w}x{h} ({n})" for (w, h), n in dataset.bucket_counts().items())
    add(
        "info",
        "summary",
        f"{n_images} images x {dataset.repeats} repeats = {dataset.num_train_images()} steps per epoch "
        f"at batch size 1; resolution {res}; buckets: {buckets}.",
    )
    return LintReport(tuple(messages))


def caption_issues(
    caption: str,
    caption_missing: bool,
    caption_file: str,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int = CHUNK_TOKENS,
    min_words: int = MIN_WORDS,
    token_cap: int | None = None,
) -> list[tuple[str, str, str]]:
    """The guide's checks of one caption, as ``(level, code, text)``; shared by the dataset report
    and the caption editor's badges so both always agree."""
    if caption_missing and not caption.strip():
        return [("warning", "caption_missing", f"No caption file ({caption_file}). Write one: {_CAPTION_ADVICE}")]
    if not caption.strip():
        return [("warning", "caption_empty", f"The caption is empty. {_CAPTION_ADVICE}")]
    issues = []
    words = len(caption.split())
    if words < min_words:
        issues.append(("warning", "caption_short",
                       f'The caption "{caption}" has only {words} word(s). {_CAPTION_ADVICE}'))
    if count_tokens is not None:
        n_tokens = count_tokens(caption)
        if token_cap is not None and n_tokens > token_cap:
            issues.append(("warning", "caption_truncated",
                           f"The caption is {n_tokens} tokens; it is encoded in up to {token_cap // max_tokens} "
                           f"chunks of {max_tokens} tokens and everything after token {token_cap} is cut. Shorten it."))
        elif n_tokens > max_tokens:
            how = (f"up to {token_cap // max_tokens} chunks of {max_tokens} tokens (anything over {token_cap} "
                   "tokens is cut)" if token_cap is not None else
                   f"{-(-n_tokens // max_tokens)} windows of {max_tokens} tokens, the way ComfyUI encodes a long "
                   "prompt (nothing is cut)")
            issues.append(("info", "caption_long",
                           f"The caption is {n_tokens} tokens, more than the text encoder's {max_tokens}-token "
                           f"window; it will be encoded in {how}."))
    return issues


def _check_duplicates(add: Callable[..., None], dataset: Dataset) -> None:
    groups: dict[str, list[str]] = {}
    for item in dataset.items:
        groups.setdefault(item.pixel_hash, []).append(item.image_path.name)
    for names in groups.values():
        if len(names) > 1:
            for name in names[1:]:
                add(
                    "warning",
                    "duplicate_image",
                    f"Has exactly the same pixels as {names[0]}; duplicates are trained twice as often. "
                    "Remove one.",
                    name,
                )


def _check_shared_caption_files(add: Callable[..., None], dataset: Dataset) -> None:
    # "a.png" and "a.jpg" both read "a.txt": they cannot get different captions.
    owners: dict[str, list[str]] = {}
    for item in dataset.items:
        owners.setdefault(item.caption_path.name, []).append(item.image_path.name)
    for caption_name, names in owners.items():
        if len(names) > 1:
            add(
                "warning",
                "caption_file_shared",
                f"{', '.join(names)} all use the caption file {caption_name}; rename the images so each "
                "has its own caption.",
                names[0],
            )

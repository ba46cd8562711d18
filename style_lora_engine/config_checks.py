"""Option checks shared by the engine's validators: each names the option (the node widget of the
same name) and says what to enter."""

from __future__ import annotations

import math
import numbers

from .errors import ConfigError, StyleLoRAError


def _fail(error: type[StyleLoRAError], name: str, expected: str, value: object, fix: str) -> StyleLoRAError:
    return error(f"{name} must be {expected}, got {value!r}." + (f" {fix}" if fix else ""))


def check_int(value: object, name: str, low: int, high: int, *, fix: str = "",
              error: type[StyleLoRAError] = ConfigError) -> int:
    """``value`` as an int in ``[low, high]``; bools and floats are refused (2.5 repeats is a typo)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise _fail(error, name, f"a whole number from {low} to {high}", value, fix)
    return int(value)


def check_float(value: object, name: str, low: float, high: float, *, low_open: bool = False, fix: str = "",
                error: type[StyleLoRAError] = ConfigError) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``).

    NaN passes every ``<``/``>`` check (ComfyUI's min/max included), so finiteness is tested first.
    """
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (low < value if low_open else low <= value) and value <= high)
    if not ok:
        bound = f"above {low:g}" if low_open else f"at least {low:g}"
        upper = f" and at most {high:g}" if math.isfinite(high) else ""
        raise _fail(error, name, f"a finite number {bound}{upper}", value, fix)
    return float(value)  # type: ignore[arg-type]


def check_bool(value: object, name: str, *, error: type[StyleLoRAError] = ConfigError) -> bool:
    if not isinstance(value, bool):
        raise _fail(error, name, "true or false", value, "")
    return value


def check_text(value: object, name: str, *, error: type[StyleLoRAError] = ConfigError) -> str:
    if not isinstance(value, str):
        raise _fail(error, name, "text", value, "")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...], *,
                 error: type[StyleLoRAError] = ConfigError) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _fail(error, name, f"one of {', '.join(choices)}", value, "")
    return value

"""Settings from the environment: yes/no switches and numbers, refused by name when malformed."""
from __future__ import annotations

import os


def env_flag(name: str, default: bool) -> bool:
    """A yes/no switch: 1/true/yes/on or 0/false/no/off (any case); unset or empty = default.
    Anything else is refused with the variable's name (``DESCAN_SMOKE=maybe`` is not "off")."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return default if not value else value in ("1", "true", "yes", "on")
    raise ValueError(f"{name}={os.environ[name]!r} is not a switch; use 1 or 0")


def env_number(name: str, default, minimum=None, maximum=None):
    """A number from the environment, an int when ``default`` is one; unset or empty = default. A bad
    or out-of-range value (also '1_0', which Python reads as 10, nan and inf) is refused naming the
    variable, its value and the allowed range (``minimum`` and ``maximum`` included)."""
    raw, kind = os.environ.get(name, "").strip(), int if isinstance(default, int) else float
    if not raw:
        return default
    bounds = " and ".join(b for b in (minimum is not None and f"at least {minimum}",
                                      maximum is not None and f"at most {maximum}") if b) or "a number"
    try:
        value = kind(raw.replace("_", "?"))
        if value * 0 != 0:  # nan or an infinity
            raise ValueError(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a finite number'}; "
                         f"it must be {bounds}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={raw} is out of range: it must be {bounds}")
    return value


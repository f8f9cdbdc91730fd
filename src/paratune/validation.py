"""Field validation helpers shared by the config dataclasses: one error format everywhere, naming the field,
the offending value and what is accepted.

It sits below every package (it imports nothing of paratune): the verbs' configs live beside their verbs in
training/, server/, bench/, demo/, and none of them may import the CLI, which is the top layer."""

from __future__ import annotations

import math
from typing import Any


def check(name: str, value: Any, ok: bool, accepted: str) -> None:
    """ValueError ``"<name> must be <accepted>, got <value>"`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: Any, minimum: float, *, strict: bool = True) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (value > minimum if strict else value >= minimum)


def parse_adapter_specs(specs: list[str]) -> dict[str, str]:
    """``["a=path/a", "b=path/b"]`` -> ``{"a": "path/a", "b": "path/b"}``: the ``--adapter NAME=PATH`` flags of
    ``generate`` and ``serve``. Here rather than beside either verb so that both configs can use it without one
    verb importing the other."""
    adapters = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter expects NAME=PATH, got {spec!r}")
        if name in adapters:
            raise ValueError(f"--adapter name {name!r} is given twice")
        adapters[name] = path
    return adapters


_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_bytes(name: str, value) -> int:
    """A size in bytes from an int or a string such as "2GiB", "500MB", "1.5 GiB" (units: B, KB, MB, GB, TB
    powers of 1000; KiB, MiB, GiB, TiB powers of 1024)."""
    if is_int(value, 1):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        if unit in _UNITS and is_number(_float(number), 0, strict=True):
            return int(float(number) * _UNITS[unit])
    raise ValueError(f"{name} must be a size in bytes: a positive integer or a number with a unit (B, KB, MB, GB, "
                     f"KiB, MiB, GiB), e.g. 2GiB; got {value!r}")


def _float(text: str):
    try:
        return float(text)
    except ValueError:
        return None

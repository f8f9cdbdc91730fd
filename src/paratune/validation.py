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

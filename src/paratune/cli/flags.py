"""Config dataclass <-> argparse: one flag per field, and the dataclass back from the parsed flags.

Every verb's flags come from its config dataclass (``--batch-size`` is ``batch_size``), so the Python API and the
CLI cannot drift apart, and validation happens once, in the dataclass (a ValueError naming the field, the value
and what is accepted), whichever way the config was made. Only argparse, dataclasses and typing are imported
here: building a parser must not load torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Optional


def _field_kind(hint: Any) -> tuple[type, bool]:
    """(scalar type, is a list) of a field annotation: ``Optional[int]`` -> (int, False), ``list[str]`` ->
    (str, True)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union \
        else [hint]
    base = args[0]
    if typing.get_origin(base) is list:
        return (typing.get_args(base) or (str,))[0], True
    return base, False


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, *, required: tuple[str, ...] = (),
                         helps: Optional[dict[str, str]] = None) -> None:
    """One flag per field of the dataclass ``config_cls``. Help comes from ``field(metadata={"help": ...})`` or
    ``helps``. Booleans: ``--x`` when the default is False, ``--x / --no-x`` when it is True. Lists take one or
    more values, repeatable (``--data a.jsonl b.jsonl``, ``--adapter a=x --adapter b=y``); their items are also
    split on commas (``--targets q,up``) unless the field's metadata says ``"split": False`` (paths). A field
    without a default is a required flag, as are the fields named in ``required``; ``"choices"`` and
    ``"metavar"`` in a field's metadata pass through to argparse (with choices, the metavar defaults to the
    field's name: ``--task TASK``)."""
    hints = typing.get_type_hints(config_cls)
    helps = helps or {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = helps.get(f.name, f.metadata.get("help", ""))
        kind, is_list = _field_kind(hints[f.name])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        must = f.name in required or not has_default
        extra = {key: f.metadata[key] for key in ("choices", "metavar") if key in f.metadata}
        if "choices" in extra:  # a long list of choices reads better in the help text than in the usage line
            extra.setdefault("metavar", f.name.upper())
        if kind is bool:
            if default:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=True, help=help_text)
            else:
                parser.add_argument(flag, action="store_true", help=help_text)
        elif is_list:  # no argparse default: the dataclass default applies when the flag is absent
            shown = f" (default: {','.join(map(str, default))})" if default else ""
            parser.add_argument(flag, nargs="+", action="extend", default=argparse.SUPPRESS, required=must,
                                **{"metavar": f.name.upper(), **extra}, help=help_text + shown)
        else:
            parser.add_argument(flag, type=kind, default=default, required=must, **extra, help=help_text)


def config_from_args(config_cls: type, args: argparse.Namespace):
    """The dataclass ``config_cls`` built from the flags ``add_config_arguments`` made (and validated by it)."""
    hints = typing.get_type_hints(config_cls)
    values = {}
    for f in dataclasses.fields(config_cls):
        if not f.init or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        kind, is_list = _field_kind(hints[f.name])
        if is_list:
            if value is None:
                continue
            items = value if f.metadata.get("split", True) is False else \
                [part.strip() for item in value for part in str(item).split(",") if part.strip()]
            try:
                value = [kind(item) for item in items]
            except ValueError:
                raise ValueError(f"{f.name} must be a list of {kind.__name__} values, got {value!r}") from None
        values[f.name] = value
    return config_cls(**values)

"""``build_parser`` and ``main``: argparse from the verb table, and the one place errors become exit codes.

Only the verbs named on the command line get their flags (and so import their config's module); the others are
listed by name and help alone, which is all ``paratune --help`` or argparse's "invalid choice" message needs.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Optional

from .flags import add_config_arguments, config_from_args
from .verbs import VERBS, Verb, load

DESCRIPTION = "PARA (prompt-aware representation adjustment) adapters: train, evaluate and serve."

# What a verb may raise for a bad flag value, a missing file or a missing optional dependency: one line on
# stderr and exit 2, as argparse does for its own errors. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError)


def _run_verb(config_cls: type, run: str, args: argparse.Namespace) -> int:
    return load(run)(config_from_args(config_cls, args), args)


def _add_verb(commands, verb: Verb, argv: Optional[list[str]]) -> None:
    """``verb``'s subparser; its flags only if ``argv`` is None (the full parser) or names it."""
    named = argv is None or verb.name in argv
    if verb.children:
        parser = commands.add_parser(verb.name, help=verb.help, description=verb.description)
        if named:
            group = parser.add_subparsers(dest=verb.name, required=True, metavar=verb.name.upper())
            for child in verb.children:
                _add_verb(group, child, argv)
        return
    parser = commands.add_parser(verb.name, help=verb.help, description=verb.description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if not named:
        return
    config_cls = load(verb.config)
    add_config_arguments(parser, config_cls, required=verb.required)
    for flag, options in verb.extra_flags:
        parser.add_argument(flag, **options)
    parser.set_defaults(func=partial(_run_verb, config_cls, verb.run))


def build_parser(argv: Optional[list[str]] = None) -> argparse.ArgumentParser:
    """The ``paratune`` parser: every verb with its flags, or with ``argv`` only the verbs it names."""
    parser = argparse.ArgumentParser(prog="paratune", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        _add_verb(commands, verb, argv)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv  # the command line, for reports that name the command behind their numbers
    try:
        return args.func(args)
    except USER_ERRORS as error:
        print(f"paratune {args.command}: error: {error}", file=sys.stderr)
        return 2

"""The verb table behind `paratune`: every verb is listed and has a working --help, the table's references resolve,
and `paratune --help` loads no verb."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from paratune.cli import VERBS, build_parser, main
from paratune.cli.verbs import load

LEAVES = [(verb.name, child.name) if child else (verb.name,)
          for verb in VERBS for child in (verb.children or (None,))]


def help_text(argv, capsys) -> str:
    """What ``paratune ARGV --help`` prints; it must exit 0."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def listed(out: str) -> list[str]:
    """The sub-commands a help text lists (argparse indents them by 4; wrapped help lines by more)."""
    return re.findall(r"^    (\S+)", out, flags=re.MULTILINE)


def test_top_level_help_lists_every_verb_of_the_table(capsys):
    out = help_text([], capsys)
    assert listed(out) == [verb.name for verb in VERBS]
    for verb in VERBS:
        assert verb.help.split()[0] in out
        if verb.children:
            assert listed(help_text([verb.name], capsys)) == [child.name for child in verb.children]


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_verb_help_exits_0(path, capsys):
    out = help_text(list(path), capsys)
    assert out.startswith(f"usage: paratune {' '.join(path)} ")


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_table_references_resolve(path):
    verb = next(v for v in VERBS if v.name == path[0])
    if len(path) == 2:
        verb = next(c for c in verb.children if c.name == path[1])
    assert callable(load(verb.run))
    assert dataclasses.is_dataclass(load(verb.config))


def test_help_loads_no_verb():
    """`paratune --help` (here through `python -m paratune.cli`) lists the verbs from the table alone: no verb's
    module, no engine or server, no lm-eval. (torch arrives with `import paratune` itself: paratune/__init__.py
    imports the PARA method.)"""
    probe = ("import runpy, sys\n"
             "sys.argv = ['paratune', '--help']\n"
             "try:\n"
             "    runpy.run_module('paratune.cli', run_name='__main__')\n"
             "except SystemExit as exit:\n"
             "    print('EXIT', exit.code)\n"
             "print('LOADED', *sorted(m for m in sys.modules if m == 'lm_eval' or m.startswith('paratune.')))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "EXIT 0" in proc.stdout and "usage: paratune [-h] COMMAND ..." in proc.stdout
    loaded = set(proc.stdout.split("LOADED", 1)[1].split())
    assert "lm_eval" not in loaded
    heavy = {"paratune.engine", "paratune.server", "paratune.training", "paratune.evaluation", "paratune.bench",
             "paratune.demo", "paratune.generate", "paratune.evaluate", "paratune.models", "paratune.cli.commands"}
    assert not loaded & heavy, sorted(loaded & heavy)


def test_a_verb_whose_config_is_missing_fails_loudly():
    with pytest.raises(ImportError, match="has no attribute 'NoSuchConfig'"):
        load("paratune.cli.verbs:NoSuchConfig")


def test_full_parser_has_every_verb_with_flags():
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(commands.choices) == [verb.name for verb in VERBS]
    for name, sub in commands.choices.items():
        assert len(sub._actions) > 1, name  # more than -h: its flags (or, for a group, its sub-verbs)

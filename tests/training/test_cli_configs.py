"""Every verb's flags are exactly its config dataclass's fields, and bad values are refused naming the field, the
value and what is accepted (at the CLI: exit 2 and the message; from Python: ValueError)."""

from __future__ import annotations

import dataclasses

import pytest

from paratune.bench.serve_bench import BenchConfig
from paratune.cli import build_parser, config_from_args, main
from paratune.demo.config import DemoConfig
from paratune.evaluate import EvalConfig
from paratune.generate import GenerateConfig
from paratune.server.serve_config import ServeConfig
from paratune.training.config import TrainConfig


def subparser(*path):
    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._actions if a.dest in ("command", "bench")).choices[name]
    return parser


VERBS = {("train",): TrainConfig, ("generate",): GenerateConfig, ("serve",): ServeConfig, ("demo",): DemoConfig,
         ("eval",): EvalConfig, ("bench", "serve"): BenchConfig}


@pytest.mark.parametrize("path", list(VERBS), ids=" ".join)
def test_flags_are_the_config_fields(path):
    parser = subparser(*path)
    dests = {a.dest for a in parser._actions} - {"help"}
    assert dests == {f.name for f in dataclasses.fields(VERBS[path])}


def test_defaults_round_trip_and_lists():
    args = subparser("bench", "serve").parse_args(["--concurrency", "1,4", "16", "--stream"])
    cfg = config_from_args(BenchConfig, args)
    assert cfg.concurrency == [1, 4, 16] and cfg.stream is True and cfg.peft_reference is False
    assert cfg.kinds == ["base", "para", "lora"]  # the dataclass default, untouched
    args = subparser("generate").parse_args(["--prompt", "hi", "--adapter", "a=x,y", "--adapter", "b=z"])
    assert config_from_args(GenerateConfig, args).adapters == {"a": "x,y", "b": "z"}  # paths are not split
    args = subparser("train").parse_args(["--data", "a.jsonl", "b,c.jsonl", "--output", "o", "--targets", "q,up", "v"])
    cfg = config_from_args(TrainConfig, args)
    assert cfg.data == ["a.jsonl", "b,c.jsonl"] and cfg.targets == ["q", "up", "v"]


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "70000"], "port must be an integer in [0, 65535], got 70000"),
    (["serve", "--log-level", "loud"], "log_level must be critical, error, warning, info, debug, trace, got 'loud'"),
    (["serve", "--max-concurrent", "0"], "max_concurrent must be a positive integer, got 0"),
    (["serve", "--adapter", "nameonly"], "--adapter expects NAME=PATH, got 'nameonly'"),
    (["generate", "--prompt", "hi", "--max-tokens", "0"], "max_tokens must be an integer >= 1, got 0"),
    (["generate", "--prompt", "hi", "--temperature", "5"], "temperature must be in [0, 2], got 5.0"),
    (["generate", "--prompt", "hi", "--use-adapter", "t"], "use_adapter must name a loaded adapter ([]; load with"),
    (["generate", "--prompt", "hi", "--prompts-file", "p.jsonl"], "exactly one of --prompt or --prompts-file"),
    (["demo", "--steps", "0"], "steps must be a positive integer, got 0"),
    (["demo", "--lr", "-1"], "lr must be a positive number, got -1.0"),
    (["bench", "serve", "--kinds", "gpt"], "kinds must be a non-empty list of base, para, lora, got ['gpt']"),
    (["bench", "serve", "--concurrency", "1,x"], "concurrency must be a list of int values, got ['1,x']"),
    (["bench", "serve", "--device", "tpu"], "device must be cpu, cuda (or cuda:N), mps or xpu, got 'tpu'"),
    (["train", "--data", "d.jsonl", "--output", "o", "--format", "csv"], "unknown format 'csv'; allowed: alpaca, "
                                                                         "chat, prompt-completion, multiple-choice"),
])
def test_bad_values_name_field_value_and_accepted(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_python_api_validates_the_same_way():
    with pytest.raises(ValueError, match=r"port must be an integer in \[0, 65535\], got -1"):
        ServeConfig(port=-1)
    with pytest.raises(ValueError, match="n_eval must be a positive integer, got 0"):
        DemoConfig(n_eval=0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0.0"):
        GenerateConfig(prompt="hi", top_p=0.0)

"""`paratune train`: flags map 1:1 onto TrainConfig; a tiny run writes a loadable adapter."""

import dataclasses
import json

from peft import PeftModel
import transformers

from paratune.cli import build_parser, main
from paratune.training.config import TrainConfig


def test_every_train_config_field_is_a_flag():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.dest for a in train._actions} - {"help", "func"}
    assert flags == {f.name for f in dataclasses.fields(TrainConfig)}


def test_tiny_training_run_then_eval(tiny_folder, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w}", "completion": w}) + "\n" for w in ["yes", "no"] * 8))
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_folder / "model"), "--data", str(data), "--format",
                 "prompt-completion", "--output", str(out), "--max-steps", "3", "--batch-size", "4",
                 "--targets", "q,up", "--r", "4"]) == 0
    assert "adapter saved to" in capsys.readouterr().out
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PARA" and config["targets"] == ["q", "up"] and config["r"] == 4
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()][-1] == 3
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_folder / "model")
    PeftModel.from_pretrained(model, out)
    assert main(["train", "--model", str(tiny_folder / "model"), "--data", str(data), "--output", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err

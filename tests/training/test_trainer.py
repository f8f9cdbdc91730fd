"""paratune.training.train end to end: a tiny random Llama (vocabulary of the real SmolLM2 tokenizer, so the
chat template and data pipeline are the real ones) trained for a few steps on generated records."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from peft import PeftModel
from transformers import TrainerCallback

import paratune  # noqa: F401  (registers PARA with PEFT)
from paratune.training.config import TrainConfig
from paratune.training.trainer import METRICS_FILE, TrainResult, last_checkpoint, train
from tests.training.conftest import ForwardSpy, tiny_llama

WORDS = ["apple", "river", "stone", "cloud"]
FAST = dict(batch_size=4, max_length=64, logging_steps=1, warmup_ratio=0.0)



def write_records(path, n: int = 24):
    with open(path, "w") as f:
        for i in range(n):
            w = WORDS[i % len(WORDS)]
            f.write(json.dumps({"instruction": f"Repeat the word {w}.", "output": f"{w} {w}"}) + "\n")
    return str(path)


def read_metrics(output):
    with open(os.path.join(output, METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


class Killed(Exception):
    pass


class Kill(TrainerCallback):
    """Simulates a crash at step ``at``, after that step was logged (metrics.jsonl already has its line)."""

    def __init__(self, at: int):
        self.at = at

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.at:
            raise Killed(f"killed at step {self.at}")


# ------------------------------------------------------------------------------------------ PARA run


@pytest.fixture(scope="module")
def para_run(tmp_path_factory, chat_tokenizer):
    root = tmp_path_factory.mktemp("para")
    data = write_records(root / "train.jsonl")
    model = tiny_llama(chat_tokenizer)
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    spy = ForwardSpy()
    config = TrainConfig(data=[data], output=str(root / "out"), max_steps=12, lr=5e-2, save_steps=6,
                         eval_data=[data], eval_steps=6, **FAST)
    result = train(config, backbone=(model, chat_tokenizer), callbacks=[spy])
    return dict(config=config, result=result, model=model, base_before=base_before, spy=spy, root=root)


def test_para_loss_falls_and_result(para_run):
    result: TrainResult = para_run["result"]
    losses = [m["loss"] for m in read_metrics(result.output_dir) if "loss" in m]
    assert len(losses) == 12
    assert losses[-1] < losses[0] - 0.5, losses
    assert result.steps == 12
    assert result.final_loss == pytest.approx(losses[-1])
    assert result.stats.n_examples == 24
    # 2 layers x (attention query 32 + down 32x16+16 + rational 7+5 + up 16x(32+32+64))
    # per layer: attention query 32, down 32x16 + 16, rational 7 + 5, up 16 x (q 32 + v 16 + up 64)
    assert result.trainable_params == 2 * (32 + 32 * 16 + 16 + 12 + 16 * 112)


def test_metrics_jsonl(para_run):
    metrics = read_metrics(para_run["result"].output_dir)
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 13))
    for m in steps:
        assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(m)
        assert m["tokens_per_s"] > 0 and m["lr"] > 0
    evals = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in evals] == [6, 12]  # every eval_steps (the final evaluation is not repeated)
    assert all(isinstance(m["eval_loss"], float) for m in evals)


def test_only_para_parameters_change(para_run):
    model = para_run["model"]  # the backbone, now wrapped by PEFT
    after = {k: v for k, v in model.state_dict().items() if ".para." not in k}
    assert set(after) == set(para_run["base_before"])
    for key, before in para_run["base_before"].items():
        assert torch.equal(after[key], before), key  # byte-identical
    trained = {n: p for n, p in model.named_parameters() if ".para." in n}
    assert trained and all(p.requires_grad for p in trained.values())
    assert any(torch.count_nonzero(p) for n, p in trained.items() if n.endswith("up.weight"))  # up starts at 0


def test_final_adapter_and_checkpoints(para_run, chat_tokenizer):
    out = para_run["result"].output_dir
    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "train_config.json", METRICS_FILE} <= files
    assert not [f for f in files if f.startswith(".final-")]  # the temporary folder is gone
    assert {"checkpoint-6", "checkpoint-12"} <= files
    assert last_checkpoint(para_run["root"] / "out").name == "checkpoint-12"
    assert json.load(open(os.path.join(out, "adapter_config.json")))["peft_type"] == "PARA"
    assert json.load(open(os.path.join(out, "train_config.json")))["r"] == 16  # resolved defaults are recorded
    loaded = PeftModel.from_pretrained(tiny_llama(chat_tokenizer), out)
    trained = dict(para_run["spy"].model.named_parameters())
    for name, param in loaded.named_parameters():
        if ".para." in name:
            assert torch.equal(param, trained[name]), name


def test_prompt_mask_reaches_para(para_run):
    spy = para_run["spy"]
    assert spy.calls and len(spy.pool_masks) == len(spy.calls)
    for call, pooled in zip(spy.calls, spy.pool_masks):
        mask = call["para_prompt_mask"]
        assert mask.dtype == torch.bool and mask.shape == call["input_ids"].shape
        # True exactly on prompt tokens: not padding, no loss
        expected = (call["labels"] == -100) & call["attention_mask"].bool()
        assert torch.equal(mask, expected)
        assert torch.equal(pooled, mask)  # PARA pooled over exactly that mask


def test_existing_run_needs_resume(para_run, chat_tokenizer):
    config = TrainConfig(data=para_run["config"].data, output=para_run["config"].output, max_steps=2, **FAST)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(config, backbone=(tiny_llama(chat_tokenizer), chat_tokenizer))


# ------------------------------------------------------------------------------------------ baselines


@pytest.mark.parametrize("method, peft_type", [("lora", "LORA"), ("ia3", "IA3"), ("prompt-tuning", "PROMPT_TUNING")])
def test_baselines_train_and_save_in_peft_format(tmp_path, chat_tokenizer, method, peft_type):
    data = write_records(tmp_path / "train.jsonl", n=8)
    model = tiny_llama(chat_tokenizer)
    spy = ForwardSpy()
    config = TrainConfig(data=[data], output=str(tmp_path / "out"), method=method, max_steps=3, **FAST)
    result = train(config, backbone=(model, chat_tokenizer), callbacks=[spy])
    assert result.steps == 3 and result.final_loss is not None and result.trainable_params > 0

    assert spy.calls and all("para_prompt_mask" not in call for call in spy.calls)
    assert all({"input_ids", "attention_mask", "labels"} <= set(call) for call in spy.calls)

    adapter_config = json.load(open(tmp_path / "out" / "adapter_config.json"))
    assert adapter_config["peft_type"] == peft_type
    if method == "lora":
        assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"] and adapter_config["r"] == 8
    if method == "ia3":
        assert sorted(adapter_config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
        assert adapter_config["feedforward_modules"] == ["down_proj"]
    if method == "prompt-tuning":
        assert adapter_config["num_virtual_tokens"] == 20

    fresh = tiny_llama(chat_tokenizer)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "out")
    trained = {n: p for n, p in spy.model.named_parameters() if p.requires_grad}
    loaded_params = {n: p for n, p in loaded.named_parameters() if n in trained}
    assert loaded_params.keys() == trained.keys()
    for name, param in loaded_params.items():
        assert torch.equal(param, trained[name]), name
    # the backbone's own weights are untouched (LoRA/IA3 moved them under ``base_layer``)
    base = tiny_llama(chat_tokenizer).state_dict()  # same seed: the backbone before training
    after = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()
             if "lora_" not in k and "ia3_" not in k}
    assert after.keys() == base.keys()
    for key, value in base.items():
        assert torch.equal(after[key], value), key


# ------------------------------------------------------------------------------------------ resume


def adapter_tensors(output):
    from safetensors.torch import load_file

    return load_file(os.path.join(output, "adapter_model.safetensors"))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, chat_tokenizer):
    data = write_records(tmp_path / "train.jsonl", n=20)  # 5 batches per epoch: the run crosses an epoch
    common = dict(data=[data], max_steps=8, lr=5e-2, **FAST)

    straight = TrainConfig(output=str(tmp_path / "a"), save_steps=100, **common)
    result_a = train(straight, backbone=(tiny_llama(chat_tokenizer), chat_tokenizer))

    interrupted = TrainConfig(output=str(tmp_path / "b"), save_steps=3, **common)
    with pytest.raises(Killed):
        train(interrupted, backbone=(tiny_llama(chat_tokenizer), chat_tokenizer), callbacks=[Kill(at=7)])
    assert not (tmp_path / "b" / "adapter_config.json").exists()  # no final adapter from the killed run
    assert last_checkpoint(tmp_path / "b").name == "checkpoint-6"
    assert [m["step"] for m in read_metrics(tmp_path / "b") if "loss" in m][-1] == 7  # logged past the checkpoint

    resumed = TrainConfig(output=str(tmp_path / "b"), save_steps=3, resume=True, **common)
    spy = ForwardSpy()
    result_b = train(resumed, backbone=(tiny_llama(chat_tokenizer), chat_tokenizer), callbacks=[spy])
    assert len(spy.calls) == 2  # it really resumed: only steps 7 and 8 ran

    assert result_b.steps == result_a.steps == 8
    a, b = adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    # the resumed run's log has each step exactly once, with the losses of the uninterrupted run
    loss_a = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "a") if "loss" in m}
    steps_b = [m["step"] for m in read_metrics(tmp_path / "b") if "loss" in m]
    loss_b = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "b") if "loss" in m}
    assert steps_b == list(range(1, 9))
    assert loss_b == pytest.approx(loss_a, abs=1e-5)


# ------------------------------------------------------------------------------------------ bad inputs


def test_config_rejects_bad_values(tmp_path):
    base = dict(data=["x.jsonl"], output=str(tmp_path / "out"))
    cases = [
        (dict(method="adalora"), "unknown method 'adalora'"),
        (dict(method="lora", bilevel=True), "bilevel applies to method 'para' only"),
        (dict(activation="gelu", bilevel=True), "bilevel needs activation='rational'"),
        (dict(data=[]), "data must name at least one"),
        (dict(output=None), "output must be a folder"),
        (dict(format="csv"), "unknown format 'csv'"),
        (dict(method="ia3", r=4), "r does not apply to method 'ia3'"),
        (dict(method="lora", pooling="mean"), "pooling does not apply"),
        (dict(num_virtual_tokens=10), "num_virtual_tokens does not apply"),
        (dict(targets=["q_proj"]), "not PARA targets"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(lr=-1.0), "lr must be a positive number"),
        (dict(epochs=0), "epochs must be a positive number"),
        (dict(max_steps=0), "max_steps must be a positive integer"),
        (dict(eval_steps=5), "eval_steps=5 needs eval_data"),
        (dict(bilevel_val_fraction=1.0), r"bilevel_val_fraction must be in \(0, 1\)"),
        (dict(warmup_ratio=1.5), r"warmup_ratio must be in \[0, 1\)"),
        (dict(pooling="sum"), "unknown pooling 'sum'"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**{**base, **overrides})


def test_config_defaults_per_method(tmp_path):
    out = str(tmp_path / "out")
    para = TrainConfig(data=["x"], output=out).resolved()
    assert (para.r, para.lr, para.pooling, para.activation) == (16, 1e-3, "attention", "rational")
    lora = TrainConfig(data=["x"], output=out, method="LoRA").resolved()
    assert (lora.method, lora.r, lora.lr, lora.pooling) == ("lora", 8, 2e-4, None)
    pt = TrainConfig(data="x", output=out, method="prompt_tuning").resolved()
    assert (pt.method, pt.num_virtual_tokens, pt.data) == ("prompt-tuning", 20, ["x"])
    assert TrainConfig(data=["x"], output=out, targets="q, up").targets == ["q", "up"]


def test_empty_or_missing_data_file(tmp_path, chat_tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    backbone = (tiny_llama(chat_tokenizer), chat_tokenizer)
    with pytest.raises(ValueError, match="empty"):
        train(TrainConfig(data=[str(empty)], output=str(tmp_path / "out")), backbone=backbone)
    with pytest.raises(FileNotFoundError):
        train(TrainConfig(data=[str(tmp_path / "nope.jsonl")], output=str(tmp_path / "out")), backbone=backbone)


def test_bad_backbone_and_targets(tmp_path, chat_tokenizer):
    data = write_records(tmp_path / "train.jsonl", n=4)
    with pytest.raises(TypeError, match="backbone must be"):
        train(TrainConfig(data=[data], output=str(tmp_path / "o1")), backbone=object())
    config = TrainConfig(data=[data], output=str(tmp_path / "o2"), method="lora", targets=["nonexistent_proj"])
    with pytest.raises(ValueError, match="nonexistent_proj"):
        train(config, backbone=(tiny_llama(chat_tokenizer), chat_tokenizer))


# ------------------------------------------------------------------------------------------ options


def test_gradient_checkpointing_option(tmp_path, chat_tokenizer):
    data = write_records(tmp_path / "train.jsonl", n=8)
    config = TrainConfig(data=[data], output=str(tmp_path / "out"), max_steps=2, gradient_checkpointing=True, **FAST)
    result = train(config, backbone=(tiny_llama(chat_tokenizer), chat_tokenizer))
    assert result.steps == 2 and result.final_loss is not None and math.isfinite(result.final_loss)
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_bf16_on_cpu_trains_like_fp32(tmp_path, chat_tokenizer):
    """bf16 is CPU autocast: the loss is finite, falls, and tracks the fp32 run; the adapter moves (and is not
    bit-identical to fp32's: bf16 really ran)."""
    data = write_records(tmp_path / "train.jsonl", n=16)
    runs = {}
    for bf16 in (False, True):
        out = tmp_path / ("bf16" if bf16 else "fp32")
        config = TrainConfig(data=[data], output=str(out), max_steps=8, lr=5e-2, bf16=bf16, **FAST)
        result = train(config, backbone=(tiny_llama(chat_tokenizer), chat_tokenizer))
        runs[bf16] = ([m["loss"] for m in read_metrics(out) if "loss" in m], adapter_tensors(out), result)
    (fp32, fp32_tensors, _), (bf16, bf16_tensors, result) = runs[False], runs[True]
    assert len(bf16) == len(fp32) == 8 and all(math.isfinite(x) for x in bf16)
    assert result.final_loss == pytest.approx(bf16[-1])
    assert bf16[-1] < bf16[0] - 0.5 and fp32[-1] < fp32[0] - 0.5, (bf16, fp32)
    assert bf16[0] == pytest.approx(fp32[0], rel=0.02)  # same weights, bf16 rounding only
    assert abs(bf16[-1] - fp32[-1]) < 0.1 * fp32[0], (bf16, fp32)
    ups = [k for k in bf16_tensors if k.endswith("up.weight")]
    assert ups and all(torch.count_nonzero(bf16_tensors[k]) for k in ups)  # the up-projection starts at zero
    assert bf16_tensors.keys() == fp32_tensors.keys()
    assert all(t.dtype == torch.float32 for t in bf16_tensors.values())  # weights stay fp32 under autocast
    assert any(not torch.equal(bf16_tensors[k], fp32_tensors[k]) for k in ups)


def test_default_backbone_is_loaded_by_name(tmp_path, tokenizer_folder):
    """backbone=None loads config.model (the embedded SmolLM2-135M-Instruct) with paratune.models.load_backbone."""
    data = write_records(tmp_path / "train.jsonl", n=4)
    config = TrainConfig(data=[data], output=str(tmp_path / "out"), max_steps=1, batch_size=2, max_length=64)
    result = train(config)
    assert result.steps == 1 and 0 < result.final_loss < 20
    assert json.load(open(tmp_path / "out" / "adapter_config.json"))["peft_type"] == "PARA"

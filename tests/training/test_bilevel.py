"""Bi-level training: the rational activation coefficients learn from validation batches only, every other
PARA parameter from training batches only, alternating step by step; checkpoints resume exactly."""

from __future__ import annotations

import json
import os

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

import paratune  # noqa: F401  (registers PARA with PEFT)
from paratune import ParaConfig
from paratune.training import bilevel as bilevel_module
from paratune.training.bilevel import (
    ACTIVATION_OPTIMIZER_NAME,
    BilevelTrainer,
    activation_parameters,
    is_activation_parameter,
)
from paratune.training.config import TrainConfig
from paratune.training.data import ParaDataCollator, build_dataset, split_validation
from paratune.training.trainer import METRICS_FILE, train
from tests.training.conftest import tiny_llama

MARK = "VALMARK"
N_RECORDS, VAL_FRACTION, SEED = 20, 0.2, 0
FAST = dict(batch_size=4, max_length=64, logging_steps=1, warmup_ratio=0.0, lr=5e-2, bilevel_lr=1e-3)



def write_records(path):
    """Records whose validation share (as split_validation will pick it) carries MARK in the instruction:
    the split depends only on the record count and the seed, not on the content."""
    _, val_index = split_validation(list(range(N_RECORDS)), VAL_FRACTION, seed=SEED)
    words = ["apple", "river", "stone", "cloud"]
    with open(path, "w") as f:
        for i in range(N_RECORDS):
            w = words[i % len(words)]
            tag = f" {MARK}" if i in val_index else ""
            f.write(json.dumps({"instruction": f"Repeat the word {w} ({i}).{tag}", "output": f"{w} {w}"}) + "\n")
    return str(path)


def config(tmp_path, name, **overrides):
    return TrainConfig(data=[write_records(tmp_path / "train.jsonl")], output=str(tmp_path / name), bilevel=True,
                       bilevel_val_fraction=VAL_FRACTION, seed=SEED, **{**FAST, **overrides})


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.fixture
def spied(monkeypatch, chat_tokenizer):
    """Patch BilevelTrainer to record every training batch, validation batch and optimizer step, and to check,
    just before each optimizer step, that the gradients it is about to apply come from the right batch."""
    log = dict(events=[], train_batches=[], val_batches=[], trainer=None, initial=None, main_checks=0, act_checks=0)

    def reference_grads(trainer, batch, params):
        with torch.enable_grad():
            loss = trainer.model(**batch).loss
            return torch.autograd.grad(loss, params)

    def main_pre_hook(optimizer, args, kwargs):
        trainer = log["trainer"]
        assert all(p.grad is None for _, p in activation_parameters(trainer.model))
        params = [p for group in optimizer.param_groups for p in group["params"]]
        got = flat([p.grad for p in params])
        want = flat(reference_grads(trainer, log["train_batches"][-1], params))
        # same direction (the Trainer may clip the norm)
        assert torch.nn.functional.cosine_similarity(got, want, dim=0) > 0.9999
        log["events"].append(("main", trainer.state.global_step))
        log["main_checks"] += 1

    def activation_pre_hook(optimizer, args, kwargs):
        trainer = log["trainer"]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        got = flat([p.grad for p in params])
        want = flat(reference_grads(trainer, log["val_batches"][-1], params))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
        log["events"].append(("activation", trainer.state.global_step))
        log["act_checks"] += 1

    original_create = BilevelTrainer.create_optimizer
    original_training_step = BilevelTrainer.training_step
    original_validation_batch = BilevelTrainer.validation_batch

    def create_optimizer(self, model=None):
        out = original_create(self, model)
        if log["trainer"] is None:
            log["trainer"] = self
            log["initial"] = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
            self.optimizer.register_step_pre_hook(main_pre_hook)
            self.activation_optimizer.register_step_pre_hook(activation_pre_hook)
        return out

    def training_step(self, model, inputs, num_items_in_batch=None):
        log["train_batches"].append({k: v.clone() for k, v in inputs.items()})
        return original_training_step(self, model, inputs, num_items_in_batch)

    def validation_batch(self, step):
        batch = original_validation_batch(self, step)
        log["val_batches"].append({k: v.clone() for k, v in batch.items()})
        return batch

    monkeypatch.setattr(BilevelTrainer, "create_optimizer", create_optimizer)
    monkeypatch.setattr(BilevelTrainer, "training_step", training_step)
    monkeypatch.setattr(BilevelTrainer, "validation_batch", validation_batch)
    return log


def texts(tokenizer, batch):
    return [tokenizer.decode(row[mask.bool()]) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_bilevel_alternates_and_separates_the_data(tmp_path, chat_tokenizer, spied):
    steps = 5
    result = train(config(tmp_path, "out", max_steps=steps, save_steps=100),
                   backbone=(tiny_llama(chat_tokenizer), chat_tokenizer))
    trainer = spied["trainer"]
    assert result.steps == steps and result.stats.n_examples == N_RECORDS - 4

    # one main step on a training batch, then one activation step on a validation batch, every step
    assert spied["events"] == [(kind, k) for k in range(steps) for kind in ("main", "activation")]
    assert spied["main_checks"] == spied["act_checks"] == steps

    # the batches: training never sees a validation record, validation sees only validation records
    assert len(spied["train_batches"]) == len(spied["val_batches"]) == steps
    for batch in spied["train_batches"]:
        assert not any(MARK in t for t in texts(chat_tokenizer, batch))
    for batch in spied["val_batches"]:
        assert all(MARK in t for t in texts(chat_tokenizer, batch))
    seen_val = {t for b in spied["val_batches"] for t in texts(chat_tokenizer, b)}
    assert len(seen_val) == 4  # 5 batches of 4 cycle through the whole 4-record validation split

    # the optimizers partition the trainable parameters
    activation = {id(p) for _, p in activation_parameters(trainer.model)}
    main = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    second = {id(p) for group in trainer.activation_optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert len(activation) == 2 * 2  # numerator and denominator of each of the 2 layers
    assert main.isdisjoint(activation) and second == activation and main | second == trainable
    assert all(group["lr"] == 1e-3 for group in trainer.activation_optimizer.param_groups)

    # both groups moved
    now = dict(trainer.model.named_parameters())
    for name, before in spied["initial"].items():
        if is_activation_parameter(name) or name.endswith(("down.weight", "up.weight")):
            assert not torch.equal(now[name], before), name

    metrics = [json.loads(line) for line in open(tmp_path / "out" / METRICS_FILE)]
    assert all("bilevel_val_loss" in m for m in metrics if "loss" in m)


class Killed(Exception):
    pass


class KillAtStep3(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == 3:
            raise Killed


def straight_and_resumed(tmp_path, tokenizer) -> tuple[dict, dict]:
    """Adapters of a straight 4-step run ("a") and of one killed after step 3 and resumed from step 2 ("b")."""
    train(config(tmp_path, "a", max_steps=4, save_steps=100), backbone=(tiny_llama(tokenizer), tokenizer))
    with pytest.raises(Killed):
        train(config(tmp_path, "b", max_steps=4, save_steps=2), backbone=(tiny_llama(tokenizer), tokenizer),
              callbacks=[KillAtStep3()])
    train(config(tmp_path, "b", max_steps=4, save_steps=2, resume=True), backbone=(tiny_llama(tokenizer), tokenizer))
    return (load_file(tmp_path / "a" / "adapter_model.safetensors"),
            load_file(tmp_path / "b" / "adapter_model.safetensors"))


def test_bilevel_resume_is_exact(tmp_path, chat_tokenizer):
    a, b = straight_and_resumed(tmp_path, chat_tokenizer)
    assert (tmp_path / "b" / "checkpoint-2" / ACTIVATION_OPTIMIZER_NAME).is_file()
    assert a.keys() == b.keys() and any(is_activation_parameter(k) for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def test_activation_optimizer_state_is_restored(tmp_path, chat_tokenizer, monkeypatch):
    """Without restoring the activation optimizer, the resumed run diverges (guards the test above)."""
    monkeypatch.setattr(bilevel_module, "ACTIVATION_OPTIMIZER_NAME", "ignored.pt")
    monkeypatch.setattr(BilevelTrainer, "_save_optimizer_and_scheduler",
                        lambda self, d: super(BilevelTrainer, self)._save_optimizer_and_scheduler(d))

    a, b = straight_and_resumed(tmp_path, chat_tokenizer)
    diff = max((a[k] - b[k]).abs().max().item() for k in a if is_activation_parameter(k))
    assert diff > 1e-5


def test_is_activation_parameter():
    assert is_activation_parameter("base_model.model.model.layers.0.para.generators.default.activation.numerator")
    assert is_activation_parameter("module.model.layers.3.para.generators.task.activation.denominator")
    assert not is_activation_parameter("base_model.model.model.layers.0.para.generators.default.down.weight")
    assert not is_activation_parameter("model.layers.0.mlp.activation.numerator")  # not a PARA generator


def test_bilevel_rejects_wrong_setups(tmp_path, chat_tokenizer):
    with pytest.raises(ValueError, match="bilevel applies to method 'para' only"):
        TrainConfig(data=["x"], output=str(tmp_path / "o"), method="lora", bilevel=True)
    with pytest.raises(ValueError, match="bilevel needs activation='rational'"):
        TrainConfig(data=["x"], output=str(tmp_path / "o"), activation="gelu", bilevel=True)

    # the Trainer itself refuses a PARA model without rational coefficients, and an empty validation split
    records = [{"instruction": "Say hi.", "output": "hi"}] * 4
    dataset, _ = build_dataset(chat_tokenizer, records, "alpaca", max_length=64)
    args = TrainingArguments(output_dir=str(tmp_path / "t"), remove_unused_columns=False, report_to="none")
    gelu = peft.get_peft_model(tiny_llama(chat_tokenizer), ParaConfig(activation="gelu"))
    with pytest.raises(ValueError, match="no trainable rational activation coefficients"):
        BilevelTrainer(model=gelu, args=args, train_dataset=dataset, data_collator=ParaDataCollator(chat_tokenizer),
                       val_dataset=dataset)
    rational = peft.get_peft_model(tiny_llama(chat_tokenizer), ParaConfig())
    with pytest.raises(ValueError, match="non-empty validation split"):
        BilevelTrainer(model=rational, args=args, train_dataset=dataset,
                       data_collator=ParaDataCollator(chat_tokenizer), val_dataset=[])
    assert not os.path.exists(tmp_path / "o")

"""PARA under trainers that know nothing about it: TRL's SFTTrainer (``peft_config=ParaConfig(...)``) and a plain
``transformers.Trainer`` with ``DataCollatorForSeq2Seq``. Neither passes ``para_prompt_mask``; what they pass are
``labels`` with -100 on the prompt, and PARA takes the prompt from those. Checked here: the generators pool
exactly the prompt tokens of every training forward, the completion tokens cannot move a generator vector, the
adapter TRL saves serves in our engine token for token like PEFT's greedy ``generate``, and plain language-model
data (every token labelled) is refused with an error that says how to fix it.

What TRL 1.16 passes to the model for a prompt-completion data set (completion_only_loss defaults to True there):
``input_ids``, ``attention_mask``, ``labels`` (-100 on the prompt and on padding; TRL folds its
``completion_mask`` column into the labels and drops it), ``use_cache=False`` and ``fused_lm_head=True``.
"""

from __future__ import annotations

import datasets
import peft
import pytest
import torch
import transformers
import trl
from peft import PeftModel

import paratune
from paratune.engine import Engine, Request, SamplingParams
from paratune.training import encode_example
from tests.training.conftest import ForwardSpy, tiny_llama

WORDS = ["apple", "river", "stone", "cloud"]
TRAINER_KWARGS = dict(max_steps=12, learning_rate=5e-2, warmup_steps=0, lr_scheduler_type="linear",
                      logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", seed=0,
                      dataloader_num_workers=0)


def prompt_completion(conversational: bool, n: int = 16) -> list[dict]:
    rows = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        prompt, completion = f"Repeat the word {w}:", f" {w} {w}"
        if conversational:
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "completion": [{"role": "assistant", "content": completion.strip()}]})
        else:
            rows.append({"prompt": prompt, "completion": completion})
    return rows


class GeneratorSpy:
    """The vectors every PARA generator of a model emits, per forward (``[{(layer, target): tensor}]``)."""

    def __init__(self, peft_model):
        self.vectors: list[dict] = []
        for name, module in peft_model.named_modules():
            if isinstance(module, paratune.para.generator.VectorGenerator):
                module.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(module, args, out):
            if not self.vectors or name in {k[0] for k in self.vectors[-1]}:
                self.vectors.append({})
            self.vectors[-1].update({(name, t): v.detach().clone() for t, v in out.items()})
        return hook

    def forward(self, model, batch) -> dict:
        self.vectors.clear()
        with torch.no_grad():
            model(**batch)
        assert len(self.vectors) == 1
        return self.vectors[0]


def check_pooled_prompts(spy: ForwardSpy, tokenizer, prompts: set[str]) -> None:
    """Every training forward pooled exactly the tokens before the first labelled one, and those are a prompt."""
    assert spy.calls and len(spy.pool_masks) == len(spy.calls)
    for call, pooled in zip(spy.calls, spy.pool_masks):
        assert "para_prompt_mask" not in call and "labels" in call
        attended = call["attention_mask"].bool()
        assert torch.equal(pooled, (call["labels"] == -100) & attended)  # right padding: prompt = unlabelled
        for row in range(pooled.shape[0]):
            assert pooled[row].any() and (call["labels"][row][attended[row]] != -100).any()
            assert tokenizer.decode(call["input_ids"][row][pooled[row]]) in prompts


def engine_equals_peft_greedy(adapter_dir, tokenizer, prompt_ids: list[list[int]], max_tokens: int = 8) -> list:
    engine = Engine(tiny_llama(tokenizer), tokenizer, max_batch=len(prompt_ids))
    engine.add_adapter("t", adapter_dir)
    requests = [Request(ids, adapter="t", params=SamplingParams(max_tokens=max_tokens)) for ids in prompt_ids]
    engine.generate(requests)
    reference = PeftModel.from_pretrained(tiny_llama(tokenizer), adapter_dir).eval()
    for ids, request in zip(prompt_ids, requests):
        out = reference.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_tokens, do_sample=False)
        assert request.output_ids == out[0, len(ids):].tolist()
    return requests


# ----------------------------------------------------------------------------------------------------- TRL


@pytest.fixture(scope="module", params=["text", "conversational"])
def trl_run(request, chat_tokenizer, tmp_path_factory):
    conversational = request.param == "conversational"
    root = tmp_path_factory.mktemp(f"trl-{request.param}")
    spy = ForwardSpy()
    model = tiny_llama(chat_tokenizer)
    trainer = trl.SFTTrainer(
        model=model,
        peft_config=paratune.ParaConfig(),
        train_dataset=datasets.Dataset.from_list(prompt_completion(conversational)),
        args=trl.SFTConfig(output_dir=str(root / "trainer"), per_device_train_batch_size=4, max_length=64,
                           **TRAINER_KWARGS),
        processing_class=chat_tokenizer,
        callbacks=[spy],
    )
    assert trainer.args.completion_only_loss is None and trainer.completion_only_loss  # TRL's default here
    trainer.train()
    trainer.save_model(str(root / "adapter"))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return dict(trainer=trainer, spy=spy, root=root, losses=losses, conversational=conversational)


def test_trl_batches_label_the_completion_only_and_para_pools_the_prompt(trl_run, chat_tokenizer):
    spy = trl_run["spy"]
    assert {frozenset(call) for call in spy.calls} == {
        frozenset({"input_ids", "attention_mask", "labels", "use_cache", "fused_lm_head"})}
    if trl_run["conversational"]:  # the chat template's rendering of the prompt, generation prompt included
        prompts = {chat_tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
                   for r in prompt_completion(True)}
    else:
        prompts = {r["prompt"] for r in prompt_completion(False)}
    check_pooled_prompts(spy, chat_tokenizer, prompts)
    losses = trl_run["losses"]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.5, losses


def test_trl_completion_tokens_do_not_move_generator_vectors(trl_run):
    """Same forward as TRL's (its kwargs, its collated batch) with the completion tokens swapped for others: every
    generator vector is bit-identical; swapping one prompt token changes them (so the check can fail)."""
    model = trl_run["trainer"].model
    call = trl_run["spy"].calls[0]
    batch = {k: v for k, v in call.items()}
    generators = GeneratorSpy(model)
    model.train()  # as in training (PARA's dropout is 0)
    original = generators.forward(model, batch)
    labelled = batch["labels"] != -100
    swapped_ids = torch.where(labelled, (batch["input_ids"] + 7) % 1000 + 3, batch["input_ids"])
    assert not torch.equal(swapped_ids, batch["input_ids"])
    swapped = generators.forward(model, {**batch, "input_ids": swapped_ids,
                                         "labels": torch.where(labelled, swapped_ids, batch["labels"])})
    assert original.keys() == swapped.keys() and len(original) == 2 * 3  # 2 layers x (q, v, up)
    for key in original:
        assert torch.equal(original[key], swapped[key]), key
    prompt_changed = batch["input_ids"].clone()
    prompt_changed[:, 0] = (prompt_changed[:, 0] + 1) % 1000 + 3
    changed = generators.forward(model, {**batch, "input_ids": prompt_changed})
    assert all(not torch.equal(original[k], changed[k]) for k in original)


def test_trl_adapter_serves_in_engine_like_peft_generate(trl_run, chat_tokenizer):
    adapter = trl_run["root"] / "adapter"
    assert peft.PeftConfig.from_pretrained(adapter).peft_type == "PARA"
    trained_up = [p for n, p in trl_run["trainer"].model.named_parameters() if n.endswith(".up.weight")]
    assert trained_up and all(torch.count_nonzero(p) for p in trained_up)  # the adapter is not the identity
    if trl_run["conversational"]:
        prompt_ids = [chat_tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, return_dict=False)
                      for r in prompt_completion(True, n=4)]
    else:
        prompt_ids = [chat_tokenizer(r["prompt"])["input_ids"] for r in prompt_completion(False, n=4)]
    requests = engine_equals_peft_greedy(adapter, chat_tokenizer, [list(ids) for ids in prompt_ids])
    base = Engine(tiny_llama(chat_tokenizer), chat_tokenizer, max_batch=4)
    base_requests = [Request(list(ids), params=SamplingParams(max_tokens=8)) for ids in prompt_ids]
    base.generate(base_requests)
    assert [r.output_ids for r in requests] != [r.output_ids for r in base_requests]  # the adapter is applied


def test_trl_plain_language_modelling_is_refused(chat_tokenizer, tmp_path):
    texts = [{"text": f"The word is {w}."} for w in WORDS * 2]
    trainer = trl.SFTTrainer(
        model=tiny_llama(chat_tokenizer), peft_config=paratune.ParaConfig(),
        train_dataset=datasets.Dataset.from_list(texts), processing_class=chat_tokenizer,
        args=trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, **TRAINER_KWARGS),
    )
    with pytest.raises(ValueError, match=r"PARA cannot tell the prompt from the response in row 0: its labels label "
                                         r"every attended token.*Pass para_prompt_mask.*completion-only loss"):
        trainer.train()


# ------------------------------------------------------------------------------------- transformers.Trainer


def seq2seq_features(tokenizer, n: int = 16) -> list[dict]:
    """input_ids + labels (-100 on the prompt), as any completion-only pipeline makes them; no prompt mask."""
    out = []
    for row in prompt_completion(False, n):
        ex = encode_example(tokenizer, row, "prompt-completion", max_length=64)
        out.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
    return out


def test_hf_trainer_with_seq2seq_collator_pools_the_prompt(chat_tokenizer, tmp_path):
    model = peft.get_peft_model(tiny_llama(chat_tokenizer), paratune.ParaConfig())
    spy = ForwardSpy()
    trainer = transformers.Trainer(
        model=model, train_dataset=seq2seq_features(chat_tokenizer),
        data_collator=transformers.DataCollatorForSeq2Seq(chat_tokenizer, padding=True),
        args=transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                                            **TRAINER_KWARGS),
        callbacks=[spy],
    )
    trainer.train()
    assert {frozenset(call) for call in spy.calls} == {frozenset({"input_ids", "attention_mask", "labels", "num_items_in_batch"})}
    prompts = {chat_tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                                  add_generation_prompt=True) for r in prompt_completion(False)}
    check_pooled_prompts(spy, chat_tokenizer, prompts)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.5, losses
    model.save_pretrained(tmp_path / "adapter")
    prompt_ids = [f["input_ids"][: f["labels"].index(next(x for x in f["labels"] if x != -100))]
                  for f in seq2seq_features(chat_tokenizer, n=4)]
    engine_equals_peft_greedy(tmp_path / "adapter", chat_tokenizer, prompt_ids)


def test_hf_trainer_plain_language_modelling_is_refused(chat_tokenizer, tmp_path):
    features = [{"input_ids": chat_tokenizer(f"The word is {w}.")["input_ids"]} for w in WORDS]
    trainer = transformers.Trainer(
        model=peft.get_peft_model(tiny_llama(chat_tokenizer), paratune.ParaConfig()), train_dataset=features,
        data_collator=transformers.DataCollatorForLanguageModeling(chat_tokenizer, mlm=False),
        args=transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                                            **TRAINER_KWARGS),
    )
    with pytest.raises(ValueError, match=r"PARA cannot tell the prompt from the response in row 0: its labels label "
                                         r"every attended token"):
        trainer.train()


# ------------------------------------------------------------------------------------------- real SmolLM2


@pytest.mark.slow
def test_trl_on_smollm2_pools_prompt_and_serves_like_peft(tmp_path):
    from paratune.models import load_backbone

    backbone = load_backbone()
    tokenizer = backbone.tokenizer
    spy = ForwardSpy()
    trainer = trl.SFTTrainer(
        model=backbone.model, peft_config=paratune.ParaConfig(), processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_list(prompt_completion(True, n=8)),
        args=trl.SFTConfig(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2, max_length=128,
                           **{**TRAINER_KWARGS, "max_steps": 3, "learning_rate": 1e-3}),
        callbacks=[spy],
    )
    trainer.train()
    prompts = {tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
               for r in prompt_completion(True)}
    check_pooled_prompts(spy, tokenizer, prompts)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses), losses
    trainer.save_model(str(tmp_path / "adapter"))

    prompt_ids = [list(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, return_dict=False))
                  for r in prompt_completion(True, n=2)]
    engine = Engine(load_backbone().model, tokenizer, max_batch=2)
    engine.add_adapter("t", tmp_path / "adapter")
    requests = [Request(ids, adapter="t", params=SamplingParams(max_tokens=8)) for ids in prompt_ids]
    engine.generate(requests)
    reference = PeftModel.from_pretrained(load_backbone().model, tmp_path / "adapter").eval()
    for ids, request in zip(prompt_ids, requests):
        out = reference.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        assert request.output_ids == out[0, len(ids):].tolist()

"""Model scoring: choice log-likelihoods, padding invariance, response loss, prompt mask, generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from paratune.tasks import Example, get_task
from paratune.tasks.scoring import (
    build_prompt,
    choice_logliks,
    encode_prompt,
    encode_response,
    evaluate,
    generate_answers,
    response_loss,
    score_choices,
)

PROMPTS = [
    "Is the sky blue?",
    "Premise: The man turned on the faucet.\nWhat happened as a result? Think about it carefully, step by step.",
    "x",
]


def _mc_examples():
    return [
        Example(id="a", prompt=PROMPTS[0], answer="yes it is", choices=["yes it is", "no", "the correct answer is true"], label=0),
        Example(id="b", prompt=PROMPTS[1], answer="Water flowed.", choices=["Water flowed from the spout.", "Nothing."], label=0),
        Example(id="c", prompt=PROMPTS[2], answer="y", choices=["y", "a much longer choice with many more tokens in it"], label=1),
    ]


def test_build_prompt(chat_tokenizer, plain_tokenizer):
    assert build_prompt(plain_tokenizer, "Hello?") == "Hello?"
    text = build_prompt(chat_tokenizer, "Hello?")
    assert text == chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello?"}], tokenize=False, add_generation_prompt=True
    )
    assert "Hello?" in text and text.endswith("<|im_start|>assistant\n")


def test_predictable_choice(tokenizer, biased_model):
    (fav,) = encode_response(tokenizer, "positive")
    model = biased_model(len(tokenizer), {fav: 30.0})
    ex = [Example(id="s", prompt="Sentence: great film.\nSentiment?", answer="positive",
                  choices=["negative", "positive", "neutral"], label=1)]
    preds, logliks = score_choices(model, tokenizer, ex, batch_size=2, return_logliks=True)
    assert preds == [1]
    # every position has the same distribution softmax(bias): the log-likelihoods are known exactly
    logp = F.log_softmax(model.lm_head.bias.detach().double(), dim=-1)
    for choice, ll in zip(ex[0].choices, logliks[0]):
        expected = float(sum(logp[t] for t in encode_response(tokenizer, choice)))
        assert ll == pytest.approx(expected, abs=1e-4)
    assert logliks[0][1] > -1e-6 and logliks[0][0] < -29.9


def test_batched_equals_alone(tokenizer, random_model):
    ex = _mc_examples()
    together = choice_logliks(random_model, tokenizer, ex, batch_size=16)
    alone = [choice_logliks(random_model, tokenizer, [e], batch_size=1)[0] for e in ex]
    for t, a in zip(together, alone):
        assert t == pytest.approx(a, rel=1e-6, abs=1e-5)  # sums of ~100 fp32 token log-probabilities
    # the values are informative (a random model with a wide init is far from uniform)
    assert len({round(v, 3) for row in together for v in row}) == sum(len(e.choices) for e in ex)


def test_response_loss_matches_hand_computation(tokenizer, random_model):
    ex = _mc_examples()
    sums, counts = [], []
    for e in ex:
        p, r = encode_prompt(tokenizer, e.prompt), encode_response(tokenizer, e.answer)
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits = random_model(input_ids=ids).logits[0]
        ce = F.cross_entropy(logits[len(p) - 1 : -1], ids[0, len(p) :], reduction="sum")
        sums.append(float(ce))
        counts.append(len(r))
    assert response_loss(random_model, tokenizer, ex[:1], batch_size=1) == pytest.approx(sums[0] / counts[0], abs=1e-5)
    # over several examples: one average over all answer tokens
    assert response_loss(random_model, tokenizer, ex, batch_size=2) == pytest.approx(sum(sums) / sum(counts), abs=1e-5)


class Recorder(torch.nn.Module):
    """Wraps a model, records every forward's kwargs, and strips the prompt mask before calling it."""

    def __init__(self, inner, kwarg):
        super().__init__()
        self.inner, self.kwarg, self.calls = inner, kwarg, []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.calls.append({"input_ids": input_ids.clone(), "attention_mask": attention_mask.clone(),
                           **{k: v.clone() for k, v in kwargs.items()}})
        kwargs.pop(self.kwarg, None)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_prompt_mask_kwarg(tokenizer, random_model):
    ex = _mc_examples()
    expected = {}  # full row ids -> prompt length
    for e in ex:
        p = encode_prompt(tokenizer, e.prompt)
        for text in e.choices + [e.answer]:
            expected[tuple(p + encode_response(tokenizer, text))] = len(p)

    rec = Recorder(random_model, "para_prompt_mask")
    plain = choice_logliks(random_model, tokenizer, ex, batch_size=3)
    assert choice_logliks(rec, tokenizer, ex, batch_size=3, prompt_mask_kwarg="para_prompt_mask") == plain
    response_loss(rec, tokenizer, ex, batch_size=2, prompt_mask_kwarg="para_prompt_mask")
    assert len(rec.calls) == 3 + 2  # 7 choice rows / 3 per batch, 3 answer rows / 2 per batch
    n_rows = 0
    for call in rec.calls:
        mask, ids, attn = call["para_prompt_mask"], call["input_ids"], call["attention_mask"]
        assert mask.dtype == torch.bool and mask.shape == ids.shape
        assert attn[:, 0].all() and bool((attn.diff(dim=1) <= 0).all())  # right padding
        for b in range(ids.shape[0]):
            n = int(attn[b].sum())
            P = expected[tuple(ids[b, :n].tolist())]
            assert mask[b, :P].all() and not mask[b, P:].any()
            n_rows += 1
    assert n_rows == 7 + 3

    rec.calls.clear()
    choice_logliks(rec, tokenizer, ex, batch_size=8)
    assert set(rec.calls[0]) == {"input_ids", "attention_mask"}


def test_generate_left_padding_and_eos(tokenizer, biased_model):
    (cat,) = encode_response(tokenizer, " cat")
    model = biased_model(len(tokenizer), {cat: 30.0})
    ex = [Example(id=str(i), prompt=p, answer="") for i, p in enumerate(PROMPTS)]
    side = tokenizer.padding_side
    out = generate_answers(model, tokenizer, ex, batch_size=3, max_new_tokens=3)
    assert out == ["cat cat cat"] * 3
    assert tokenizer.padding_side == side
    # eos most likely: generation stops at once and eos is not decoded
    model = biased_model(len(tokenizer), {tokenizer.eos_token_id: 30.0, cat: 20.0})
    assert generate_answers(model, tokenizer, ex, batch_size=2, max_new_tokens=4) == [""] * 3


def test_generate_batched_equals_alone(tokenizer, random_model):
    ex = [Example(id=str(i), prompt=p, answer="") for i, p in enumerate(PROMPTS)]
    together = generate_answers(random_model, tokenizer, ex, batch_size=3, max_new_tokens=5)
    alone = [generate_answers(random_model, tokenizer, [e], batch_size=1, max_new_tokens=5)[0] for e in ex]
    assert together == alone
    assert all(together)


def test_evaluate_multiple_choice(tokenizer, biased_model):
    (fav,) = encode_response(tokenizer, "positive")
    model = biased_model(len(tokenizer), {fav: 30.0})
    ex = [Example(id=str(i), prompt=f"s{i}", answer=["negative", "positive"][i % 2],
                  choices=["negative", "positive"], label=i % 2) for i in range(4)]
    res = evaluate(model, tokenizer, get_task("sst2"), ex, batch_size=3)
    assert res["task"] == "sst2" and res["n"] == 4 and res["accuracy"] == 0.5
    assert res["response_loss"] == pytest.approx(response_loss(model, tokenizer, ex), abs=1e-6)
    assert [p["correct"] for p in res["predictions"]] == [False, True, False, True]
    assert res["predictions"][0]["prediction"] == "positive" and res["predictions"][0]["gold"] == "negative"
    assert res["predictions"][0]["pred_index"] == 1 and len(res["predictions"][0]["logliks"]) == 2


def test_evaluate_generation(tokenizer, biased_model):
    (seven,) = encode_response(tokenizer, "7")
    model = biased_model(len(tokenizer), {seven: 30.0})
    ex = [Example(id="g1", prompt="3+4?", answer="3+4=7\n#### 777", meta={"target": 777.0}),
          Example(id="g2", prompt="1+1?", answer="#### 2", meta={"target": 2.0})]
    res = evaluate(model, tokenizer, "gsm8k", ex, batch_size=2, max_new_tokens=3)
    assert res["accuracy"] == 0.5
    assert [p["prediction"] for p in res["predictions"]] == ["777", "777"]
    assert [p["correct"] for p in res["predictions"]] == [True, False]
    assert res["response_loss"] > 0
    res = evaluate(model, tokenizer, "file", [Example(id="f", prompt="p", answer="77")], max_new_tokens=2)
    assert res["exact_match"] == 1.0 and res["predictions"][0] == {"id": "f", "prediction": "77", "gold": "77", "correct": True}


def test_prompt_tuning_logits_of_virtual_tokens_are_skipped(tokenizer):
    """PEFT's prompt tuning prepends virtual tokens and returns their logits too; scoring must read the logits of
    the real tokens: the loss equals one computed by hand from the last T logits, and differs from the base's."""
    import peft

    from tests.tasks.conftest import make_tiny_model

    ex = _mc_examples()[:1]
    base = make_tiny_model(len(tokenizer), seed=0, initializer_range=0.15)
    base_loss = response_loss(base, tokenizer, ex, batch_size=1)
    torch.manual_seed(0)
    model = peft.get_peft_model(base, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    model.eval()
    p, r = encode_prompt(tokenizer, ex[0].prompt), encode_response(tokenizer, ex[0].answer)
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    assert logits.shape[0] == ids.shape[1] + 4
    expected = F.cross_entropy(logits[4:][len(p) - 1 : -1], ids[0, len(p):])
    assert response_loss(model, tokenizer, ex, batch_size=1) == pytest.approx(float(expected), abs=1e-5)
    assert abs(float(expected) - base_loss) > 1e-3

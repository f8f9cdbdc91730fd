"""paratune's lm-eval model (HFLM + PARA's prompt mask) and the multiple-choice file task, on tiny models."""

from __future__ import annotations

import json

import peft
import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from paratune import ParaConfig
from paratune.evaluation import ParatuneLM, simple_evaluate, summary
from paratune.evaluation.tasks import export_multiple_choice, write_multiple_choice
from paratune.para.layer import ParaLayer
from tests.evaluation.conftest import local_data, make_tiny_model, needs_local_data
from tests.tiny_models import randomize_adapter

REQUESTS = [
    ("Question: Which gas do plants absorb?\nAnswer:", " carbon dioxide"),
    ("Question: Which gas do plants absorb?\nAnswer:", " oxygen"),
    ("The man turned on the faucet therefore", " water flowed from the spout."),
    ("Q: x\nA:", " y"),
    ("A much longer context, with quite a few more tokens in it than the others have, ends", " here now"),
]


@pytest.fixture(scope="module")
def base_model(chat_tokenizer):
    return make_tiny_model(len(chat_tokenizer), seed=0, initializer_range=0.15)


@pytest.fixture(scope="module")
def para_model(chat_tokenizer):
    model = peft.get_peft_model(make_tiny_model(len(chat_tokenizer), seed=0, initializer_range=0.15),
                                ParaConfig(r=4))
    randomize_adapter(model, scale=0.5)
    return model.eval()


def _instances(pairs):
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's causal split: encode context + continuation whole, the context alone, cut (no special tokens)."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def direct_loglik(model, tokenizer, context, continuation, mask: str = "context") -> float:
    ctx, cont = _encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([ctx + cont])
    kwargs = {}
    if mask == "context":
        prompt = torch.zeros_like(ids, dtype=torch.bool)
        prompt[0, : len(ctx)] = True
        kwargs["para_prompt_mask"] = prompt
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits[0].double()
    logp = F.log_softmax(logits[len(ctx) - 1 : -1], dim=-1)
    return float(logp.gather(-1, torch.tensor(cont)[:, None]).sum())


@pytest.mark.parametrize("which", ["base", "para"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_loglikelihood_equals_a_direct_forward(which, batch_size, base_model, para_model, chat_tokenizer):
    model = base_model if which == "base" else para_model
    lm = ParatuneLM(model, chat_tokenizer, batch_size=batch_size)
    assert lm.para == (which == "para")
    got = [ll for ll, _ in lm.loglikelihood(_instances(REQUESTS), disable_tqdm=True)]
    expected = [direct_loglik(model, chat_tokenizer, c, x) for c, x in REQUESTS]
    assert got == pytest.approx(expected, abs=2e-4)
    if which == "para":
        # the prompt mask matters: pooling the continuation too gives other numbers
        pooled_all = [direct_loglik(model, chat_tokenizer, c, x, mask="none") for c, x in REQUESTS]
        assert max(abs(a - b) for a, b in zip(got, pooled_all)) > 1e-2


@pytest.fixture
def captured_vectors(monkeypatch):
    """Every PARA vector set computed, per layer call: list of {target: (B, width) tensor}."""
    seen = []
    original = ParaLayer.set_row_vectors

    def spy(self, vectors):
        if vectors is not None:
            seen.append({k: v.detach().clone() for k, v in vectors.items()})
        return original(self, vectors)

    monkeypatch.setattr(ParaLayer, "set_row_vectors", spy)
    return seen


ONE_TOKEN_CHOICES = [("Review: a fine film.\nQuestion: positive or negative?\nAnswer:", " positive"),
                     ("Review: a fine film.\nQuestion: positive or negative?\nAnswer:", " negative"),
                     ("Passage: water is wet.\nQuestion: is water wet?\nAnswer:", " yes"),
                     ("Passage: water is wet.\nQuestion: is water wet?\nAnswer:", " no")]


def _count_rows(lm, monkeypatch) -> list[int]:
    rows = []
    real = type(lm)._model_call
    monkeypatch.setattr(lm, "_model_call", lambda inps, **kw: rows.append(inps.shape[0]) or real(lm, inps, **kw))
    return rows


def test_para_shares_one_forward_per_question_only_when_the_prompts_agree(para_model, chat_tokenizer, monkeypatch):
    cached = ParatuneLM(para_model, chat_tokenizer, batch_size=4)
    rows = _count_rows(cached, monkeypatch)
    got = [ll for ll, _ in cached.loglikelihood(_instances(ONE_TOKEN_CHOICES), disable_tqdm=True)]
    assert cached.logits_cache and sum(rows) == 2  # one forward per question, not per choice
    expected = [direct_loglik(para_model, chat_tokenizer, c, x) for c, x in ONE_TOKEN_CHOICES]
    assert got == pytest.approx(expected, abs=2e-4)
    uncached = ParatuneLM(para_model, chat_tokenizer, batch_size=4, logits_cache=False)
    rows = _count_rows(uncached, monkeypatch)
    assert [ll for ll, _ in uncached.loglikelihood(_instances(ONE_TOKEN_CHOICES), disable_tqdm=True)] == \
        pytest.approx(got, abs=1e-5)
    assert not uncached.logits_cache and sum(rows) == 4

    # Two requests with the same context + continuation[:-1] but different context boundaries would share a
    # forward under lm-eval's cache while PARA must pool different prompts: the cache is off for that call.
    ctx, cont = _encode_pair(chat_tokenizer, "The sky is", " blue today")
    assert len(cont) >= 2
    split = chat_tokenizer.decode(ctx + cont[:1])
    pairs = [("The sky is", " blue today"), (split, chat_tokenizer.decode(ctx + cont)[len(split):])]
    assert _encode_pair(chat_tokenizer, *pairs[1])[0] == ctx + cont[:1]  # really the same tokens, split later
    lm = ParatuneLM(para_model, chat_tokenizer, batch_size=4)
    got = [ll for ll, _ in lm.loglikelihood(_instances(pairs), disable_tqdm=True)]
    assert not lm.logits_cache
    assert got == pytest.approx([direct_loglik(para_model, chat_tokenizer, c, x) for c, x in pairs], abs=2e-4)


def test_para_scored_through_lm_eval_never_pools_the_continuation(para_model, chat_tokenizer, captured_vectors):
    context = "Question: Which gas do plants absorb?\nAnswer:"
    conts = [" carbon dioxide", " oxygen and a great many other gases besides"]
    lm = ParatuneLM(para_model, chat_tokenizer, batch_size=1)
    per_continuation = []
    for cont in conts:
        captured_vectors.clear()
        lm.loglikelihood(_instances([(context, cont)]), disable_tqdm=True)
        per_continuation.append(list(captured_vectors))
    assert len(per_continuation[0]) == len(per_continuation[1]) > 0  # one vector set per layer
    for a, b in zip(*per_continuation):
        for target in a:
            # equal up to float summation order (the two rows have different lengths)
            torch.testing.assert_close(a[target], b[target], rtol=1e-5, atol=1e-5)
    # both continuations in one batch: each row's vectors equal the context-only vectors too
    captured_vectors.clear()
    ParatuneLM(para_model, chat_tokenizer, batch_size=2).loglikelihood(
        _instances([(context, c) for c in conts]), disable_tqdm=True)
    for layer, vectors in enumerate(captured_vectors):
        for target, v in vectors.items():
            for row in range(2):
                torch.testing.assert_close(v[row], per_continuation[0][layer][target][0], rtol=1e-5, atol=1e-6)
    # control: a forward that pools everything (no mask) does see the continuation
    captured_vectors.clear()
    for cont in conts:
        ctx, c = _encode_pair(chat_tokenizer, context, cont)
        with torch.no_grad():
            para_model(input_ids=torch.tensor([ctx + c]))
    first, second = captured_vectors[0], captured_vectors[len(captured_vectors) // 2]
    assert max(float((first[t] - second[t]).abs().max()) for t in first) > 1e-3


def test_para_generation_pools_the_prompt(para_model, chat_tokenizer):
    prompt = "Question: Which gas do plants absorb?\nAnswer:"
    lm = ParatuneLM(para_model, chat_tokenizer, batch_size=2)
    request = Instance(request_type="generate_until", doc={}, idx=0,
                       arguments=(prompt, {"until": ["<never>"], "max_gen_toks": 6, "do_sample": False}))
    (text,) = lm.generate_until([request], disable_tqdm=True)
    ids = torch.tensor([chat_tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = para_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                  do_sample=False, para_prompt_mask=torch.ones_like(ids, dtype=torch.bool),
                                  pad_token_id=chat_tokenizer.pad_token_id)
    assert text == chat_tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_para_refuses_auto_batch_size(para_model, chat_tokenizer):
    with pytest.raises(ValueError, match="batch_size='auto'"):
        ParatuneLM(para_model, chat_tokenizer, batch_size="auto")


# ----- the multiple-choice file task -------------------------------------------------------------------
ITEMS = [
    {"query": "Question: Which gas do plants absorb?\nAnswer:", "choices": ["carbon dioxide", "oxygen", "helium"],
     "gold": 0},
    {"query": "Is the sky blue?", "choices": ["yes", "no, it is usually a rather different colour"], "gold": 1},
    {"query": "The man turned on the faucet, so", "choices": ["water flowed.", "nothing", "the sun set"], "gold": 2},
    {"query": "Pick one:", "choices": ["a", "b"], "gold": 1},
]


def expected_scores(model, tokenizer, items):
    accs, norms, lls = [], [], []
    for item in items:
        ll = [direct_loglik(model, tokenizer, item["query"], " " + c) for c in item["choices"]]
        norm = [v / len(c) for v, c in zip(ll, item["choices"])]
        accs.append(float(max(range(len(ll)), key=ll.__getitem__) == item["gold"]))
        norms.append(float(max(range(len(norm)), key=norm.__getitem__) == item["gold"]))
        lls.append(ll)
    return sum(accs) / len(items), sum(norms) / len(items), lls


@pytest.mark.parametrize("which", ["base", "para"])
def test_multiple_choice_file_is_scored_exactly(which, base_model, para_model, chat_tokenizer, tmp_path):
    model = base_model if which == "base" else para_model
    data = write_multiple_choice(ITEMS, tmp_path / "mc.jsonl")
    for limit in (None, 3):
        results = simple_evaluate(ParatuneLM(model, chat_tokenizer, batch_size=4), ["multiple-choice"],
                                  data=str(data), limit=limit, task_dir=str(tmp_path / "tasks"))
        items = ITEMS[:limit] if limit else ITEMS
        acc, acc_norm, lls = expected_scores(model, chat_tokenizer, items)
        result = summary(results, "multiple-choice")
        assert result["n"] == len(items)
        assert result["acc"] == pytest.approx(acc) and result["acc_norm"] == pytest.approx(acc_norm)
        samples = results["samples"]["multiple_choice"]
        assert [s["doc"]["query"] for s in samples] == [i["query"] for i in items]  # first N, file order
        for sample, expected in zip(samples, lls):
            assert [r[0][0] for r in sample["resps"]] == pytest.approx(expected, abs=2e-4)
            assert [a[1] for a in sample["arguments"]] == [" " + c for c in ITEMS[sample["doc_id"]]["choices"]]


needs_data = needs_local_data("arc-easy", "test.json")


@needs_data
@pytest.mark.parametrize("task", ["arc-easy", "copa"])
def test_multiple_choice_file_equals_the_builtin_task(task, base_model, chat_tokenizer, tmp_path):
    lm = ParatuneLM(base_model, chat_tokenizer, batch_size=8)
    builtin = simple_evaluate(lm, [task], limit=6, data_dir=str(local_data()), task_dir=str(tmp_path / "tasks"))
    exported = export_multiple_choice(task, tmp_path / f"{task}.jsonl", limit=6, data_dir=local_data())
    as_file = simple_evaluate(lm, ["multiple-choice"], data=str(exported), task_dir=str(tmp_path / "tasks"))
    a, b = summary(builtin, task), summary(as_file, "multiple-choice")
    assert (a["n"], a["acc"], a["acc_norm"]) == (b["n"], b["acc"], b["acc_norm"]) == (6, a["acc"], a["acc_norm"])
    name = next(iter(builtin["samples"]))
    for x, y in zip(builtin["samples"][name], as_file["samples"]["multiple_choice"]):
        assert x["arguments"] == y["arguments"]
        assert [r[0][0] for r in x["resps"]] == [r[0][0] for r in y["resps"]]


@needs_data
def test_builtin_cloze_rendering_of_the_alpaca_files(tmp_path, chat_tokenizer, base_model):
    """ARC-Easy's first test item, rendered as lm-eval's arc_easy renders the HF data set (option texts)."""
    path = export_multiple_choice("arc-easy", tmp_path / "arc.jsonl", limit=1, data_dir=local_data())
    (item,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert item == {"query": "Question: Which statement best explains why photosynthesis is the foundation of "
                             "most food webs?\nAnswer:",
                    "choices": ["Sunlight is the source of energy for nearly all ecosystems.",
                                "Most ecosystems are found on land instead of in water.",
                                "Carbon dioxide is more available than other gases.",
                                "The producers in all ecosystems are plants."], "gold": 0}
    with pytest.raises(ValueError, match="partial scoring"):
        export_multiple_choice("winogrande", tmp_path / "w.jsonl", limit=1, data_dir=local_data())


@needs_data
def test_every_builtin_task_renders_and_loads_the_whole_local_split(tmp_path):
    """lm-eval builds each task from the local files: full evaluation-split sizes (as in the shared data
    README) and lm-eval's rendering of the first item."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from paratune.evaluate import TASK_NAMES
    from paratune.evaluation import TASKS, render_tasks

    assert set(TASK_NAMES) == set(TASKS)
    names = ["arc-easy", "openbookqa", "social_i_qa", "winogrande", "copa", "boolq", "sst2", "gsm8k", "squad"]
    folders = render_tasks(names, data_dir=local_data(), out=tmp_path / "tasks")
    tasks = get_task_dict([TASKS[n].lm_eval_name for n in names],
                          TaskManager(include_path=[str(f) for f in folders], include_defaults=False))
    sizes = {"arc_easy": 2376, "openbookqa": 500, "social_iqa": 1954, "winogrande": 1267, "copa": 100,
             "boolq": 3270, "sst2": 872, "gsm8k": 1319, "squad": 10570}
    assert {name: len(list(task.eval_docs)) for name, task in tasks.items()} == sizes
    first = {name: next(iter(task.eval_docs)) for name, task in tasks.items()}
    assert tasks["openbookqa"].doc_to_text(first["openbookqa"]).startswith("A person wants to start saving money")
    assert tasks["social_iqa"].doc_to_text(first["social_iqa"]).startswith("Q: Tracy didn't go home that evening")
    assert tasks["winogrande"].doc_to_choice(first["winogrande"]) == [
        "Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so Maria"]
    assert tasks["winogrande"].doc_to_target(first["winogrande"]) == "always got the easier cases."
    assert tasks["copa"].doc_to_text(first["copa"]) == "The man turned on the faucet therefore"
    assert tasks["copa"].doc_to_choice(first["copa"]) == [" the toilet filled with water.",
                                                          " water flowed from the spout."]
    assert tasks["boolq"].doc_to_text(first["boolq"]).endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert tasks["sst2"].doc_to_text(first["sst2"]) == (
        "it 's a charming and often affecting journey . \nQuestion: Is this sentence positive or negative?\nAnswer:")
    assert tasks["squad"].doc_to_text(first["squad"]).startswith("Title: Super_Bowl_50\n\nBackground: ")
    assert tasks["gsm8k"].config.num_fewshot == 5 and tasks["gsm8k"].has_training_docs()

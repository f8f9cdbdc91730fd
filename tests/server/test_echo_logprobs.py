"""/v1/completions with echo + logprobs (prompt log-probabilities): equal to in-process scores for every kind
of adapter, PARA pooling only the context; lm-eval's local-completions (and paratune-completions for PARA)
scoring over HTTP equals lm-eval's in-process HFLM scoring."""

from __future__ import annotations

import httpx
import peft
import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.models.openai_completions import LocalCompletionsAPI

from paratune.evaluation import ParatuneLM
from paratune.evaluation.api import ParatuneCompletionsAPI
from tests.server.conftest import API_KEY, MODEL_NAME, tiny_backbone

CONTEXT = "Question: Which gas do plants absorb from the air?\nAnswer:"
CONTINUATION = " carbon dioxide, mostly"
PAIRS = [(CONTEXT, CONTINUATION), (CONTEXT, " oxygen"), ("The man turned on the faucet therefore", " water flowed.")]


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def in_process(live, chat_tokenizer):
    """name -> the same weights as the server's, as PEFT loads them (None = the base model)."""
    models = {MODEL_NAME: tiny_backbone(chat_tokenizer)}
    for name, path in live.tenants.items():
        models[name] = peft.PeftModel.from_pretrained(tiny_backbone(chat_tokenizer), path).eval()
    return models


def reference_logprobs(model, ids: list[int], context: int) -> list[float]:
    tensor = torch.tensor([ids])
    kwargs = {}
    if isinstance(model, peft.PeftModel) and model.peft_type == "PARA":
        mask = torch.zeros_like(tensor, dtype=torch.bool)
        mask[0, :context] = True
        kwargs["para_prompt_mask"] = mask
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=tensor, **kwargs).logits[0].double(), dim=-1)
    return logp[:-1].gather(-1, tensor[0, 1:, None])[:, 0].tolist()


def split_ids(tokenizer, context, continuation):
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    return whole, len(tokenizer(context, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("name", [MODEL_NAME, "para0", "para1", "lora0", "ia3"])
@pytest.mark.parametrize("as_text", [False, True])
def test_echo_logprobs_equal_in_process_scores(name, as_text, http, in_process, chat_tokenizer):
    ids, context = split_ids(chat_tokenizer, CONTEXT, CONTINUATION)
    prompt = chat_tokenizer.decode(ids) if as_text else [ids]
    response = http.post("/v1/completions", json={"model": name, "prompt": prompt, "echo": True, "logprobs": 1,
                                                  "max_tokens": 0, "context_tokens": context})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["tokens"] == [chat_tokenizer.decode([t]) for t in ids]
    assert choice["text"] == chat_tokenizer.decode(ids) and choice["finish_reason"] == "length"
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    expected = reference_logprobs(in_process[name], ids, context)
    assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    for value, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        assert len(top) == 1 and max(top.values()) >= value - 1e-6
    if name.startswith("para"):  # the context boundary matters: pooling the continuation too changes scores
        pooled_all = reference_logprobs(in_process[name], ids, len(ids))
        assert max(abs(a - b) for a, b in zip(expected, pooled_all)) > 1e-3


def test_echo_with_one_new_token_appends_the_greedy_token(http, in_process, chat_tokenizer):
    ids, context = split_ids(chat_tokenizer, CONTEXT, CONTINUATION)
    response = http.post("/v1/completions", json={"model": "para0", "prompt": [ids], "echo": True, "logprobs": 1,
                                                  "max_tokens": 1, "temperature": 0, "context_tokens": context})
    assert response.status_code == 200, response.text
    lp = response.json()["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1
    model = in_process["para0"]
    mask = torch.zeros(1, len(ids), dtype=torch.bool)
    mask[0, :context] = True
    with torch.no_grad():
        last = F.log_softmax(model(input_ids=torch.tensor([ids]), para_prompt_mask=mask).logits[0, -1], dim=-1)
    assert lp["tokens"][-1] == chat_tokenizer.decode([int(last.argmax())])
    assert lp["token_logprobs"][-1] == pytest.approx(float(last.max()), abs=1e-4)
    assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())


def _instances():
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(PAIRS)]


@pytest.mark.parametrize("name, client", [(MODEL_NAME, LocalCompletionsAPI), ("lora0", LocalCompletionsAPI),
                                          ("ia3", LocalCompletionsAPI), ("para0", ParatuneCompletionsAPI),
                                          ("para1", ParatuneCompletionsAPI)])
def test_lm_eval_over_http_equals_lm_eval_in_process(name, client, live, in_process, chat_tokenizer,
                                                     tokenizer_folder, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    remote = client(model=name, base_url=f"{live.url}/v1/completions", tokenizer=str(tokenizer_folder),
                    tokenizer_backend="huggingface", max_retries=1)
    over_http = remote.loglikelihood(_instances(), disable_tqdm=True)
    local = ParatuneLM(in_process[name], chat_tokenizer, batch_size=2).loglikelihood(_instances(), disable_tqdm=True)
    assert [ll for ll, _ in over_http] == pytest.approx([ll for ll, _ in local], abs=2e-4)
    assert [greedy for _, greedy in over_http] == [greedy for _, greedy in local]


def test_para_echo_scoring_without_context_is_refused(http, chat_tokenizer):
    ids, context = split_ids(chat_tokenizer, CONTEXT, CONTINUATION)
    body = {"model": "para0", "prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "context_tokens" and "never the continuation" in error["message"]
    response = http.post("/v1/completions", json={**body, "context_tokens": context, "max_tokens": 5})
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"
    response = http.post("/v1/completions", json={**body, "context_tokens": len(ids) + 1})
    assert response.status_code == 400 and response.json()["error"]["param"] == "context_tokens"
    # the base model and LoRA need no context (earlier positions never see later tokens)
    for model in (MODEL_NAME, "lora0"):
        assert http.post("/v1/completions", json={**body, "model": model}).status_code == 200


@pytest.mark.parametrize("body, param", [
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": [[1, 10**9]], "echo": True, "logprobs": 1, "max_tokens": 0}, "prompt"),
    ({"prompt": [[1, -2]], "echo": True, "logprobs": 1, "max_tokens": 0}, "prompt"),
    ({"prompt": [[1, 2], [3, 4]], "echo": True, "logprobs": 1, "max_tokens": 0}, "prompt"),
])
def test_bad_scoring_requests(http, body, param):
    response = http.post("/v1/completions", json={"model": MODEL_NAME, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_generation_still_works_after_scoring(http):
    response = http.post("/v1/completions", json={"model": "para0", "prompt": "hello there", "max_tokens": 4,
                                                  "temperature": 0})
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] >= 1


def test_scoring_between_decode_steps_leaves_running_requests_alone(http, live, chat_tokenizer):
    """Echo scoring runs a side forward between engine steps: running generations (PARA, LoRA, base) give the
    same greedy text as when run alone, and the scores equal those computed with nothing running."""
    from concurrent.futures import ThreadPoolExecutor

    gen = [{"model": m, "prompt": f"Tell me about {m}", "max_tokens": 60, "temperature": 0}
           for m in ("para0", "lora0", MODEL_NAME, "ia3")]
    ids, context = split_ids(chat_tokenizer, CONTEXT, CONTINUATION)
    score = {"model": "para1", "prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 0,
             "context_tokens": context}
    alone = [http.post("/v1/completions", json=body).json()["choices"][0]["text"] for body in gen]
    scored_alone = http.post("/v1/completions", json=score).json()["choices"][0]["logprobs"]["token_logprobs"]
    with ThreadPoolExecutor(12) as pool:
        generations = [pool.submit(http.post, "/v1/completions", json=body) for body in gen]
        scores = [pool.submit(http.post, "/v1/completions", json=score) for _ in range(8)]
        texts = [f.result().json()["choices"][0]["text"] for f in generations]
        values = [f.result().json()["choices"][0]["logprobs"]["token_logprobs"] for f in scores]
    assert texts == alone
    for v in values:
        assert v[1:] == pytest.approx(scored_alone[1:], abs=1e-5)

"""Malformed and hostile requests: each gets the right 4xx in OpenAI's error shape with a clear message, and the
server answers correctly afterwards."""

from __future__ import annotations

import json
import os

import httpx
import peft
import pytest
import torch
import transformers

from paratune import ParaConfig
from tests.server.conftest import API_KEY, MODEL_NAME
from tests.server.test_openai_client import offline

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 4}


def with_(base: dict, **changes) -> dict:
    body = {**base, **changes}
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()

# (id, path, JSON body, status, words the message must contain, the error's param)
JSON_CASES = [
    ("missing model", "/v1/completions", with_(COMPLETION, model=DROP), 400, "Field required", "model"),
    ("empty model", "/v1/completions", with_(COMPLETION, model=""), 400, "at least 1 character", "model"),
    ("model wrong type", "/v1/completions", with_(COMPLETION, model=123), 400, "valid string", "model"),
    ("missing prompt", "/v1/completions", with_(COMPLETION, prompt=DROP), 400, "Field required", "prompt"),
    ("prompt wrong type", "/v1/completions", with_(COMPLETION, prompt={"a": 1}), 400, "prompt", "prompt"),
    ("empty prompt", "/v1/completions", with_(COMPLETION, prompt=""), 400, "must not be empty", "prompt"),
    ("two prompts", "/v1/completions", with_(COMPLETION, prompt=["a", "b"]), 400, "exactly one", "prompt"),
    ("negative max_tokens", "/v1/completions", with_(COMPLETION, max_tokens=-5), 400, "greater than or equal to 1",
     "max_tokens"),
    ("zero max_tokens", "/v1/completions", with_(COMPLETION, max_tokens=0), 400, "greater than or equal to 1",
     "max_tokens"),
    ("huge max_tokens", "/v1/completions", with_(COMPLETION, max_tokens=10**12), 400, "max_tokens must be <= 64",
     "max_tokens"),
    ("max_tokens as text", "/v1/completions", with_(COMPLETION, max_tokens="ten"), 400, "valid integer",
     "max_tokens"),
    ("fractional max_tokens", "/v1/completions", with_(COMPLETION, max_tokens=2.5), 400, "integer", "max_tokens"),
    ("negative temperature", "/v1/completions", with_(COMPLETION, temperature=-1), 400,
     "greater than or equal to 0", "temperature"),
    ("temperature too high", "/v1/chat/completions", with_(CHAT, temperature=5), 400, "less than or equal to 2",
     "temperature"),
    ("zero top_p", "/v1/completions", with_(COMPLETION, top_p=0), 400, "greater than 0", "top_p"),
    ("top_p above one", "/v1/chat/completions", with_(CHAT, top_p=1.5), 400, "less than or equal to 1", "top_p"),
    ("negative top_k", "/v1/completions", with_(COMPLETION, top_k=-1), 400, "greater than or equal to 0", "top_k"),
    ("n of two", "/v1/chat/completions", with_(CHAT, n=2), 400, "less than or equal to 1", "n"),
    ("five stop strings", "/v1/completions", with_(COMPLETION, stop=list("abcde")), 400, "up to 4", "stop"),
    ("empty stop string", "/v1/completions", with_(COMPLETION, stop=""), 400, "non-empty", "stop"),
    ("seed as text", "/v1/completions", with_(COMPLETION, seed="abc"), 400, "valid integer", "seed"),
    ("logprobs of five", "/v1/completions", with_(COMPLETION, logprobs=5), 400, "less than or equal to 1",
     "logprobs"),
    ("stream not a bool", "/v1/completions", with_(COMPLETION, stream="yes please"), 400, "valid boolean", "stream"),
    ("unknown adapter", "/v1/completions", with_(COMPLETION, model="no-such-tenant"), 404, "does not exist",
     "model"),
    ("unknown adapter in chat", "/v1/chat/completions", with_(CHAT, model="../para0"), 404, "does not exist",
     "model"),
    ("empty messages", "/v1/chat/completions", with_(CHAT, messages=[]), 400, "at least 1 item", "messages"),
    ("messages not a list", "/v1/chat/completions", with_(CHAT, messages="hello"), 400, "valid list", "messages"),
    ("unknown role", "/v1/chat/completions", with_(CHAT, messages=[{"role": "wizard", "content": "x"}]), 400,
     "'system', 'user' or 'assistant'", "messages.0.role"),
    ("message without content", "/v1/chat/completions", with_(CHAT, messages=[{"role": "user"}]), 400,
     "Field required", "messages.0.content"),
    ("prompt too long", "/v1/completions", with_(COMPLETION, prompt="word " * 400), 400, "the limit is 256",
     "prompt"),
    ("chat too long", "/v1/chat/completions",
     with_(CHAT, messages=[{"role": "user", "content": "word " * 400}]), 400, "the limit is 256", "messages"),
    ("body is a list", "/v1/completions", [1, 2, 3], 400, "valid dictionary", None),
    ("adapter traversal", "/v1/adapters", {"name": "evil", "path": "../../../../etc"}, 400,
     "outside the adapter root", "path"),
    ("adapter absolute path", "/v1/adapters", {"name": "evil", "path": "/etc"}, 400, "outside the adapter root",
     "path"),
    ("adapter NUL byte", "/v1/adapters", {"name": "evil", "path": "para0\x00/x"}, 400, "NUL byte", "path"),
    ("adapter bad name", "/v1/adapters", {"name": "../x", "path": "para0"}, 400, "pattern", "name"),
    ("adapter missing folder", "/v1/adapters", {"name": "ghost", "path": "ghost"}, 404, "no adapter folder", "path"),
    ("adapter duplicate name", "/v1/adapters", {"name": "para0", "path": "para1"}, 409, "already exists", "name"),
    ("adapter extra field", "/v1/adapters", {"name": "x", "path": "para0", "trust_remote_code": True}, 400,
     "Extra inputs", "trust_remote_code"),
    ("adapter symlink escape", "/v1/adapters", {"name": "escape", "path": "link-out"}, 400,
     "outside the adapter root", "path"),
    ("pickle-only adapter", "/v1/adapters", {"name": "pickled", "path": "pickled"}, 400, "only safetensors", "path"),
    ("adapter of another backbone", "/v1/adapters", {"name": "wide", "path": "wide"}, 400, "does not fit", "path"),
]


def check_error(response: httpx.Response, status: int, words: str, param=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture(scope="module")
def http(live, tmp_path_factory, chat_tokenizer):
    # Hostile adapter folders inside the adapter root: a symlink out of it, a pickle-only folder, and an adapter
    # trained on a backbone of another width.
    outside = tmp_path_factory.mktemp("outside")
    (outside / "adapter_config.json").write_text("{}")
    os.symlink(outside, live.root / "link-out")
    (live.root / "pickled").mkdir()
    (live.root / "pickled" / "adapter_config.json").write_text((live.tenants["para0"] / "adapter_config.json")
                                                                 .read_text())
    torch.save({}, live.root / "pickled" / "adapter_model.bin")
    config = transformers.LlamaConfig(vocab_size=len(chat_tokenizer), hidden_size=48, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    peft.get_peft_model(transformers.LlamaForCausalLM(config), ParaConfig()).save_pretrained(live.root / "wide")
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as client:
        yield client


@pytest.mark.parametrize("case", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_malformed_json_request_gets_a_clear_4xx(http, case):
    _, path, body, status, words, param = case
    check_error(http.post(path, json=body), status, words, param)


def test_broken_json(http):
    error = check_error(http.post("/v1/completions", content=b'{"model": "tiny-llama", "prompt": ',
                                  headers={"content-type": "application/json"}), 400, "not valid JSON")
    assert error["code"] == "invalid_json"


def test_invalid_utf8(http):
    check_error(http.post("/v1/completions", content=b'{"model": "tiny-llama", "prompt": "\xff\xfe"}',
                          headers={"content-type": "application/json"}), 400, "not valid JSON")


def test_nan_temperature(http):
    body = b'{"model": "tiny-llama", "prompt": "hi", "temperature": NaN}'
    check_error(http.post("/v1/completions", content=body, headers={"content-type": "application/json"}), 400,
                "temperature")


def test_deeply_nested_json(http):
    body = b'{"model": "tiny-llama", "prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    check_error(http.post("/v1/completions", content=body, headers={"content-type": "application/json"}), 400,
                "not valid JSON")


def test_oversized_body_with_content_length(http):
    body = json.dumps(with_(COMPLETION, prompt="x" * 300_000)).encode()
    check_error(http.post("/v1/completions", content=body, headers={"content-type": "application/json"}), 413,
                "larger than 200000 bytes")


def test_oversized_body_streamed_without_content_length(http):
    def chunks():
        yield b'{"model": "tiny-llama", "prompt": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    check_error(http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"}), 413,
                "larger than 200000 bytes")


def test_missing_and_wrong_api_key(live, http):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.post(live.url + "/v1/completions", json=COMPLETION, headers=headers)
        assert check_error(response, 401, "API key")["type"] == "authentication_error"


def test_unknown_route_and_wrong_method(http):
    check_error(http.get("/v1/nothing-here"), 404, "Not Found")
    check_error(http.get("/v1/completions"), 405, "Method Not Allowed")


def test_unload_of_unknown_adapter(http):
    check_error(http.delete("/v1/adapters/no-such-adapter"), 404, "no adapter named", "name")


def test_server_still_answers_correctly_after_all_of_it(live, http, chat_tokenizer):
    """Runs last in this module: every hostile request above left the server serving the right tokens."""
    for adapter in (None, "para0", "lora0"):
        response = http.post("/v1/chat/completions", json=with_(CHAT, model=adapter or MODEL_NAME, max_tokens=8,
                                                                temperature=0))
        assert response.status_code == 200, response.text
        expected = offline(live, chat_tokenizer, messages=CHAT["messages"], adapter=adapter)
        assert response.json()["choices"][0]["message"]["content"] == expected.text
    assert sorted(live.engine.adapters()) == sorted(live.tenants)
    assert not live.engine.running and not live.engine.waiting
    assert http.get("/health").json()["status"] == "ok"


def test_the_api_key_is_compared_in_constant_time_and_never_echoed(live, monkeypatch):
    import hmac

    from paratune.server import middleware

    compared, original = [], hmac.compare_digest
    monkeypatch.setattr(middleware.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or original(a, b))
    response = httpx.post(live.url + "/v1/completions", json=COMPLETION,
                          headers={"Authorization": "Bearer test-kez"})
    assert response.status_code == 401 and compared == [(b"Bearer test-kez", f"Bearer {API_KEY}".encode())]
    assert "test-kez" not in response.text and API_KEY not in response.text

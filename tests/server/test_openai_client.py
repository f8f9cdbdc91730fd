"""The official `openai` client against the server: sync and async, streaming and not."""

import asyncio

import openai
import pytest

from paratune.engine import Engine, Request, SamplingParams
from tests.server.conftest import API_KEY, MODEL_NAME, tiny_backbone


def offline(live, chat_tokenizer, messages=None, prompt=None, adapter=None, max_tokens=8):
    """The engine's own greedy output for the same request (a fresh engine, same weights)."""
    engine = Engine(tiny_backbone(chat_tokenizer), chat_tokenizer)
    if adapter:
        engine.add_adapter(adapter, live.tenants[adapter])
    ids = chat_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"] \
        if messages else chat_tokenizer(prompt)["input_ids"]
    return engine.generate([Request(ids, adapter, SamplingParams(max_tokens=max_tokens))])[0]


def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0)


def test_models_lists_base_and_adapters(live):
    ids = [m.id for m in client(live).models.list().data]
    assert ids[0] == MODEL_NAME and set(ids[1:]) == set(live.tenants)


@pytest.mark.parametrize("adapter", [None, "para0", "lora0", "ia3"])
def test_sync_chat_matches_the_engine_offline(live, chat_tokenizer, adapter):
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    reply = client(live).chat.completions.create(model=adapter or MODEL_NAME, messages=messages, max_tokens=8,
                                                 temperature=0)
    expected = offline(live, chat_tokenizer, messages=messages, adapter=adapter)
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == len(expected.output_ids)
    assert reply.usage.prompt_tokens == len(expected.prompt_ids)
    assert reply.choices[0].finish_reason == {"eos": "stop"}.get(expected.finish_reason, expected.finish_reason)


def test_sync_streaming_completion_concatenates_to_the_full_text(live, chat_tokenizer):
    stream = client(live).completions.create(model="para1", prompt="Once upon a time", max_tokens=10,
                                             temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert text == offline(live, chat_tokenizer, prompt="Once upon a time", adapter="para1", max_tokens=10).text


def test_async_client_streaming_chat_and_plain_completion(live, chat_tokenizer):
    async def run():
        aclient = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0)
        messages = [{"role": "user", "content": "Say something."}]
        stream = await aclient.chat.completions.create(model="lora0", messages=messages, max_tokens=8,
                                                       temperature=0, stream=True)
        pieces = [c async for c in stream]
        completion = await aclient.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=5,
                                                      temperature=0, logprobs=1)
        await aclient.close()
        return pieces, completion

    pieces, completion = asyncio.run(run())
    assert pieces[0].choices[0].delta.role == "assistant"
    text = "".join(p.choices[0].delta.content or "" for p in pieces)
    assert text == offline(live, chat_tokenizer, messages=[{"role": "user", "content": "Say something."}],
                           adapter="lora0").text
    assert completion.choices[0].text == offline(live, chat_tokenizer, prompt="Hello", max_tokens=5).text
    assert len(completion.choices[0].logprobs.token_logprobs) == completion.usage.completion_tokens
    assert all(lp <= 0 for lp in completion.choices[0].logprobs.token_logprobs)


def test_seeded_sampling_is_reproducible_over_http(live):
    kwargs = dict(model="para0", prompt="Pick a word:", max_tokens=8, temperature=1.0, seed=123)
    first = client(live).completions.create(**kwargs).choices[0].text
    assert client(live).completions.create(**kwargs).choices[0].text == first


def test_wrong_key_is_refused(live):
    bad = openai.OpenAI(base_url=live.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        bad.models.list()
    assert error.value.status_code == 401 and "API key" in str(error.value)


def test_ignore_eos_generates_max_tokens(live):
    # Every token counts as EOS for this test: without ignore_eos a request ends after its first token.
    saved = live.engine.eos_ids
    live.engine.eos_ids = set(range(len(live.engine.tokenizer)))
    try:
        kwargs = dict(model="para0", prompt="Count:", max_tokens=6, temperature=0)
        stopped = client(live).completions.create(**kwargs)
        full = client(live).completions.create(**kwargs, extra_body={"ignore_eos": True})
    finally:
        live.engine.eos_ids = saved
    assert stopped.usage.completion_tokens == 1 and stopped.choices[0].finish_reason == "stop"
    assert full.usage.completion_tokens == 6 and full.choices[0].finish_reason == "length"


def test_streams_end_with_the_usage_when_the_client_asks_for_it(live, chat_tokenizer):
    expected = offline(live, chat_tokenizer, prompt="Once upon a time", adapter="lora0", max_tokens=6)
    chunks = list(client(live).completions.create(model="lora0", prompt="Once upon a time", max_tokens=6,
                                                  temperature=0, stream=True,
                                                  stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.output_ids)
    assert chunks[-1].usage.prompt_tokens == len(expected.prompt_ids)
    assert all(c.usage is None for c in chunks[:-1])
    messages = [{"role": "user", "content": "Hi"}]
    chat = list(client(live).chat.completions.create(model="para0", messages=messages, max_tokens=5, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
    assert chat[-1].choices == [] and chat[-1].usage.completion_tokens == len(
        offline(live, chat_tokenizer, messages=messages, adapter="para0", max_tokens=5).output_ids)
    plain = list(client(live).completions.create(model="lora0", prompt="Hi", max_tokens=3, stream=True))
    assert all(c.choices for c in plain)  # not asked: no usage chunk

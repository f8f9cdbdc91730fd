"""Incremental detokenisation and stop strings equal a full decode; streamed text equals the final text."""

import asyncio

import pytest
import torch

from paratune.engine import Engine, Request, SamplingParams
from paratune.engine.async_engine import AsyncEngine
from paratune.engine.detokenize import Detokenizer, FullDecodeDetokenizer, engine_tokenizer

TEXTS = ["Hello, world! Prices: 3.50 € or £4 — done.", "Émile a écrit: « ça marche » 🙂🙂 日本語のテキスト",
         "def f(x):\n    return x ** 2  # tabs\tand  spaces", "<|im_start|>user\nhi<|im_end|> after special"]


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_equals_a_full_decode(chat_tokenizer, text):
    ids = chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    full = chat_tokenizer.decode(ids, skip_special_tokens=True)
    for detokenizer in (Detokenizer(engine_tokenizer(chat_tokenizer)), FullDecodeDetokenizer(chat_tokenizer)):
        prefixes = []
        for token in ids:
            detokenizer.push(token)
            prefixes.append(detokenizer.text)
        assert detokenizer.text == full
        assert all(b.startswith(a) for a, b in zip(prefixes, prefixes[1:]))  # text only ever grows
        assert all("\ufffd" not in p for p in prefixes)  # a split character is held back, never shown broken


@pytest.mark.parametrize("stop", [["world"], ["€ or", "done"], ["\n    re"], ["🙂"], ["ça"], ["not there"]])
def test_stop_strings_cut_where_a_full_decode_would(chat_tokenizer, stop):
    for text in TEXTS:
        ids = chat_tokenizer(text, add_special_tokens=False)["input_ids"]
        detokenizer = Detokenizer(engine_tokenizer(chat_tokenizer), stop)
        used = 0
        for token in ids:
            used += 1
            if detokenizer.push(token):
                break
        full = chat_tokenizer.decode(ids[:used], skip_special_tokens=True)
        hits = [full.find(s) for s in stop if s in full]
        assert detokenizer.stopped == bool(hits)
        assert detokenizer.text == (full[: min(hits)] if hits else full)
        if hits:  # it stopped at the first token that completed the stop string
            assert not any(s in chat_tokenizer.decode(ids[: used - 1], skip_special_tokens=True) for s in stop)


def test_streamed_text_equals_the_final_text_with_stop_strings(tiny_folder, chat_tokenizer):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_folder / "model").eval()
    prompts = [chat_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]

    async def run():
        engine = AsyncEngine(Engine(model, chat_tokenizer, max_batch=4))
        try:
            results = []
            for i, ids in enumerate(prompts):
                params = SamplingParams(max_tokens=24, temperature=1.0, seed=i, stop=["e", "a"][: i % 3])
                request = Request(ids, params=params)
                pieces = [event.text async for event in engine.stream(request)]
                results.append((request, "".join(pieces)))
            return results
        finally:
            engine.shutdown()

    for request, streamed in asyncio.run(run()):
        full = chat_tokenizer.decode(request.output_ids, skip_special_tokens=True)
        hits = [full.find(s) for s in request.params.stop if s in full]
        assert request.text == (full[: min(hits)] if hits else full)
        assert streamed == request.text
        assert (request.finish_reason == "stop") == bool(hits)

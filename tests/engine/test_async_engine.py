"""Streaming, cancellation and hot adapter unloading through the asyncio front of the engine."""

import asyncio

import peft
import pytest
import torch

from paratune import ParaConfig
from paratune.engine import Engine, Request, SamplingParams
from paratune.engine.async_engine import AsyncEngine
from tests.tiny_models import VOCAB, randomize_adapter, tiny_model


@pytest.fixture()
def served(tmp_path, chat_tokenizer):
    peft_model = peft.get_peft_model(tiny_model("llama"), ParaConfig())
    randomize_adapter(peft_model, scale=0.5)
    peft_model.save_pretrained(tmp_path / "a")
    engine = Engine(tiny_model("llama"), chat_tokenizer, max_batch=4, max_seq_len=10_016)  # room for 10,000 tokens
    engine.add_adapter("a", tmp_path / "a")
    engine.adapter_path = tmp_path / "a"
    front = AsyncEngine(engine)
    yield engine, front
    front.shutdown()


def prompt(seed):
    return torch.randint(3, VOCAB, (6,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_streamed_text_concatenates_to_the_final_text_and_matches_offline(served):
    engine, front = served

    async def run():
        request = Request(prompt(0), adapter="a", params=SamplingParams(max_tokens=16, ignore_eos=True))
        pieces = [event async for event in front.stream(request)]
        return request, pieces

    request, pieces = asyncio.run(run())
    assert [p.token_id for p in pieces] == request.output_ids
    assert "".join(p.text for p in pieces) == request.text
    assert pieces[-1].finish_reason == "length" and all(p.finish_reason is None for p in pieces[:-1])
    offline = Engine(tiny_model("llama"), engine.tokenizer)
    offline.add_adapter("a", engine.adapter_path)
    assert offline.generate([Request(prompt(0), adapter="a", params=SamplingParams(max_tokens=16, ignore_eos=True))])[0].output_ids \
        == request.output_ids


def test_abandoning_a_stream_cancels_the_request_and_frees_its_slot(served):
    engine, front = served

    async def run():
        request = Request(prompt(1), params=SamplingParams(max_tokens=10_000, ignore_eos=True))
        async for event in front.stream(request):
            if len(request.output_ids) >= 3:
                break
        for _ in range(100):
            if not engine.running:
                break
            await asyncio.sleep(0.01)
        return request

    request = asyncio.run(run())
    assert request.finish_reason == "cancelled"
    assert engine.running == [] and not engine.waiting


def test_unloading_an_adapter_lets_its_running_requests_finish(served):
    engine, front = served

    async def run():
        requests = [Request(prompt(i), adapter="a", params=SamplingParams(max_tokens=30, ignore_eos=True)) for i in range(6)]
        tasks = [asyncio.create_task(front.complete(r)) for r in requests]
        await asyncio.sleep(0.05)
        await front.remove_adapter("a")
        done = await asyncio.gather(*tasks)
        with pytest.raises(KeyError):
            await front.complete(Request(prompt(9), adapter="a"))
        return done

    done = asyncio.run(run())
    assert all(r.finish_reason == "length" and len(r.output_ids) == 30 for r in done)
    assert "a" not in engine.bank.adapters

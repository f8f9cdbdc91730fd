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
    assert "a" not in engine.adapters()


def test_adapters_scores_and_running_count_are_answered_by_the_engine_thread(served):
    engine, front = served
    ids = prompt(3)

    async def run():
        kinds = await front.adapters()
        scores = await front.score(ids, "a", top_k=2)
        request = Request(prompt(4), adapter="a", params=SamplingParams(max_tokens=10_000, ignore_eos=True))
        counts = []
        async for _ in front.stream(request):
            counts.append(front.running_count())
            if len(counts) == 3:
                break
        for _ in range(100):
            if front.running_count() == 0:
                break
            await asyncio.sleep(0.01)
        return kinds, scores, counts, front.running_count()

    kinds, scores, counts, after = asyncio.run(run())
    assert kinds == {"a": "PARA"}
    assert counts == [1, 1, 1] and after == 0
    offline = Engine(tiny_model("llama"), engine.tokenizer)
    offline.add_adapter("a", engine.adapter_path)
    expected = offline.score(ids, "a", top_k=2)
    assert scores.values == pytest.approx(expected.values, abs=1e-5)
    assert [[t for t, _ in row] for row in scores.top] == [[t for t, _ in row] for row in expected.top]
    assert scores.next_token is None


def test_an_adapter_being_unloaded_is_listed_only_with_include_draining(served):
    engine, front = served

    async def run():
        request = Request(prompt(5), adapter="a", params=SamplingParams(max_tokens=200, ignore_eos=True))
        first = asyncio.Event()

        async def consume():
            async for _ in front.stream(request):
                first.set()

        consumer = asyncio.create_task(consume())
        await first.wait()
        unload = asyncio.create_task(front.remove_adapter("a"))
        while not front.is_draining("a"):
            await asyncio.sleep(0)
        during = await front.adapters(), await front.adapters(include_draining=True)
        await consumer
        await unload
        return request, during, await front.adapters(include_draining=True)

    request, during, after = asyncio.run(run())
    assert during == ({}, {"a": "PARA"})
    assert request.finish_reason == "length" and len(request.output_ids) == 200
    assert after == {}

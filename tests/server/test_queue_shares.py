"""The queue bound is shared among tenants: a flooding tenant is refused once it holds its share, and a tenant
with little in flight is still admitted (the noisy-neighbour case); alone, a tenant may use every place."""

import pytest

from paratune.engine import SamplingParams
from paratune.server.config import ServerConfig
from paratune.server.errors import ApiError
from paratune.server.generation import GenerationService
from paratune.server.metrics import ServerMetrics


def service(queue_size=4, max_batch=2):
    return GenerationService(None, ServerConfig(model_name="base", queue_size=queue_size), ServerMetrics(),
                             tokenizer=None, vocab_size=100, max_batch=max_batch)


def admit(svc, adapter):
    return svc.admit([1, 2, 3], adapter, SamplingParams(max_tokens=2), "prompt")


def test_a_lone_tenant_may_fill_the_queue_then_gets_429():
    svc = service()
    kept = [admit(svc, "noisy") for _ in range(6)]  # 2 in the batch + 4 waiting
    with pytest.raises(ApiError) as error:
        admit(svc, "noisy")
    assert (error.value.status, error.value.code) == (429, "queue_full")
    assert error.value.message == "the queue is full (4 requests waiting); retry later"
    assert error.value.headers == {"Retry-After": "1"} and len(kept) == 6


def test_a_flooding_tenant_cannot_lock_the_quiet_ones_out():
    svc = service()
    flood = [admit(svc, "noisy") for _ in range(6)]
    quiet = [admit(svc, "quiet"), admit(svc, "quiet"), admit(svc, None)]  # each below its share: admitted
    with pytest.raises(ApiError) as error:
        admit(svc, "noisy")
    assert error.value.message == ("the queue is full ('noisy' has 6 requests in flight, its share (2) of the 6 "
                                   "places while 3 tenants have requests); retry later")
    refused = svc.metrics.registry.get_sample_value("paratune_requests_total",
                                                    {"adapter": "noisy", "endpoint": "completions", "status": "429"})
    assert refused == 1.0
    for request in flood[:4]:
        request.finish_reason = "length"
    assert admit(svc, "noisy") is not None  # room again: under the total, nobody is refused
    assert len(quiet) == 3


def test_the_hard_bound_holds_whoever_asks():
    svc = service(queue_size=1, max_batch=1)  # 2 places, hard bound 4
    kept = [admit(svc, f"t{i}") for i in range(4)]  # each of four tenants below its share
    with pytest.raises(ApiError, match="queue is full"):
        admit(svc, "t9")
    assert len(kept) == 4


@pytest.fixture(scope="module")
def fair_server(tmp_path_factory, chat_tokenizer):
    from paratune.engine import Engine
    from tests.server.conftest import serve_tenants, tiny_backbone

    engine = Engine(tiny_backbone(chat_tokenizer), chat_tokenizer, max_batch=2, scheduling="fair")
    yield from serve_tenants(tmp_path_factory, chat_tokenizer, engine, queue_size=6, max_completion_tokens=32)


def test_noisy_neighbour_the_quiet_tenants_all_get_answers(fair_server):
    """One tenant sends 40 requests at once; half a beat later three others send one each. The flood gets some
    answers and some 429s; every quiet tenant gets its answer, ahead of most of the flood."""
    import asyncio

    import httpx

    from tests.server.conftest import API_KEY

    async def run():
        async with httpx.AsyncClient(base_url=fair_server.url, headers={"Authorization": f"Bearer {API_KEY}"},
                                     timeout=120) as client:
            def send(model):
                body = {"model": model, "prompt": "Tell a story", "max_tokens": 16, "temperature": 0,
                        "ignore_eos": True}
                return asyncio.create_task(client.post("/v1/completions", json=body))

            flood = [send("para0") for _ in range(40)]
            await asyncio.sleep(0.3)
            quiet = [send(name) for name in ("para1", "lora0", "ia3")]
            finished_quiet = await asyncio.gather(*quiet)
            pending_flood = sum(not task.done() for task in flood)
            return await asyncio.gather(*flood), finished_quiet, pending_flood

    flood, quiet, pending = asyncio.run(run())
    assert [r.status_code for r in quiet] == [200, 200, 200]
    codes = [r.status_code for r in flood]
    assert set(codes) == {200, 429} and codes.count(200) >= 8
    assert pending >= 1  # the quiet ones finished while the flood still had requests in flight

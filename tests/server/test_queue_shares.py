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

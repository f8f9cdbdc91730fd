"""The scheduler decides who runs with no tensors: slots, arrival order, the KV and prefill budgets."""

import pytest

from paratune.engine import NoFreeSlot, Request, SamplingParams
from paratune.engine.scheduler import ADMIT, DROP, WAIT, Scheduler


def request(prompt: int, max_tokens: int, adapter=None) -> Request:
    return Request(list(range(3, 3 + prompt)), adapter, SamplingParams(max_tokens=max_tokens))


def test_admits_in_arrival_order_into_the_lowest_free_slots_within_the_budgets():
    scheduler = Scheduler(max_batch=3, max_seq_len=64, kv_budget_tokens=40, max_prefill_tokens=12)
    queue = [request(8, 4), request(4, 4), request(6, 4), request(2, 2)]  # 12, 8, 10, 4 KV tokens
    for r in queue:
        scheduler.add(r)
    # the prefill budget (12 prompt tokens) stops after the first two prompts
    assert scheduler.admit(lambda r: ADMIT) == [(0, queue[0]), (1, queue[1])]
    # the third fits the KV budget (20 + 10 <= 40) and takes the last slot; the fourth waits for a slot
    assert scheduler.admit(lambda r: ADMIT) == [(2, queue[2])]
    assert scheduler.admit(lambda r: ADMIT) == [] and list(scheduler.waiting) == [queue[3]]
    queue[1].finish_reason = "length"
    assert scheduler.retire() == [(1, queue[1])]
    assert scheduler.admit(lambda r: ADMIT) == [(1, queue[3])]
    assert scheduler.reserved_tokens() == 12 + 10 + 4


def test_kv_budget_holds_a_request_back_until_running_ones_finish():
    scheduler = Scheduler(max_batch=4, max_seq_len=64, kv_budget_tokens=20, max_prefill_tokens=100)
    first, second = request(6, 8), request(6, 8)  # 14 each: one at a time
    scheduler.add(first)
    scheduler.add(second)
    assert scheduler.admit(lambda r: ADMIT) == [(0, first)]
    assert scheduler.admit(lambda r: ADMIT) == []
    first.finish_reason = "eos"
    scheduler.retire()
    assert scheduler.admit(lambda r: ADMIT) == [(0, second)]


def test_cancelled_and_unservable_requests_are_dropped_not_run():
    scheduler = Scheduler(max_batch=2, max_seq_len=64, kv_budget_tokens=None, max_prefill_tokens=100)
    gone, cancelled, kept = request(2, 2, "unloaded"), request(2, 2), request(2, 2)
    for r in (gone, cancelled, kept):
        scheduler.add(r)
    scheduler.cancel(cancelled)
    assert scheduler.admit(lambda r: ADMIT if r.adapter is None else DROP) == [(0, kept)]
    assert scheduler.pop_dropped() == [gone] and gone.finish_reason == "cancelled"
    assert cancelled.finish_reason == "cancelled" and cancelled not in scheduler.waiting


def test_requests_that_could_never_run_are_refused_with_the_numbers():
    scheduler = Scheduler(max_batch=2, max_seq_len=16, kv_budget_tokens=12, max_prefill_tokens=100)
    with pytest.raises(ValueError, match=r"^request needs 20 KV tokens \(prompt \+ max_tokens\) but a KV slot holds 16"):
        scheduler.add(request(10, 10))
    with pytest.raises(ValueError, match=r"^request needs 14 KV tokens \(prompt \+ max_tokens\) but the budget is 12$"):
        scheduler.add(request(4, 10))
    with pytest.raises(ValueError, match="^a request needs at least one prompt token$"):
        scheduler.add(request(0, 1))


def test_a_borrowed_slot_is_outside_the_batch_and_none_is_left_when_all_run():
    scheduler = Scheduler(max_batch=1, max_seq_len=16, kv_budget_tokens=None, max_prefill_tokens=100)
    slot = scheduler.borrow()
    scheduler.add(request(2, 2))
    assert scheduler.admit(lambda r: ADMIT) == []  # the only slot is lent out
    scheduler.give_back(slot)
    assert [s for s, _ in scheduler.admit(lambda r: ADMIT)] == [0]
    with pytest.raises(NoFreeSlot, match="every KV slot is running a request"):
        scheduler.borrow()


def test_a_request_whose_adapter_is_not_ready_keeps_its_place_while_later_ones_go_ahead():
    scheduler = Scheduler(max_batch=4, max_seq_len=64, kv_budget_tokens=None, max_prefill_tokens=100)
    loading, ready, also_loading, ready_too = (request(2, 2, "cold"), request(2, 2, "warm"), request(2, 2, "cold"),
                                               request(2, 2, "warm"))
    for r in (loading, ready, also_loading, ready_too):
        scheduler.add(r)
    place = {"cold": WAIT, "warm": ADMIT}
    assert scheduler.admit(lambda r: place[r.adapter]) == [(0, ready), (1, ready_too)]
    assert list(scheduler.waiting) == [loading, also_loading]  # in arrival order, at the head
    scheduler.add(later := request(2, 2, "warm"))
    place["cold"] = ADMIT
    assert scheduler.admit(lambda r: place[r.adapter]) == [(2, loading), (3, also_loading)]
    assert list(scheduler.waiting) == [later]


def cost(r: Request) -> float:
    from paratune.engine.scheduler import INPUT_COST, OUTPUT_COST

    return INPUT_COST * len(r.prompt_ids) + OUTPUT_COST * r.params.max_tokens


def run_one_at_a_time(scheduler, steps):
    """Admit, generate every token of the admitted request (charged), retire: one request in flight at a time."""
    order = []
    for _ in range(steps):
        admitted = scheduler.admit(lambda r: ADMIT)
        if not admitted:
            break
        for _, r in admitted:
            order.append(r)
            scheduler.charge([r], r.params.max_tokens)
            r.finish_reason = "length"
        scheduler.retire()
    return order


def test_fair_admission_serves_the_least_served_tenant_first_within_the_vtc_bound():
    scheduler = Scheduler(max_batch=1, max_seq_len=64, kv_budget_tokens=None, max_prefill_tokens=100, policy="fair")
    noisy = [request(8, 8, "noisy") for _ in range(30)]
    quiet = [request(4, 4, "quiet") for _ in range(6)]
    for r in noisy:
        scheduler.add(r)
    for r in quiet:  # arrive after the whole burst
        scheduler.add(r)
    order = run_one_at_a_time(scheduler, 36)
    assert order[:2] == [noisy[0], quiet[0]]  # the quiet tenant does not wait behind the burst
    assert [r for r in order if r.adapter == "quiet"] == quiet and [r for r in order if r.adapter == "noisy"] == \
        noisy  # FIFO within a tenant
    bound = 2 * max(cost(r) for r in noisy + quiet)
    served = {"noisy": 0.0, "quiet": 0.0}
    for r in order:  # while both are backlogged the service difference stays within twice the largest request
        served[r.adapter] += cost(r)
        if served["quiet"] < sum(cost(q) for q in quiet):
            assert abs(served["noisy"] - served["quiet"]) <= bound


def test_fair_admission_is_work_conserving_and_a_returning_tenant_banks_no_credit():
    scheduler = Scheduler(max_batch=4, max_seq_len=64, kv_budget_tokens=None, max_prefill_tokens=100, policy="fair",
                          weights={"b": 2.0})
    alone = [request(2, 2, "a") for _ in range(6)]
    for r in alone:
        scheduler.add(r)
    assert [r for _, r in scheduler.admit(lambda r: ADMIT)] == alone[:4]  # a lone tenant gets every slot
    served_a = scheduler.service["a"]
    scheduler.add(request(2, 2, "b"))  # b was idle: lifted to a's counter, not starting from zero
    assert scheduler.service["b"] == served_a
    scheduler.charge([alone[0]], 2)  # a is served more; b (weight 2) is charged half per token
    late = request(2, 2, "b")
    scheduler.add(late)
    assert scheduler.service["b"] == served_a
    with pytest.raises(ValueError, match="^scheduling policy must be one of fifo, fair, got 'lottery'$"):
        Scheduler(max_batch=1, max_seq_len=8, kv_budget_tokens=None, max_prefill_tokens=8, policy="lottery")

"""Who runs: the waiting queue, the KV slots, admission and retirement, the budgets. No tensors.

A request waits until a KV slot is free, its prompt + max_tokens fit the KV budget left by the running
requests, and its prompt fits the step's prefill token budget (a longer prompt runs alone), so a burst of long
prompts does not stall the running streams for long. Admission is first come, first served among the requests
whose adapter is ready: the engine's ``place(request)`` says ADMIT (its adapter is installed for the prefill),
WAIT (its adapter is still loading, or every adapter slot is busy: later requests go ahead, it keeps its place)
or DROP (its adapter was unloaded or failed to load); a cancelled request is dropped where it stands.
"""

from __future__ import annotations

import collections
from typing import Callable

from .request import Request


ADMIT, WAIT, DROP = "admit", "wait", "drop"  # what ``place`` says of a waiting request
POLICIES = ("fifo", "fair")
# Virtual Token Counter costs (Sheng et al., "Fairness in Serving Large Language Models", OSDI 2024): a generated
# token costs about twice a prompt token on these machines (a decode step per token vs one packed prefill)
INPUT_COST, OUTPUT_COST = 1.0, 2.0


def tenant_of(request: Request) -> str:
    """Who a request is charged to: its tenant, else its adapter (each adapter is a tenant), else the base model."""
    return request.tenant if request.tenant is not None else (request.adapter or "")


class NoFreeSlot(RuntimeError):
    """Every KV slot is taken (echo scoring needs one for the scoring row's adapter deltas)."""


class Scheduler:
    def __init__(self, max_batch: int, max_seq_len: int, kv_budget_tokens: int | None, max_prefill_tokens: int,
                 policy: str = "fifo", weights: dict[str, float] | None = None):
        """``policy``: "fifo" (arrival order) or "fair": the next request admitted is the oldest of the backlogged
        tenant with the least weighted service so far (VTC: prompt tokens charged at admission, each generated token
        as it is produced, divided by the tenant's weight from ``weights``, default 1); FIFO within a tenant;
        work-conserving (a lone tenant gets every slot)."""
        if policy not in POLICIES:
            raise ValueError(f"scheduling policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.kv_budget_tokens, self.max_prefill_tokens = kv_budget_tokens, max_prefill_tokens
        self.policy, self.weights = policy, dict(weights or {})
        self.service: dict[str, float] = {}  # tenant -> weighted service received (VTC counter)
        self._last_charged = 0.0  # the counter of the tenant admitted last (lifts a tenant arriving to an idle queue)
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: dict[int, Request] = {}  # KV slot -> running request
        self._free = list(range(max_batch))
        self._dropped: list[Request] = []  # finished without running (cancelled while queued)

    # ----- requests in --------------------------------------------------------------------------------------
    def check(self, request: Request) -> None:
        """Refuse a request that could never run."""
        if not request.prompt_ids:
            raise ValueError("a request needs at least one prompt token")
        if request.reserved_tokens > self.max_seq_len:
            raise ValueError(f"request needs {request.reserved_tokens} KV tokens (prompt + max_tokens) but a KV "
                             f"slot holds {self.max_seq_len} (max_seq_len)")
        if self.kv_budget_tokens is not None and request.reserved_tokens > self.kv_budget_tokens:
            raise ValueError(f"request needs {request.reserved_tokens} KV tokens (prompt + max_tokens) but the "
                             f"budget is {self.kv_budget_tokens}")

    def add(self, request: Request) -> None:
        self.check(request)
        if self.policy == "fair":
            self._lift(tenant_of(request))
        self.waiting.append(request)

    def charge(self, requests, output_tokens: int = 1) -> None:
        """Charge each of ``requests`` for ``output_tokens`` generated tokens (fair policy only)."""
        if self.policy == "fair":
            for request in requests:
                self._charge(tenant_of(request), OUTPUT_COST * output_tokens)

    def _charge(self, tenant: str, cost: float) -> None:
        self.service[tenant] = self.service.get(tenant, 0.0) + cost / self.weights.get(tenant, 1.0)

    def _lift(self, tenant: str) -> None:
        """A tenant that was not backlogged cannot bank the service it did not use while idle: its counter rises to
        the least counter of the backlogged tenants (or, with none, that of the tenant admitted last)."""
        backlogged = {tenant_of(r) for r in self.waiting if not r.finished}
        if tenant in backlogged:
            return
        floor = min((self.service.get(t, 0.0) for t in backlogged), default=self._last_charged)
        self.service[tenant] = max(self.service.get(tenant, 0.0), floor)

    def cancel(self, request: Request) -> None:
        request.finish_reason = request.finish_reason or "cancelled"
        if request in self.waiting:
            self.waiting.remove(request)

    def abort_all(self, reason: str) -> list[Request]:
        """Finish every running and waiting request with ``reason`` (the caller retires them)."""
        aborted = [self.running[s] for s in sorted(self.running)] + list(self.waiting)
        for request in aborted:
            request.finish_reason = reason
        self.waiting.clear()
        return aborted

    def pop_dropped(self) -> list[Request]:
        dropped, self._dropped = self._dropped, []
        return dropped

    # ----- the step's decisions -----------------------------------------------------------------------------
    def admit(self, place: Callable[[Request], str]) -> list[tuple[int, Request]]:
        """The waiting requests that join now, each with the lowest free KV slot, in the policy's order (arrival,
        or least-served tenant first). ``place(request)``: ADMIT, WAIT or DROP (see the module's docstring); called
        only for a request that the budgets would let in, so an ADMIT is a promise kept."""
        admitted: list[Request] = []
        pending = list(self.waiting)
        left = [True] * len(pending)  # still waiting (not admitted, not dropped)
        passed = [False] * len(pending)  # looked at this round (kept waiting, or admitted, or dropped)
        reserved, prompt_tokens = self.reserved_tokens(), 0
        while len(admitted) < len(self._free):
            i = self._next(pending, passed)
            if i is None:
                break
            request = pending[i]
            if request.finished:  # cancelled while waiting
                self._dropped.append(request)
                left[i], passed[i] = False, True
                continue
            if self.kv_budget_tokens is not None and reserved + request.reserved_tokens > self.kv_budget_tokens:
                break  # wait for running requests to free budget
            if admitted and prompt_tokens + len(request.prompt_ids) > self.max_prefill_tokens:
                break  # next step: the running rows decode in between
            passed[i] = True
            decision = place(request)
            if decision == WAIT:
                continue  # keeps its place; later requests may go ahead
            left[i] = False
            if decision == DROP:
                request.finish_reason = request.finish_reason or "cancelled"
                self._dropped.append(request)
                continue
            admitted.append(request)
            reserved += request.reserved_tokens
            prompt_tokens += len(request.prompt_ids)
            if self.policy == "fair":
                tenant = tenant_of(request)
                self._charge(tenant, INPUT_COST * len(request.prompt_ids))
                self._last_charged = self.service[tenant]
        self.waiting = collections.deque(r for r, still in zip(pending, left) if still)
        slots = [self._take() for _ in admitted]
        for slot, request in zip(slots, admitted):
            self.running[slot] = request
        return list(zip(slots, admitted))

    def _next(self, pending: list[Request], passed: list[bool]) -> int | None:
        """Index of the next request to consider: the first not yet looked at (fifo), or the first of the tenant
        with the least service among those with one not yet looked at (fair; ties: the earliest)."""
        if self.policy == "fifo":
            return next((i for i, p in enumerate(passed) if not p), None)
        first: dict[str, int] = {}
        for i, request in enumerate(pending):
            if not passed[i]:
                first.setdefault(tenant_of(request), i)
        if not first:
            return None
        return min(first.items(), key=lambda item: (self.service.get(item[0], 0.0), item[1]))[1]

    def retire(self) -> list[tuple[int, Request]]:
        """Free the slots of the finished running requests; returns them as (slot, request)."""
        done = [(s, r) for s, r in self.running.items() if r.finished]
        for slot, _ in done:
            del self.running[slot]
            self._free.append(slot)
        return done

    @property
    def dropped(self) -> list[Request]:
        """Requests dropped without running since the last ``pop_dropped``."""
        return self._dropped

    def borrow(self) -> int:
        """A free slot outside the batch, for one side computation (``give_back`` it at once)."""
        if not self._free:
            raise NoFreeSlot("every KV slot is running a request; score again when one finishes")
        return self._take()

    def give_back(self, slot: int) -> None:
        self._free.append(slot)

    # ----- state -----------------------------------------------------------------------------------------------
    def reserved_tokens(self) -> int:
        return sum(r.reserved_tokens for r in self.running.values())

    def has_work(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    def _take(self) -> int:
        # the lowest free slot: running rows stay packed at the low slots, so a decode step's KV is a view
        self._free.sort()
        return self._free.pop(0)

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


class NoFreeSlot(RuntimeError):
    """Every KV slot is taken (echo scoring needs one for the scoring row's adapter deltas)."""


class Scheduler:
    def __init__(self, max_batch: int, max_seq_len: int, kv_budget_tokens: int | None, max_prefill_tokens: int):
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.kv_budget_tokens, self.max_prefill_tokens = kv_budget_tokens, max_prefill_tokens
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
        self.waiting.append(request)

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
        """The waiting requests that join now, each with the lowest free KV slot, in arrival order.
        ``place(request)``: ADMIT, WAIT or DROP (see the module's docstring); called only for a request that the
        budgets would let in, so an ADMIT is a promise kept."""
        admitted: list[Request] = []
        kept: collections.deque[Request] = collections.deque()
        reserved, prompt_tokens = self.reserved_tokens(), 0
        while self.waiting and len(admitted) < len(self._free):
            request = self.waiting.popleft()
            if request.finished:  # cancelled while waiting
                self._dropped.append(request)
                continue
            if self.kv_budget_tokens is not None and reserved + request.reserved_tokens > self.kv_budget_tokens:
                self.waiting.appendleft(request)
                break  # wait for running requests to free budget
            if admitted and prompt_tokens + len(request.prompt_ids) > self.max_prefill_tokens:
                self.waiting.appendleft(request)
                break  # next step: the running rows decode in between
            decision = place(request)
            if decision == WAIT:
                kept.append(request)
                continue
            if decision == DROP:
                request.finish_reason = request.finish_reason or "cancelled"
                self._dropped.append(request)
                continue
            admitted.append(request)
            reserved += request.reserved_tokens
            prompt_tokens += len(request.prompt_ids)
        self.waiting.extendleft(reversed(kept))  # the skipped keep their places, ahead of the rest
        slots = [self._take() for _ in admitted]
        for slot, request in zip(slots, admitted):
            self.running[slot] = request
        return list(zip(slots, admitted))

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

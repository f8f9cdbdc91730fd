"""The multi-tenant engine: one backbone, many adapters, a slot KV cache, continuous batching.

    engine = Engine(model, tokenizer, adapter_dir="adapters")  # every folder inside, loaded on first use
    engine.add_adapter("tenant-a", "elsewhere/a")              # or one by name: PARA, LoRA or (IA)^3, PEFT format
    outputs = engine.generate([Request(ids, adapter="tenant-a", params=SamplingParams(max_tokens=32))])

One request's walk (``step`` is the loop, on one screen below):
1. ``add_request`` checks it (its adapter exists, prompt + max_tokens fit a KV slot), holds its adapter in the
   ``AdapterStore`` (which starts loading it on its loader thread if it is not cached), gives it a detokenizer
   and, when seeded, its own generator, and queues it in the ``Scheduler``.
2. A ``step`` first decodes the running rows (6), retires the finished ones (``Scheduler.retire`` frees the KV
   slot, ``AdapterRegistry.leave`` zeroes the row's deltas), then ``Scheduler.admit`` takes waiting requests in
   order while a slot is free and the KV and prefill token budgets allow, skipping those whose adapter is still
   loading (``_placer``: the host copy is copied into a device slot, ``AdapterRegistry.install``); each joins its
   slot (``AdapterRegistry.join``: an (IA)^3 row writes l - 1 into its delta rows).
3. ``BatchBuilder.prefill`` packs the admitted prompts into one row, no padding: each prompt's KV slot,
   positions and segment, and what its adapter asks (``AdapterRegistry.for_prefill``: the scaled segments,
   the LoRA segments, the PARA rows).
4. ``runner.prefill(batch)``: the hand-written Llama runner where it supports the step, else the transformers
   runner. Before each layer the PARA rows' vectors are computed from their own prompt into their delta rows;
   every projection is adapted through ``batch.adapters`` (``paratune.ops``); the KV cache writes each token at
   (slot, position), V already scaled. Logits are kept at each prompt's last token.
5. ``_sample``: ``batch.sampler`` draws a token per row on the device; one host transfer; each request appends
   its token, detokenises incrementally and finishes on EOS, a stop string or max_tokens;
   ``BatchBuilder.advance`` sets each row's next input token and position.
6. Every later step, ``BatchBuilder.decode``: one token per running row in slot order (the KV a view of the
   cache), the per-row adapter tensors reused until a row joins or leaves; ``runner.decode(batch)``: PARA and
   (IA)^3 rows multiply by their deltas, LoRA rows gather A and B by table slot, base rows pass; then 5 again.
7. ``step`` returns the (request, token) pairs; the async front streams them. A PARA or (IA)^3 request releases
   its adapter after its prefill (its deltas carry it), a LoRA request when it finishes; 2 retires it.
Echo scoring (``score``) borrows a free slot for one prefill-kind batch that writes no KV (``runner.score``).
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import torch

from .adapters import AdapterCatalog, AdapterError, AdapterRegistry, AdapterStore
from .batch import Batch, BatchBuilder
from .detokenize import engine_tokenizer, make_detokenizer
from .kv_cache import SlotKVCache
from .request import Request, SamplingParams
from .runners import HFRunner, LlamaRunner, Runner
from .sampler import seeded_generator
from .scheduler import ADMIT, DROP, WAIT, NoFreeSlot, Scheduler
from .scoring import PromptScores, prompt_scores

DEFAULT_MAX_SEQ_LEN = 2048

__all__ = ["DEFAULT_MAX_SEQ_LEN", "Engine", "NoFreeSlot"]


class Engine:
    def __init__(self, model, tokenizer=None, max_batch: int = 32, kv_budget_tokens: int | None = None,
                 max_seq_len: int | None = None, max_prefill_tokens: int = 4096, handwritten: bool = True,
                 packed_weights: bool = True, adapter_dir: str | Path | None = None, max_active_adapters: int = 32,
                 adapter_cache_bytes: int | None = None, scheduling: str = "fifo"):
        """``max_batch`` KV slots of ``max_seq_len`` tokens each (default: the model's context, at most 2048)
        are allocated at start (``kv_cache_bytes``); a request needs prompt + max_tokens <= max_seq_len.
        ``kv_budget_tokens`` optionally caps the tokens reserved by running requests together;
        ``max_prefill_tokens`` caps the prompt tokens prefilled in one step (a longer prompt runs alone).
        ``handwritten``: Llama-family models run through the hand-written runner (``runners/llama.py``);
        ``packed_weights``: it uses oneDNN-prepacked weights where they pay on this device and dtype.
        Adapters: every folder of ``adapter_dir`` (looked up when first asked for) and those added by name; read on
        first use into a host cache of ``adapter_cache_bytes`` (None: unbounded), least recently used evicted;
        ``max_active_adapters`` of them installed in the device slot tables at once. ``scheduling``: "fifo", or
        "fair" (the least-served tenant's request is admitted first; ``Scheduler``)."""
        self.model, self.tokenizer = model.eval(), tokenizer
        config = model.config.get_text_config()
        _refuse_sliding_window(model)
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len or min(getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_SEQ_LEN,
                                              DEFAULT_MAX_SEQ_LEN)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.scheduler = Scheduler(max_batch, self.max_seq_len, kv_budget_tokens, max_prefill_tokens, scheduling)
        self.registry = AdapterRegistry(model, max_batch, self.dtype, self.device, max_active_adapters)
        self.store = AdapterStore(self.registry.backbone, AdapterCatalog(adapter_dir), adapter_cache_bytes)
        self._loaded = threading.Event()  # a load finished: a request waiting for it may be placed now
        self.store.add_listener(self._loaded.set)
        self.cache = SlotKVCache(_kv_shapes(model), max_batch, self.max_seq_len, self.dtype, self.device)
        self.batches = BatchBuilder(max_batch, self.registry, self.dtype, self.device)
        self.hf_runner = HFRunner(model, self.cache)  # any architecture, and any step the other does not cover
        self.llama_runner = LlamaRunner.build(model, self.cache, packed=packed_weights) if handwritten else None
        self.kv_cache_bytes = self.cache.bytes
        # the hand-written runner's oneDNN-packed copies of the weights (0 where nothing is packed)
        self.packed_weight_bytes = self.llama_runner.packed.bytes if self.llama_runner is not None else 0
        self.eos_ids = _eos_ids(model, tokenizer)
        self._detokenizer_backend = engine_tokenizer(tokenizer)
        self.stats = collections.Counter()

    # ----- the loop -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[tuple[Request, int]]:
        """One decode step for the running rows, retire, admit + prefill. Returns the (request, token) pairs."""
        produced = self._decode() if self.scheduler.running else []
        self._retire()
        admitted = self.scheduler.admit(self._placer())
        self._release_dropped()
        if admitted:
            produced += self._prefill(admitted)
            self._retire()
        elif not produced and self.scheduler.waiting:
            # every waiting request waits for an adapter load: sleep until one finishes instead of spinning
            self._loaded.wait(timeout=0.02)
            self._loaded.clear()
        return produced

    def _decode(self) -> list[tuple[Request, int]]:
        start = time.perf_counter()
        batch = self.batches.decode(self.scheduler.running)
        logits = self._runner(batch, "decode").decode(batch)
        self.batches.advance(batch, self._sample(batch, logits))
        return self._produced(batch, "decode", start)

    def _prefill(self, admitted: list[tuple[int, Request]]) -> list[tuple[Request, int]]:
        start = time.perf_counter()
        for slot, request in admitted:
            self.registry.join(slot, request)
        batch = self.batches.prefill([r for _, r in admitted], [s for s, _ in admitted])
        logits = self._runner(batch, "prefill").prefill(batch)
        for _, request in admitted:  # PARA and (IA)^3 rows decode on their own deltas from now on
            installed = self.registry.adapters.get(request.adapter)
            if installed is not None and not installed.decodes_with_weights:
                self._release(request)
        self.batches.advance(batch, self._sample(batch, logits))
        return self._produced(batch, "prefill", start)

    def _produced(self, batch: Batch, kind: str, start: float) -> list[tuple[Request, int]]:
        self.stats[f"{kind}_seconds"] += time.perf_counter() - start
        self.stats["prefills" if kind == "prefill" else "decode_steps"] += 1
        self.stats[f"{kind}_tokens"] += len(batch.input_ids)
        self.scheduler.charge(batch.requests)  # one generated token each (fair scheduling's service counters)
        return [(r, r.output_ids[-1]) for r in batch.requests]

    def _placer(self):
        """``place`` for this step's admission: installs each admitted request's adapter into a device slot,
        never evicting one that a running LoRA row or an earlier admission of this step needs."""
        busy = self._decoding_adapters()

        def place(request: Request) -> str:
            if request.adapter is None:
                return ADMIT
            host = self.store.get(request.adapter)
            if host is None:
                error = self.store.failure(request.adapter)
                if error is not None or not self.store.is_loading(request.adapter):
                    # failed, or unloaded while it waited (a held adapter is never evicted otherwise)
                    request.finish_reason = "error" if error is not None else "cancelled"
                    request.error = str(error) if error is not None else None
                    return DROP
                return WAIT
            installed = self.registry.install(host, busy)
            if installed is None:
                return WAIT  # every adapter slot is busy with running LoRA rows
            self.hf_runner.watch(installed, self.registry.deltas)
            busy.add(request.adapter)
            return ADMIT

        return place

    def _decoding_adapters(self) -> set[str]:
        """Adapters whose running rows still read their weights (LoRA): the device tier may not evict them."""
        return {r.adapter for r in self.scheduler.running.values()
                if r.adapter is not None and getattr(self.registry.adapters.get(r.adapter), "decodes_with_weights",
                                                     False)}

    def _release(self, request: Request) -> None:
        if request.adapter_held:
            request.adapter_held = False
            self.store.release(request.adapter)

    def _release_dropped(self) -> None:
        for request in self.scheduler.dropped:
            self._release(request)

    def _runner(self, batch: Batch, kind: str) -> Runner:
        if self.llama_runner is not None and self.llama_runner.supports(batch):
            self.stats[f"handwritten_{kind}s"] += 1
            return self.llama_runner
        return self.hf_runner

    def _sample(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token (one host transfer for the whole step): append it, extend the text, finish the
        request on EOS, a stop string or its token limit. Returns the tokens, still on the device."""
        tokens, logprobs = batch.sampler(logits)
        values = tokens.tolist()
        chosen = logprobs.tolist() if logprobs is not None else None
        for row, (request, token) in enumerate(zip(batch.requests, values)):
            request.output_ids.append(token)
            if request.params.logprobs:
                request.logprobs.append(chosen[row])
            detokenizer = request.detokenizer
            stopped = detokenizer.push(token) if detokenizer is not None else False
            if detokenizer is not None:
                request.text = detokenizer.text
            if token in self.eos_ids and not request.params.ignore_eos:
                request.finish_reason = "eos"
            elif stopped:
                request.finish_reason = "stop"
            elif len(request.output_ids) >= request.params.max_tokens:
                request.finish_reason = "length"
        return tokens

    def _retire(self) -> None:
        for slot, request in self.scheduler.retire():
            self.registry.leave(slot)  # zero the row's deltas: the slot's next owner starts clean
            self._release(request)

    # ----- requests -------------------------------------------------------------------------------------------
    def add_request(self, request: Request) -> Request:
        """Queue ``request``. Its adapter is held (and loaded on the store's loader thread if it is not cached)
        unless the caller already holds it (``request.adapter_held``, as the async front does)."""
        self._check_adapter(request.adapter)
        request.generator = seeded_generator(request.params, self.device)
        request.detokenizer = make_detokenizer(self._detokenizer_backend, self.tokenizer, request.params.stop)
        self.scheduler.check(request)
        if request.adapter is not None and not request.adapter_held:
            self.store.hold(request.adapter)  # a failed load drops the request when it reaches the queue's head
            request.adapter_held = True
        self.scheduler.add(request)
        return request

    def generate(self, requests: list[Request]) -> list[Request]:
        """Run ``requests`` to completion (they join as capacity allows); returns them in the same order."""
        for request in requests:
            self.add_request(request)
        while self.has_work():
            self.step()
        return requests

    def cancel(self, request: Request) -> None:
        self.scheduler.cancel(request)
        self._release(request)

    def abort_all(self, reason: str = "error") -> list[Request]:
        """Finish every running and waiting request with ``reason`` and free their slots (after a failed step)."""
        aborted = self.scheduler.abort_all(reason)
        self._retire()
        for request in aborted:
            self._release(request)
        return aborted

    def pop_dropped(self) -> list[Request]:
        """Requests that finished without running (cancelled while queued, or their adapter was unloaded)."""
        return self.scheduler.pop_dropped()

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    @property
    def running(self) -> list[Request]:
        return [self.scheduler.running[s] for s in sorted(self.scheduler.running)]

    @property
    def waiting(self):
        return self.scheduler.waiting

    def reserved_tokens(self) -> int:
        return self.scheduler.reserved_tokens()

    # ----- echo scoring -------------------------------------------------------------------------------------
    def score(self, ids: list[int], adapter: str | None, context: int | None = None, top_k: int = 0,
              next_params: SamplingParams | None = None, held: bool = False) -> PromptScores:
        """Every prompt token's log-probability under ``adapter`` (echo scoring; a PARA adapter pools tokens
        [0, context) only), its ``top_k`` alternatives, and with ``next_params`` the next token sampled from the
        same forward. Call it between steps (the async front runs it on the engine thread)."""
        return prompt_scores(self.prompt_logits(ids, adapter, context, held), ids, top_k, next_params)

    @torch.inference_mode()
    def prompt_logits(self, ids: list[int], adapter: str | None, context: int | None = None,
                      held: bool = False) -> torch.Tensor:
        """Logits (T, vocab) in fp32 of every position of ``ids`` under ``adapter``, from one forward that writes
        no KV. The scoring row borrows a free KV slot for its adapter deltas and gives it back at once.
        ``held``: the caller holds ``adapter`` in the store and it is cached (else it is loaded here, waiting)."""
        self._check_adapter(adapter)
        if adapter is not None and not held:
            host = self.store.hold(adapter)
            try:
                host.result()
            finally:
                self.store.release(adapter)  # still cached: nothing evicts between here and the install
        slot = self.scheduler.borrow()
        scratch = Request(list(ids), adapter, SamplingParams(max_tokens=1))
        try:
            if adapter is not None:
                self._install_for_scoring(adapter)
            self.registry.join(slot, scratch)
            batch = self.batches.score(scratch, slot, len(ids) if context is None else context)
            return self._runner(batch, "score").score(batch).float()
        finally:
            self.registry.leave(slot)
            self.scheduler.give_back(slot)

    def _install_for_scoring(self, adapter: str) -> None:
        host = self.store.get(adapter)
        if host is None:
            raise KeyError(f"adapter {adapter!r} was unloaded")
        installed = self.registry.install(host, self._decoding_adapters())
        if installed is None:
            raise NoFreeSlot(f"every adapter slot ({self.registry.max_active}, --max-active-adapters) is in use by "
                             "running LoRA requests; score again when one finishes")
        self.hf_runner.watch(installed, self.registry.deltas)

    # ----- adapters -------------------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str | Path) -> str:
        """Serve the PEFT adapter folder at ``path`` under ``name`` and load it now; returns its kind (PARA, LORA
        or IA3). Raises AdapterError (bad files, wrong base) or ValueError (the name exists)."""
        if self.store.catalog.path(name) is not None:
            raise ValueError(f"an adapter named {name!r} already exists")
        self.store.catalog.add(name, path)
        try:
            future = self.store.hold(name)
            try:
                return future.result().kind
            finally:
                self.store.release(name)
        except BaseException:
            self.store.forget(name)
            raise

    def remove_adapter(self, name: str) -> None:
        """Stop serving ``name`` and free its memory. Its requests must have finished (the async front drains them);
        a folder of the adapter directory stays unknown until added again."""
        if self.store.catalog.path(name) is None:
            raise KeyError(f"no adapter named {name!r}")
        self.registry.evict(name)
        self.store.forget(name)

    def adapters(self) -> dict[str, str]:
        """{name: kind} of the adapters cached in memory (the host tier), sorted by name."""
        return self.store.resident_kinds()

    def available(self) -> list[str]:
        """Every adapter name that can be served now, resident or not, sorted."""
        return self.store.catalog.names()

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and self.store.catalog.path(adapter) is None:
            raise KeyError(f"unknown adapter {adapter!r}")


def _kv_shapes(model) -> list[tuple[int, int]]:
    """(kv_heads, head_dim) of each attention layer, read by running one token through the model."""
    shapes: list[tuple[int, int]] = []

    class Probe:
        is_compileable = False

        def update(self, key, value, layer_idx, cache_kwargs=None):
            shapes.append((key.shape[1], key.shape[3]))
            return key, value

        def get_seq_length(self, layer_idx=0):
            return 0

    parameter = next(model.parameters())
    with torch.inference_mode():
        model(input_ids=torch.ones(1, 1, dtype=torch.long, device=parameter.device), past_key_values=Probe(),
              attention_mask=torch.zeros(1, 1, 1, 1, dtype=parameter.dtype, device=parameter.device), use_cache=True)
    return shapes


def _refuse_sliding_window(model) -> None:
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None) or []
    sliding = [i for i, kind in enumerate(layer_types) if kind != "full_attention"]
    window = getattr(config, "sliding_window", None)
    if not layer_types and window is not None and getattr(config, "use_sliding_window", True):
        sliding = list(range(config.num_hidden_layers))
    if sliding:
        raise ValueError(
            f"the engine serves full-attention models only: {type(model).__name__} (model_type="
            f"{config.model_type!r}) uses sliding-window or other non-global attention in layers {sliding[:8]}"
            f"{'...' if len(sliding) > 8 else ''} (sliding_window={window}). Serve a full-attention model, or, if "
            "no prompt + output exceeds the window, set config.sliding_window = None (and layer_types to "
            "full_attention) before creating the engine."
        )


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids

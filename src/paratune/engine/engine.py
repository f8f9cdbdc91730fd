"""The multi-tenant engine: one backbone, many adapters, a slot KV cache, continuous batching.

    engine = Engine(model, tokenizer)
    engine.add_adapter("tenant-a", "adapters/a")      # PARA, LoRA or (IA)^3, PEFT format
    outputs = engine.generate([Request(ids, adapter="tenant-a", params=SamplingParams(max_tokens=32))])

One request's walk (``step`` is the loop, on one screen below):
1. ``add_request`` checks it (its adapter is loaded, prompt + max_tokens fit a KV slot), gives it a detokenizer
   and, when seeded, its own generator, and queues it in the ``Scheduler``.
2. A ``step`` first decodes the running rows (6), retires the finished ones (``Scheduler.retire`` frees the KV
   slot, ``AdapterRegistry.leave`` zeroes the row's deltas), then ``Scheduler.admit`` takes waiting requests in
   order while a slot is free and the KV and prefill token budgets allow; each joins its slot
   (``AdapterRegistry.join``: an (IA)^3 row writes l - 1 into its delta rows).
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
7. ``step`` returns the (request, token) pairs; the async front streams them. When the request finishes, 2
   retires it.
Echo scoring (``score``) borrows a free slot for one prefill-kind batch that writes no KV (``runner.score``).
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import torch

from .adapters import AdapterRegistry
from .batch import Batch, BatchBuilder
from .detokenize import engine_tokenizer, make_detokenizer
from .kv_cache import SlotKVCache
from .request import Request, SamplingParams
from .runners import HFRunner, LlamaRunner, Runner
from .sampler import seeded_generator
from .scheduler import NoFreeSlot, Scheduler
from .scoring import PromptScores, prompt_scores

DEFAULT_MAX_SEQ_LEN = 2048

__all__ = ["DEFAULT_MAX_SEQ_LEN", "Engine", "NoFreeSlot"]


class Engine:
    def __init__(self, model, tokenizer=None, max_batch: int = 32, kv_budget_tokens: int | None = None,
                 max_seq_len: int | None = None, max_prefill_tokens: int = 4096, handwritten: bool = True,
                 packed_weights: bool = True):
        """``max_batch`` KV slots of ``max_seq_len`` tokens each (default: the model's context, at most 2048)
        are allocated at start (``kv_cache_bytes``); a request needs prompt + max_tokens <= max_seq_len.
        ``kv_budget_tokens`` optionally caps the tokens reserved by running requests together;
        ``max_prefill_tokens`` caps the prompt tokens prefilled in one step (a longer prompt runs alone).
        ``handwritten``: Llama-family models run through the hand-written runner (``runners/llama.py``);
        ``packed_weights``: it uses oneDNN-prepacked weights where they pay on this device and dtype."""
        self.model, self.tokenizer = model.eval(), tokenizer
        config = model.config.get_text_config()
        _refuse_sliding_window(model)
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len or min(getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_SEQ_LEN,
                                              DEFAULT_MAX_SEQ_LEN)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.scheduler = Scheduler(max_batch, self.max_seq_len, kv_budget_tokens, max_prefill_tokens)
        self.registry = AdapterRegistry(model, max_batch, self.dtype, self.device)
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
        admitted = self.scheduler.admit(self._servable)
        if admitted:
            produced += self._prefill(admitted)
            self._retire()
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
        self.batches.advance(batch, self._sample(batch, logits))
        return self._produced(batch, "prefill", start)

    def _produced(self, batch: Batch, kind: str, start: float) -> list[tuple[Request, int]]:
        self.stats[f"{kind}_seconds"] += time.perf_counter() - start
        self.stats["prefills" if kind == "prefill" else "decode_steps"] += 1
        self.stats[f"{kind}_tokens"] += len(batch.input_ids)
        return [(r, r.output_ids[-1]) for r in batch.requests]

    def _servable(self, request: Request) -> bool:
        return request.adapter is None or request.adapter in self.registry

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
        for slot in self.scheduler.retire():
            self.registry.leave(slot)  # zero the row's deltas: the slot's next owner starts clean

    # ----- requests -------------------------------------------------------------------------------------------
    def add_request(self, request: Request) -> Request:
        self._check_adapter(request.adapter)
        request.generator = seeded_generator(request.params, self.device)
        request.detokenizer = make_detokenizer(self._detokenizer_backend, self.tokenizer, request.params.stop)
        self.scheduler.add(request)  # checks that it could ever run, then queues it
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

    def abort_all(self, reason: str = "error") -> list[Request]:
        """Finish every running and waiting request with ``reason`` and free their slots (after a failed step)."""
        aborted = self.scheduler.abort_all(reason)
        self._retire()
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
              next_params: SamplingParams | None = None) -> PromptScores:
        """Every prompt token's log-probability under ``adapter`` (echo scoring; a PARA adapter pools tokens
        [0, context) only), its ``top_k`` alternatives, and with ``next_params`` the next token sampled from the
        same forward. Call it between steps (the async front runs it on the engine thread)."""
        return prompt_scores(self.prompt_logits(ids, adapter, context), ids, top_k, next_params)

    @torch.inference_mode()
    def prompt_logits(self, ids: list[int], adapter: str | None, context: int | None = None) -> torch.Tensor:
        """Logits (T, vocab) in fp32 of every position of ``ids`` under ``adapter``, from one forward that writes
        no KV. The scoring row borrows a free KV slot for its adapter deltas and gives it back at once."""
        self._check_adapter(adapter)
        slot = self.scheduler.borrow()
        scratch = Request(list(ids), adapter, SamplingParams(max_tokens=1))
        try:
            self.registry.join(slot, scratch)
            batch = self.batches.score(scratch, slot, len(ids) if context is None else context)
            return self._runner(batch, "score").score(batch).float()
        finally:
            self.registry.leave(slot)
            self.scheduler.give_back(slot)

    # ----- adapters -------------------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str | Path) -> str:
        """Load the PEFT adapter folder at ``path`` under ``name``; returns its kind (PARA, LORA or IA3)."""
        adapter = self.registry.add(name, path)
        self.hf_runner.watch(adapter, self.registry.deltas)
        return adapter.kind

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter. Running requests of it must have finished (the async front waits for them)."""
        self.registry.remove(name)

    def adapters(self) -> dict[str, str]:
        """{name: kind} of the loaded adapters (kind: PARA, LORA or IA3). Call it on the engine thread."""
        return self.registry.kinds()

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.registry:
            raise KeyError(f"unknown adapter {adapter!r}; loaded: {sorted(self.registry.adapters)}")


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

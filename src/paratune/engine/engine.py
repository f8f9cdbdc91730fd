"""The multi-tenant engine: one backbone, adapter tables, a slot KV cache, continuous batching.

    engine = Engine(model, tokenizer)
    engine.add_adapter("tenant-a", "adapters/a")      # PARA, LoRA or (IA)^3, PEFT format
    outputs = engine.generate([Request(ids, adapter="tenant-a", params=SamplingParams(max_tokens=32))])

One ``step()``: a decode step for every running row, retire finished rows, then admit waiting requests that fit
(a free KV slot, prompt + max_tokens within a slot, the step's prefill token budget) and prefill them together
as one packed row, no prompt padded to another's length. Each PARA row's vectors are computed from its own
prompt at every layer during that prefill, into its row of the delta tables; V is scaled before it is written
to the cache. A decode step then feeds one token per row, in slot order, so the batch is usually a contiguous
range of slots and every per-row tensor is a view.
"""

from __future__ import annotations

import collections
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..para.arch import Site, resolve_sites
from ..para.scaling import module_scales
from .adapter_bank import AdapterBank, AdapterError, Ia3Adapter, LoraAdapter, ParaAdapter
from .adapter_tables import LoraTables, ParaTables
from .detokenize import engine_tokenizer, make_detokenizer
from .fast_decode import FastDecode
from .hooks import EngineHooks, StepRows
from .kv_cache import ATTENTION_NAME, SlotKVCache, StepPlan, decode_mask
from .request import Request, SamplingParams
from .sampler import Sampler

DEFAULT_MAX_SEQ_LEN = 2048


class NoFreeSlot(RuntimeError):
    """Every KV slot is taken (``Engine.prompt_logits`` needs one for the scoring row's adapter deltas)."""


class Engine:
    def __init__(self, model, tokenizer=None, max_batch: int = 32, kv_budget_tokens: int | None = None,
                 max_seq_len: int | None = None, max_prefill_tokens: int = 4096, fast_decode: bool = True,
                 packed_weights: bool = True):
        """``max_batch`` KV slots of ``max_seq_len`` tokens each (default: the model's context, at most 2048)
        are allocated at start (``kv_cache_bytes``); a request needs prompt + max_tokens <= max_seq_len.
        ``kv_budget_tokens`` optionally caps the tokens reserved by running requests together;
        ``max_prefill_tokens`` caps the prompt tokens prefilled in one step (a longer prompt runs alone), so a
        burst of long prompts does not stall the running streams for long. ``packed_weights``: the decode step
        uses oneDNN-prepacked weights where they pay on this device and dtype (``engine/packed_weights.py``)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        config = model.config.get_text_config()
        _refuse_sliding_window(model)
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len or min(getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_SEQ_LEN,
                                              DEFAULT_MAX_SEQ_LEN)
        self.kv_budget_tokens = kv_budget_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.bank = AdapterBank(model)
        self.para = ParaTables(len(self.bank.layers), config.hidden_size, torch.float32 if self.dtype in (
            torch.float16, torch.bfloat16) else self.dtype, self.device)
        self.lora = LoraTables(self.dtype, self.device)
        self.hooks = EngineHooks(model, max_batch, self.lora)
        self.cache = SlotKVCache(_kv_shapes(model), max_batch, self.max_seq_len, self.dtype, self.device)
        _use_slot_attention(model, self.cache)
        # Llama-family models decode through a hand-written step (no module machinery, no hooks); others, and
        # any step it does not cover, through the transformers forward.
        self.fast_decode = FastDecode.build(model, self.hooks, self.cache, packed=packed_weights) if fast_decode else None
        self.kv_cache_bytes = self.cache.bytes
        # the decode step's oneDNN-packed copies of the weights (0 where nothing is packed)
        self.packed_weight_bytes = self.fast_decode.packed.bytes if self.fast_decode is not None else 0
        self.waiting: collections.deque[Request] = collections.deque()
        self.rows: dict[int, Request] = {}  # KV slot -> running request
        self._free = list(range(max_batch))
        self._positions = torch.zeros(max_batch, dtype=torch.long, device=self.device)  # next position per slot
        self._next_tokens = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self._scaled: dict[int, list[tuple[int, str]]] = {}  # slot -> delta tables its row uses
        self.eos_ids = _eos_ids(model, tokenizer)
        self.sampler = Sampler(self.device)  # the running rows' sampling parameters, rebuilt on join/leave
        self._layout: _DecodeLayout | None = None
        self._detokenizer_backend = engine_tokenizer(tokenizer)
        self.stats = collections.Counter()
        self._dropped: list[Request] = []  # finished without running (cancelled while queued)
        self._sites: dict[tuple[int, tuple[str, ...]], dict[str, Site]] = {}

    # ----- adapters ---------------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str | Path) -> str:
        kind = self.bank.add(name, path)
        adapter = self.bank.adapters[name]
        try:
            if isinstance(adapter, ParaAdapter):
                for index in adapter.generators:
                    for site in self._layer_sites(index, adapter.config.targets).values():
                        self.hooks.hook_site(index, site)
                adapter.slot = self.para.add(name, adapter.generators)
                # The tables hold the weights now: keep only the layer indices. Thousands of adapters' modules
                # kept alive were ~10^5 long-lived objects that every full garbage collection walked.
                adapter.generators = dict.fromkeys(adapter.generators)
            elif isinstance(adapter, LoraAdapter):
                for path_ in adapter.weights:
                    self.hooks.hook_lora(path_)
                adapter.slot = self.lora.add(name, adapter.scaling, adapter.weights)
                adapter.weights = None  # the table holds them now
            else:
                adapter.sites = [self._ia3_site(p, v, side) for p, (v, side) in adapter.vectors.items()]
                for index, site in adapter.sites:
                    self.hooks.hook_site(index, site)
        except Exception:
            self.bank.remove(name)
            raise
        return kind

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter. Running requests of it must have finished (the async front waits for them)."""
        adapter = self.bank.adapters.get(name)
        self.bank.remove(name)
        if isinstance(adapter, ParaAdapter):
            self.para.remove(name)
        elif isinstance(adapter, LoraAdapter):
            self.lora.remove(name)

    def _layer_sites(self, index: int, targets) -> dict[str, Site]:
        key = (index, tuple(targets))
        if key not in self._sites:  # resolving is ~0.1 ms a layer: once per (layer, targets), not per prefill
            self._sites[key] = resolve_sites(self.model, self.bank.layers[index], list(targets))
        return self._sites[key]

    def _ia3_site(self, path: str, vector: torch.Tensor, side: str) -> tuple[int, Site]:
        prefix = self.bank.layers_path + "."
        if not path.startswith(prefix):
            raise AdapterError(f"(IA)^3 on {path!r} (outside the decoder layers) is not served")
        index, _, inner = path[len(prefix):].partition(".")
        return int(index), Site(inner, side, 0, vector.numel())

    # ----- requests ---------------------------------------------------------------------------------------
    def add_request(self, request: Request) -> Request:
        if request.adapter is not None and request.adapter not in self.bank.adapters:
            raise KeyError(f"unknown adapter {request.adapter!r}; loaded: {sorted(self.bank.adapters)}")
        if not request.prompt_ids:
            raise ValueError("a request needs at least one prompt token")
        if request.reserved_tokens > self.max_seq_len:
            raise ValueError(f"request needs {request.reserved_tokens} KV tokens (prompt + max_tokens) but a KV "
                             f"slot holds {self.max_seq_len} (max_seq_len)")
        if self.kv_budget_tokens is not None and request.reserved_tokens > self.kv_budget_tokens:
            raise ValueError(f"request needs {request.reserved_tokens} KV tokens (prompt + max_tokens) but the "
                             f"budget is {self.kv_budget_tokens}")
        if request.params.seed is not None:  # on the logits' device: a CPU generator cannot drive CUDA sampling
            request.generator = torch.Generator(device=self.device).manual_seed(request.params.seed)
        request.detokenizer = make_detokenizer(self._detokenizer_backend, self.tokenizer, request.params.stop)
        self.waiting.append(request)
        return request

    def pop_dropped(self) -> list[Request]:
        dropped, self._dropped = self._dropped, []
        return dropped

    def cancel(self, request: Request) -> None:
        request.finish_reason = request.finish_reason or "cancelled"
        if request in self.waiting:
            self.waiting.remove(request)

    def abort_all(self, reason: str = "error") -> list[Request]:
        """Finish every running and waiting request with ``reason`` and free their slots (after a failed step)."""
        aborted = [self.rows[s] for s in sorted(self.rows)] + list(self.waiting)
        for request in aborted:
            request.finish_reason = reason
        self.waiting.clear()
        self._retire()
        return aborted

    @property
    def running(self) -> list[Request]:
        return [self.rows[s] for s in sorted(self.rows)]

    def reserved_tokens(self) -> int:
        return sum(r.reserved_tokens for r in self.rows.values())

    def has_work(self) -> bool:
        return bool(self.waiting) or bool(self.rows)

    def generate(self, requests: list[Request]) -> list[Request]:
        """Run ``requests`` to completion (they join as capacity allows); returns them in the same order."""
        for request in requests:
            self.add_request(request)
        while self.has_work():
            self.step()
        return requests

    @torch.inference_mode()
    def prompt_logits(self, ids: list[int], adapter: str | None, context: int | None = None) -> torch.Tensor:
        """Logits (T, vocab) in fp32 of every position of ``ids`` under ``adapter``, from one forward that writes
        no KV (echo scoring, lm-eval over HTTP). Call it between steps (the async front runs it on the engine
        thread). A PARA adapter pools tokens [0, context) only, never the scored continuation after it. The
        scoring row borrows a free slot for its adapter deltas and gives it back at once."""
        if adapter is not None and adapter not in self.bank.adapters:
            raise KeyError(f"unknown adapter {adapter!r}; loaded: {sorted(self.bank.adapters)}")
        if not self._free:
            raise NoFreeSlot("every KV slot is running a request; score again when one finishes")
        length, context = len(ids), len(ids) if context is None else context
        scratch = Request(list(ids), adapter, SamplingParams(max_tokens=1))
        self._free.sort()
        slot = self._free.pop(0)
        saved_plan = self.cache.plan
        positions = torch.arange(length, device=self.device)
        plan = StepPlan("prefill", torch.full((length,), slot, device=self.device), positions,
                        segments=[(0, length)])
        pooled = StepPlan("prefill", plan.slots[:context], positions[:context], segments=[(0, context)])
        try:
            self._join([slot], [scratch])
            self.cache.plan = plan
            self.hooks.step = StepRows("prefill", plan.slots, lora=self._lora_rows_prefill([scratch], plan.segments),
                                       segments=self._scaled_segments([scratch], [slot], plan.segments))
            self.hooks.on_prefill_layer = self._para_prefill([scratch], [slot], pooled)
            return self.model(input_ids=torch.tensor([ids], device=self.device), position_ids=positions[None],
                              attention_mask=_NO_MASK(self), use_cache=False).logits[0].float()
        finally:
            self.hooks.on_prefill_layer = None
            self.hooks.step = None
            self.cache.plan = saved_plan
            scratch.finish_reason = "length"
            self._retire()  # zeroes the slot's deltas and frees it

    # ----- the loop -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[tuple[Request, int]]:
        """One decode step for the running rows, retire, admit + prefill. Returns the (request, token) pairs."""
        produced = self._decode() if self.rows else []
        self._retire()
        admitted = self._admit()
        if admitted:
            produced += self._prefill(admitted)
            self._retire()
        return produced

    def _retire(self) -> None:
        for slot in [s for s, r in self.rows.items() if r.finished]:
            del self.rows[slot]
            for key in self._scaled.pop(slot, ()):  # zero the row's deltas: the next owner starts clean
                self.hooks.deltas[key][slot].zero_()
                self.hooks.users[key] -= 1
            self._free.append(slot)

    def _admit(self) -> list[Request]:
        admitted, reserved, prompt_tokens = [], self.reserved_tokens(), 0
        while self.waiting and len(admitted) < len(self._free):
            request = self.waiting[0]
            if request.adapter is not None and request.adapter not in self.bank.adapters:
                request.finish_reason = "cancelled"  # its adapter was unloaded while it waited
            if request.finished:  # cancelled while waiting
                self._dropped.append(self.waiting.popleft())
                continue
            if self.kv_budget_tokens is not None and reserved + request.reserved_tokens > self.kv_budget_tokens:
                break  # wait for running requests to free budget
            if admitted and prompt_tokens + len(request.prompt_ids) > self.max_prefill_tokens:
                break  # next step: the running rows decode in between
            admitted.append(self.waiting.popleft())
            reserved += request.reserved_tokens
            prompt_tokens += len(request.prompt_ids)
        return admitted

    def _prefill(self, requests: list[Request]) -> list[tuple[Request, int]]:
        """One forward over the admitted prompts packed into a single row (per-prompt attention)."""
        start = time.perf_counter()
        self._free.sort()
        slots = [self._free.pop(0) for _ in requests]
        lengths = [len(r.prompt_ids) for r in requests]
        ids = torch.tensor([t for r in requests for t in r.prompt_ids], device=self.device)[None]
        plan = self.cache.plan_prefill(slots, lengths, self.device)
        ends = torch.tensor(lengths, device=self.device).cumsum(0)
        self._join(slots, requests)
        self.hooks.step = StepRows("prefill", plan.slots, lora=self._lora_rows_prefill(requests, plan.segments),
                                   segments=self._scaled_segments(requests, slots, plan.segments))
        self.hooks.on_prefill_layer = self._para_prefill(requests, slots, plan)
        try:
            logits = None
            if self.fast_decode is not None:  # the hand-written step, with the decode step's packed weights
                logits = self.fast_decode.prefill(ids[0], plan.positions, ends - 1, self.hooks.step)
                self.stats["fast_prefills"] += logits is not None
            if logits is None:
                logits = self.model(input_ids=ids, position_ids=plan.positions[None], attention_mask=_NO_MASK(self),
                                    past_key_values=self.cache, use_cache=True, logits_to_keep=ends - 1).logits[0]
        finally:
            self.hooks.on_prefill_layer = None
            self.hooks.step = None
        sampler = Sampler(self.device)
        sampler.set_rows([r.params for r in requests], [r.generator for r in requests])
        tokens = self._record(requests, *sampler(logits))
        slot_index = torch.tensor(slots, device=self.device)
        self._positions[slot_index] = torch.tensor(lengths, device=self.device)
        self._next_tokens[slot_index] = tokens
        self.stats["prefill_seconds"] += time.perf_counter() - start
        self.stats["prefill_tokens"] += sum(lengths)
        self.stats["prefills"] += 1
        return [(r, r.output_ids[-1]) for r in requests]

    def _decode(self) -> list[tuple[Request, int]]:
        start = time.perf_counter()
        layout = self._decode_layout()
        rows, (lo, hi), index = layout.rows, layout.view, layout.index
        positions = self._positions[lo:hi] if index is None else self._positions[index]
        tokens = self._next_tokens[lo:hi] if index is None else self._next_tokens[index]
        longest = max(len(r.prompt_ids) + len(r.output_ids) for r in rows)  # host-side: no sync
        self.cache.plan = layout.plan  # the layout's plan, with this step's positions and attended length
        layout.plan.positions, layout.plan.length = positions, longest
        mask = decode_mask(self._positions[lo:hi] + 1, longest, self.dtype)
        self.hooks.step = layout.step
        try:
            logits = None
            if self.fast_decode is not None:
                logits = self.fast_decode(tokens, positions, mask, layout.step)
                self.stats["fast_decode_steps"] += logits is not None
            if logits is None:
                logits = self.model(input_ids=tokens[:, None], position_ids=positions[:, None],
                                    attention_mask=mask, past_key_values=self.cache, use_cache=True).logits[:, -1]
        finally:
            self.hooks.step = None
        new = self._record(rows, *self.sampler(logits))
        if index is None:
            self._positions[lo:hi] += 1
            self._next_tokens[lo:hi] = new
        else:
            self._positions[index] += 1
            self._next_tokens[index] = new
        self.stats["decode_seconds"] += time.perf_counter() - start
        self.stats["decode_steps"] += 1
        self.stats["decode_tokens"] += len(rows)
        return [(r, r.output_ids[-1]) for r in rows]

    def _decode_layout(self) -> "_DecodeLayout":
        """Everything about a decode step that depends only on which requests run, rebuilt on a join or a
        leave, not every step: slot order, the view, index tensors, LoRA rows, the sampler's parameters."""
        slots = sorted(self.rows)
        key = tuple((s, self.rows[s].id) for s in slots)
        if self._layout is not None and self._layout.key == key:
            return self._layout
        rows = [self.rows[s] for s in slots]
        lo, hi = slots[0], slots[-1] + 1
        index = None if hi - lo == len(slots) else torch.tensor(slots, device=self.device)
        plan = self.cache.plan_decode(slots, self._positions[:0], 0, self.device)
        view = (lo, hi) if index is None else None
        step = StepRows("decode", plan.slots, view=view, lora=self._lora_rows_decode(rows),
                        views=self.hooks.decode_views(view, index))
        self.sampler.set_rows([r.params for r in rows], [r.generator for r in rows])
        self._layout = _DecodeLayout(key, rows, (lo, hi), index, plan, step)
        return self._layout

    def _record(self, requests: list[Request], tokens: torch.Tensor, logprobs: torch.Tensor | None) -> torch.Tensor:
        """Append each row's new token (one host transfer for the whole step), extend its text, finish it on
        EOS, a stop string or its token limit. Returns the tokens, still on the device, for the next step."""
        values = tokens.tolist()
        chosen = logprobs.tolist() if logprobs is not None else None
        for row, (request, token) in enumerate(zip(requests, values)):
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

    # ----- per-row adapter state ----------------------------------------------------------------------
    def _join(self, slots: list[int], requests: list[Request]) -> None:
        """New rows take their slots: (IA)^3 rows write l - 1 into their delta rows now, PARA rows during the
        prefill; the tables a row uses are counted so that modules no running row scales are skipped."""
        for slot, request in zip(slots, requests):
            self.rows[slot] = request
            adapter = self.bank.adapters.get(request.adapter) if request.adapter else None
            used = []
            if isinstance(adapter, Ia3Adapter):
                for (index, site), (vector, _) in zip(adapter.sites, adapter.vectors.values()):
                    key = (index, site.module)
                    self.hooks.deltas[key][slot] = (vector - 1).to(self.dtype)
                    used.append(key)
            elif isinstance(adapter, ParaAdapter):
                for index in adapter.generators:
                    used += [(index, s.module) for s in self._layer_sites(index, adapter.config.targets).values()]
            for key in dict.fromkeys(used):
                self.hooks.users[key] += 1
            self._scaled[slot] = list(dict.fromkeys(used))

    def _lora_rows_decode(self, rows: list[Request]) -> dict:
        by_module: dict[str, tuple[list[int], list[int]]] = {}
        for i, request in enumerate(rows):
            adapter = self.bank.adapters.get(request.adapter) if request.adapter else None
            if isinstance(adapter, LoraAdapter):
                for path in self.lora.modules_of[request.adapter]:
                    index, slots = by_module.setdefault(path, ([], []))
                    index.append(i)
                    slots.append(adapter.slot)
        return {p: (torch.tensor(i, device=self.device), torch.tensor(s, device=self.device))
                for p, (i, s) in by_module.items()}

    def _lora_rows_prefill(self, requests: list[Request], segments) -> dict:
        by_module: dict[str, list[tuple[int, int, int]]] = {}
        for request, (start, end) in zip(requests, segments):
            adapter = self.bank.adapters.get(request.adapter) if request.adapter else None
            if isinstance(adapter, LoraAdapter):
                for path in self.lora.modules_of[request.adapter]:
                    by_module.setdefault(path, []).append((start, end, adapter.slot))
        return by_module

    def _scaled_segments(self, requests: list[Request], slots: list[int], segments) -> list[tuple[int, int, int]]:
        """(start, end, KV slot) of the prompts whose adapter scales sites (PARA, (IA)^3)."""
        out = []
        for request, slot, (start, end) in zip(requests, slots, segments):
            adapter = self.bank.adapters.get(request.adapter) if request.adapter else None
            if isinstance(adapter, (ParaAdapter, Ia3Adapter)):
                out.append((start, end, slot))
        return out

    def _para_prefill(self, requests: list[Request], slots: list[int], plan):
        """The prefill's per-layer callback: every PARA row's vectors, from its own prompt, in one batched
        computation over the adapter tables, written into the row's delta rows before the layer runs."""
        members = [i for i, r in enumerate(requests)
                   if r.adapter is not None and isinstance(self.bank.adapters.get(r.adapter), ParaAdapter)]
        if not members:
            return None
        adapters = [self.bank.adapters[requests[i].adapter] for i in members]
        table_slots = [a.slot for a in adapters]
        kv_slots = torch.tensor([slots[i] for i in members], device=self.device)
        spans = [plan.segments[i] for i in members]
        if all(spans[j][1] == spans[j + 1][0] for j in range(len(spans) - 1)):  # one contiguous run: a view
            token_index = slice(spans[0][0], spans[-1][1])
        else:
            token_index = torch.cat([torch.arange(*span, device=self.device) for span in spans])
        segments = torch.cat([torch.full((plan.segments[i][1] - plan.segments[i][0],), j, device=self.device)
                              for j, i in enumerate(members)])

        def compute(index: int, hidden: torch.Tensor) -> None:
            if not self.para.targets[index]:
                return
            vectors = self.para.vectors(index, hidden[0, token_index], segments, table_slots)
            sites = self._layer_sites(index, list(vectors))
            for path, delta in module_scales(self.bank.layers[index], sites, vectors, self.dtype).items():
                key = (index, path)
                if key in self.hooks.deltas:
                    self.hooks.deltas[key][kv_slots] = delta[:, 0]

        return compute


@dataclass
class _DecodeLayout:
    key: tuple
    rows: list[Request]
    view: tuple[int, int]
    index: torch.Tensor | None  # slot indices when the rows are not a contiguous range
    plan: object
    step: StepRows


def _NO_MASK(engine: Engine) -> torch.Tensor:
    """A 4-D placeholder: transformers then skips building its own mask; slot_attention builds per-prompt
    causal masks itself at prefill."""
    return torch.zeros(1, 1, 1, 1, dtype=engine.dtype, device=engine.device)


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


def _use_slot_attention(model, cache: SlotKVCache) -> None:
    """Route the model's attention through ``slot_attention``, which wraps the model's own implementation."""
    inner = model.config._attn_implementation or "eager"
    if inner == ATTENTION_NAME:  # a second engine on the same model: keep the original implementation
        inner = getattr(model, "_paratune_inner_attention")
    model._paratune_inner_attention = inner
    for module in model.modules():
        if hasattr(module, "layer_idx") and any(n in type(module).__name__ for n in ("Attention", "Attn")):
            module._paratune_cache = cache
            module._paratune_inner_attention = inner
            module._paratune_eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config._attn_implementation = ATTENTION_NAME


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

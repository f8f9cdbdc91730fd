"""The multi-tenant engine: one backbone, an adapter bank, continuous batching.

One ``step()`` = admit waiting requests that fit (prefill them together in one forward, computing each PARA
row's vectors from its own prompt), then one decode step for every running row, then retire finished rows.

    engine = Engine(model, tokenizer)
    engine.add_adapter("tenant-a", "adapters/a")      # PARA, LoRA or (IA)^3, PEFT format
    outputs = engine.generate([Request(ids, adapter="tenant-a", params=SamplingParams(max_tokens=32))])
"""

from __future__ import annotations

import collections
import gc
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from ..para.arch import Site, resolve_sites
from ..para.scaling import module_scales
from .adapter_bank import AdapterBank, AdapterError, Ia3Adapter, LoraAdapter, ParaAdapter
from .batch import Batch, RowTensors, keep, merge
from .hooks import ModelHooks
from .detokenize import engine_tokenizer, make_detokenizer
from .request import Request
from .sampler import Sampler


class Engine:
    def __init__(self, model, tokenizer=None, max_batch: int = 32, kv_budget_tokens: int = 65536):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.kv_budget_tokens = kv_budget_tokens
        self.bank = AdapterBank(model)
        self.hooks = ModelHooks(model)
        self.waiting: collections.deque[Request] = collections.deque()
        self.batch: Batch | None = None
        self.eos_ids = _eos_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        self.sampler = Sampler(self.device)  # the running rows' sampling parameters, rebuilt on join/leave
        self._sampler_rows: list[int] = []
        self._detokenizer_backend = engine_tokenizer(tokenizer)
        self.stats = collections.Counter()
        self._dropped: list[Request] = []  # finished without running (cancelled while queued)

    # ----- adapters ---------------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str | Path) -> str:
        kind = self.bank.add(name, path)
        # Thousands of adapters are hundreds of thousands of long-lived Python objects (modules, tensors);
        # left in the collector's generations, every full collection during decoding walks them all.
        gc.freeze()
        adapter = self.bank.adapters[name]
        if isinstance(adapter, ParaAdapter):
            for index in adapter.generators:
                for site in resolve_sites(self.model, self.bank.layers[index], adapter.config.targets).values():
                    self.hooks.hook_site(index, site)
        elif isinstance(adapter, LoraAdapter):
            for path_ in adapter.weights:
                self.hooks.hook_lora(path_)
        else:
            for path_, (vector, side) in adapter.vectors.items():
                index, site = self._ia3_site(path_, vector, side)
                self.hooks.hook_site(index, site)
        return kind

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter. Running requests keep the tensors they were admitted with."""
        self.bank.remove(name)

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
        if request.reserved_tokens > self.kv_budget_tokens:
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

    @property
    def running(self) -> list[Request]:
        return [] if self.batch is None else self.batch.rows

    def reserved_tokens(self) -> int:
        return sum(r.reserved_tokens for r in self.running)

    def has_work(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    def generate(self, requests: list[Request]) -> list[Request]:
        """Run ``requests`` to completion (they join as capacity allows); returns them in the same order."""
        for request in requests:
            self.add_request(request)
        while self.has_work():
            self.step()
        return requests

    # ----- the loop -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[tuple[Request, int]]:
        """Admit + prefill, one decode step, retire. Returns the (request, token) pairs produced."""
        produced = []
        if self.batch is not None:
            produced += self._decode()
            self._retire()
        admitted = self._admit()
        if admitted:
            new = self._prefill(admitted)
            produced += [(r, r.output_ids[-1]) for r in new.rows]
            self.batch = merge(self.batch, new)
            self._retire()
        self.hooks.use(self.batch.tensors if self.batch is not None else RowTensors.empty(len(self.bank.layers)))
        return produced

    def _retire(self) -> None:
        alive = [i for i, r in enumerate(self.batch.rows) if not r.finished]
        if len(alive) < len(self.batch):
            self.batch = keep(self.batch, alive) if alive else None

    def _admit(self) -> list[Request]:
        admitted, reserved = [], self.reserved_tokens()
        while self.waiting and len(self.running) + len(admitted) < self.max_batch:
            request = self.waiting[0]
            if request.adapter is not None and request.adapter not in self.bank.adapters:
                request.finish_reason = "cancelled"  # its adapter was unloaded while it waited
            if request.finished:  # cancelled while waiting
                self._dropped.append(self.waiting.popleft())
                continue
            if reserved + request.reserved_tokens > self.kv_budget_tokens:
                break  # wait for running requests to free KV memory
            admitted.append(self.waiting.popleft())
            reserved += request.reserved_tokens
        return admitted

    def _prefill(self, requests: list[Request]) -> Batch:
        """One forward over the left-padded prompts of the admitted requests."""
        start = time.perf_counter()
        length = max(len(r.prompt_ids) for r in requests)
        ids = torch.zeros(len(requests), length, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(requests), length, dtype=torch.long, device=self.device)
        for row, request in enumerate(requests):
            ids[row, length - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            mask[row, length - len(request.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        tensors = self._row_tensors(requests)
        self.hooks.use(tensors)
        self.hooks.on_prefill_layer = self._para_prefill(requests, mask.bool(), tensors)
        try:
            cache = DynamicCache(config=self.model.config)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        finally:
            self.hooks.on_prefill_layer = None
        sampler = Sampler(self.device)
        sampler.set_rows([r.params for r in requests], [r.generator for r in requests])
        tokens = self._record(requests, *sampler(logits))
        self.stats["prefill_seconds"] += time.perf_counter() - start
        self.stats["prefill_tokens"] += sum(len(r.prompt_ids) for r in requests)
        return Batch(requests, cache, mask, mask.sum(-1), tokens, tensors)

    def _decode(self) -> list[tuple[Request, int]]:
        start = time.perf_counter()
        batch = self.batch
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
        logits = self.model(input_ids=batch.next_tokens[:, None], attention_mask=batch.mask,
                            position_ids=batch.positions[:, None], past_key_values=batch.cache,
                            use_cache=True).logits[:, -1]
        batch.positions = batch.positions + 1
        rows = [r.id for r in batch.rows]
        if rows != self._sampler_rows:  # the batch changed (a join or a leave): new per-row parameters
            self.sampler.set_rows([r.params for r in batch.rows], [r.generator for r in batch.rows])
            self._sampler_rows = rows
        batch.next_tokens = self._record(batch.rows, *self.sampler(logits))
        self.stats["decode_seconds"] += time.perf_counter() - start
        self.stats["decode_steps"] += 1
        self.stats["decode_tokens"] += len(batch)
        return list(zip(batch.rows, batch.next_tokens.tolist()))

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

    # ----- per-row adapter tensors ----------------------------------------------------------------------
    def _row_tensors(self, requests: list[Request]) -> RowTensors:
        """LoRA and (IA)^3 tensors of the new rows (PARA's come from the prompt, during the prefill)."""
        n = len(requests)
        tensors = RowTensors.empty(len(self.bank.layers))
        adapters = [self.bank.adapters.get(r.adapter) if r.adapter else None for r in requests]
        for path in {p for a in adapters if isinstance(a, LoraAdapter) for p in a.weights}:
            r_max = max(a.r for a in adapters if isinstance(a, LoraAdapter) and path in a.weights)
            ref_a, ref_b = next(a.weights[path] for a in adapters if isinstance(a, LoraAdapter) and path in a.weights)
            A = ref_a.new_zeros(n, r_max, ref_a.shape[1])
            B = ref_b.new_zeros(n, ref_b.shape[0], r_max)
            s = ref_a.new_zeros(n, 1, 1)
            for row, adapter in enumerate(adapters):
                if isinstance(adapter, LoraAdapter) and path in adapter.weights:
                    a, b = adapter.weights[path]
                    A[row, : a.shape[0]], B[row, :, : b.shape[1]], s[row] = a, b, adapter.scaling
            tensors.lora[path] = (A, B, s)
        for row, adapter in enumerate(adapters):
            if isinstance(adapter, Ia3Adapter):
                for path, (vector, side) in adapter.vectors.items():
                    index, site = self._ia3_site(path, vector, side)
                    scales = tensors.scales[index] = tensors.scales[index] or {}
                    if site.module not in scales:  # scales hold deltas: (IA)^3's l is 1 + (l - 1)
                        scales[site.module] = vector.new_zeros(n, 1, vector.numel())
                    scales[site.module][row, 0] = vector - 1
        return tensors

    def _para_prefill(self, requests: list[Request], mask: torch.Tensor, tensors: RowTensors):
        names = [r.adapter if r.adapter and isinstance(self.bank.adapters.get(r.adapter), ParaAdapter) else None
                 for r in requests]
        if not any(names):
            return None
        dtype = next(self.model.parameters()).dtype

        def compute(index: int, hidden: torch.Tensor) -> None:
            rows = [i for i, name in enumerate(names) if name is not None]
            stacks, indices = self.bank.para_stack(index, [names[i] for i in rows])
            vectors: dict[str, torch.Tensor] = {}
            for stack, idx in zip(stacks, indices):
                members = [rows[j] for j, k in enumerate(idx) if k >= 0]
                if not members:
                    continue
                select = torch.tensor(members, device=hidden.device)
                out = stack(hidden[select], mask[select], torch.tensor([k for k in idx if k >= 0],
                                                                        device=hidden.device))
                for target, v in out.items():
                    full = vectors.setdefault(target, v.new_zeros(len(names), v.shape[1]))
                    full[select] = v
            if not vectors:
                return
            sites = resolve_sites(self.model, self.bank.layers[index], list(vectors))
            scales = module_scales(self.bank.layers[index], sites, vectors, dtype)
            existing = tensors.scales[index] or {}
            for path, delta in scales.items():  # (1 + a)(1 + b) = 1 + (a + b + a b): PARA on top of (IA)^3
                existing[path] = existing[path] + delta + existing[path] * delta if path in existing else delta
            tensors.scales[index] = existing
            self.hooks.scalers[index].scales = existing

        return compute


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids

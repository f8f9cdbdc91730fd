"""``ServeConfig``: every flag of ``paratune serve`` as a validated field (the verb's own config, beside it).

Kept apart from ``server/config.py`` (``ServerConfig``, what the HTTP app itself needs): this one also says which
backbone and adapters to load and how uvicorn listens, which the app never sees. ``server/launch.py`` turns it
into a running server; the CLI makes one flag per field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..models import DEFAULT_MODEL, resolve_device, resolve_dtype
from ..validation import check, is_int, parse_adapter_specs, parse_bytes

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


@dataclass
class ServeConfig:
    """``paratune serve``; validated on construction (ValueError naming the field, the value, what is accepted)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "HF id, local folder or the embedded default"})
    adapter: list[str] = field(default_factory=list, metadata={
        "help": "serve an adapter as NAME=PATH (repeatable)", "split": False})
    adapter_dir: Optional[str] = field(default=None, metadata={
        "help": "serve every adapter folder inside by its folder name, loaded on its first request (folders added "
        "later are served too, without a restart); also the root for POST /v1/adapters (default: ./adapters if it "
        "exists)"})
    adapter_cache_bytes: str = field(default="2GiB", metadata={
        "help": "memory for adapters held in the host cache (least recently used evicted; never one a queued or "
        "running request uses), e.g. 2GiB, 500MB; a SmolLM2 PARA r=16 adapter takes 5.6 MB"})
    max_active_adapters: int = field(default=32, metadata={
        "help": "adapters installed in the device slot tables at once; a PARA adapter needs its slot only while "
        "its prompts prefill, a LoRA adapter until its requests finish"})
    scheduling: str = field(default="fifo", metadata={
        "help": "admission order: fifo (arrival), or fair (the request of the tenant, i.e. adapter, with the least "
        "weighted service so far goes first: a flooding tenant cannot starve the others)"})
    preload: bool = field(default=False, metadata={
        "help": "load adapters of --adapter-dir at start, until the cache is full (default: each on first use)"})
    pin: list[str] = field(default_factory=list, metadata={
        "help": "load this adapter at start and never evict it (repeatable)", "split": False})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    api_key: Optional[str] = field(default=None, metadata={"help": "require 'Authorization: Bearer KEY' on /v1/*"})
    max_concurrent: int = field(default=32, metadata={"help": "requests decoded together"})
    queue_size: int = field(default=256, metadata={"help": "waiting requests before 429"})
    max_prompt_tokens: int = field(default=2048, metadata={"help": "longest prompt accepted (400 beyond)"})
    max_completion_tokens: int = field(default=1024, metadata={"help": "largest max_tokens accepted"})
    kv_budget_tokens: int = field(default=65536, metadata={
        "help": "tokens (prompt + max_tokens) the running requests may reserve together"})
    max_seq_len: Optional[int] = field(default=None, metadata={
        "help": "KV slot size in tokens: max_concurrent slots are allocated at start (default: "
        "max_prompt_tokens + max_completion_tokens)"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N, mps or auto"})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16 (weights and KV cache)"})
    packed_weights: bool = field(default=True, metadata={
        "help": "decode with oneDNN-packed copies of the weights on CPU (about 2x faster decoding in fp32; costs the "
        "weights' memory once more)"})
    log_level: str = field(default="warning", metadata={"help": f"uvicorn log level: {', '.join(LOG_LEVELS)}"})
    timeout_keep_alive: float = field(default=5.0, metadata={
        "help": "seconds an idle keep-alive connection stays open (uvicorn's default 5); a client that reuses a "
        "connection just as the server closes it sees a reset, so set it above your clients' or proxy's idle "
        "time"})

    def __post_init__(self):
        check("model", self.model, isinstance(self.model, str) and bool(self.model.strip()),
              "a model name, folder or hub id")
        if isinstance(self.adapter, str):
            self.adapter = [self.adapter]
        self.adapters = parse_adapter_specs(list(self.adapter or []))
        check("host", self.host, isinstance(self.host, str) and bool(self.host.strip()), "a host name or address")
        check("port", self.port, is_int(self.port, 0) and self.port <= 65535, "an integer in [0, 65535]")
        for name in ("max_concurrent", "max_prompt_tokens", "max_completion_tokens", "kv_budget_tokens"):
            check(name, getattr(self, name), is_int(getattr(self, name), 1), "a positive integer")
        check("queue_size", self.queue_size, is_int(self.queue_size, 0), "an integer >= 0")
        check("max_active_adapters", self.max_active_adapters, is_int(self.max_active_adapters, 1),
              "a positive integer")
        self.cache_bytes = parse_bytes("adapter_cache_bytes", self.adapter_cache_bytes)
        check("scheduling", self.scheduling, self.scheduling in ("fifo", "fair"), "fifo or fair")
        if isinstance(self.pin, str):
            self.pin = [self.pin]
        check("pin", self.pin, isinstance(self.pin, list) and all(isinstance(p, str) and p for p in self.pin),
              "a list of adapter names")
        check("max_seq_len", self.max_seq_len, self.max_seq_len is None or is_int(self.max_seq_len, 2),
              "None or an integer >= 2")
        resolve_dtype(self.dtype)  # ValueError naming the accepted values
        resolve_device(self.device)
        check("api_key", self.api_key, self.api_key is None or (isinstance(self.api_key, str) and bool(self.api_key)),
              "a non-empty string or None")
        if isinstance(self.log_level, str):
            self.log_level = self.log_level.lower()
        check("log_level", self.log_level, self.log_level in LOG_LEVELS, ", ".join(LOG_LEVELS))
        # not is_number: an infinite keep-alive (never close an idle connection) has always been accepted
        check("timeout_keep_alive", self.timeout_keep_alive, isinstance(self.timeout_keep_alive, (int, float))
              and not isinstance(self.timeout_keep_alive, bool) and self.timeout_keep_alive > 0, "a number > 0")

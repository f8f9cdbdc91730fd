"""`paratune serve`: load the backbone and adapters, then run the OpenAI-compatible server with uvicorn.

Every flag is a field of ``ServeConfig``; ``serve(ServeConfig(...))`` is the same server from Python.
"""

from __future__ import annotations

import argparse
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..models import DEFAULT_MODEL

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


@dataclass
class ServeConfig:
    """``paratune serve``; validated on construction (ValueError naming the field, the value, what is accepted)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "HF id, local folder or the embedded default"})
    adapter: list[str] = field(default_factory=list, metadata={
        "help": "serve an adapter as NAME=PATH (repeatable)", "split": False})
    adapter_dir: Optional[str] = field(default=None, metadata={
        "help": "serve every adapter folder inside by its folder name; also the root for runtime loading "
        "(default: ./adapters if it exists)"})
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
        from ..generate import parse_adapter_specs

        def check(name, ok, accepted):
            if not ok:
                raise ValueError(f"{name} must be {accepted}, got {getattr(self, name)!r}")

        def integer(value, minimum):
            return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

        check("model", isinstance(self.model, str) and bool(self.model.strip()), "a model name, folder or hub id")
        if isinstance(self.adapter, str):
            self.adapter = [self.adapter]
        self.adapters = parse_adapter_specs(list(self.adapter or []))
        check("host", isinstance(self.host, str) and bool(self.host.strip()), "a host name or address")
        check("port", integer(self.port, 0) and self.port <= 65535, "an integer in [0, 65535]")
        for name in ("max_concurrent", "max_prompt_tokens", "max_completion_tokens", "kv_budget_tokens"):
            check(name, integer(getattr(self, name), 1), "a positive integer")
        check("queue_size", integer(self.queue_size, 0), "an integer >= 0")
        check("max_seq_len", self.max_seq_len is None or integer(self.max_seq_len, 2), "None or an integer >= 2")
        from ..models import resolve_device, resolve_dtype

        resolve_dtype(self.dtype)  # ValueError naming the accepted values
        resolve_device(self.device)
        check("api_key", self.api_key is None or (isinstance(self.api_key, str) and bool(self.api_key)),
              "a non-empty string or None")
        if isinstance(self.log_level, str):
            self.log_level = self.log_level.lower()
        check("log_level", self.log_level in LOG_LEVELS, ", ".join(LOG_LEVELS))
        check("timeout_keep_alive", isinstance(self.timeout_keep_alive, (int, float))
              and not isinstance(self.timeout_keep_alive, bool) and self.timeout_keep_alive > 0, "a number > 0")


def adapter_folders(root: Path) -> dict[str, Path]:
    """Every folder inside ``root`` holding an adapter_config.json, served under its folder name."""
    return {p.name: p for p in sorted(root.iterdir()) if (p / "adapter_config.json").is_file()}


def run(args) -> int:
    from ..cli import config_from_args

    return serve(config_from_args(ServeConfig, args))


def serve(config: ServeConfig) -> int:
    """Load the backbone and the adapters of ``config`` and serve them until interrupted."""
    import uvicorn

    from ..engine import Engine
    from ..models import load_backbone
    from .app import ServerConfig, create_app

    adapters = dict(config.adapters)
    root = Path(config.adapter_dir) if config.adapter_dir else (Path("adapters") if Path("adapters").is_dir() else None)
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"--adapter-dir {root} is not a folder")
    if root is not None:
        for name, path in adapter_folders(root).items():
            adapters.setdefault(name, str(path))
    backbone = load_backbone(config.model, dtype=config.dtype, device=config.device)
    engine = Engine(backbone.model, backbone.tokenizer, max_batch=config.max_concurrent,
                    kv_budget_tokens=config.kv_budget_tokens,
                    max_seq_len=config.max_seq_len or config.max_prompt_tokens + config.max_completion_tokens,
                    packed_weights=config.packed_weights)
    print(f"KV cache: {config.max_concurrent} slots x {engine.max_seq_len} tokens = "
          f"{engine.kv_cache_bytes / 2 ** 30:.2f} GiB ({config.dtype} on {engine.device})")
    if engine.packed_weight_bytes:
        print(f"decode weights packed for oneDNN: {engine.packed_weight_bytes / 2 ** 30:.2f} GiB beside the model's "
              f"own (--no-packed-weights to save it)")
    for name, path in adapters.items():
        kind = engine.add_adapter(name, path)
        print(f"adapter {name!r} ({kind}) from {path}")
    server_config = ServerConfig(model_name=config.model, api_key=config.api_key, queue_size=config.queue_size,
                                 max_prompt_tokens=config.max_prompt_tokens,
                                 max_completion_tokens=config.max_completion_tokens, adapter_root=root)
    # The engine steps on this (the main) thread, which loaded the model: PyTorch's intra-op parallelism is fast
    # only on the first thread that used it (bench/thread_check.py: 1.11 s vs 1.89 s for one request), so HTTP
    # gets the background thread. Ctrl-C lands here and stops both.
    app = create_app(engine, server_config, engine_thread=False)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                           timeout_keep_alive=config.timeout_keep_alive))
    http = threading.Thread(target=server.run, name="paratune-http", daemon=True)
    print(f"serving {config.model} + {len(adapters)} adapters on http://{config.host}:{config.port}/v1")
    http.start()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # uvicorn off the main thread installs no handlers
    try:
        watcher = threading.Thread(target=lambda: (http.join(), app.state.front.shutdown()), daemon=True)
        watcher.start()  # the HTTP server stopping (startup failure, shutdown) ends the step loop too
        app.state.front.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        app.state.front.shutdown()
        http.join(timeout=10)
        signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def add_parser(commands) -> None:
    from ..cli import add_config_arguments

    p = commands.add_parser(
        "serve", help="OpenAI-compatible server: one backbone, many adapters",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve the backbone and its adapters over an OpenAI-compatible API. A request names its "
        "adapter in `model` (or the backbone's own name for the base model). Adapters can be loaded and "
        "unloaded at runtime through /v1/adapters (paths relative to --adapter-dir).")
    add_config_arguments(p, ServeConfig)
    p.set_defaults(func=run)

"""``serve(ServeConfig(...))``: load the backbone and adapters, build the engine and the app, run uvicorn.

What ``paratune serve`` runs, and the same server from Python. The heavy imports (the engine, uvicorn) wait until
a server is really started, so importing this module (or ``ServeConfig``) stays cheap.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from .serve_config import ServeConfig


def serve(config: ServeConfig) -> int:
    """Load the backbone and the adapters of ``config`` and serve them until interrupted."""
    import uvicorn

    from ..engine import Engine
    from ..models import load_backbone
    from .app import create_app
    from .config import ServerConfig

    root = Path(config.adapter_dir) if config.adapter_dir else (Path("adapters") if Path("adapters").is_dir() else None)
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"--adapter-dir {root} is not a folder")
    for name, path in config.adapters.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"--adapter {name}={path}: no adapter_config.json in {path}")
    backbone = load_backbone(config.model, dtype=config.dtype, device=config.device)
    engine = Engine(backbone.model, backbone.tokenizer, max_batch=config.max_concurrent,
                    kv_budget_tokens=config.kv_budget_tokens,
                    max_seq_len=config.max_seq_len or config.max_prompt_tokens + config.max_completion_tokens,
                    packed_weights=config.packed_weights, adapter_dir=root,
                    max_active_adapters=config.max_active_adapters, adapter_cache_bytes=config.cache_bytes,
                    scheduling=config.scheduling)
    print(f"KV cache: {config.max_concurrent} slots x {engine.max_seq_len} tokens = "
          f"{engine.kv_cache_bytes / 2 ** 30:.2f} GiB ({config.dtype} on {engine.device})")
    if engine.packed_weight_bytes:
        print(f"decode weights packed for oneDNN: {engine.packed_weight_bytes / 2 ** 30:.2f} GiB beside the model's "
              f"own (--no-packed-weights to save it)")
    for name, path in config.adapters.items():  # named on the command line: loaded now, so a typo fails at start
        print(f"adapter {name!r} ({engine.add_adapter(name, path)}) from {path}")
    for name in config.pin:
        if engine.store.catalog.path(name) is None:
            raise KeyError(f"--pin {name}: no such adapter (not in --adapter-dir {root}, nor given with --adapter)")
        print(f"adapter {name!r} ({engine.store.pin(name).kind}) pinned")
    available = engine.available()
    if config.preload:
        print(f"preloaded {preload(engine, available)} of {len(available)} adapters")
    print(memory_budget(engine, backbone.model, available, config))
    server_config = ServerConfig(model_name=config.model, api_key=config.api_key, queue_size=config.queue_size,
                                 max_prompt_tokens=config.max_prompt_tokens,
                                 max_completion_tokens=config.max_completion_tokens, adapter_root=root)
    # The engine steps on this (the main) thread, which loaded the model: PyTorch's intra-op parallelism is fast
    # only on the first thread that used it (1.11 s vs 1.89 s for one request on a 2-core CPU; docs/performance.md), so HTTP
    # gets the background thread. Ctrl-C lands here and stops both.
    app = create_app(engine, server_config, engine_thread=False)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                           timeout_keep_alive=config.timeout_keep_alive))
    http = threading.Thread(target=server.run, name="paratune-http", daemon=True)
    print(f"serving {config.model} + {len(available)} adapters{f' from {root}' if root else ''} on "
          f"http://{config.host}:{config.port}/v1")
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


# What a process needs beyond the model, packed weights, KV cache and adapter memory: the Python runtime, torch and
# its kernels, tokenizer, HTTP server and per-step activations (a 4096-token prefill of SmolLM2 in fp32 peaks at
# ~300 MB). Measured as RSS after start minus the parts above, plus this margin for the steps' working memory.
WORKING_MARGIN = 512 * 2 ** 20


def preload(engine, names: list[str]) -> int:
    """Load ``names`` in order until the next one would not fit the cache without evicting; returns how many."""
    store, loaded = engine.store, 0
    for name in names:
        path = store.catalog.path(name)
        if path is None:
            continue
        if store.capacity is not None and store.bytes + store.backbone.estimate_bytes(path) > store.capacity:
            break
        future = store.hold(name)
        try:
            future.result()
            loaded += 1
        except Exception as error:  # a broken adapter fails its own requests later, with this message
            print(f"adapter {name!r} not preloaded: {error}")
        finally:
            store.release(name)
    return loaded


def memory_budget(engine, model, available: list[str], config: ServeConfig) -> str:
    """The line ``paratune serve`` prints at start: the bound on the process's resident memory, by part."""
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    adapter = 0
    if available:  # one adapter's size, from its header: the slot tables hold up to max_active of that shape
        path = engine.store.catalog.path(available[0])
        try:
            adapter = engine.store.backbone.estimate_bytes(path) if path is not None else 0
        except Exception:
            adapter = 0
    tables = max(engine.registry.table_bytes, 2 * config.max_active_adapters * adapter)  # tables grow by doubling
    rss = _current_rss()
    parts = {"model": model_bytes, "packed weights": engine.packed_weight_bytes, "KV cache": engine.kv_cache_bytes,
             "adapter cache": config.cache_bytes, "adapter slot tables": tables}
    # the KV cache is zero-filled at allocation, so it is resident already
    resident_parts = (model_bytes + engine.packed_weight_bytes + engine.kv_cache_bytes + engine.store.bytes
                      + engine.registry.table_bytes)
    runtime = max(0, rss - resident_parts) + WORKING_MARGIN
    parts["runtime + working margin"] = runtime
    total = sum(parts.values())
    detail = " + ".join(f"{name} {value / 2 ** 30:.2f}" for name, value in parts.items())
    return f"memory budget: {total / 2 ** 30:.2f} GiB ({total} bytes) = {detail} GiB"


def _current_rss() -> int:
    """Resident bytes of this process now (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _interrupt(signum, frame):
    raise KeyboardInterrupt

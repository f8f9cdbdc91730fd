"""``serve(ServeConfig(...))``: load the backbone and adapters, build the engine and the app, run uvicorn.

What ``paratune serve`` runs, and the same server from Python. The heavy imports (the engine, uvicorn) wait until
a server is really started, so importing this module (or ``ServeConfig``) stays cheap.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from .serve_config import ServeConfig


def adapter_folders(root: Path) -> dict[str, Path]:
    """Every folder inside ``root`` holding an adapter_config.json, served under its folder name."""
    return {p.name: p for p in sorted(root.iterdir()) if (p / "adapter_config.json").is_file()}


def serve(config: ServeConfig) -> int:
    """Load the backbone and the adapters of ``config`` and serve them until interrupted."""
    import uvicorn

    from ..engine import Engine
    from ..models import load_backbone
    from .app import create_app
    from .config import ServerConfig

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
    # only on the first thread that used it (1.11 s vs 1.89 s for one request on a 2-core CPU; docs/performance.md), so HTTP
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

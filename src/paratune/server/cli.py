"""`paratune serve`: load the backbone and adapters, then run the OpenAI-compatible server with uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models import DEFAULT_MODEL


def adapter_folders(root: Path) -> dict[str, Path]:
    """Every folder inside ``root`` holding an adapter_config.json, served under its folder name."""
    return {p.name: p for p in sorted(root.iterdir()) if (p / "adapter_config.json").is_file()}


def run(args) -> int:
    import uvicorn

    from ..engine import Engine
    from ..generate import parse_adapter_specs
    from ..models import load_backbone
    from .app import ServerConfig, create_app

    adapters = parse_adapter_specs(args.adapter or [])
    root = Path(args.adapter_dir) if args.adapter_dir else (Path("adapters") if Path("adapters").is_dir() else None)
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"--adapter-dir {root} is not a folder")
    if root is not None:
        for name, path in adapter_folders(root).items():
            adapters.setdefault(name, str(path))
    backbone = load_backbone(args.model)
    engine = Engine(backbone.model, backbone.tokenizer, max_batch=args.max_concurrent,
                    kv_budget_tokens=args.kv_budget_tokens)
    for name, path in adapters.items():
        kind = engine.add_adapter(name, path)
        print(f"adapter {name!r} ({kind}) from {path}")
    config = ServerConfig(model_name=args.model, api_key=args.api_key, queue_size=args.queue_size,
                          max_prompt_tokens=args.max_prompt_tokens, max_completion_tokens=args.max_completion_tokens,
                          adapter_root=root)
    app = create_app(engine, config)
    print(f"serving {args.model} + {len(adapters)} adapters on http://{args.host}:{args.port}/v1")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_parser(commands) -> None:
    p = commands.add_parser(
        "serve", help="OpenAI-compatible server: one backbone, many adapters",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve the backbone and its adapters over an OpenAI-compatible API. A request names its "
        "adapter in `model` (or the backbone's own name for the base model). Adapters can be loaded and "
        "unloaded at runtime through /v1/adapters (paths relative to --adapter-dir).")
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local folder or the embedded default")
    p.add_argument("--adapter", action="append", metavar="NAME=PATH", help="serve an adapter (repeatable)")
    p.add_argument("--adapter-dir", help="serve every adapter folder inside by its folder name; also the root "
                   "for runtime loading (default: ./adapters if it exists)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--max-concurrent", type=int, default=32, help="requests decoded together")
    p.add_argument("--queue-size", type=int, default=256, help="waiting requests before 429")
    p.add_argument("--max-prompt-tokens", type=int, default=2048)
    p.add_argument("--max-completion-tokens", type=int, default=1024)
    p.add_argument("--kv-budget-tokens", type=int, default=65536, help="KV cache budget (prompt + max_tokens)")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=run)

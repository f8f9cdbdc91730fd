"""A live server on a free port: a tiny Llama (vocab of the real SmolLM2 tokenizer) with PARA, LoRA and (IA)^3
tenants, run by uvicorn in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import peft
import pytest
import torch
import transformers
import uvicorn
from peft import IA3Config, LoraConfig

from paratune import ParaConfig
from paratune.engine import Engine
from paratune.server.app import ServerConfig, create_app
from tests.tiny_models import LLAMA_LIKE, randomize_adapter

MODEL_NAME = "tiny-llama"
API_KEY = "test-key"


def tiny_backbone(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), **LLAMA_LIKE, tie_word_embeddings=False,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = transformers.LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def write_tenants(tokenizer, root: Path) -> dict[str, Path]:
    paths = {}
    for i, config in enumerate([ParaConfig(), ParaConfig(r=4, pooling="mean", targets=["k", "up"])]):
        model = peft.get_peft_model(tiny_backbone(tokenizer), config)
        randomize_adapter(model, seed=i, scale=0.5)
        paths[f"para{i}"] = root / f"para{i}"
        model.save_pretrained(paths[f"para{i}"])
    lora = peft.get_peft_model(tiny_backbone(tokenizer), LoraConfig(r=8, target_modules=["q_proj", "v_proj"],
                                                                    init_lora_weights=False))
    paths["lora0"] = root / "lora0"
    lora.save_pretrained(paths["lora0"])
    ia3 = peft.get_peft_model(tiny_backbone(tokenizer), IA3Config(target_modules=["k_proj", "down_proj"],
                                                                  feedforward_modules=["down_proj"],
                                                                  init_ia3_weights=False))
    paths["ia3"] = root / "ia3"
    ia3.save_pretrained(paths["ia3"])
    return paths


@dataclass
class LiveServer:
    url: str
    engine: Engine
    app: object
    root: Path
    tenants: dict[str, Path]
    server: uvicorn.Server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_in_thread(app) -> tuple[str, uvicorn.Server, threading.Thread]:
    """Run an ASGI app with uvicorn on a free loopback port in a daemon thread; returns once it is up."""
    port = free_port()
    # keep-alive longer than any idle connection of a test: on a loaded machine a client reusing a pooled
    # connection just as uvicorn closes it (after its default 5 s) gets a ReadError, which is not what tests test
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", timeout_keep_alive=600))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def start(engine: Engine, config: ServerConfig) -> tuple[str, uvicorn.Server, threading.Thread, object]:
    app = create_app(engine, config)
    return (*serve_in_thread(app), app)


def serve_tenants(tmp_path_factory, tokenizer, engine: Engine, **config):
    """Write the tenants, load them into ``engine``, serve it; yields a LiveServer, stops it afterwards."""
    root = tmp_path_factory.mktemp("adapters")
    tenants = write_tenants(tokenizer, root)
    for name, path in tenants.items():
        engine.add_adapter(name, path)
    config = ServerConfig(model_name=MODEL_NAME, api_key=API_KEY, adapter_root=root, **config)
    url, server, thread, app = start(engine, config)
    yield LiveServer(url, engine, app, root, tenants, server)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(tmp_path_factory, chat_tokenizer):
    engine = Engine(tiny_backbone(chat_tokenizer), chat_tokenizer, max_batch=32)
    yield from serve_tenants(tmp_path_factory, chat_tokenizer, engine, queue_size=4096, max_prompt_tokens=256,
                             max_completion_tokens=64, default_max_tokens=16, max_body_bytes=200_000)

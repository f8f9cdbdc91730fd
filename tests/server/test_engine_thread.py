"""The server reads engine state only on the engine thread: every route is called on a live server whose engine
records the thread of each read of its adapter listing and its running batch (the state the engine thread changes
between steps), and every read was made by the engine thread. (Which adapters exist and which are cached is asked
of the adapter store, which is thread-safe by design, from the event loop: ``AsyncEngine``.)"""

from __future__ import annotations

import threading

import httpx
import pytest

from paratune.engine import Engine
from tests.server.conftest import API_KEY, MODEL_NAME, serve_tenants, tiny_backbone

ENGINE_THREAD = "paratune-engine"  # the name AsyncEngine gives its step-loop thread


class RecordingEngine(Engine):
    """Records (what, thread name) for each read of ``adapters()`` and ``running`` while ``watching``."""

    watching = False

    def __init__(self, *args, **kwargs):
        self.reads: list[tuple[str, str]] = []
        super().__init__(*args, **kwargs)

    def _record(self, what: str) -> None:
        if self.watching:
            self.reads.append((what, threading.current_thread().name))

    def adapters(self) -> dict[str, str]:
        self._record("adapters")
        return super().adapters()

    # ``running`` is a property of Engine today; an engine that assigns it as a plain attribute instead is
    # recorded all the same (the setter keeps the value, the getter records every read).
    @property
    def running(self):
        self._record("running")
        if "_recorded_running" in self.__dict__:
            return self.__dict__["_recorded_running"]
        return Engine.running.fget(self)

    @running.setter
    def running(self, value):
        self.__dict__["_recorded_running"] = value


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, chat_tokenizer):
    engine = RecordingEngine(tiny_backbone(chat_tokenizer), chat_tokenizer, max_batch=4)
    yield from serve_tenants(tmp_path_factory, chat_tokenizer, engine, max_completion_tokens=16)


def test_every_route_reads_engine_state_on_the_engine_thread_only(recorded):
    engine = recorded.engine
    engine.watching = True
    with httpx.Client(base_url=recorded.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        answers = [
            http.get("/health"),
            http.get("/metrics"),
            http.get("/v1/models"),
            http.get("/v1/adapters"),
            http.post("/v1/completions", json={"model": "para0", "prompt": "Hi", "max_tokens": 3}),
            http.post("/v1/completions", json={"model": "lora0", "prompt": "Hi", "max_tokens": 3, "stream": True}),
            http.post("/v1/completions", json={"model": "lora0", "prompt": "Hi there", "max_tokens": 1, "echo": True,
                                               "logprobs": 1}),
            http.post("/v1/chat/completions", json={"model": MODEL_NAME, "max_tokens": 3,
                                                    "messages": [{"role": "user", "content": "Hi"}]}),
            http.post("/v1/chat/completions", json={"model": "ia3", "max_tokens": 3, "stream": True,
                                                    "messages": [{"role": "user", "content": "Hi"}]}),
            http.post("/v1/completions", json={"model": "no-such-adapter", "prompt": "Hi"}),
            http.post("/v1/adapters", json={"name": "extra", "path": "lora0"}),
            http.post("/v1/adapters", json={"name": "extra", "path": "lora0"}),
            http.delete("/v1/adapters/extra"),
            http.delete("/v1/adapters/extra"),
            http.get("/health"),
            http.get("/metrics"),
        ]
    engine.watching = False
    assert [a.status_code for a in answers] == [200] * 9 + [404, 200, 409, 200, 404, 200, 200]
    assert {what for what, _ in engine.reads} == {"running"}  # the check saw the reads
    off_thread = [(what, thread) for what, thread in engine.reads if thread != ENGINE_THREAD]
    assert not off_thread, off_thread

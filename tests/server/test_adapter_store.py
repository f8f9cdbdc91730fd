"""A server over an adapter folder: tenants loaded on their first request (the response says hit or miss), a broken
tenant failing alone with the file and the reason, folders added or removed while it runs, paged listings with
residency, and the adapter tiers in /metrics."""

from __future__ import annotations

import shutil

import httpx
import pytest

from paratune.engine import Engine
from paratune.engine.adapters import Backbone
from tests.server.conftest import API_KEY, MODEL_NAME, start, tiny_backbone, write_tenants
from paratune.server.app import ServerConfig

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def folder_server(tmp_path_factory, chat_tokenizer):
    source = tmp_path_factory.mktemp("written")
    tenants = write_tenants(chat_tokenizer, source)
    root = tmp_path_factory.mktemp("adapter-dir")
    for name, path in tenants.items():
        shutil.copytree(path, root / name)
    shutil.copytree(tenants["para0"], root / "broken")
    (root / "broken" / "adapter_model.safetensors").write_bytes(b"garbage")
    backbone = tiny_backbone(chat_tokenizer)
    size = max(Backbone(backbone).estimate_bytes(root / n) for n in tenants)
    # room for the largest adapter: loading another evicts the least recently used
    engine = Engine(backbone, chat_tokenizer, max_batch=4, adapter_dir=root, adapter_cache_bytes=size,
                    max_active_adapters=2)
    config = ServerConfig(model_name=MODEL_NAME, api_key=API_KEY, adapter_root=root, max_completion_tokens=16)
    url, server, thread, app = start(engine, config)
    yield url, root, source, engine
    server.should_exit = True
    thread.join(timeout=10)


def complete(url, model, stream=False):
    body = {"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0, "stream": stream}
    return httpx.post(url + "/v1/completions", json=body, headers=AUTH, timeout=60)


def test_first_request_loads_the_tenant_and_says_so(folder_server):
    url, root, _, engine = folder_server
    first, second = complete(url, "para1"), complete(url, "para1", stream=True)
    assert first.status_code == 200 and first.headers["paratune-adapter-cache"] == "miss"
    assert second.status_code == 200 and second.headers["paratune-adapter-cache"] == "hit"
    base = complete(url, MODEL_NAME)
    assert base.status_code == 200 and "paratune-adapter-cache" not in base.headers


def test_a_broken_adapter_fails_its_own_requests_with_the_file_and_others_are_served(folder_server):
    url, root, _, _ = folder_server
    broken = complete(url, "broken")
    assert broken.status_code == 400
    error = broken.json()["error"]
    assert error["code"] == "adapter_invalid" and error["param"] == "model"
    assert error["message"].startswith(f"adapter 'broken' cannot be served: {root / 'broken' / 'adapter_model.safetensors'}"
                                       " is not a readable safetensors file")
    assert complete(url, "lora0").status_code == 200
    assert complete(url, "broken", stream=True).status_code == 400  # remembered, same answer


def test_folders_added_while_serving_are_served_and_removed_ones_get_404(folder_server):
    url, root, source, _ = folder_server
    assert complete(url, "newcomer").status_code == 404
    shutil.copytree(source / "ia3", root / "newcomer")
    answer = complete(url, "newcomer")
    assert answer.status_code == 200 and answer.headers["paratune-adapter-cache"] == "miss"
    shutil.rmtree(root / "newcomer")
    gone = complete(url, "newcomer")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_listings_page_through_every_adapter_with_where_it_is(folder_server):
    url, root, _, engine = folder_server
    complete(url, "para0")
    names = sorted(p.name for p in root.iterdir())
    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = httpx.get(url + "/v1/adapters", params=params, headers=AUTH).json()
        seen += page["data"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert [a["id"] for a in seen] == names
    where = {a["id"]: a["resident"] for a in seen}
    assert where["para0"] == "device" and where["broken"] is None
    assert {a["id"]: a["type"] for a in seen}["lora0"] == "LORA"
    resident = httpx.get(url + "/v1/adapters", params={"resident": "true"}, headers=AUTH).json()["data"]
    assert {a["id"] for a in resident} == {n for n, w in where.items() if w} and "para0" in {a["id"] for a in resident}
    models = httpx.get(url + "/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == [MODEL_NAME, *names] and models["has_more"] is False
    bad = httpx.get(url + "/v1/adapters", params={"limit": 0}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["message"] == "limit must be between 1 and 10000, got 0"


def test_metrics_show_loads_hits_misses_evictions_and_residency(folder_server):
    url, root, _, engine = folder_server
    for name in ("para0", "para1", "lora0", "ia3", "para0"):  # five requests, four tenants, a cache of one large one
        assert complete(url, name).status_code == 200
    text = httpx.get(url + "/metrics").text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("paratune_adapter")}
    assert values['paratune_adapter_loads_total{adapter="para0"}'] >= 1
    assert values["paratune_adapter_cache_hits_total"] + values["paratune_adapter_cache_misses_total"] >= 5
    assert values['paratune_adapter_evictions_total{tier="host"}'] >= 1
    assert values['paratune_adapters_resident{tier="host"}'] <= 2
    assert values['paratune_adapter_resident_bytes{tier="host"}'] <= values['paratune_adapter_capacity{tier="host"}']
    assert values['paratune_adapters_resident{tier="device"}'] <= 2
    assert values["paratune_adapters_available"] == len(list(root.iterdir()))
    assert values["paratune_adapter_load_seconds_count"] == sum(v for k, v in values.items()
                                                                if k.startswith("paratune_adapter_loads_total"))


def test_serve_flags_for_the_adapter_tiers_are_checked():
    from paratune.server.serve_config import ServeConfig

    assert ServeConfig(adapter_cache_bytes="1.5GiB").cache_bytes == 3 * 2 ** 29
    assert ServeConfig(adapter_cache_bytes="500MB").cache_bytes == 500_000_000
    assert ServeConfig(adapter_cache_bytes=4096).cache_bytes == 4096
    with pytest.raises(ValueError) as error:
        ServeConfig(adapter_cache_bytes="lots")
    assert str(error.value) == ("adapter_cache_bytes must be a size in bytes: a positive integer or a number with a "
                                "unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. 2GiB; got 'lots'")
    with pytest.raises(ValueError, match="^max_active_adapters must be a positive integer, got 0$"):
        ServeConfig(max_active_adapters=0)


def test_preload_fills_the_cache_and_the_budget_names_every_part(folder_server, chat_tokenizer):
    from paratune.server.launch import memory_budget, preload
    from paratune.server.serve_config import ServeConfig

    _, root, _, _ = folder_server
    backbone = tiny_backbone(chat_tokenizer)
    sizes = {p.name: Backbone(backbone).estimate_bytes(p) for p in root.iterdir() if p.name != "broken"}
    engine = Engine(backbone, chat_tokenizer, max_batch=2, adapter_dir=root,
                    adapter_cache_bytes=sizes["ia3"] + sizes["lora0"])
    assert preload(engine, ["ia3", "lora0", "para0"]) == 2 and engine.store.resident() == ["ia3", "lora0"]
    line = memory_budget(engine, backbone, engine.available(), ServeConfig(adapter_cache_bytes=4096))
    assert line.startswith("memory budget: ") and all(part in line for part in (
        "model", "packed weights", "KV cache", "adapter cache 0.00", "adapter slot tables", "runtime + working margin"))


def test_a_cache_full_of_adapters_in_use_answers_503_with_retry_after(folder_server, monkeypatch):
    from paratune.engine.adapters import AdapterCacheFull, AdapterCatalog, AdapterStore, store as store_module
    from paratune.server.errors import adapter_failed

    _, root, _, engine = folder_server
    monkeypatch.setattr(store_module, "WAIT_FOR_SPACE_S", 0.2)
    backbone = engine.store.backbone
    store = AdapterStore(backbone, AdapterCatalog(root), capacity_bytes=backbone.estimate_bytes(root / "para0"))
    store.hold("para0").result()  # held: cannot be evicted
    with pytest.raises(AdapterCacheFull, match="every cached adapter is in use by running or queued requests") as e:
        store.hold("para1").result()
    error = adapter_failed("para1", e.value)
    assert (error.status, error.code, error.headers) == (503, "adapter_cache_full", {"Retry-After": "1"})
    store.release("para0")
    store.release("para1")
    assert store.hold("para1").result().kind == "PARA"  # once released, the next try fits

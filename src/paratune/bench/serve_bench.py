"""`paratune bench serve`: decode throughput of many tenants in one batch, PARA vs LoRA vs the base model.

Every engine method runs in the same engine on the same backbone; PEFT's own mixed-adapter LoRA ``generate``
is the outside reference. Methods are interleaved within each repeat so that machine noise hits them alike,
and ratios are computed per repeat (median and min-max over repeats are reported).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel

from ..engine import Engine, Request, SamplingParams
from ..models import load_backbone
from ..para import ParaConfig

SHAPES = {
    "smollm2-135m": "real SmolLM2-135M-Instruct (30 layers, d=576)",
    "llama-430m-random": "random-weight Llama shape: 24 layers, d=1024, ffn 2816, 16 heads / 4 KV heads, vocab 32000",
}


@dataclass
class BenchConfig:
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    prompt_len: int = 64
    new_tokens: int = 32
    repeats: int = 3
    prefill_len: int = 512
    prefill_batch: int = 4
    many_adapters: int = 1000
    peft_reference: bool = True
    profile: bool = True
    device: str = "cpu"
    output: str = "docs/results"


def _backbone(shape: str, device: str):
    if shape == "smollm2-135m":
        backbone = load_backbone("smollm2-135m-instruct", device=device)
        return backbone.model, backbone.tokenizer
    if shape == "llama-430m-random":
        torch.manual_seed(0)
        config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                                          num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=4,
                                          max_position_embeddings=4096, tie_word_embeddings=False)
        return transformers.LlamaForCausalLM(config).to(device).eval(), None
    raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")


def _write_adapters(model, kind: str, n: int, root: Path) -> list[Path]:
    """n adapters with distinct random weights, written in PEFT format; the model is left unchanged."""
    if kind == "para":
        peft_model = peft.get_peft_model(model, ParaConfig(r=16, targets=["q", "v", "up"]))
        marker = ".generators.default."
    else:
        peft_model = peft.get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
            "q_proj", "v_proj", "up_proj"], init_lora_weights=False))
        marker = ".lora_"
    paths = []
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in range(n):
            for name, param in peft_model.named_parameters():
                if marker in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            paths.append(root / f"{kind}{i}")
            peft_model.save_pretrained(paths[-1])
    peft_model.unload()
    model.__dict__.pop("peft_config", None)  # unload leaves PEFT's config behind; the next wrap would warn
    return paths


def _requests(n: int, adapters: list[str | None], cfg: BenchConfig, vocab: int, seed: int, length=None,
              new_tokens=None):
    g = torch.Generator().manual_seed(seed)
    length = length or cfg.prompt_len
    return [Request(torch.randint(10, vocab - 10, (length,), generator=g).tolist(), adapters[i % len(adapters)],
                    SamplingParams(max_tokens=new_tokens or cfg.new_tokens, ignore_eos=True)) for i in range(n)]


def _run_engine(engine: Engine, requests: list[Request]) -> dict:
    engine.stats.clear()
    start = time.perf_counter()
    engine.generate(requests)
    s = engine.stats
    return {"decode_tok_s": s["decode_tokens"] / s["decode_seconds"], "step_ms": 1000 * s["decode_seconds"]
            / s["decode_steps"], "prefill_s": s["prefill_seconds"], "wall_s": time.perf_counter() - start}


def _run_peft(peft_model, requests: list[Request], adapters: list[str]) -> dict:
    """PEFT's mixed-batch LoRA generate; decode time = time(n tokens) - time(1 token) (the prefill)."""
    ids = torch.tensor([r.prompt_ids for r in requests], device=peft_model.device)
    names = [adapters[i % len(adapters)] for i in range(len(requests))]
    n = requests[0].params.max_tokens
    with torch.inference_mode():
        t0 = time.perf_counter()
        mask = torch.ones_like(ids)
        peft_model.generate(input_ids=ids, attention_mask=mask, adapter_names=names, max_new_tokens=1,
                            do_sample=False)
        t1 = time.perf_counter()
        peft_model.generate(input_ids=ids, attention_mask=mask, adapter_names=names, max_new_tokens=n,
                            min_new_tokens=n, do_sample=False)
        t2 = time.perf_counter()
    decode = (t2 - t1) - (t1 - t0)
    return {"decode_tok_s": len(requests) * (n - 1) / decode, "step_ms": 1000 * decode / (n - 1),
            "prefill_s": t1 - t0, "wall_s": t2 - t1}


def _profile(engine: Engine, requests: list[Request], steps: int = 5) -> list[dict]:
    for request in requests:
        engine.add_request(request)
    engine.step()  # prefill
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
    while engine.has_work():
        engine.step()
    rows = []
    for event in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]:
        rows.append({"op": event.key, "self_ms_per_step": event.self_cpu_time_total / 1000 / steps,
                     "calls_per_step": event.count / steps})
    return rows


def bench_shape(shape: str, cfg: BenchConfig, log=print) -> dict:
    model, tokenizer = _backbone(shape, cfg.device)
    vocab = model.config.vocab_size
    n = max(cfg.concurrency)
    result = {"shape": shape, "description": SHAPES[shape], "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        para_paths = _write_adapters(model, "para", n, root)
        lora_paths = _write_adapters(model, "lora", n, root)
        engine = Engine(model, tokenizer, max_batch=n, kv_budget_tokens=10**9)
        for i in range(n):
            engine.add_adapter(f"para{i}", para_paths[i])
            engine.add_adapter(f"lora{i}", lora_paths[i])
        peft_model = None
        if cfg.peft_reference:
            reference, _ = _backbone(shape, cfg.device)
            peft_model = PeftModel.from_pretrained(reference, lora_paths[0], adapter_name="lora0")
            for i in range(1, n):
                peft_model.load_adapter(lora_paths[i], adapter_name=f"lora{i}")
            peft_model.eval()
        methods = {"base": [None], "para": [f"para{i}" for i in range(n)], "lora": [f"lora{i}" for i in range(n)]}
        for repeat in range(cfg.repeats):
            for conc in cfg.concurrency:
                for method, names in methods.items():
                    stats = _run_engine(engine, _requests(conc, names[:conc], cfg, vocab, seed=repeat))
                    result["runs"].append({"repeat": repeat, "concurrency": conc, "method": method, **stats})
                    log(f"[{shape}] repeat {repeat} conc {conc:>3} {method:<5} {stats['decode_tok_s']:8.1f} tok/s "
                        f"{stats['step_ms']:7.1f} ms/step")
                if peft_model is not None:
                    stats = _run_peft(peft_model, _requests(conc, ["x"], cfg, vocab, seed=repeat),
                                      [f"lora{i}" for i in range(conc)])
                    result["runs"].append({"repeat": repeat, "concurrency": conc, "method": "peft-lora", **stats})
                    log(f"[{shape}] repeat {repeat} conc {conc:>3} peft-lora {stats['decode_tok_s']:8.1f} tok/s")
        del peft_model
        # Prefill with and without the generator, long prompts.
        prefill = []
        for repeat in range(cfg.repeats):
            for method, names in (("base", [None]), ("para", methods["para"])):
                reqs = _requests(cfg.prefill_batch, names[: cfg.prefill_batch], cfg, vocab, seed=100 + repeat,
                                 length=cfg.prefill_len, new_tokens=1)
                prefill.append({"repeat": repeat, "method": method, **_run_engine_prefill(engine, reqs)})
        result["prefill"] = prefill
        log(f"[{shape}] prefill {cfg.prefill_batch}x{cfg.prefill_len}: " + ", ".join(
            f"{p['method']} {p['prefill_s']:.3f}s" for p in prefill))
        if cfg.profile:
            result["profile"] = {m: _profile(engine, _requests(n, names[:n], cfg, vocab, seed=7))
                                 for m, names in methods.items()}
        if cfg.many_adapters and shape == cfg.shapes[0]:
            result["many_adapters"] = _bench_many(engine, model, root, cfg, vocab, n, log)
    return result


def _run_engine_prefill(engine: Engine, requests: list[Request]) -> dict:
    engine.stats.clear()
    engine.generate(requests)
    return {"prefill_s": engine.stats["prefill_seconds"]}


def _bench_many(engine: Engine, model, root: Path, cfg: BenchConfig, vocab: int, n: int, log) -> dict:
    """PARA decode throughput with 1 registered adapter (all rows share it) vs ``many_adapters`` registered."""
    runs = []
    for name in list(engine.bank.adapters):
        engine.remove_adapter(name)
    path = _write_adapters(model, "para", 1, root / "one")[0]
    engine.add_adapter("only", path)
    for repeat in range(cfg.repeats):
        runs.append({"repeat": repeat, "registered": 1,
                     **_run_engine(engine, _requests(n, ["only"], cfg, vocab, seed=repeat))})
    start = time.perf_counter()
    for i in range(cfg.many_adapters - 1):
        engine.add_adapter(f"t{i}", path)
    load_s = time.perf_counter() - start
    names = [f"t{i}" for i in range(0, cfg.many_adapters - 1, max(1, (cfg.many_adapters - 1) // n))][:n]
    for repeat in range(cfg.repeats):
        runs.append({"repeat": repeat, "registered": cfg.many_adapters,
                     **_run_engine(engine, _requests(n, names, cfg, vocab, seed=repeat))})
    log(f"many adapters: loaded {cfg.many_adapters - 1} in {load_s:.1f}s; " + ", ".join(
        f"{r['registered']}: {r['decode_tok_s']:.1f} tok/s" for r in runs))
    return {"load_seconds": load_s, "runs": runs}


# ----- summary -------------------------------------------------------------------------------------------
def _ratios(runs: list[dict], conc: int, a: str, b: str) -> list[float]:
    by = {(r["repeat"], r["method"]): r["decode_tok_s"] for r in runs if r["concurrency"] == conc}
    repeats = sorted({r["repeat"] for r in runs})
    return [by[(k, a)] / by[(k, b)] for k in repeats if (k, a) in by and (k, b) in by]


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def summarize(results: list[dict], cfg: BenchConfig) -> dict:
    summary = {}
    top = max(cfg.concurrency)
    for res in results:
        s = {}
        for conc in cfg.concurrency:
            s[f"para/base@{conc}"] = _ratios(res["runs"], conc, "para", "base")
            s[f"para/lora@{conc}"] = _ratios(res["runs"], conc, "para", "lora")
            s[f"para/peft-lora@{conc}"] = _ratios(res["runs"], conc, "para", "peft-lora")
        base = [p["prefill_s"] for p in res["prefill"] if p["method"] == "base"]
        para = [p["prefill_s"] for p in res["prefill"] if p["method"] == "para"]
        s["prefill_overhead"] = [p / b - 1 for p, b in zip(para, base)]
        if "many_adapters" in res:
            runs = res["many_adapters"]["runs"]
            one = {r["repeat"]: r["decode_tok_s"] for r in runs if r["registered"] == 1}
            many = {r["repeat"]: r["decode_tok_s"] for r in runs if r["registered"] != 1}
            s["many/one"] = [many[k] / one[k] for k in one if k in many]
        s["top_concurrency"] = top
        summary[res["shape"]] = s
    return summary


def write_report(results: list[dict], cfg: BenchConfig, command: str) -> None:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, cfg)
    meta = {"command": command, "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "machine": platform.machine(),
            "processor": platform.processor(), "cpus": torch.get_num_threads(), "device": cfg.device,
            "config": cfg.__dict__}
    (out / "serve.json").write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=1))
    from .plots import throughput_plot

    throughput_plot(results, cfg.concurrency, out / "serve.png")
    lines = ["# Serving benchmark: many tenants in one batch", "",
             f"Command: `{command}`  ", f"Machine: {meta['machine']} {meta['processor']}, {meta['cpus']} torch "
             f"threads, device {cfg.device}; torch {meta['torch']}, transformers {meta['transformers']}, "
             f"peft {meta['peft']}.", "",
             f"Each request: {cfg.prompt_len}-token random prompt, {cfg.new_tokens} new tokens (greedy, EOS "
             f"ignored); at concurrency N, N requests each on a distinct adapter (PARA r=16 on q,v,up; LoRA r=16 "
             f"on q,v,up); base = no adapter. Decode throughput = generated tokens / decode time. Ratios are "
             f"per repeat; shown as median (min-max) over {cfg.repeats} repeats.", ""]
    for res in results:
        s = summary[res["shape"]]
        lines += [f"## {res['shape']}: {res['description']}", "", "| concurrency | method | decode tok/s "
                  "(median) | ms per step (median) |", "|---|---|---|---|"]
        for conc in cfg.concurrency:
            for method in ("base", "para", "lora", "peft-lora"):
                rows = [r for r in res["runs"] if r["concurrency"] == conc and r["method"] == method]
                if rows:
                    lines.append(f"| {conc} | {method} | {statistics.median(r['decode_tok_s'] for r in rows):.1f} "
                                 f"| {statistics.median(r['step_ms'] for r in rows):.1f} |")
        lines += ["", "| ratio | value: median (min-max) |", "|---|---|"]
        for key, values in s.items():
            if isinstance(values, list):
                lines.append(f"| {key} | {_spread(values)} |")
        if "many_adapters" in res:
            lines.append(f"\n{cfg.many_adapters} PARA adapters registered in {res['many_adapters']['load_seconds']:.1f}"
                         " s (loaded from disk).")
        if "profile" in res:
            lines += ["", f"Profile of {5} decode steps at concurrency {max(cfg.concurrency)} (top ops by self CPU "
                      "time, ms per step):", ""]
            for method, rows in res["profile"].items():
                lines.append(f"- **{method}**: " + "; ".join(
                    f"{r['op']} {r['self_ms_per_step']:.1f} ({r['calls_per_step']:.0f} calls)" for r in rows))
        lines.append("")
    (out / "serve.md").write_text("\n".join(lines))


def run(cfg: BenchConfig, command: str) -> dict:
    results = [bench_shape(shape, cfg) for shape in cfg.shapes]
    write_report(results, cfg, command)
    return summarize(results, cfg)

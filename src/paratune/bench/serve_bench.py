"""`paratune bench serve`: what a user of a multi-tenant server sees, against llama.cpp and vLLM on the same machine.

Systems (``--systems``):

- ``engine``: decode-only throughput inside our engine (``Engine.generate``; decode tokens / decode seconds
  from ``engine.stats``), plus the PARA generator's prefill overhead at long prompts and, optionally, PEFT's
  own mixed-batch LoRA ``generate`` as a reference;
- ``llama-batched-bench``: llama.cpp's decode-only counterpart on the same weights in the same precision
  (``--dtype``: F32, BF16 or F16 GGUF; ``S_TG``);
- ``paratune``: end to end through ``paratune serve`` started as a subprocess, loaded by the HTTP load
  generator (``http_load``): closed loop at each concurrency N, and Poisson arrivals;
- ``llama-server``: the same HTTP workloads on llama.cpp's server, base and with one distinct LoRA per
  client (per-request ``lora`` field, all LoRAs loaded with ``--lora-init-without-apply``);
- ``vllm-cpu``: the same HTTP workloads on vLLM's OpenAI server, CPU backend (``bench.vllm_cpu``), base and with
  one distinct LoRA per client (request ``model`` = the adapter's name, every LoRA loaded at start with
  ``--lora-modules``). Base and LoRA get a server each: with LoRA enabled vLLM's CPU backend turns torch.compile
  off, so its base model is measured on a server without LoRA.

Kinds (``--kinds``): ``base`` (no adapter), ``para`` and ``lora`` (random-weight adapters, r=16 on q, v, up,
one distinct adapter per concurrent client; ``bench.adapters``). llama.cpp and vLLM have no PARA, so they run base
and LoRA.

``--compare-src DIR`` adds the system ``paratune@compare``: the same HTTP workload on ``paratune serve`` started
from another source tree (``PYTHONPATH=DIR/src``, e.g. ``git worktree add /tmp/before <commit>``), with the same
interpreter, flags and adapters, run right after ``paratune`` in every repeat; the report gives this tree's
throughput over that tree's (after / before) per kind and concurrency.

Within each repeat the systems alternate (ours, llama.cpp, vLLM, ours, llama.cpp, vLLM) so that machine noise hits
all alike; the report gives medians and the min-max spread over repeats, and ratios computed within a repeat.
The llama.cpp peer is built once and cached (``bench.llama_cpp``), and so is vLLM's venv (``bench.vllm_cpu``);
neither is ever set up in the test suite.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .adapters import write_adapters

SYSTEMS = ("engine", "llama-batched-bench", "paratune", "llama-server", "vllm-cpu")
# vllm-cpu is opt-in: it installs vLLM into a venv of its own, and each of its servers takes minutes to start
DEFAULT_SYSTEMS = ("engine", "llama-batched-bench", "paratune", "llama-server")
COMPARE = "paratune@compare"  # `paratune serve` from the --compare-src tree (a system of its own in the records)
VLLM = "vllm-cpu"
# vLLM imports torch, loads the model and, without LoRA, compiles it with torch.compile before /health answers:
# minutes on a small CPU, more when other work shares its cores.
VLLM_START_TIMEOUT_S = 1800
KINDS = ("base", "para", "lora")
MODES = ("closed", "poisson")
ENGINE_MODELS = {
    "smollm2-135m": "real SmolLM2-135M-Instruct (30 layers, d=576), the model every system serves",
    "llama-430m-random": "random-weight Llama: 24 layers, d=1024, ffn 2816, 16 heads / 4 KV heads, vocab 32000",
    "llama-8b-random": "random-weight Llama-3-8B shape: 32 layers, d=4096, ffn 14336, 32 heads / 8 KV heads, "
                       "vocab 128256 (for --device cuda)",
}


def _check(name, value, ok, accepted):
    if not ok:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def _int(value, minimum):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class BenchConfig:
    """``paratune bench serve``: every field is a flag (``--poisson-rates`` is ``poisson_rates``)."""

    systems: list[str] = field(default_factory=lambda: list(DEFAULT_SYSTEMS), metadata=_help(
        "what to run: engine (decode only), llama-batched-bench, paratune (our HTTP server), llama-server, "
        "vllm-cpu (vLLM's OpenAI server, CPU backend; only when named: its servers take minutes to start)"))
    kinds: list[str] = field(default_factory=lambda: list(KINDS), metadata=_help(
        "base (no adapter), para, lora (r=16 on q,v,up; one distinct adapter per concurrent client)"))
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32, 64], metadata=_help(
        "concurrent requests (closed loop) and batch sizes (decode only)"))
    modes: list[str] = field(default_factory=lambda: list(MODES), metadata=_help(
        "HTTP arrival patterns: closed (N clients back to back), poisson (open loop at --poisson-rates)"))
    poisson_rates: list[float] = field(default_factory=lambda: [1.0], metadata=_help(
        "Poisson arrival rates, requests/s"))
    poisson_requests: int = field(default=32, metadata=_help("requests per Poisson run (0 skips)"))
    repeats: int = field(default=3, metadata=_help("repeats; systems alternate within each"))
    prompt_len: int = field(default=64, metadata=_help("prompt tokens per request"))
    new_tokens: int = field(default=32, metadata=_help(
        "tokens generated per request (max_tokens, EOS ignored where the server allows it)"))
    requests_per_client: int = field(default=2, metadata=_help("requests each closed-loop client sends"))
    min_requests: int = field(default=4, metadata=_help("fewest requests per closed-loop run"))
    threads: int = field(default=2, metadata=_help(
        "CPU threads for llama.cpp, for our engine/server and for vLLM (its OpenMP threads, bound to the first "
        "THREADS cores this process may use)"))
    stream: bool = field(default=False, metadata=_help("stream responses (adds time to first token)"))
    prefill_len: int = field(default=512, metadata=_help("prompt length of the PARA prefill-overhead check"))
    prefill_batch: int = field(default=4, metadata=_help("prompts of the prefill-overhead check"))
    peft_reference: bool = field(default=False, metadata=_help(
        "also time PEFT's mixed-batch LoRA generate (decode only)"))
    engine_model: str = field(default="smollm2-135m", metadata=_help(
        "backbone of the decode-only engine run (random Llama shapes only with --systems engine)"))
    device: str = field(default="cpu", metadata=_help("device of the decode-only engine run"))
    dtype: str = field(default="float32", metadata=_help(
        "float32, bfloat16 or float16: every paratune run, llama.cpp's base GGUF in the same precision "
        "(F32, BF16, F16) and vLLM's --dtype"))
    llama_cpp_version: str = field(default="", metadata=_help(
        "llama-cpp-python sdist whose vendored llama.cpp is built and cached (empty: the pinned version, "
        "bench/llama_cpp.py LLAMA_CPP_PYTHON_VERSION)"))
    output: str = field(default_factory=lambda: f"docs/results/serve/{time.strftime('%Y-%m-%d')}", metadata=_help(
        "folder for serve.md / serve.json / serve.png (default: docs/results/serve/<today>)"))
    compare_src: Optional[str] = field(default=None, metadata=_help(
        "root of another paratune source tree (e.g. `git worktree add /tmp/before <commit>`): also run the HTTP "
        "workload on its `paratune serve` (system paratune@compare), right after ours in every repeat, and report "
        "this tree / that tree per kind and concurrency"))

    def __post_init__(self):
        from .llama_cpp import LLAMA_CPP_PYTHON_VERSION

        self.llama_cpp_version = self.llama_cpp_version or LLAMA_CPP_PYTHON_VERSION
        for name, allowed in (("systems", SYSTEMS), ("kinds", KINDS), ("modes", MODES)):
            value = getattr(self, name)
            _check(name, value, isinstance(value, list) and bool(value) and all(v in allowed for v in value),
                   f"a non-empty list of {', '.join(allowed)}")
        _check("concurrency", self.concurrency, isinstance(self.concurrency, list) and bool(self.concurrency)
               and all(_int(c, 1) for c in self.concurrency), "a non-empty list of positive integers")
        _check("poisson_rates", self.poisson_rates, isinstance(self.poisson_rates, list) and all(
            isinstance(r, (int, float)) and r > 0 for r in self.poisson_rates), "a list of positive rates (req/s)")
        for name in ("repeats", "prompt_len", "new_tokens", "requests_per_client", "min_requests", "threads",
                     "prefill_len", "prefill_batch"):
            _check(name, getattr(self, name), _int(getattr(self, name), 1), "a positive integer")
        _check("poisson_requests", self.poisson_requests, _int(self.poisson_requests, 0), "an integer >= 0 (0 skips)")
        _check("engine_model", self.engine_model, self.engine_model in ENGINE_MODELS, ", ".join(ENGINE_MODELS))
        _check("device", self.device, isinstance(self.device, str) and self.device.split(":")[0] in
               ("cpu", "cuda", "mps", "xpu"), "cpu, cuda (or cuda:N), mps or xpu")
        _check("dtype", self.dtype, self.dtype in ("float32", "bfloat16", "float16"), "float32, bfloat16 or float16")
        _check("output", self.output, isinstance(self.output, str) and bool(self.output.strip()), "a folder path")
        if self.compare_src is not None:
            self.compare_src = _source_tree(self.compare_src, self.systems)
        if self.engine_model != "smollm2-135m" and set(self.systems) - {"engine"}:
            raise ValueError(f"engine_model {self.engine_model!r} runs only with --systems engine (the servers and "
                             "llama.cpp serve SmolLM2-135M)")

    @property
    def sorted_levels(self) -> list[int]:
        return sorted(set(self.concurrency))


def _source_tree(value, systems: list[str]) -> str:
    """``value`` as an absolute path, checked to be the root of a paratune source tree (``src/paratune/``)."""
    _check("compare_src", value, isinstance(value, str) and bool(value.strip()), "a folder path")
    root = Path(value).expanduser().resolve()
    if not (root / "src" / "paratune" / "__init__.py").is_file():
        raise ValueError(f"compare_src must be the root of a paratune source tree, with src/paratune/ in it (e.g. "
                         f"made by `git worktree add /tmp/before <commit>`), got {value!r}: "
                         f"{root / 'src' / 'paratune' / '__init__.py'} does not exist")
    if "paratune" not in systems:
        raise ValueError(f"compare_src compares paratune servers, so systems must include 'paratune', got {systems!r}")
    return str(root)


# ----- workload --------------------------------------------------------------------------------------------
def word_pool(tokenizer) -> list[str]:
    """Vocabulary entries that are one lowercase word with a leading space (' house'): joined, n of them
    tokenise to exactly n tokens, so a prompt has an exact length on both servers (same vocabulary)."""
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        text = tokenizer.convert_tokens_to_string([token])
        if text.startswith(" ") and text[1:].isalpha() and text[1:].islower() and 3 <= len(text) <= 10:
            words.append(text)
    return words


def _seed(key) -> int:
    """A seed from any repr-able key, the same in every process (str hashes are randomised per process)."""
    return int(hashlib.sha256(repr(key).encode()).hexdigest()[:12], 16)


def make_prompts(tokenizer, words: list[str], n: int, length: int, seed) -> list[str]:
    """``n`` distinct prompts of exactly ``length`` tokens (checked; the first word loses its space)."""
    rng = random.Random(_seed(seed))
    prompts = []
    for _ in range(n):
        for _attempt in range(20):
            text = "".join(rng.choice(words) for _ in range(length)).lstrip()
            if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == length:
                break
        prompts.append(text)
    return prompts


def paratune_body(prompt: str, adapter: str, cfg: BenchConfig) -> dict:
    # `ignore_eos` is vLLM's name; a server whose schema ignores unknown fields may still stop at EOS, which the
    # report counts as short requests (tokens are counted from `usage` either way).
    return {"model": adapter, "prompt": prompt, "max_tokens": cfg.new_tokens, "temperature": 0.0,
            "ignore_eos": True}


def llama_body(prompt: str, lora_id: int | None, cfg: BenchConfig) -> dict:
    return {"model": "x", "prompt": prompt, "max_tokens": cfg.new_tokens, "n_predict": cfg.new_tokens,
            "temperature": 0.0, "ignore_eos": True,
            "lora": [] if lora_id is None else [{"id": lora_id, "scale": 1.0}]}


def n_requests(concurrency: int, cfg: BenchConfig) -> int:
    return max(concurrency * cfg.requests_per_client, cfg.min_requests)


# ----- adapters ----------------------------------------------------------------------------------------------
def lora_ggufs(llama, lora_paths: list[Path], log) -> list[Path]:
    """GGUF of each LoRA folder, cached by the hash of its weights (conversion takes seconds per adapter)."""
    from .llama_cpp import lora_gguf

    out_dir = llama.root / "loras"
    out_dir.mkdir(parents=True, exist_ok=True)
    outs = []
    start = time.time()
    for path in lora_paths:
        digest = hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]
        out = out_dir / f"{path.name}-{digest}.gguf"
        if not out.is_file():
            log(f"converting {path.name} to GGUF")
        outs.append(lora_gguf(llama, path, out))
    log(f"{len(outs)} LoRA GGUFs ready in {time.time() - start:.0f} s")
    return outs


# ----- servers ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slot_tokens(cfg: BenchConfig) -> int:
    """Tokens per KV slot, for our engine and server: the longest prompt (the workload's or the prefill check's)
    + the new tokens + 64 (llama-server's per-slot context is prompt + new + 64 too)."""
    return max(cfg.prompt_len, cfg.prefill_len) + cfg.new_tokens + 64


# `paratune.cli.main` is the entry point both where cli is a module and where it is a package, so one launcher
# starts the server of this tree and of an older --compare-src tree alike.
SERVER_LAUNCHER = "import sys; from paratune.cli import main; sys.exit(main())"


def paratune_server_command(adapter_dir: Path, port: int, max_concurrent: int, cfg: BenchConfig) -> list[str]:
    budget = max(65536, max_concurrent * (cfg.prompt_len + cfg.new_tokens + 64) * 2)
    return [sys.executable, "-c", SERVER_LAUNCHER, "serve", "--adapter-dir", str(adapter_dir), "--port", str(port),
            "--max-concurrent", str(max_concurrent), "--queue-size", "100000",
            "--max-completion-tokens", str(max(cfg.new_tokens, 1024)), "--kv-budget-tokens", str(budget),
            "--max-seq-len", str(slot_tokens(cfg)), "--dtype", cfg.dtype, "--timeout-keep-alive", "600"]


def compare_env(src: str, env: dict) -> dict:
    """``env`` with ``src``/src first on PYTHONPATH: ahead of this tree's editable install, so ``import paratune``
    in the subprocess loads the compare tree's package."""
    path = str(Path(src) / "src")
    return {**env, "PYTHONPATH": os.pathsep.join([path, *filter(None, [env.get("PYTHONPATH")])])}


def source_info(root: Path, env: dict | None = None) -> dict:
    """Which paratune a server started with ``env`` imports, and the git commit of ``root`` (None outside git)."""
    probe = subprocess.run([sys.executable, "-c", "import paratune; print(paratune.__file__)"], env=env,
                           capture_output=True, text=True)
    commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=10"],
                            capture_output=True, text=True) if shutil.which("git") else None
    return {"src": str(root), "imports": probe.stdout.strip() or probe.stderr.strip()[-500:],
            "commit": commit.stdout.strip() if commit is not None and commit.returncode == 0 else None}


def _started(pid: int) -> str | None:
    """Start time of ``pid`` (/proc/<pid>/stat field 22), None when it is gone: with the pid it names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tree(pid: int) -> list[tuple[int, str]]:
    """The descendants of ``pid`` as (pid, start time), from /proc (Linux; empty elsewhere)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for child in map(int, children.read_text().split()):
                    started = _started(child)
                    if started is not None:
                        found.append((child, started))
                        todo.append(child)
    return found


@contextlib.contextmanager
def server_process(cmd: list[str], url: str, log_path: Path, env: dict | None = None, timeout: float = 600,
                   stop_tree: bool = False):
    """Start ``cmd``, wait until ``url``/health answers 200, yield, then stop it (SIGTERM, then SIGKILL).

    ``stop_tree``: also SIGKILL whatever descendants of the server outlive it (a server that runs its engine in
    child processes, like vLLM, stops them itself on SIGTERM, but not when it is killed)."""
    import httpx

    with open(log_path, "w") as logf:
        # same process group as the benchmark: stopping the benchmark's group stops its servers too
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}\n"
                                       + log_path.read_text()[-3000:])
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"server not healthy after {timeout:.0f} s: {' '.join(cmd)}\n"
                                       + log_path.read_text()[-3000:])
                time.sleep(0.3)
            yield proc
        finally:
            tree = process_tree(proc.pid) if stop_tree else []  # listed while the server still holds them
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for pid, started in tree:
                if _started(pid) == started:  # still that process (not a new one that got its pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


# ----- measurements ----------------------------------------------------------------------------------------
class Bench:
    def __init__(self, cfg: BenchConfig, log=print):
        self.cfg = cfg
        self.log = log
        self.runs: list[dict] = []
        self.notes: list[str] = []
        self.llama = None
        self.vllm_info = None
        self.vllm_startup: list[dict] = []  # seconds from start to /health per vLLM server (start-up is minutes)
        self.workdir = Path(tempfile.mkdtemp(prefix="paratune-bench-serve-"))

    # -- setup
    def setup(self) -> None:
        import torch

        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        needs_smollm = cfg.engine_model == "smollm2-135m" or set(cfg.systems) - {"engine"}
        self.model = self.tokenizer = None
        if needs_smollm:
            from ..models import load_backbone

            dtype = getattr(torch, cfg.dtype)
            backbone = load_backbone("smollm2-135m-instruct", dtype=dtype, device=cfg.device)
            self.model, self.tokenizer = backbone.model, backbone.tokenizer
            self.words = word_pool(self.tokenizer)
        if cfg.compare_src:
            self.sources = {"paratune": source_info(Path(__file__).resolve().parents[3]),
                            COMPARE: source_info(Path(cfg.compare_src), compare_env(cfg.compare_src, dict(os.environ)))}
            expected = Path(cfg.compare_src) / "src" / "paratune"
            if not self.sources[COMPARE]["imports"].startswith(str(expected)):
                raise RuntimeError(f"with PYTHONPATH={Path(cfg.compare_src) / 'src'} the interpreter imports paratune "
                                   f"from {self.sources[COMPARE]['imports']!r}, not from {expected}")
            self.log(f"comparing with {cfg.compare_src} (commit {self.sources[COMPARE]['commit']})")
        n = max(max(cfg.concurrency), 1)
        self.adapter_dir = self.workdir / "adapters"
        self.adapter_dir.mkdir()
        self.adapters = {}
        if self.model is not None:
            for kind in ("para", "lora"):
                if kind in cfg.kinds:
                    self.adapters[kind] = write_adapters(self.model, kind, n, self.adapter_dir)
        if {"llama-batched-bench", "llama-server"} & set(cfg.systems):
            from .llama_cpp import base_gguf, ensure_built

            self.llama = ensure_built(cfg.llama_cpp_version, log=self.log)
            self.gguf = base_gguf(self.llama, cfg.dtype, log=self.log)
            self.lora_ggufs = lora_ggufs(self.llama, self.adapters["lora"], self.log) \
                if "lora" in cfg.kinds and "llama-server" in cfg.systems else []
        if VLLM in cfg.systems:
            from .vllm_cpu import ensure_venv, info

            ensure_venv(log=self.log)
            self.vllm_info = info()

    def prompts(self, n: int, *key) -> list[str]:
        return make_prompts(self.tokenizer, self.words, n, self.cfg.prompt_len, key)

    def record(self, repeat: int, system: str, kind: str, mode: str, level, stats: dict) -> None:
        run = {"repeat": repeat, "system": system, "kind": kind, "mode": mode, "level": level, **stats}
        self.runs.append(run)
        extra = ""
        if run.get("latency_p50_s") is not None:
            extra = f"  p50 {run['latency_p50_s']:.2f}s p99 {run['latency_p99_s']:.2f}s"
        if run.get("short_requests"):
            extra += f"  ({run['short_requests']} stopped early)"
        if run.get("errors"):
            extra += f"  ({run['errors']} errors: {run.get('first_errors')})"
        self.log(f"[repeat {repeat}] {system:<19} {kind:<4} {mode:<7} {level:>5g}: {run['tok_s']:8.1f} tok/s{extra}")

    # -- (a) engine, decode only
    def engine_setup(self) -> None:
        import torch

        from ..engine import Engine

        cfg = self.cfg
        if cfg.engine_model == "smollm2-135m":
            model, tokenizer, adapters = self.model, self.tokenizer, self.adapters
        else:
            model, tokenizer = _random_llama(cfg.engine_model, cfg.device, getattr(torch, cfg.dtype)), None
            root = self.workdir / "engine-adapters"
            root.mkdir(exist_ok=True)
            adapters = {kind: write_adapters(model, kind, max(cfg.concurrency), root)
                        for kind in ("para", "lora") if kind in cfg.kinds}
        # KV slots as long as the workload needs (the default, the model's context, would hold 64 x 2048 tokens:
        # 5.6 GiB in fp32, beside the servers that run later in the same benchmark)
        self.engine = Engine(model, tokenizer, max_batch=max(cfg.concurrency), max_seq_len=slot_tokens(cfg))
        self.engine_vocab = model.config.vocab_size
        self.engine_names = {"base": [None]}
        for kind, paths in adapters.items():
            self.engine_names[kind] = []
            for i, path in enumerate(paths):
                self.engine.add_adapter(f"{kind}{i}", path)
                self.engine_names[kind].append(f"{kind}{i}")
        if cfg.peft_reference and "lora" in adapters:
            from peft import PeftModel

            reference = _random_llama(cfg.engine_model, cfg.device, getattr(torch, cfg.dtype)) \
                if cfg.engine_model != "smollm2-135m" else _fresh_smollm(cfg)
            self.peft_model = PeftModel.from_pretrained(reference, adapters["lora"][0], adapter_name="lora0")
            for i in range(1, len(adapters["lora"])):
                self.peft_model.load_adapter(adapters["lora"][i], adapter_name=f"lora{i}")
            self.peft_model.eval()
        else:
            self.peft_model = None
        for kind in self.cfg.kinds:  # warm-up: first calls of each path at the largest batch
            self.engine.generate(self._engine_requests(max(cfg.concurrency), kind, seed=-1, new_tokens=2))

    def _engine_requests(self, n: int, kind: str, seed, length=None, new_tokens=None):
        import torch

        from ..engine import Request, SamplingParams

        g = torch.Generator().manual_seed(_seed(seed))
        length = length or self.cfg.prompt_len
        names = self.engine_names[kind]
        return [Request(torch.randint(10, self.engine_vocab - 10, (length,), generator=g).tolist(),
                        names[i % len(names)], SamplingParams(max_tokens=new_tokens or self.cfg.new_tokens,
                                                              ignore_eos=True)) for i in range(n)]

    def run_engine(self, repeat: int) -> None:
        for conc in self.cfg.sorted_levels:
            for kind in self.cfg.kinds:
                reqs = self._engine_requests(conc, kind, seed=(repeat, conc, kind))
                self.engine.stats.clear()
                start = time.perf_counter()
                self.engine.generate(reqs)
                wall = time.perf_counter() - start
                s = self.engine.stats
                decode_s = s.get("decode_seconds") or 0.0
                decode_tokens = s.get("decode_tokens") or 0
                if not decode_s or not decode_tokens:  # stats without a decode split: whole-run rate
                    decode_s, decode_tokens = wall, sum(len(r.output_ids) for r in reqs)
                self.record(repeat, "engine", kind, "decode", conc, {
                    "tok_s": decode_tokens / decode_s, "decode_tokens": decode_tokens, "decode_seconds": decode_s,
                    "step_ms": 1000 * decode_s / s["decode_steps"] if s.get("decode_steps") else None,
                    "prefill_seconds": s.get("prefill_seconds"), "wall_s": wall})
            if self.peft_model is not None and "lora" in self.cfg.kinds:
                self.record(repeat, "peft-generate", "lora", "decode", conc, self._run_peft(conc, repeat))
        # prefill overhead of the generator: long prompts, base vs PARA
        if "para" in self.cfg.kinds:
            for kind in ("base", "para"):
                reqs = self._engine_requests(self.cfg.prefill_batch, kind, seed=(repeat, "prefill"),
                                             length=self.cfg.prefill_len, new_tokens=1)
                self.engine.stats.clear()
                self.engine.generate(reqs)
                self.runs.append({"repeat": repeat, "system": "engine", "kind": kind, "mode": "prefill",
                                  "level": self.cfg.prefill_batch, "prefill_len": self.cfg.prefill_len,
                                  "prefill_seconds": self.engine.stats.get("prefill_seconds"),
                                  "tok_s": self.cfg.prefill_batch * self.cfg.prefill_len
                                  / max(self.engine.stats.get("prefill_seconds") or 1e-9, 1e-9)})

    def _run_peft(self, conc: int, repeat: int) -> dict:
        """PEFT's mixed-batch LoRA generate; decode time = time(n tokens) - time(1 token) (the prefill)."""
        import torch

        reqs = self._engine_requests(conc, "base", seed=(repeat, conc, "peft"))
        ids = torch.tensor([r.prompt_ids for r in reqs], device=self.peft_model.device)
        names = [f"lora{i}" for i in range(conc)]
        n = self.cfg.new_tokens
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            t0 = time.perf_counter()
            self.peft_model.generate(input_ids=ids, attention_mask=mask, adapter_names=names, max_new_tokens=1,
                                     do_sample=False)
            t1 = time.perf_counter()
            self.peft_model.generate(input_ids=ids, attention_mask=mask, adapter_names=names, max_new_tokens=n,
                                     min_new_tokens=n, do_sample=False)
            t2 = time.perf_counter()
        decode = max((t2 - t1) - (t1 - t0), 1e-9)
        return {"tok_s": conc * (n - 1) / decode, "wall_s": t2 - t1}

    # -- (c) llama-batched-bench
    def run_batched_bench(self, repeat: int) -> None:
        from .llama_cpp import batched_bench_command

        cmd = batched_bench_command(self.llama.binary("llama-batched-bench"), self.gguf, self.cfg.prompt_len,
                                    self.cfg.new_tokens, self.cfg.sorted_levels, self.cfg.threads)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"llama-batched-bench failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        rows = parse_batched_bench(proc.stdout + "\n" + proc.stderr)
        if not rows:
            raise RuntimeError(f"no results in llama-batched-bench output:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        for row in rows:
            self.record(repeat, "llama-batched-bench", "base", "decode", row["pl"], {
                "tok_s": row["speed_tg"], "prefill_tok_s": row["speed_pp"], "t_tg": row["t_tg"], "t_pp": row["t_pp"],
                "total_tok_s": row["speed"]})
        self.batched_bench_command = " ".join(cmd)

    # -- (b) paratune server (this tree's, or with system=COMPARE the --compare-src tree's)
    def run_paratune(self, repeat: int, system: str = "paratune") -> None:
        from .http_load import run_closed, run_poisson

        cfg = self.cfg
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads), "PYTHONUNBUFFERED": "1"}
        cmd = paratune_server_command(self.adapter_dir, port, max(cfg.concurrency), cfg)
        if system == COMPARE:
            env = compare_env(cfg.compare_src, env)
            self.compare_command = f"PYTHONPATH={env['PYTHONPATH']} " + shlex.join(cmd)
        else:
            self.paratune_command = shlex.join(cmd)
        with server_process(cmd, url, self.workdir / f"{system.replace('@', '-')}-{repeat}.log", env=env):
            import httpx

            base = next(m["id"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]
                        if not m.get("parent"))
            names = {"base": [base] * max(cfg.concurrency),
                     **{k: [p.name for p in self.adapters[k]] for k in ("para", "lora") if k in self.adapters}}
            # warm-up: every kind once at the largest batch, a few tokens
            for kind in cfg.kinds:
                warm = [paratune_body(p, names[kind][i], cfg) | {"max_tokens": 2}
                        for i, p in enumerate(self.prompts(max(cfg.concurrency), "warm", kind))]
                run_closed(url, warm, max(cfg.concurrency))
            if "closed" in cfg.modes:
                for conc in cfg.sorted_levels:
                    for kind in cfg.kinds:
                        prompts = self.prompts(n_requests(conc, cfg), repeat, conc, kind)
                        bodies = [paratune_body(p, names[kind][i % conc], cfg) for i, p in enumerate(prompts)]
                        result = run_closed(url, bodies, conc, stream=cfg.stream)
                        self.record(repeat, system, kind, "closed", conc, result.summary(cfg.new_tokens))
            self._poisson(repeat, system, url, lambda p, i, kind: paratune_body(
                p, names[kind][i % max(cfg.concurrency)], cfg), run_poisson)

    def _poisson(self, repeat, system, url, body, run_poisson, kinds=None) -> None:
        cfg = self.cfg
        if "poisson" not in cfg.modes or not cfg.poisson_requests:
            return
        for rate in cfg.poisson_rates:
            for kind in kinds or cfg.kinds:
                prompts = self.prompts(cfg.poisson_requests, repeat, "poisson", rate, kind)
                bodies = [body(p, i, kind) for i, p in enumerate(prompts)]
                result = run_poisson(url, bodies, rate, seed=repeat, stream=cfg.stream)
                self.record(repeat, system, kind, "poisson", rate, result.summary(cfg.new_tokens))

    # -- (c) llama-server
    def run_llama_server(self, repeat: int) -> None:
        from .http_load import run_closed, run_poisson
        from .llama_cpp import server_command

        cfg = self.cfg
        kinds = [k for k in cfg.kinds if k in ("base", "lora")]  # llama.cpp has no PARA
        if not kinds:
            return
        ctx_per_slot = cfg.prompt_len + cfg.new_tokens + 64
        loras = self.lora_ggufs

        def body(p, i, kind, conc):
            return llama_body(p, i % conc if kind == "lora" else None, cfg)

        plans = []
        if "closed" in cfg.modes:
            plans += [(conc, "closed") for conc in cfg.sorted_levels]
        if "poisson" in cfg.modes and cfg.poisson_requests:
            plans.append((max(cfg.concurrency), "poisson"))
        # Base requests get a server with no LoRA loaded: with the LoRAs loaded, a request naming none
        # ("lora": []) ran 4x slower than one naming a LoRA (measured at 1 client), which is no base model.
        for (slots, mode), group in [(plan, [kind]) for plan in plans for kind in kinds]:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            served = loras if group == ["lora"] else []
            cmd = server_command(self.llama.binary("llama-server"), self.gguf, port, slots, ctx_per_slot, served,
                                 cfg.threads)
            if served:
                self.llama_server_command = " ".join(
                    f"<{len(loras)} comma-separated LoRA GGUFs>" if "," in a else a for a in cmd)
            kinds_here = group
            with server_process(cmd, url, self.workdir / f"llama-server-{repeat}-{mode}-{slots}-{group[0]}.log"):
                for kind in kinds_here:  # warm-up
                    warm = [llama_body(p, i % slots if kind == "lora" else None, cfg) | {"max_tokens": 2, "n_predict": 2}
                            for i, p in enumerate(self.prompts(slots, "warm", kind))]
                    run_closed(url, warm, slots)
                if mode == "closed":
                    for kind in kinds_here:
                        prompts = self.prompts(n_requests(slots, cfg), repeat, slots, kind)
                        bodies = [body(p, i, kind, slots) for i, p in enumerate(prompts)]
                        result = run_closed(url, bodies, slots, stream=cfg.stream)
                        self.record(repeat, "llama-server", kind, "closed", slots, result.summary(cfg.new_tokens))
                else:
                    self._poisson(repeat, "llama-server", url, lambda p, i, kind: body(p, i, kind, slots),
                                  run_poisson, kinds_here)

    # -- (d) vLLM, CPU backend
    def run_vllm_cpu(self, repeat: int) -> None:
        from .http_load import run_closed, run_poisson
        from .vllm_cpu import lora_rank, server_command

        cfg = self.cfg
        kinds = [k for k in cfg.kinds if k in ("base", "lora")]  # vLLM has no PARA
        slots = max(cfg.concurrency)
        # One server per kind, not per concurrency as for llama-server: vLLM's KV cache is a pool shared by all
        # sequences (no fixed slots to size), and each start costs minutes. Base gets a server without LoRA:
        # with LoRA enabled, vLLM's CPU backend runs the model eagerly (no torch.compile), slower than the way
        # vLLM serves a base model.
        for kind in kinds:
            loras = self.adapters["lora"] if kind == "lora" else None
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd, env = server_command(port, dtype=cfg.dtype, max_model_len=cfg.prompt_len + cfg.new_tokens + 64,
                                      max_num_seqs=slots, lora_modules=loras, max_loras=slots,
                                      max_lora_rank=lora_rank(loras) if loras else 16,
                                      threads=cfg.threads)
            setattr(self, f"vllm_{kind}_command", _vllm_command_text(cmd, env, len(loras or [])))
            start = time.time()
            with server_process(cmd, url, self.workdir / f"vllm-cpu-{repeat}-{kind}.log", env=env,
                                timeout=VLLM_START_TIMEOUT_S, stop_tree=True):
                import httpx

                seconds = time.time() - start
                self.vllm_startup.append({"repeat": repeat, "kind": kind, "seconds": round(seconds, 1)})
                self.log(f"[repeat {repeat}] vllm-cpu {kind} server ready in {seconds:.0f} s")
                if kind == "lora":  # the names given with --lora-modules (the adapters' folder names)
                    names = [p.name for p in loras]
                else:  # the base model's name: the --model folder, as /v1/models lists it
                    names = [next(m["id"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]
                                  if not m.get("parent"))] * slots
                # warm-up: the largest batch, every adapter once, a few tokens
                warm = [paratune_body(p, names[i], cfg) | {"max_tokens": 2}
                        for i, p in enumerate(self.prompts(slots, "warm", kind))]
                run_closed(url, warm, slots)
                if "closed" in cfg.modes:
                    for conc in cfg.sorted_levels:
                        prompts = self.prompts(n_requests(conc, cfg), repeat, conc, kind)
                        bodies = [paratune_body(p, names[i % conc], cfg) for i, p in enumerate(prompts)]
                        result = run_closed(url, bodies, conc, stream=cfg.stream)
                        self.record(repeat, VLLM, kind, "closed", conc, result.summary(cfg.new_tokens))
                self._poisson(repeat, VLLM, url, lambda p, i, kind: paratune_body(p, names[i % slots], cfg),
                              run_poisson, [kind])

    # -- the whole benchmark
    def run(self) -> list[dict]:
        cfg = self.cfg
        self.setup()
        if "engine" in cfg.systems:
            self.engine_setup()
        order = [s for s in ("engine", "llama-batched-bench", "paratune", COMPARE, "llama-server", VLLM)
                 if s in cfg.systems or (s == COMPARE and cfg.compare_src)]
        steps = {"engine": self.run_engine, "llama-batched-bench": self.run_batched_bench,
                 "paratune": self.run_paratune, COMPARE: lambda repeat: self.run_paratune(repeat, COMPARE),
                 "llama-server": self.run_llama_server, VLLM: self.run_vllm_cpu}
        for repeat in range(cfg.repeats):
            for system in order:  # ours, llama.cpp, vLLM, ours, ... (and this tree, the compare tree, ...)
                steps[system](repeat)
        return self.runs

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _vllm_command_text(cmd: list[str], env: dict, n_loras: int) -> str:
    """The vLLM command for the record: its vLLM/preload variables, then the command with the LoRA list shortened."""
    keys = sorted(k for k in env if k.startswith(("VLLM_", "LD_PRELOAD", "HF_HUB_OFFLINE")))
    if "--lora-modules" in cmd:
        i = cmd.index("--lora-modules")
        cmd = [*cmd[:i + 1], f"<{n_loras} name=folder pairs>", *cmd[i + 1 + n_loras:]]
    return " ".join(f"{k}={shlex.quote(env[k])}" for k in keys) + " " + shlex.join(cmd)


def parse_batched_bench(text: str) -> list[dict]:
    """Rows of ``llama-batched-bench --output-format jsonl`` (one JSON object per line)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            rows.append(json.loads(line))
    return rows


def _random_llama(shape: str, device: str, dtype):
    import torch
    import transformers

    sizes = {"llama-430m-random": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                                       num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=4),
             "llama-8b-random": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)}[shape]
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**sizes, max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config).to(dtype)
    return model.eval()


def _fresh_smollm(cfg: BenchConfig):
    import torch

    from ..models import load_backbone

    return load_backbone("smollm2-135m-instruct", dtype=getattr(torch, cfg.dtype), device=cfg.device).model


# ----- metadata and entry point ------------------------------------------------------------------------------
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine_info() -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if cpu and flags:
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    # the instruction sets that decide which kernels run (fp32 AVX2 vs AVX-512, native bf16): hosts vary
    return {"cpu": cpu, "cpus": os.cpu_count(), "mem_gib": mem, "platform": platform.platform(),
            "isa": [f for f in ISA_FLAGS if f in flags], "loadavg_start": _loadavg()}


def _loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "?"


def versions() -> dict:
    import httpx
    import peft
    import torch
    import transformers

    from .. import __version__

    return {"paratune": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "httpx": httpx.__version__}


def run(cfg: BenchConfig, command: str, log=print) -> dict:
    from .serve_report import markdown, write_report

    meta = {"command": command, "config": asdict(cfg), "machine": machine_info(), "versions": versions()}
    if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds: servers stopped, report written
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(cfg, log)
    try:
        runs = bench.run()
    finally:
        partial = bench.runs
        meta["machine"]["loadavg_end"] = _loadavg()
        if bench.llama is not None:
            meta["llama_cpp"] = bench.llama.info
            meta["versions"]["llama.cpp"] = f"{bench.llama.info['llama_cpp_commit'][:10]} (llama-cpp-python " \
                                            f"{bench.llama.info['llama_cpp_python']})"
        if bench.vllm_info is not None:
            meta["vllm_cpu"] = {**bench.vllm_info, "startup_s": bench.vllm_startup}
            meta["versions"]["vllm"] = f"{bench.vllm_info['vllm']} ({bench.vllm_info['package']}, torch " \
                                       f"{bench.vllm_info['torch']}, transformers {bench.vllm_info['transformers']})"
        meta["commands"] = {k: getattr(bench, k) for k in ("paratune_command", "compare_command",
                                                           "llama_server_command", "batched_bench_command",
                                                           "vllm_base_command", "vllm_lora_command")
                            if hasattr(bench, k)}
        if hasattr(bench, "sources"):
            meta["sources"] = bench.sources
        meta["notes"] = bench.notes + _schema_notes(cfg)
        if "llama-server" in cfg.systems and "lora" in cfg.kinds:
            meta["notes"].append("llama-server batches only requests with the same LoRA configuration (its README, "
                                 "`lora` field), so N clients on N distinct LoRAs run one at a time there.")
        if VLLM in cfg.systems:
            meta["notes"].append("vLLM's CPU backend turns torch.compile off whenever LoRA is enabled (vllm/platforms/"
                                 "cpu.py), so vllm-cpu lora runs eagerly while vllm-cpu base, on a server without "
                                 "LoRA, runs compiled; its OpenMP threads are bound to cores "
                                 f"{_vllm_bind(cfg.threads)} (VLLM_CPU_OMP_THREADS_BIND).")
        bench.close()
        summary = write_report(partial, meta, cfg.output)  # also after a failure: what was measured so far
    log(markdown(summary, meta))
    return summary


def _vllm_bind(threads: int) -> str:
    from .vllm_cpu import omp_bind

    try:
        return omp_bind(threads)
    except ValueError as e:
        return f"? ({e})"


def _schema_notes(cfg: BenchConfig) -> list[str]:
    if "paratune" not in cfg.systems:
        return []
    from ..server.schemas import CompletionRequest

    if "ignore_eos" in CompletionRequest.model_fields:
        return []
    return ["paratune's /v1/completions schema has no `ignore_eos` field yet (unknown fields are ignored), so its "
            "requests may stop at EOS before max_tokens (counted as short requests); tokens are counted from "
            "`usage` either way."]

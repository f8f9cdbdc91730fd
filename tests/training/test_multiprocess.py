"""``paratune train`` under torchrun and accelerate (2 CPU processes, DDP over gloo) trains the same adapter as one
process with the same global batch: per-device batch 2 on 2 processes vs 4 on one, equal to float tolerance."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import tiny_llama

BIN = Path(sys.executable).parent
WORDS = ["apple", "river", "stone", "cloud"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, chat_tokenizer):
    root = tmp_path_factory.mktemp("multiprocess")
    model = tiny_llama(chat_tokenizer)
    model.save_pretrained(root / "model")
    chat_tokenizer.save_pretrained(root / "model")
    with open(root / "train.jsonl", "w") as f:
        for i in range(16):  # distinct prompts of different lengths: padding differs per process
            w = WORDS[i % 4]
            f.write(json.dumps({"prompt": f"Repeat {w} " + "please " * (i % 3), "completion": f"{w} {w}"}) + "\n")
    return root


def run(setup: Path, launcher: list[str], output: str, batch_size: int) -> subprocess.CompletedProcess:
    args = ["train", "--model", str(setup / "model"), "--data", str(setup / "train.jsonl"), "--format",
            "prompt-completion", "--output", str(setup / output), "--max-steps", "4", "--batch-size",
            str(batch_size), "--lr", "0.05", "--warmup-ratio", "0", "--logging-steps", "1", "--max-length", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([*launcher, str(BIN / "paratune"), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def assert_same_adapter(a: Path, b: Path) -> None:
    ta, tb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert ta.keys() == tb.keys()
    for key in ta:  # relative to the tensor's scale: 1e-5
        torch.testing.assert_close(tb[key], ta[key], rtol=1e-5, atol=1e-5 * float(ta[key].abs().max()), msg=key)


@pytest.fixture(scope="module")
def one_process(setup):
    done = run(setup, [], "one", batch_size=4)
    assert done.returncode == 0, done.stderr[-3000:]
    tensors = load_file(setup / "one" / "adapter_model.safetensors")
    assert all(torch.count_nonzero(t) for k, t in tensors.items() if k.endswith("up.weight"))  # it trained
    return setup / "one"


LAUNCHERS = {
    # "--" ends torchrun's own options: without it, its argparse takes "--r" for an abbreviation of its flags
    "torchrun": lambda port: [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port), "--"],
    # accelerate 1.x starts several CPU processes with its multi-process launcher (torch elastic, gloo) only;
    # "--cpu --num_processes 2" runs one process (see test_accelerate_cpu_flag_is_refused)
    "accelerate": lambda port: [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                "--main_process_port", str(port)],
}


@pytest.mark.slow  # ~20 s per launcher on 2 busy cores
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_processes_equal_one_process_with_the_same_global_batch(setup, one_process, launcher):
    done = run(setup, LAUNCHERS[launcher](free_port()), launcher, batch_size=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("adapter saved to") == 1  # the main process reports, once
    assert_same_adapter(one_process, setup / launcher)
    assert losses(setup / launcher) == pytest.approx(losses(one_process), rel=1e-5)
    assert json.loads((setup / launcher / "train_config.json").read_text())["batch_size"] == 2


@pytest.mark.slow
def test_half_the_global_batch_is_a_different_adapter(setup, one_process):
    """What a lone process with the per-device batch trains: far outside the tolerance above."""
    done = run(setup, [], "half", batch_size=2)
    assert done.returncode == 0, done.stderr[-3000:]
    with pytest.raises(AssertionError):
        assert_same_adapter(one_process, setup / "half")


def test_accelerate_cpu_flag_is_refused(setup):
    done = run(setup, [str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                       "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                       str(free_port())], "accelerate-cpu", batch_size=2)
    assert done.returncode != 0  # accelerate exits 1 when its process (paratune: 2) fails
    assert "paratune train: error: accelerate launch --cpu with --num_processes > 1 started a single process" in done.stderr
    assert "torchrun --nproc_per_node N -- paratune train" in done.stderr
    assert not (setup / "accelerate-cpu").exists()

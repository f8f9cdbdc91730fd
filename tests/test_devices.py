"""--device / --dtype: accepted values, and clear refusals for what is not there."""

import pytest
import torch

from paratune.generate import GenerateConfig
from paratune.models import resolve_device, resolve_dtype
from paratune.server.serve_config import ServeConfig


def test_dtypes():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="dtype must be one of float32, fp32, bfloat16, bf16, float16, fp16, got 'int8'"):
        resolve_dtype("int8")


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be cpu, cuda, cuda:N, mps or auto, got 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' was asked for but torch.cuda.is_available\(\) is False"):
            resolve_device("cuda")


def test_verb_configs_validate_device_and_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        ServeConfig(dtype="half-ish")
    with pytest.raises(ValueError, match="device must be"):
        GenerateConfig(prompt="hi", device="tpu")
    with pytest.raises(ValueError, match="max_seq_len must be None or an integer >= 2, got 1"):
        ServeConfig(max_seq_len=1)
    with pytest.raises(ValueError, match="timeout_keep_alive must be a number > 0, got 0"):
        ServeConfig(timeout_keep_alive=0)

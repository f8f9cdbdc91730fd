"""oneDNN-prepacked weights (engine/packed_weights.py): which matrices a device and dtype pack, and that a packed
call equals F.linear."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paratune.engine.runners.packed_weights import PackedWeights, packing_plan

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
def test_packing_plan_per_device_and_dtype():
    assert packing_plan(torch.float32, torch.device("cpu")) == "all"
    assert packing_plan(torch.float16, torch.device("cpu")) is None
    assert packing_plan(torch.float32, torch.device("cuda")) is None
    assert packing_plan(torch.bfloat16, torch.device("cuda:0")) is None
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert packing_plan(torch.bfloat16, torch.device("cpu")) == ("all" if bf16 else None)


@needs_onednn
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows", [1, 3, 8, 33])
def test_a_packed_call_equals_f_linear(dtype, tolerance, rows):
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no oneDNN bf16 on this CPU")
    torch.manual_seed(0)
    projection, head = nn.Linear(40, 24, bias=True).to(dtype), nn.Linear(40, 100, bias=False).to(dtype)
    packed = PackedWeights.build({(0, "q"): projection}, head, "all")
    assert (0, "q") in packed and "lm_head" in packed
    x = torch.randn(rows, 1, 40).to(dtype)
    for key, module in (((0, "q"), projection), ("lm_head", head)):
        got, want = packed.linear(key, module, x), F.linear(x, module.weight, module.bias)
        assert got.shape == want.shape and got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)
    # a non-contiguous input (a row slice of a (B, T, d) batch, as the decode step's head sees it)
    wide = torch.randn(rows, 3, 40).to(dtype)
    torch.testing.assert_close(packed.linear("lm_head", head, wide[:, -1]).float(),
                               F.linear(wide[:, -1], head.weight).float(), rtol=tolerance, atol=tolerance)


def test_no_plan_packs_nothing_and_calls_f_linear():
    module = nn.Linear(8, 4)
    packed = PackedWeights.build({(0, "q"): module}, nn.Linear(8, 16), None)
    assert "lm_head" not in packed and (0, "q") not in packed
    x = torch.randn(2, 1, 8)
    assert torch.equal(packed.linear((0, "q"), module, x), F.linear(x, module.weight, module.bias))


@needs_onednn
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows", [1, 8])
def test_a_packed_group_equals_its_members_side_by_side(dtype, tolerance, rows):
    """q|k|v as one matrix (some members with a bias, one without, as a model may have): the group's output is
    the members' outputs concatenated, and a member of a group is not packed again on its own."""
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no oneDNN bf16 on this CPU")
    torch.manual_seed(0)
    q, k, v = nn.Linear(40, 24).to(dtype), nn.Linear(40, 8, bias=False).to(dtype), nn.Linear(40, 8).to(dtype)
    o = nn.Linear(24, 40, bias=False).to(dtype)
    packed = PackedWeights.build({(0, "q"): q, (0, "k"): k, (0, "v"): v, (0, "o"): o}, nn.Linear(40, 100).to(dtype), "all",
                                 groups={(0, "qkv"): [q, k, v]})
    assert set(packed.weights) == {"lm_head", (0, "o"), (0, "qkv")}
    element = torch.finfo(dtype).bits // 8
    assert packed.bytes == (40 * 100 + 24 * 40 + 40 * 40) * element
    x = torch.randn(rows, 1, 40).to(dtype)
    want = torch.cat([F.linear(x, m.weight, m.bias) for m in (q, k, v)], dim=-1)
    got = packed.linear((0, "qkv"), None, x)
    assert got.shape == want.shape == (rows, 1, 40)
    torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)

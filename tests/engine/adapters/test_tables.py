"""Adapter tables: many adapters' generators computed in one batched call equal each generator alone."""

import pytest
import torch

from paratune.engine.adapters.tables import LoraTables, ParaLayer, ParaTables
from paratune.para.generator import VectorGenerator

D = 16


def generator(r, pooling, activation, widths, seed):
    torch.manual_seed(seed)
    g = VectorGenerator(D, r, widths, pooling, activation, 0.0)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return g.eval()


def add(tables, name, generators):
    first = next(iter(generators.values()))
    activation = "rational" if type(first.activation).__name__ == "RationalActivation" else first.activation
    return tables.add(name, {i: ParaLayer.of(g) for i, g in generators.items()}, first.pooling, activation)


def test_packed_prompts_with_mixed_adapters_equal_each_generator_alone():
    specs = [(4, "attention", "rational", {"q": 8, "up": 12}), (2, "mean", "gelu", {"v": 4, "up": 12}),
             (3, "max", "rational", {"q": 8}), (4, "last", "identity", {"up": 12, "down": 6})]
    generators = [generator(*spec, seed=i) for i, spec in enumerate(specs)]
    tables = ParaTables(n_layers=1, hidden=D, dtype=torch.float32, device="cpu")
    slots = [add(tables, f"a{i}", {0: g}) for i, g in enumerate(generators)]
    lengths = [5, 1, 7, 3, 4]
    use = [0, 1, 2, 3, 0]  # prompt -> adapter; adapter 0 twice
    hidden = torch.randn(sum(lengths), D) * 3
    segments = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    got = tables.vectors(0, hidden, segments, [slots[u] for u in use])
    start = 0
    for i, (n, u) in enumerate(zip(lengths, use)):
        alone = generators[u](hidden[None, start: start + n], torch.ones(1, n, dtype=torch.bool))
        for target in ("q", "v", "up", "down"):
            expected = alone[target][0] if target in alone else torch.zeros(got[target].shape[1])
            torch.testing.assert_close(got[target][i], expected, rtol=1e-5, atol=1e-6)
        start += n


def test_removed_slots_are_reused_and_contribute_nothing():
    tables = ParaTables(n_layers=2, hidden=D, dtype=torch.float32, device="cpu")
    a = add(tables, "a", {0: generator(4, "mean", "rational", {"q": 8}, 0), 1: generator(4, "mean", "rational",
                                                                                          {"q": 8}, 1)})
    add(tables, "b", {1: generator(2, "mean", "rational", {"q": 8}, 2)})  # layer 0 untransformed: delta 0
    hidden, segments = torch.randn(3, D), torch.zeros(3, dtype=torch.long)
    assert torch.equal(tables.vectors(0, hidden, segments, [tables.slots.owner["b"]])["q"], torch.zeros(1, 8))
    tables.remove("a")
    assert add(tables, "c", {0: generator(4, "mean", "rational", {"q": 8}, 3)}) == a  # the freed slot

    lora = LoraTables(torch.float32, "cpu")
    slot = lora.add("x", 2.0, {"m": (torch.ones(4, 6), torch.ones(5, 4))})
    lora.add("y", 1.0, {"m": (torch.ones(8, 6), torch.ones(5, 8))})  # a larger rank widens the table
    assert lora.a["m"].shape[1:] == (8, 6) and torch.equal(lora.a["m"][slot, 4:], torch.zeros(4, 6))
    lora.remove("x")
    assert torch.equal(lora.a["m"][slot], torch.zeros(8, 6)) and lora.add("z", 1.0, {}) == slot

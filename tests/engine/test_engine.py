"""The engine's outputs equal PEFT's single-request generate, token for token, under continuous batching."""

import peft
import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel

from paratune import ParaConfig
from paratune.engine import AdapterError, Engine, Request, SamplingParams
from tests.tiny_models import VOCAB, randomize_adapter, tiny_model

LORA_TARGETS = {"gpt2": ["c_attn", "c_fc"], "llama": ["q_proj", "v_proj", "up_proj"],
                "qwen2": ["q_proj", "v_proj", "up_proj"]}
IA3 = {"llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"])}


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def adapters(request, tmp_path_factory):
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    para = peft.get_peft_model(tiny_model(arch), ParaConfig())
    randomize_adapter(para, scale=0.5)
    para.save_pretrained(root / "para1")
    para2 = peft.get_peft_model(tiny_model(arch), ParaConfig(r=4, pooling="mean", targets=["k", "up"]))
    randomize_adapter(para2, seed=3, scale=0.5)
    para2.save_pretrained(root / "para2")
    lora = peft.get_peft_model(tiny_model(arch), LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS[arch],
                                                            init_lora_weights=False))
    lora.save_pretrained(root / "lora1")
    lora2 = peft.get_peft_model(tiny_model(arch), LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS[arch][:1],
                                                             init_lora_weights=False, use_rslora=True))
    lora2.save_pretrained(root / "lora2")
    names = ["para1", "para2", "lora1", "lora2"]
    if arch in IA3:
        targets, ff = IA3[arch]
        ia3 = peft.get_peft_model(tiny_model(arch), IA3Config(target_modules=targets, feedforward_modules=ff,
                                                              init_ia3_weights=False))
        ia3.save_pretrained(root / "ia3")
        names.append("ia3")
    return arch, root, names


def reference(arch, root, request):
    base = tiny_model(arch)
    model = base if request.adapter is None else PeftModel.from_pretrained(base, root / request.adapter)
    out = model.generate(input_ids=torch.tensor([request.prompt_ids]), max_new_tokens=request.params.max_tokens,
                         do_sample=False)
    return out[0, len(request.prompt_ids):].tolist()


def test_mixed_batch_with_mid_flight_joins_equals_single_request_generate(adapters):
    arch, root, names = adapters
    engine = Engine(tiny_model(arch), max_batch=4)
    for name in names:
        engine.add_adapter(name, root / name)
    g = torch.Generator().manual_seed(0)
    plan = [(n % 7 + 3, names[n % len(names)] if n % 5 else None, 10 + 3 * (n % 4)) for n in range(10)]
    requests = [Request(torch.randint(3, VOCAB, (length,), generator=g).tolist(), adapter=adapter,
                        params=SamplingParams(max_tokens=tokens)) for length, adapter, tokens in plan]
    engine.generate(requests)
    assert engine.stats["decode_steps"] < sum(r.params.max_tokens for r in requests)  # rows really shared steps
    for request in requests:
        assert request.output_ids == reference(arch, root, request), request.adapter
        assert request.finish_reason == "length"


def test_kv_budget_queues_requests_and_loses_none(adapters):
    arch, root, names = adapters
    engine = Engine(tiny_model(arch), max_batch=8, kv_budget_tokens=60)
    engine.add_adapter("para1", root / "para1")
    g = torch.Generator().manual_seed(1)
    requests = [Request(torch.randint(3, VOCAB, (6,), generator=g).tolist(), adapter="para1" if i % 2 else None,
                        params=SamplingParams(max_tokens=14)) for i in range(12)]  # 20 tokens each: 3 fit at once
    for request in requests:
        engine.add_request(request)
    peak = 0
    while engine.has_work():
        engine.step()
        peak = max(peak, len(engine.running))
        assert engine.reserved_tokens() <= 60
    assert peak == 3
    assert all(len(r.output_ids) == 14 and r.finish_reason == "length" for r in requests)
    assert requests[5].output_ids == reference(arch, root, requests[5])


def test_sampling_is_seeded_and_stop_strings_and_logprobs_work():
    class ByteTokenizer:  # decode = chr of each id, enough for stop strings
        eos_token_id = None

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(65 + i % 26) for i in ids)

    engine = Engine(tiny_model("llama"), ByteTokenizer())
    params = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, top_k=20, seed=7, logprobs=True)
    a = engine.generate([Request([5, 6, 7], params=params)])[0]
    b = engine.generate([Request([5, 6, 7], params=SamplingParams(**{**params.__dict__}))])[0]
    assert a.output_ids == b.output_ids and len(a.logprobs) == 12 and all(lp <= 0 for lp in a.logprobs)
    stop = ByteTokenizer().decode(a.output_ids[3:5])
    c = engine.generate([Request([5, 6, 7], params=SamplingParams(**{**params.__dict__, "stop": [stop]}))])[0]
    assert c.finish_reason == "stop" and stop not in c.text and len(c.output_ids) <= 5


def test_eos_finishes_a_request():
    model = tiny_model("llama")
    greedy = Engine(model).generate([Request([5, 6, 7], params=SamplingParams(max_tokens=5))])[0].output_ids
    model.generation_config.eos_token_id = greedy[2]
    request = Engine(model).generate([Request([5, 6, 7], params=SamplingParams(max_tokens=5))])[0]
    assert request.finish_reason == "eos" and request.output_ids == greedy[:3]


@pytest.mark.parametrize("bad", [{"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"stop": [""]}])
def test_bad_sampling_params_are_named(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        SamplingParams(**bad)


def test_adapter_errors(tmp_path):
    import transformers

    from tests.tiny_models import COMMON, LLAMA_LIKE

    engine = Engine(tiny_model("llama"))
    with pytest.raises(AdapterError, match="has no adapter_config.json"):
        engine.add_adapter("x", tmp_path)
    deeper = transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, **{**LLAMA_LIKE, "num_hidden_layers": 3}))
    peft.get_peft_model(deeper, ParaConfig()).save_pretrained(tmp_path / "deeper")
    with pytest.raises(AdapterError, match="this backbone has 2 layers"):
        engine.add_adapter("deeper", tmp_path / "deeper")
    wider = transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, **{**LLAMA_LIKE, "hidden_size": 48}))
    peft.get_peft_model(wider, ParaConfig()).save_pretrained(tmp_path / "wider")
    with pytest.raises(AdapterError, match="does not fit this backbone"):
        engine.add_adapter("wider", tmp_path / "wider")
    with pytest.raises(KeyError, match="unknown adapter 'nope'"):
        engine.add_request(Request([1, 2], adapter="nope"))


@pytest.mark.parametrize("dtype, attention, tolerance, grouped_rows", [(torch.float32, "eager", 1e-5, 32),
                                                                       (torch.float32, "sdpa", 1e-5, 32),
                                                                       (torch.float32, "sdpa", 1e-5, 1),
                                                                       (torch.bfloat16, "sdpa", 1e-2, 32)])
def test_handwritten_runner_equals_the_transformers_runner(adapters, dtype, attention, tolerance, grouped_rows,
                                                           monkeypatch):
    from paratune.engine.runners import llama
    from paratune.engine.runners.packed_weights import packing_plan

    monkeypatch.setattr(llama, "GROUPED_DECODE_ROWS", grouped_rows)  # 1: fp32 decode attention as matmuls

    """Llama-family models decode and prefill through engine/runners/llama.py: with every kind of row mixed in one batch
    (base, PARA, LoRA, (IA)^3, joining mid-flight), outputs are token-exact and every step's chosen-token
    log-probability equals the transformers forward's (1e-5 in fp32 eager and SDPA, 1e-2 in bf16 SDPA); other
    architectures keep the forward. SDPA on CPU runs directly on the KV heads (``enable_gqa``, fp32 decode and
    every prefill), the forward through transformers' wrapper."""
    arch, root, names = adapters
    runs = {}
    for fast in (True, False):
        model = tiny_model(arch).to(dtype)
        model.config._attn_implementation = attention
        engine = Engine(model, max_batch=4, handwritten=fast)
        for name in names:
            engine.add_adapter(name, root / name)
        g = torch.Generator().manual_seed(5)
        requests = [Request(torch.randint(3, VOCAB, (n % 5 + 2,), generator=g).tolist(),
                            adapter=([None] + names)[n % (len(names) + 1)],
                            params=SamplingParams(max_tokens=6 + n % 3, logprobs=True)) for n in range(9)]
        engine.generate(requests)
        runs[fast] = (engine, requests)
    (fast_engine, fast), (slow_engine, slow) = runs[True], runs[False]
    assert slow_engine.stats["handwritten_decodes"] == slow_engine.stats["handwritten_prefills"] == 0
    if arch == "gpt2":
        assert fast_engine.llama_runner is None and fast_engine.stats["handwritten_decodes"] == 0
    else:
        assert fast_engine.stats["handwritten_decodes"] == fast_engine.stats["decode_steps"] > 0
        # the prefills (the first token's log-probability) ran the hand-written step too
        assert fast_engine.stats["handwritten_prefills"] == slow_engine.stats["prefills"] > 0
        # the oneDNN-prepacked weights are in use (every matrix, q|k|v and gate|up fused) where oneDNN exists
        expected = packing_plan(dtype, torch.device("cpu"))
        assert fast_engine.llama_runner.packing == expected
        assert fast_engine.llama_runner.direct_sdpa == (attention == "sdpa")
        assert fast_engine.llama_runner.direct_decode == (attention == "sdpa" and dtype == torch.float32)
        packed = fast_engine.llama_runner.packed
        assert all((key in packed) == (expected is not None) for key in ("lm_head", (0, "self_attn.qkv"),
                                                                         (0, "mlp.gate_up"), (0, "mlp.down_proj")))
    for a, b in zip(fast, slow):
        assert a.output_ids == b.output_ids, a.adapter
        assert a.logprobs == pytest.approx(b.logprobs, abs=tolerance)


def test_packed_weight_memory_is_reported_and_can_be_turned_off():
    """The packed copies cost the decoder's weights and the head once more (fp32 on CPU with oneDNN); an engine
    built with packed_weights=False holds none and decodes the same tokens."""
    from paratune.engine.runners.packed_weights import packing_plan

    model = tiny_model("llama")  # one engine per model (the engine installs its attention on the model)
    packed, plain = Engine(model, packed_weights=True), Engine(tiny_model("llama"), packed_weights=False)
    projections = sum(p.numel() for name, p in model.named_parameters()
                      if name.endswith("proj.weight") or name == "lm_head.weight")
    expected = projections * 4 if packing_plan(torch.float32, torch.device("cpu")) == "all" else 0
    assert packed.packed_weight_bytes == expected and plain.packed_weight_bytes == 0
    outputs = [e.generate([Request([5, 6, 7], params=SamplingParams(max_tokens=6))])[0].output_ids
               for e in (packed, plain)]
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_echo_scores_through_the_handwritten_runner_equal_the_transformers_runner(adapters, dtype, tolerance):
    """Echo scoring is a prefill-kind batch that writes no KV: every adapter kind's prompt log-probabilities (a PARA
    adapter pooling only the context) are the same through either runner, the hand-written one runs them where
    it can, and scoring leaves no trace in the delta tables or the KV cache."""
    arch, root, names = adapters
    ids = torch.randint(3, VOCAB, (9,), generator=torch.Generator().manual_seed(7)).tolist()
    scores = {}
    for fast in (True, False):
        model = tiny_model(arch).to(dtype)
        model.config._attn_implementation = "sdpa"
        engine = Engine(model, max_batch=2, handwritten=fast)
        for name in names:
            engine.add_adapter(name, root / name)
        kv_before = [k.clone() for k in engine.cache.keys]
        scores[fast] = [engine.score(ids, adapter, context=5, top_k=2).values for adapter in [None, *names]]
        assert all(torch.equal(a, b) for a, b in zip(kv_before, engine.cache.keys))
        assert all(not t.any() for t in engine.registry.deltas.tables.values())
        assert not engine.has_work() and [engine.scheduler.borrow() for _ in range(2)] == [0, 1]  # slot given back
        if fast:
            assert engine.stats["handwritten_scores"] == (0 if arch == "gpt2" else len(names) + 1)
    for fast_scores, slow_scores in zip(scores[True], scores[False]):
        assert fast_scores == pytest.approx(slow_scores, abs=tolerance)

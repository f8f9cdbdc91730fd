"""Engine v2 invariants: slot KV cache (joins/leaves move no other row), admission, packed prefill, bf16, SDPA,
sliding-window refusal."""

import peft
import pytest
import torch
import transformers
from peft import PeftModel

from paratune import ParaConfig
from paratune.engine import Engine, Request, SamplingParams
from tests.tiny_models import COMMON, LLAMA_LIKE, VOCAB, randomize_adapter, tiny_model


def prompts(n, seed=0, low=3, high=12):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.fixture(scope="module")
def para_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("para")
    model = peft.get_peft_model(tiny_model("llama"), ParaConfig())
    randomize_adapter(model, scale=0.5)
    model.save_pretrained(root)
    return root


def test_a_join_or_a_leave_moves_no_other_row(para_dir):
    engine = Engine(tiny_model("llama"), max_batch=4, max_seq_len=64)
    engine.add_adapter("a", para_dir)
    pointers = [k.data_ptr() for k in engine.cache.keys]
    short, long_ = prompts(2, seed=1)
    first = engine.add_request(Request(long_, adapter="a", params=SamplingParams(max_tokens=20)))
    leaver = engine.add_request(Request(short, params=SamplingParams(max_tokens=2)))
    for _ in range(3):
        engine.step()
    slot = next(s for s, r in engine.scheduler.running.items() if r is first)
    filled = len(first.prompt_ids) + len(first.output_ids) - 1
    before = [k[slot, :, :filled].clone() for k in engine.cache.keys + engine.cache.values]
    assert leaver.finished  # it left ...
    engine.add_request(Request(short, adapter="a", params=SamplingParams(max_tokens=3)))  # ... and one joins
    engine.step()
    after = [k[slot, :, :filled] for k in engine.cache.keys + engine.cache.values]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # bit-identical, in place
    assert [k.data_ptr() for k in engine.cache.keys] == pointers  # never reallocated


def test_admission_counts_slots_and_capacity():
    engine = Engine(tiny_model("llama"), max_batch=3, max_seq_len=20)
    per_token = sum(2 * k.shape[1] * k.shape[3] * k.element_size() for k in engine.cache.keys)
    assert engine.kv_cache_bytes == 3 * 20 * per_token  # what is really held
    with pytest.raises(ValueError, match=r"request needs 21 KV tokens \(prompt \+ max_tokens\) but a KV slot "
                                         r"holds 20 \(max_seq_len\)"):
        engine.add_request(Request([5] * 11, params=SamplingParams(max_tokens=10)))
    requests = [engine.add_request(Request(p, params=SamplingParams(max_tokens=8))) for p in prompts(7, seed=2)]
    peak = 0
    while engine.has_work():
        engine.step()
        peak = max(peak, len(engine.running))
    assert peak == 3 and all(len(r.output_ids) == 8 for r in requests)


def test_skewed_load_stays_inside_the_allocation_and_loses_nothing(para_dir):
    # One long prompt and many short ones (the shape of "one 4,096-token prompt + 63 of 64" at tiny scale).
    engine = Engine(tiny_model("llama"), max_batch=16, max_seq_len=200, max_prefill_tokens=64)
    engine.add_adapter("a", para_dir)
    allocated = engine.kv_cache_bytes
    long_prompt = torch.randint(3, VOCAB, (180,), generator=torch.Generator().manual_seed(3)).tolist()
    requests = [Request(long_prompt, adapter="a", params=SamplingParams(max_tokens=8))]
    requests += [Request(p, adapter="a" if i % 2 else None, params=SamplingParams(max_tokens=8))
                 for i, p in enumerate(prompts(31, seed=4))]
    engine.generate(requests)
    assert all(r.finish_reason == "length" and len(r.output_ids) == 8 for r in requests)
    assert engine.cache.bytes == allocated and not engine.scheduler.running


def test_packed_prefill_equals_one_request_at_a_time(para_dir):
    model = tiny_model("llama")
    together = Engine(model, max_batch=8)
    together.add_adapter("a", para_dir)
    batch = [Request(p, adapter="a" if i % 2 else None, params=SamplingParams(max_tokens=6))
             for i, p in enumerate(prompts(6, seed=5))]
    together.generate(batch)
    alone = Engine(model, max_batch=1)
    alone.add_adapter("a", para_dir)
    for request in batch:
        again = alone.generate([Request(request.prompt_ids, adapter=request.adapter,
                                        params=SamplingParams(max_tokens=6))])[0]
        assert again.output_ids == request.output_ids


def reference_greedy(model, para_dir, prompt, tokens, adapter=True):
    peft_model = PeftModel.from_pretrained(model, para_dir) if adapter else model
    out = peft_model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=tokens, do_sample=False)
    return out[0, len(prompt):].tolist()


def test_sdpa_engine_equals_peft_greedy(para_dir):
    def sdpa_model():
        torch.manual_seed(0)
        config = transformers.LlamaConfig(**COMMON, **LLAMA_LIKE)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        return model

    engine = Engine(sdpa_model(), max_batch=4)
    engine.add_adapter("a", para_dir)
    requests = [Request(p, adapter="a" if i % 2 else None, params=SamplingParams(max_tokens=12))
                for i, p in enumerate(prompts(5, seed=6))]
    engine.generate(requests)
    for request in requests:
        assert request.output_ids == reference_greedy(sdpa_model(), para_dir, request.prompt_ids, 12,
                                                      adapter=request.adapter is not None)


def test_bf16_engine_scores_like_peft_in_bf16(para_dir):
    # bf16 tolerance: the engine's log-probabilities of its own greedy tokens equal a teacher-forced PEFT bf16
    # forward (with the prompt mask) within 0.05 nats; the adaptation survives (PARA rows differ from base).
    model = tiny_model("llama").to(torch.bfloat16)
    engine = Engine(model, max_batch=4)
    engine.add_adapter("a", para_dir)
    requests = [Request(p, adapter=a, params=SamplingParams(max_tokens=10, logprobs=True))
                for p in prompts(2, seed=7) for a in ("a", None)]
    engine.generate(requests)
    assert requests[0].output_ids != requests[1].output_ids or requests[0].logprobs != requests[1].logprobs
    reference = PeftModel.from_pretrained(tiny_model("llama").to(torch.bfloat16), para_dir).eval()
    for request in requests:
        ids = torch.tensor([request.prompt_ids + request.output_ids])
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, : len(request.prompt_ids)] = True
        with torch.no_grad():
            if request.adapter:
                logits = reference(input_ids=ids, para_prompt_mask=mask).logits
            else:
                with reference.disable_adapter():
                    logits = reference(input_ids=ids).logits
        logprobs = torch.log_softmax(logits[0].float(), -1)
        n = len(request.prompt_ids)
        expected = [float(logprobs[n - 1 + i, t]) for i, t in enumerate(request.output_ids)]
        torch.testing.assert_close(torch.tensor(request.logprobs), torch.tensor(expected), rtol=0, atol=0.05)


@pytest.mark.parametrize("arch, window", [("mistral", 64), ("gemma2", 64)])
def test_sliding_window_models_are_refused_at_engine_start(arch, window):
    config = {"mistral": lambda: transformers.MistralConfig(**COMMON, **LLAMA_LIKE, sliding_window=window),
              "gemma2": lambda: transformers.Gemma2Config(**COMMON, **LLAMA_LIKE, head_dim=8, sliding_window=window)}
    model = transformers.AutoModelForCausalLM.from_config(config[arch]())
    with pytest.raises(ValueError, match=r"the engine serves full-attention models only: .* uses sliding-window "
                                         rf"or other non-global attention in layers \[0(, 1)?\].*sliding_window={window}"):
        Engine(model)
    Engine(tiny_model("qwen2"))  # Qwen2 declares a window but does not use it: served

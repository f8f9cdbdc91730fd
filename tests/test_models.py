"""Smoke test on the real embedded backbone, SmolLM2-135M-Instruct (converted once into the cache)."""

import peft
import torch

from paratune import ParaConfig
from paratune.models import DEFAULT_MODEL, load_backbone
from tests.tiny_models import randomize_adapter


def test_smollm2_loads_wraps_and_generates_with_prefill_once_vectors():
    backbone = load_backbone(DEFAULT_MODEL)
    model, tokenizer = backbone.model, backbone.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )
    ids = prompt["input_ids"]
    with torch.inference_mode():
        base_logits = model(input_ids=ids).logits
        base_answer = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(base_answer[0, ids.shape[1]:])

    peft_model = peft.get_peft_model(model, ParaConfig()).eval()
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == 30 * (576 * 16 + 16 + 16 * (576 + 192 + 1536) + 576 + 12)
    with torch.inference_mode():
        assert torch.equal(peft_model(input_ids=ids).logits, base_logits)
        assert torch.equal(peft_model.generate(**prompt, max_new_tokens=8, do_sample=False), base_answer)
    randomize_adapter(peft_model, scale=0.02)
    with torch.inference_mode():
        out = peft_model.generate(**prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                  return_dict_in_generate=True, output_logits=True)
        mask = torch.zeros_like(out.sequences, dtype=torch.bool)
        mask[:, : ids.shape[1]] = True
        recomputed = peft_model(input_ids=out.sequences, para_prompt_mask=mask).logits[:, ids.shape[1] - 1 : -1]
    cached = torch.stack(out.logits, dim=1)
    # The cached decode (vectors from the prefill, reused) and the full recomputation agree in value ...
    torch.testing.assert_close(cached, recomputed, rtol=0, atol=1e-4)
    # ... and in the greedy choice, under the same processing generate applied (min_new_tokens bans EOS).
    eos = torch.tensor(model.generation_config.eos_token_id).flatten()
    recomputed = recomputed.clone()
    recomputed[..., eos] = float("-inf")
    assert torch.equal(recomputed.argmax(-1), out.sequences[:, ids.shape[1] :])

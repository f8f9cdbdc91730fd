"""The demo: base model vs a PARA adapter trained for a minute or two on a generated task."""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

import peft
import torch

from ..models import DEFAULT_MODEL, load_backbone
from ..para import ParaConfig
from ..training.data import build_dataset
from ..training.loop import train_steps
from .tasks import sentiment_records


def _answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 12) -> list[str]:
    """Greedy answers, left-padded batch; PARA computes its vectors at prefill from each prompt."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = "right"
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in out]


def _label(text: str, labels=("positive", "negative")) -> str:
    """The label word that appears first in an answer ("" if none): base-model answers are sentences."""
    found = [(text.lower().find(label), label) for label in labels if label in text.lower()]
    return min(found)[1] if found else ""


def run_demo(model_name: str = DEFAULT_MODEL, steps: int = 60, train_size: int = 480, r: int = 16,
             lr: float = 3e-3, batch_size: int = 8, max_seconds: float = 150.0, output: str | None = None,
             n_eval: int = 40, seed: int = 0) -> dict:
    start = time.perf_counter()
    torch.manual_seed(seed)
    backbone = load_backbone(model_name)
    model, tokenizer = backbone.model, backbone.tokenizer
    print(f"backbone: {model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params), "
          f"loaded in {time.perf_counter() - start:.1f}s")

    train = sentiment_records(train_size, seed=seed)
    held_out = sentiment_records(n_eval, seed=seed + 1, held_out=True)
    dataset, stats = build_dataset(tokenizer, train, "prompt-completion", max_length=128)
    print(f"task: sentiment of generated reviews; {stats.n_examples} training examples, "
          f"{len(held_out)} held-out with unseen (thing, adjective) pairs")

    prompts = [r_["prompt"] for r_ in held_out]
    golds = [r_["completion"] for r_ in held_out]
    base_answers = _answers(model, tokenizer, prompts)

    peft_model = peft.get_peft_model(model, ParaConfig(r=r))
    peft_model.print_trainable_parameters()
    losses = train_steps(peft_model, dataset, tokenizer, steps=steps, lr=lr, batch_size=batch_size,
                         seed=seed, max_seconds=max_seconds, desc="PARA training")
    para_answers = _answers(peft_model, tokenizer, prompts)

    base_acc = sum(_label(a) == g for a, g in zip(base_answers, golds)) / len(golds)
    para_acc = sum(_label(a) == g for a, g in zip(para_answers, golds)) / len(golds)
    print(f"\ntraining loss {losses[0]:.3f} -> {sum(losses[-5:]) / min(5, len(losses)):.3f} "
          f"over {len(losses)} steps\n")
    width = 44
    print(f"{'held-out review':<{width}} | {'gold':<8} | {'base model':<{width - 14}} | PARA")
    print("-" * (width * 2 + 24))
    for prompt, gold, base, para in list(zip(prompts, golds, base_answers, para_answers))[:8]:
        review = prompt.split("\n\n", 1)[1]
        print(f"{textwrap.shorten(review, width):<{width}} | {gold:<8} | "
              f"{textwrap.shorten(base, width - 14):<{width - 14}} | {textwrap.shorten(para, 20)}")
    print(f"\nheld-out accuracy (first label word in the answer == gold, n={len(golds)}): "
          f"base {base_acc:.0%}, PARA {para_acc:.0%}")
    if output:
        if Path(output).exists():
            shutil.rmtree(output)
        peft_model.save_pretrained(output)
        print(f"adapter saved to {output}")
    print(f"demo finished in {time.perf_counter() - start:.0f}s")
    return {"base_accuracy": base_acc, "para_accuracy": para_acc, "losses": losses}

"""A short, dependency-free training loop for quick adapter training (the demo, tests, benchmarks).

``paratune train`` (built on the HF Trainer) is the full-featured path; this loop exists so that a few
hundred steps on a small data set need no Trainer set-up.
"""

from __future__ import annotations

import itertools
import time

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import ParaDataCollator


def train_steps(
    model,
    dataset,
    tokenizer,
    steps: int,
    lr: float = 3e-3,
    batch_size: int = 8,
    seed: int = 0,
    max_seconds: float | None = None,
    max_grad_norm: float = 1.0,
    desc: str = "train",
) -> list[float]:
    """Train ``model``'s trainable parameters for ``steps`` AdamW steps (linear decay); returns the losses.

    Batches carry ``para_prompt_mask`` so PARA pools over the prompt only. Stops early after ``max_seconds``.
    """
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                        collate_fn=ParaDataCollator(tokenizer))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))
    model.train()
    losses, tokens, start = [], 0, time.perf_counter()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    with tqdm(total=steps, desc=desc, unit="step") as bar:
        for step, batch in zip(range(steps), batches):
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / elapsed:.0f}")
            bar.update()
            if max_seconds is not None and elapsed > max_seconds:
                break
    model.eval()
    return losses

"""Random-weight adapters for the speed benchmarks: n PEFT folders of one kind, distinct and reproducible.

Speed does not depend on what an adapter learned, only on its shape, so the benchmarks serve adapters with random
weights: PARA r=16 or LoRA r=16, both on q, v and up. ``LORA_ALPHA`` is 32, the value every recorded
``paratune bench serve`` result used (alpha only scales B @ A; it changes no shape and no cost).

PEFT builds one adapter per call (the *template*: its ``adapter_config.json`` and the names, shapes and dtype of
its tensors); every adapter is then written straight to safetensors with those keys and a copy of that config.
Wrapping the model and calling ``save_pretrained`` per adapter took about a second each, which is hours for the
10,000 tenants of ``paratune bench tenants``. Adapter ``i`` draws its weights from a generator seeded with
``(seed, i)`` alone, so it is the same whatever ``n`` is: ``adapter_set`` builds the set of n adapters from the
files of a smaller or larger cached set (hard links) and writes only the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

KINDS = ("para", "lora")
RANK = 16
LORA_ALPHA = 32
LORA_TARGETS = ["q_proj", "v_proj", "up_proj"]  # PARA's default targets q, v, up, under their Llama-family names
SCALE = 0.02  # standard deviation of every random adapter weight
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
COMPLETE = ".complete"  # written last into a cached set: its absence means the set is partial and is finished


@dataclass(frozen=True)
class Template:
    """What PEFT writes for one adapter of a kind and rank on a model: config and tensor layout."""

    kind: str
    rank: int
    config: dict
    tensors: tuple[tuple[str, tuple[int, ...]], ...]  # (key, shape), in file order
    dtype: object  # torch.dtype of every tensor (PEFT saves the adapter in the model's dtype)
    metadata: dict

    @property
    def bytes_per_adapter(self) -> int:
        import math

        return sum(math.prod(shape) for _, shape in self.tensors) * self.dtype.itemsize

    def signature(self) -> str:
        """A short hash of the layout (keys, shapes, dtype, config): cached sets for another model never match."""
        # base_model_name_or_path stays in: vLLM's resolver loads an adapter only if it names the served folder.
        # Lists are sorted: PEFT keeps LoRA's target_modules as a set, saved in each process's string-hash order.
        config = {k: sorted(v, key=str) if isinstance(v, list) else v for k, v in self.config.items()
                  if k != "peft_version"}
        text = json.dumps([self.kind, self.rank, str(self.dtype), self.tensors, config], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _check_kind_rank(kind, rank) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")


def template(model, kind: str, *, rank: int = RANK) -> Template:
    """Wrap ``model`` with PEFT once, save the adapter to a temporary folder and read back its layout. ``model``
    is left as it was (PEFT's wrapper unloaded)."""
    import peft
    from safetensors import safe_open

    from ..para import ParaConfig

    _check_kind_rank(kind, rank)
    if kind == "para":
        config = ParaConfig(r=rank, targets=["q", "v", "up"])
    else:  # init_lora_weights=False: B is not zero, so PEFT keeps every tensor (the file's layout is complete)
        config = peft.LoraConfig(r=rank, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS, init_lora_weights=False)
    peft_model = peft.get_peft_model(model, config)
    try:
        with tempfile.TemporaryDirectory(prefix="paratune-adapter-template-") as tmp:
            peft_model.save_pretrained(tmp)
            saved = json.loads((Path(tmp) / CONFIG).read_text())
            with safe_open(Path(tmp) / WEIGHTS, "pt") as f:
                metadata = f.metadata() or {}
                tensors, dtypes = [], set()
                for key in sorted(f.keys()):
                    sl = f.get_slice(key)
                    tensors.append((key, tuple(sl.get_shape())))
                    dtypes.add(f.get_tensor(key).dtype)
    finally:
        peft_model.unload()
        model.__dict__.pop("peft_config", None)  # unload leaves PEFT's config behind; the next wrap would warn
    if len(dtypes) != 1:  # one dtype is what PEFT writes for these kinds; anything else would need per-key dtypes
        raise RuntimeError(f"expected one dtype in PEFT's {kind} adapter, found {sorted(map(str, dtypes))}")
    return Template(kind, rank, saved, tuple(tensors), dtypes.pop(), metadata)


def _adapter_seed(seed: int, index: int) -> int:
    # the same in every process and for every n (str/tuple hashes are randomised per process)
    return int(hashlib.sha256(repr((seed, index)).encode()).hexdigest()[:15], 16)


def write_one(tpl: Template, folder: Path, seed: int, index: int) -> Path:
    """Write adapter ``index`` of ``tpl``: N(0, 0.02) weights from a generator seeded with ``(seed, index)``.
    Each file goes to a temporary name first and is renamed into place, so a file present is a file complete."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(_adapter_seed(seed, index))
    tensors = {key: (torch.randn(shape, generator=generator) * SCALE).to(tpl.dtype) for key, shape in tpl.tensors}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata=tpl.metadata or None)
    os.replace(tmp, folder / WEIGHTS)
    tmp = folder / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(tpl.config, indent=2, sort_keys=True))
    os.replace(tmp, folder / CONFIG)
    return folder


def write_adapters(model, kind: str, n: int, root: Path, *, seed: int = 0, rank: int = RANK) -> list[Path]:
    """Write ``n`` adapters of ``kind`` (``para`` or ``lora``) and ``rank`` for ``model`` into ``root/<kind><i>``
    and return their folders. Adapter ``i`` has weights N(0, 0.02) from a generator seeded with ``(seed, i)``, so
    a run writes the same adapters every time. ``model`` is wrapped once for the template and left as it was."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    tpl = template(model, kind, rank=rank)
    root = Path(root)
    return [write_one(tpl, root / f"{kind}{i}", seed, i) for i in range(n)]


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)  # hard links: the 10,000-adapter set costs no disk for the adapters the smaller sets hold
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _complete(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file()


def adapter_set(model, kind: str, n: int, cache_root: Path, *, rank: int = RANK, seed: int = 0, log=None,
                tpl: Template | None = None) -> Path:
    """A folder holding exactly the adapters ``<kind>0`` .. ``<kind>{n-1}`` (``write_adapters``' weights), cached
    as ``cache_root/<layout hash>/<kind>-r<rank>-s<seed>/n<n>``. A set with its ``.complete`` marker is returned
    as it is; otherwise the adapters that another cached set of the same layout and seed holds are hard-linked
    from it, the rest written, and the marker written last (an interrupted build resumes where it stopped)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    tpl = tpl or template(model, kind, rank=rank)
    family = Path(cache_root) / tpl.signature() / f"{kind}-r{rank}-s{seed}"
    folder = family / f"n{n}"
    if (folder / COMPLETE).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    # sources to link from: the other sets of this family, complete ones first, the largest first
    others = sorted((p for p in family.glob("n*") if p != folder and p.name[1:].isdigit()),
                    key=lambda p: (not (p / COMPLETE).is_file(), -int(p.name[1:])))
    missing = [i for i in range(n) if not _complete(folder / f"{kind}{i}")]
    to_write = [i for i in missing if not any(_complete(o / f"{kind}{i}") for o in others)]
    need = len(to_write) * (tpl.bytes_per_adapter + 4096)
    free = shutil.disk_usage(folder).free
    if need > free - 2**30:  # leave a GiB for everything else on the disk
        raise RuntimeError(f"writing {len(to_write)} {kind} r={rank} adapters needs {need / 2**30:.1f} GiB, but "
                           f"{folder} has {free / 2**30:.1f} GiB free (keeping 1 GiB spare); choose fewer tenants, a "
                           "lower rank, or a work folder on a larger disk")
    if log and missing:
        log(f"adapters {kind} r={rank} n={n}: {len(missing) - len(to_write)} linked from cached sets, "
            f"{len(to_write)} to write ({tpl.bytes_per_adapter / 2**20:.1f} MiB each) in {folder}")
    for count, i in enumerate(missing, 1):
        name = f"{kind}{i}"
        source = next((o / name for o in others if _complete(o / name)), None)
        if source is None:
            write_one(tpl, folder / name, seed, i)
        else:
            (folder / name).mkdir(exist_ok=True)
            for file in (WEIGHTS, CONFIG):
                _link_or_copy(source / file, folder / name / file)
        if log and count % 1000 == 0:
            log(f"  {count}/{len(missing)}")
    (folder / COMPLETE).write_text(json.dumps({"kind": kind, "rank": rank, "n": n, "seed": seed,
                                               "bytes_per_adapter": tpl.bytes_per_adapter}))
    return folder

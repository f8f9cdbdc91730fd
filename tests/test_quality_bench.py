"""`paratune bench quality`: the protocol's splits, learning-rate selection, resuming, statistics and report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from paratune.bench.quality import Protocol, QualityConfig, protocol as protocol_module, run
from paratune.bench.quality.data import MC_TASKS, build_splits
from paratune.bench.quality.methods import lr_grid, lr_key, settings
from paratune.bench.quality.stats import paired_bootstrap, seed_mean
from paratune.cli import main
from tests.evaluation.conftest import needs_local_data

needs_data = needs_local_data("sst2")


# ----- splits ---------------------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("task", MC_TASKS)
def test_splits_are_fixed_disjoint_and_validation_comes_from_training_data(task):
    a, b = build_splits(task, 0.1), build_splits(task, 0.1)
    assert a.train == b.train and a.val == b.val and a.test == b.test  # the same items for every method and seed
    queries = [{item["query"] + "\x00" + item["choices"][item["gold"]] for item in split}
               for split in (a.train, a.val, a.test)]
    assert not queries[0] & queries[1] and not queries[0] & queries[2] and not queries[1] & queries[2]
    assert all(set(item) == {"query", "choices", "gold"} for item in a.train + a.val + a.test)


@needs_data
def test_validation_is_carved_from_training_files_never_from_the_test_split():
    from paratune.evaluation.tasks import export_multiple_choice, read_multiple_choice

    splits = build_splits("arc-easy", 0.1)
    test_file = read_multiple_choice(export_multiple_choice("arc-easy", "/tmp/paratune-arc-test.jsonl"))
    train_file = read_multiple_choice(export_multiple_choice("arc-easy", "/tmp/paratune-arc-train.jsonl",
                                                             split="train"))
    render = lambda items: {json.dumps(i, sort_keys=True) for i in items}  # noqa: E731
    # Every item is lm-eval's own rendering of a document of the right file.
    assert render(splits.test) <= render(test_file)
    assert render(splits.val) <= render(train_file) and render(splits.train) <= render(train_file)
    assert splits.test[0]["query"].startswith("Question: ") and splits.test[0]["query"].endswith("\nAnswer:")


@needs_data
def test_sst2_tests_on_the_whole_glue_dev_set_and_squad_splits_by_article():
    sst2 = build_splits("sst2", 1.0)
    assert len(sst2.test) == 872 and len(sst2.train) == 256 and len(sst2.val) == 200
    squad = build_splits("squad", 1.0)
    assert len(squad.test) == 500 and len(squad.val) == 100 and len(squad.train) == 128
    train_titles = {r["query"].split("\n")[0] for r in squad.train}
    assert not train_titles & {f"Title: {d['title']}" for d in squad.test + squad.val}
    assert not {d["title"] for d in squad.val} & {d["title"] for d in squad.test}
    # the response ends with the newline lm-eval's generation stops at; the prompt is lm-eval's context
    assert all(r["choices"][r["gold"]].endswith("\n") for r in squad.train)
    assert squad.train[0]["query"].endswith("\n\nAnswer:")


# ----- learning-rate selection ------------------------------------------------------------------------------
def _fake_protocol(tmp_path, values: dict[float, float]):
    protocol = Protocol(QualityConfig(tasks=["sst2"], methods=["para"], output=str(tmp_path)), log=lambda *_: None)
    asked = []
    protocol.val_metric = lambda task, method, lr, seed=0: asked.append(lr) or values[lr]
    return protocol, asked


@pytest.mark.parametrize("values, chosen, asked", [
    ({3e-4: 0.5, 1e-3: 0.7, 3e-3: 0.6}, 1e-3, [3e-4, 1e-3, 3e-3]),  # interior: no extension
    ({3e-4: 0.5, 1e-3: 0.6, 3e-3: 0.7, 9e-3: 0.65}, 3e-3, [3e-4, 1e-3, 3e-3, 9e-3]),  # top end: one step beyond
    ({1e-4: 0.8, 3e-4: 0.7, 1e-3: 0.6, 3e-3: 0.5}, 1e-4, [3e-4, 1e-3, 3e-3, 1e-4]),  # bottom end, and it wins
    ({3e-4: 0.6, 1e-3: 0.6, 3e-3: 0.5, 1e-4: 0.6}, 1e-4, [3e-4, 1e-3, 3e-3, 1e-4]),  # ties go to the smaller
])
def test_learning_rate_is_chosen_on_validation_with_one_extension_beyond_an_end(tmp_path, values, chosen, asked):
    protocol, seen = _fake_protocol(tmp_path, values)
    assert protocol.choose_lr("sst2", "para") == pytest.approx(chosen)
    assert seen == pytest.approx(asked)


# ----- statistics -------------------------------------------------------------------------------------------
def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    a = {"x": rng.integers(0, 2, 400).astype(float), "y": rng.random(300)}
    same = paired_bootstrap(a, a, n_boot=500)
    assert same["tasks"]["x"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "n": 400}
    shifted = paired_bootstrap({k: v + 0.25 for k, v in a.items()}, a, n_boot=500)
    assert shifted["tasks"]["y"]["lo"] == pytest.approx(0.25) and shifted["tasks"]["y"]["hi"] == pytest.approx(0.25)
    b = {"x": rng.integers(0, 2, 400).astype(float), "y": rng.random(300)}
    result = paired_bootstrap(a, b, n_boot=2000)
    for task in a:
        d = a[task] - b[task]
        r = result["tasks"][task]
        assert r["diff"] == pytest.approx(d.mean())
        # the percentile interval is about mean +- 1.96 standard errors
        assert r["hi"] - r["lo"] == pytest.approx(2 * 1.96 * d.std() / np.sqrt(len(d)), rel=0.15)
    assert result["mean"]["diff"] == pytest.approx(np.mean([result["tasks"][t]["diff"] for t in a]))
    assert result["mean"]["lo"] < result["mean"]["diff"] < result["mean"]["hi"]
    with pytest.raises(ValueError, match="same non-empty item list"):
        paired_bootstrap({"x": np.ones(3)}, {"x": np.ones(4)})
    assert seed_mean([[1, 0, 1], [0, 0, 1]]).tolist() == [0.5, 0.0, 1.0]
    with pytest.raises(ValueError, match="different numbers of items"):
        seed_mean([[1, 0], [1]])


# ----- methods ----------------------------------------------------------------------------------------------
def test_method_settings_and_budgets():
    assert settings("lora") == {"method": "lora", "r": 24, "targets": ["q_proj", "v_proj"]}
    assert settings("para-gelu") == {"method": "para", "r": 16, "activation": "gelu"}
    assert settings("para-all7-r7")["r"] == 7 and len(settings("para-all7-r7")["targets"]) == 7
    # a variant is PARA with its settings changed, on PARA's grid
    assert settings("para-all7") == {**settings("para"), "r": 7, "targets": ["q", "k", "v", "o", "gate", "up", "down"]}
    assert lr_grid("para-all7") == lr_grid("para") == (3e-4, 1e-3, 3e-3)
    assert [lr_key(x) for x in (3e-4, 1e-3, 3e-3, 9e-3, 1e-2)] == ["3e-4", "1e-3", "3e-3", "9e-3", "1e-2"]
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        settings("dora")


def test_matched_budgets_on_the_smollm2_shape():
    """PARA r16 (q,v,up), LoRA r24 (q,v), LoRA r5 on all linear layers and PARA r8 on all seven sites: the
    budgets the protocol's docs state, on a random model of SmolLM2-135M's shape."""
    import peft
    import torch
    import transformers

    from paratune.para import ParaConfig
    from paratune.training.config import TrainConfig
    from paratune.training.trainer import build_peft_model

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3)
    counts = {}
    for name in ("para", "lora", "lora-all", "ia3", "para-all7-r7"):
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(config)
        fields = {k: v for k, v in settings(name).items() if k != "bilevel"}
        peft_model = build_peft_model(model, TrainConfig(data=["x"], output="x", **fields))
        counts[name] = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert counts == {"para": 1_400_520, "lora": 1_382_400, "lora-all": 1_526_400, "ia3": 69_120,
                      "para-all7-r7": 1_429_050}
    assert isinstance(peft, object) and ParaConfig  # imported for the side effect of registering PARA


# ----- the whole protocol on a tiny model --------------------------------------------------------------------
@needs_data
def test_protocol_runs_resumes_and_reports(tiny_folder, tmp_path, monkeypatch):
    cfg = QualityConfig(tasks=["sst2", "squad"], methods=["para", "prompt-tuning"],
                        reference_methods=["prompt-tuning"], multitask_methods=["para"], ablations=["para-gelu"],
                        ablation_tasks=["sst2"], variants=["para-all7"], variant_tasks=["squad"], seeds=2,
                        scale=0.02, max_length=400,
                        model=str(tiny_folder / "model"), output=str(tmp_path))
    run(cfg, "first", log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["kind"] == "train"]
    scores = [r for r in records if r["kind"] == "score"]
    protocol = Protocol(cfg, log=lambda *_: None)
    # the variant runs right after the main methods, as a method of its own
    assert protocol.groups()[:4] == [("sst2", "para", False), ("squad", "para", False),
                                     ("squad", "para-all7", False), ("multitask", "para", False)]
    for task, method in [("sst2", "para"), ("squad", "para"), ("multitask", "para"), ("sst2", "prompt-tuning"),
                         ("squad", "para-all7")]:
        grid = {r["lr"] for r in trains if r["task"] == task and r["method"] == method and r["seed"] == 0}
        assert {"3e-4", "1e-3", "3e-3"} <= grid if method != "prompt-tuning" else {"3e-3", "1e-2", "3e-2"} <= grid
        chosen = lr_key(protocol.chosen_lr(task, method))
        # validation scores for every grid rate; test scores only at the chosen rate, for every seed
        tested = {(r["lr"], r["seed"]) for r in scores if r["task"] == task and r["method"] == method
                  and r["split"].startswith("test:")}
        n_seeds = 1 if method == "prompt-tuning" else 2
        assert tested == {(chosen, s) for s in range(n_seeds)}
        assert {r["lr"] for r in scores if r["task"] == task and r["method"] == method
                and r["split"].startswith("val:")} == grid
    multitask_tests = {r["split"] for r in scores if r["task"] == "multitask" and r["split"].startswith("test:")}
    assert multitask_tests == {"test:sst2", "test:squad"}
    for r in scores:
        n = r["n"]
        assert all(len(v) == n for v in r["items"].values())
        assert r[("f1" if r["eval_task"] == "squad" else "acc")] == pytest.approx(
            np.mean(r["items"]["f1" if r["eval_task"] == "squad" else "acc"]))
    # the ablation reuses PARA's chosen sst2 rate with one seed
    ablation = [r for r in trains if r["method"] == "para-gelu"]
    assert [(r["lr"], r["seed"]) for r in ablation] == [(lr_key(protocol.chosen_lr("sst2", "para")), 0)]
    assert ablation[0]["settings"]["activation"] == "gelu"

    # Resuming trains and scores nothing more.
    monkeypatch.setattr(protocol_module, "build_splits", lambda *a, **k: pytest.fail("resumed run did work"))
    n_lines = len(records)
    run(cfg, "second", log=lambda *_: None)
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == n_lines

    report = (tmp_path / "quality.md").read_text()
    assert "## Test scores, one adapter per task" in report and "## Learning-rate selection" in report
    assert "## PARA ablations" in report and "sst2/para-gelu" in report
    assert "## PARA's element-wise variants" in report and "| squad/para-all7 | targets=" in report
    assert [r["settings"]["r"] for r in trains if r["method"] == "para-all7"] == [7] * len(
        [r for r in trains if r["method"] == "para-all7"])
    para = [r["acc"] for r in scores if r["task"] == "sst2" and r["method"] == "para" and r["split"] == "test:sst2"]
    row = next(line for line in report.splitlines() if line.startswith("| sst2 (acc) |"))
    assert f"{100 * np.mean(para):.1f} ± {100 * np.std(para, ddof=1):.1f} ({100 * para[0]:.1f}, {100 * para[1]:.1f})" in row
    data = json.loads((tmp_path / "quality.json").read_text())
    # PARA against the one-seed reference: PARA's items averaged over its seeds, the reference's one seed
    items = {m: [r["items"]["acc"] for r in scores if r["task"] == "sst2" and r["method"] == m
                 and r["split"] == "test:sst2"] for m in ("para", "prompt-tuning")}
    assert len(items["prompt-tuning"]) == 1
    against = data["comparisons"]["para-prompt-tuning/single"]["tasks"]["sst2"]["diff"]
    assert against == pytest.approx(np.mean(np.mean(items["para"], axis=0)) - np.mean(items["prompt-tuning"][0]))
    assert "| para-prompt-tuning/single |" in report
    assert data["chosen_lr"]["sst2/para"] == lr_key(protocol.chosen_lr("sst2", "para"))
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, words", [
    (["--tasks", "sst2", "nope"], "unknown task 'nope'"),
    (["--methods", "para", "dora"], "unknown method 'dora'"),
    (["--ablations", "para-fast"], "unknown ablation 'para-fast'"),
    (["--variants", "para-x"], "unknown variant 'para-x'; choose from para-all7"),
    (["--variant-tasks", "nope"], "unknown task 'nope'"),
    (["--scale", "0"], "scale must be in (0, 1], got 0.0"),
    (["--seeds", "0"], "seeds must be between 1 and 10, got 0"),
])
def test_bad_flags_are_refused_before_any_training(argv, words, tmp_path, capsys):
    assert main(["bench", "quality", *argv, "--output", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()


def test_report_only_without_runs_says_so(tmp_path, capsys):
    assert main(["bench", "quality", "--report-only", "--output", str(tmp_path)]) == 2
    assert f"no finished runs in {tmp_path}/runs.jsonl at scale 1.0" in capsys.readouterr().err


def test_a_killed_runs_incomplete_last_line_is_dropped_and_a_corrupt_middle_line_refused(tmp_path, capsys):
    from paratune.bench.quality.protocol import Store, load_records

    cfg = QualityConfig(output=str(tmp_path))
    good = {"kind": "train", "task": "sst2", "method": "para", "lr": "1e-3", "seed": 0, "scale": 1.0}
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"kind": "score", "task": "ss')
    assert load_records(cfg) == [good]
    assert "ignoring an incomplete last line" in capsys.readouterr().err
    store = Store(cfg)
    store.add({**good, "seed": 1})
    assert [r["seed"] for r in load_records(cfg)] == [0, 1]  # the partial line is gone, the new one intact
    path.write_text("not json\n" + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match="runs.jsonl:1: not a JSON record"):
        load_records(cfg)


def test_the_default_output_folder_holds_the_finished_protocols_records():
    """With no --output, `paratune bench quality` resumes (or, --report-only, re-reports) the committed results."""
    from pathlib import Path

    from paratune.bench.quality.protocol import RESULTS, load_records

    assert QualityConfig().output == RESULTS and RESULTS.startswith("docs/results/quality/")
    folder = Path(__file__).resolve().parents[1] / RESULTS
    assert (folder / "quality.md").is_file()
    records = load_records(QualityConfig(output=str(folder)))
    assert {r["kind"] for r in records} >= {"train", "score"} and len(records) >= 400

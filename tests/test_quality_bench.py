"""`paratune bench quality` on a tiny model: held-out splits, resuming, the report, and bad flags."""

from __future__ import annotations

import json

import pytest

from paratune.bench import quality_bench
from paratune.bench.quality_bench import DEFAULT_PLAN, QualityConfig, _split, load_cells, method_settings, run
from paratune.cli import main
from paratune.tasks.base import data_root

needs_data = pytest.mark.skipif(not (data_root() / "sst2").is_dir(), reason="shared data not available")


@needs_data
@pytest.mark.parametrize("task", ["sst2", "boolq", "arc-easy"])
def test_eval_set_is_fixed_and_disjoint_from_training(task):
    plan = DEFAULT_PLAN[task]
    train0, eval0 = _split(task, 0, plan, scale=0.1)
    train1, eval1 = _split(task, 1, plan, scale=0.1)
    assert [e.id for e in eval0] == [e.id for e in eval1]  # every seed is scored on the same examples
    assert [e.id for e in train0] != [e.id for e in train1]  # the seed draws the training sample
    assert len(train0) == int(plan.train_examples * 0.1) and len(eval0) == int(plan.eval_examples * 0.1)
    assert not {e.prompt for e in train0 + train1} & {e.prompt for e in eval0}


@needs_data
def test_squad_trains_and_evaluates_on_different_articles():
    train, evals = _split("squad", 0, DEFAULT_PLAN["squad"], scale=1.0)
    assert train and evals
    assert not {e.meta["title"] for e in train} & {e.meta["title"] for e in evals}


@needs_data
def test_runs_resumes_and_reports(tiny_folder, tmp_path, monkeypatch):
    cfg = QualityConfig(tasks=["sst2", "boolq"], methods=["para"], seeds=[0], scale=0.02,
                        max_length=200, model=str(tiny_folder / "model"), output=str(tmp_path))
    run(cfg, "first", log=lambda *_: None)
    cells = load_cells(cfg)
    # 2 zero-shot base cells + one adapter per task + one multi-task adapter
    assert sorted((c["task"], c["method"]) for c in cells) == sorted(
        [("sst2", "base"), ("boolq", "base"), ("sst2", "para"), ("boolq", "para"), ("multitask", "para")])
    for c in cells:
        expected_tasks = {"sst2", "boolq"} if c["task"] == "multitask" else {c["task"]}
        assert set(c["eval"]) == expected_tasks
        for scores in c["eval"].values():
            assert 0.0 <= scores["accuracy"] <= 1.0 and scores["response_loss"] > 0
        if c["method"] != "base":
            assert c["params"] > 0 and c["steps"] == 2
    assert len({c["params"] for c in cells if c["method"] == "para"}) == 1  # same adapter shape everywhere

    # A second run with one more seed trains only the new cells and keeps the old ones untouched.
    trained = []
    real_run_cell = quality_bench.run_cell
    monkeypatch.setattr(quality_bench, "run_cell",
                        lambda cfg, task, method, seed, log: trained.append((task, method, seed))
                        or real_run_cell(cfg, task, method, seed, log))
    cfg.seeds = [0, 1]
    run(cfg, "second", log=lambda *_: None)
    assert sorted(trained) == [("boolq", "para", 1), ("multitask", "para", 1), ("sst2", "para", 1)]
    assert load_cells(cfg)[:len(cells)] == cells

    report = (tmp_path / "quality.md").read_text()
    assert "`first` (5 cells); `second` (3 cells)" in report
    assert "Cells finished: 8 of the 8" in report
    assert "## Single-task adapters" in report and "## One adapter per method trained on the union" in report
    sst2_row = next(line for line in report.splitlines() if line.startswith("| sst2 |"))
    para = [c["eval"]["sst2"]["accuracy"] for c in load_cells(cfg) if c["task"] == "sst2" and c["method"] == "para"]
    assert f"acc {sum(para) / 2:.3f} ({min(para):.3f}-{max(para):.3f})" in sst2_row  # mean and spread of 2 seeds
    assert json.loads((tmp_path / "quality.json").read_text())["cells"] == load_cells(cfg)
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"

    # --report-only rebuilds the report from the cells and trains nothing; columns of earlier runs stay
    (tmp_path / "quality.md").unlink()
    trained.clear()
    assert main(["bench", "quality", "--report-only", "--tasks", "sst2,boolq", "--methods", "lora",
                 "--seeds", "0,1", "--scale", "0.02", "--output", str(tmp_path)]) == 0
    rebuilt = (tmp_path / "quality.md").read_text()
    assert not trained and "| task | base | para |" in rebuilt and "lora" not in rebuilt.split("Budgets")[1]
    assert rebuilt.split("Budgets")[1] == report.split("Budgets")[1]  # the same tables
    assert "Cells finished: 2 of the 8 that `paratune bench quality --report-only --tasks sst2,boolq --methods " \
        f"lora --seeds 0,1 --scale 0.02 --output {tmp_path}` plans; 8 in all" in rebuilt


def test_method_overrides():
    assert method_settings("lora") == {"method": "lora", "r": 24, "targets": ["q_proj", "v_proj"]}
    assert method_settings("para@lr=3e-3@r=8") == {"method": "para", "r": 8, "lr": 0.003}


@pytest.mark.parametrize("argv, words", [
    (["--tasks", "sst2,nope"], "unknown task 'nope'"),
    (["--methods", "para,dora"], "unknown method 'dora'"),
    (["--scale", "0"], "--scale must be in (0, 10]"),
    (["--methods", "lora@lr=fast"], "bad override 'lr=fast' in 'lora@lr=fast': 'fast' is not a float"),
    (["--methods", "lora@alpha=8"], "bad override 'alpha=8' in 'lora@alpha=8': use lr=<float> or r=<int>"),
])
def test_bad_flags_are_refused_before_any_training(argv, words, tmp_path, capsys):
    assert main(["bench", "quality", *argv, "--output", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "quality_cells.jsonl").exists()


def test_report_only_without_cells_says_so(tmp_path, capsys):
    assert main(["bench", "quality", "--report-only", "--output", str(tmp_path)]) == 2
    assert "no finished cells" in capsys.readouterr().err

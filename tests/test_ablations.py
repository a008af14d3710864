"""bench/ablations.py: the paper's ablation rows and how each of their runs is set up. The runs
themselves are bench/fidelity.py's, the stage trainer's and the evaluation's, tested in their own
modules; here they are replaced by recorders."""

import json
from pathlib import Path

import pytest

from bench import ablations, fidelity
from configs import fidelity as fidelity_config
from cvtcl_jax.data import dataset_info
from cvtcl_jax.modes import checks, demo, evaluation, training
from cvtcl_jax.training import stage as stage_module


@pytest.fixture
def config():
    return fidelity_config.get_config()


@pytest.fixture(autouse=True)
def prepared(monkeypatch):
    """The set is 'prepared' without generating it; returns the roots it was prepared in."""
    roots = []

    def prepare_data(cfg, root):
        roots.append(root)
        return str(root / "data"), "cvtcl_ucf101/split1"

    monkeypatch.setattr(demo, "prepare_data", prepare_data)
    monkeypatch.setattr(dataset_info, "load_dataset_info", lambda data_dir, name: None)
    return roots


def test_table1_runs_the_papers_four_rows_each_one_change_from_the_recipe(
    config, tmp_path, monkeypatch, prepared
):
    runs = {}

    def benchmark(cfg, wd, seeds, train, views):
        fidelity.prepare(cfg, wd)  # as the real one: every row reads the one set
        c = cfg.contrast
        runs[Path(wd).name] = (train, tuple(views), (c.beta, c.local_weight, c.lt_weight), c.tau)
        tables = [
            {
                "flow": {
                    "random_init": {"R@1": 10.0 + s},
                    "init": {"R@1": 20.0 + len(runs) + s},
                    fidelity.BASELINE: {"R@1": 30.0},
                }
            }
            for s in seeds
        ]
        return {"tables": tables, "summary": fidelity.summarize(tables)}

    monkeypatch.setattr(fidelity, "benchmark", benchmark)
    config.contrast.tau = 0.3  # an override on the command line reaches every row
    result = ablations.table1(config, tmp_path, [0, 2], views=["flow"])
    assert runs == {
        "infonce": ("init", ("flow",), (0.0, 1.0, 1.0), 0.3),
        "local": ("init", ("flow",), (1.0, 1.0, 0.0), 0.3),
        "lt": ("init", ("flow",), (1.0, 0.0, 1.0), 0.3),
        "ltcl": ("init", ("flow",), (1.0, 1.0, 1.0), 0.3),
    }
    assert prepared == [tmp_path / "set"] * 5
    rows = result["summary"]["flow"]
    assert list(rows) == [
        "random init",
        "flow statistics",
        "InfoNCE",
        "+ L_local",
        "+ L_LT",
        "+ L_local + L_LT",
    ]
    assert rows["+ L_LT"]["R@1"]["values"] == [23.0, 25.0] and rows["random init"]["R@1"]["mean"] == 11.0
    assert json.loads((tmp_path / "table1.json").read_text())["summary"] == json.loads(
        json.dumps(result["summary"])
    )
    assert "+ L_local + L_LT" in fidelity.format_summary(result["summary"])


class Recorder:
    """Stands in for the training and the evaluation of Table 3's runs."""

    def __init__(self, monkeypatch):
        self.inits, self.stages, self.evaluated = [], [], []
        monkeypatch.setattr(training, "run_init", self.run_init)
        monkeypatch.setattr(training, "run_stage", self.run_stage)
        monkeypatch.setattr(evaluation, "evaluate_stages", self.evaluate)

    def run_init(self, cfg, workdir):
        self.inits.append((cfg.seed, cfg.train.view, str(workdir)))
        Path(workdir).mkdir(parents=True, exist_ok=True)

    def run_stage(self, cfg, workdir, stage):
        self.stages.append((cfg.seed, cfg.contrast.top_k, str(workdir), stage))

    def evaluate(self, cfg, workdir, view):
        assert cfg.schedule.cotrain_cycles == 1
        sources = evaluation.stage_sources(cfg, workdir)
        self.evaluated += [(cfg.seed, s, sources[s][view]) for s in cfg.schedule.eval_stages]
        return {view: {s: {"R@1": float(cfg.contrast.top_k)} for s in cfg.schedule.eval_stages}}


def test_table3_cotrains_the_view_from_each_seeds_initialization_once_per_k(config, tmp_path, monkeypatch):
    rec = Recorder(monkeypatch)
    result = ablations.table3(config, tmp_path, [0, 1], top_ks=[0, 1, 5])
    init = {s: tmp_path / "table3" / "init" / f"seed{s}" for s in (0, 1)}
    run = {
        (s, k): str(tmp_path / "table3" / f"k{k}" / f"seed{s}" / "cotrain1_rgb")
        for s in (0, 1)
        for k in (0, 1, 5)
    }
    assert rec.inits == [(s, v, str(init[s] / f"init_{v}")) for s in (0, 1) for v in ("rgb", "flow")]
    assert [(seed, k, wd) for seed, k, wd, _ in rec.stages] == [
        (s, k, run[s, k]) for s in (0, 1) for k in (0, 1, 5)
    ]
    for seed, _, _, stage in rec.stages:
        assert (stage.view, stage.other_view) == ("rgb", "flow") and stage.beta is None  # RGB keeps LTCL
        assert (stage.init_from, stage.other_from) == (
            str(init[seed] / "init_rgb"),
            str(init[seed] / "init_flow"),
        )
        assert stage.epochs == config.schedule.cotrain_epochs and stage.lr == config.schedule.cotrain_lr
    assert rec.evaluated == [
        e
        for s in (0, 1)
        for e in [(s, "random_init", "random"), (s, "init", str(init[s] / "init_rgb"))]
        + [(s, "cotrain", run[s, k]) for k in (0, 1, 5)]
    ]
    assert list(result["tables"][1]["rgb"]) == ["random init", "initialized", "K = 0", "K = 1", "K = 5"]
    assert result["summary"]["rgb"]["K = 5"]["R@1"]["values"] == [5.0, 5.0]
    assert json.loads((tmp_path / "table3.json").read_text())["top_k"] == [0, 1, 5]


def test_table3_links_an_init_dirs_finished_encoders_and_refuses_a_mixed_workdir(
    config, tmp_path, monkeypatch
):
    rec = Recorder(monkeypatch)
    finished = set()
    monkeypatch.setattr(checks, "check_stage_source", lambda path, *a, **k: None)
    monkeypatch.setattr(stage_module, "finished_summary", lambda p: {} if str(p) in finished else None)
    for d in ("a", "b"):
        for v in ("rgb", "flow"):
            (tmp_path / d / "seed0" / f"init_{v}").mkdir(parents=True)
            finished.add(str((tmp_path / d / "seed0" / f"init_{v}").resolve()))
    wd = tmp_path / "w"
    ablations.table3(config, wd, [0], top_ks=[1], init_dir=str(tmp_path / "a"))
    link = wd / "table3" / "init" / "seed0" / "init_flow"
    assert rec.inits == [] and link.is_symlink()
    assert link.resolve() == (tmp_path / "a" / "seed0" / "init_flow").resolve()
    assert rec.stages[0][3].other_from == str(link)
    ablations.table3(config, wd, [0], top_ks=[1], init_dir=str(tmp_path / "a"))  # a re-run resumes
    with pytest.raises(ValueError, match="another --workdir"):
        ablations.table3(config, wd, [0], top_ks=[1], init_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="pass that --init_dir again"):
        ablations.table3(config, wd, [0], top_ks=[1])
    finished.clear()
    with pytest.raises(ValueError, match="has not finished"):
        ablations.table3(config, tmp_path / "w2", [0], top_ks=[1], init_dir=str(tmp_path / "a"))

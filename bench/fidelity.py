"""Does it learn motion? The fidelity benchmark over a family of generated sets and training seeds,
next to its baselines.

    python bench/fidelity.py --workdir=W [--sets=walk,mixed,...] [--seeds=0,1,2]
        [--train=init|schedule] [--views=flow] [--data_root=D] [--config=configs/fidelity.py]
        [--config.key=value ...]

For every set of --sets (default: the whole family, generated/motion_set.py's VARIANTS) in
W/<set>: generates and prepares it once (D/<set>/set with --data_root, which lets workdirs share
the sets; else W/<set>/set; the data stay fixed, demo.data_seed), then for every training seed k
trains in W/<set>/seed<k>:
  --train=schedule   the config's whole schedule (init of both views, co-training), evaluated after
                     random init, initialization and co-training, for RGB, flow and two-stream;
  --train=init       initialization of --views only, evaluated after random init and after it
                     (the quick test of one change to the recipe).
Each seed sets config.seed (the networks' initialization, the augmentations, the clip order).
The hand-made baseline (bench/flow_statistics.py: 8 numbers of each video's flow) is evaluated
with the same retrieval and linear probe, its probe once per seed. Prints each set's table of mean
and standard deviation over seeds (every seed's row in W/<set>/fidelity.json), then the family's
table (W/family.json): per set, random init, the hand-made baseline and the trained encoder, and
whether the set chose the recipe or confirms it (configs/fidelity.py). A re-run resumes: finished
stages and evaluations are read back. Compare changes in separate workdirs with one --data_root.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cvtcl_jax import console, report  # noqa: E402
from generated import motion_set  # noqa: E402

FLAGS = flags.FLAGS

BASELINE = "flow_statistics"
TRAIN = ("init", "schedule")


def summarize(per_seed: list[dict]) -> dict:
    """[{view: {stage: {metric: value}}} per seed] -> {view: {stage: {metric: {mean, std, values}}}}
    (std over seeds with ddof=1; 0 for one seed)."""
    out: dict = {}
    for view, stages in per_seed[0].items():
        for stage, metrics in stages.items():
            for metric in metrics:
                values = [t[view][stage][metric] for t in per_seed]
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                row = out.setdefault(view, {}).setdefault(stage, {})
                row[metric] = {"mean": float(np.mean(values)), "std": std, "values": values}
    return out


def format_summary(summary: dict) -> str:
    """Aligned rows 'view stage metric mean +- std'."""
    w = max([17] + [len(stage) + 2 for stages in summary.values() for stage in stages])
    lines = [f"{'view':<12}{'stage':<{w}}" + "".join(f"{m:>22}" for m in ("R@1", "R@5", "linear_top1"))]
    for view, stages in summary.items():
        for stage, row in stages.items():
            cells = "".join(
                f"{row[m]['mean']:>14.1f} +- {row[m]['std']:<4.1f}" if m in row else f"{'':>22}"
                for m in ("R@1", "R@5", "linear_top1")
            )
            lines.append(f"{view:<12}{stage:<{w}}{cells}")
    return "\n".join(lines)


def initialize(config, workdir: Path, views) -> None:
    """Trains the initialization of each of `views` in WORKDIR/init_<view> (finished ones return)."""
    from cvtcl_jax.modes import training
    from cvtcl_jax.training.stage import stage_name

    for view in views:
        cfg = config.copy_and_resolve_references()
        cfg.train.view = view
        training.run_init(cfg, Path(workdir) / stage_name(view))


def _seed_table(config, workdir: Path, train: str, views) -> dict:
    """One seed's table {view: {stage: metrics}}: the schedule's, or the initialization of
    `views` and its evaluation."""
    from cvtcl_jax.eval.store import TWO_STREAM
    from cvtcl_jax.modes import evaluation, training

    if train == "schedule":
        return training.run_schedule(config, workdir)["evaluation"]
    initialize(config, workdir, views)
    cfg = config.copy_and_resolve_references()
    cfg.schedule.eval_stages = ("random_init", "init")
    return evaluation.evaluate_stages(cfg, workdir, TWO_STREAM if len(views) == 2 else views[0])


def prepare(config, workdir: Path):
    """Checks the demo-mode config, generates and prepares its set once (demo.data_dir, or
    WORKDIR/set) and returns (a copy of the config reading it, with demo.data_dir set so later
    runs share the set; the set's DatasetInfo)."""
    from cvtcl_jax.data import dataset_info
    from cvtcl_jax.modes import demo

    config = config.copy_and_resolve_references()
    demo.check_demo(config)
    config.demo.data_dir = str(config.demo.data_dir or Path(workdir) / "set")
    data_dir, name = demo.prepare_data(config, Path(config.demo.data_dir))
    config.data.dir, config.data.name = data_dir, name
    return config, dataset_info.load_dataset_info(data_dir, name)


def benchmark(config, workdir, seeds, train: str = "schedule", views=("rgb", "flow")) -> dict:
    """Prepares the config's set (demo.data_dir, or WORKDIR/set), trains and evaluates every seed
    in WORKDIR/seed<k>, adds the baseline, and returns {'tables': [per seed], 'summary': ...,
    'dataset': ...}; also written to WORKDIR/fidelity.json."""
    from bench import flow_statistics

    if train not in TRAIN or not views or not set(views) <= {"rgb", "flow"}:
        raise ValueError(f"train must be one of {TRAIN} and views rgb, flow or both; got {train!r}, {views}")
    wd = Path(workdir)
    config, info = prepare(config, wd)
    stats = {s: flow_statistics.subset_features(info, s) for s in ("train", "test")}
    tables = []
    for seed in seeds:
        cfg = config.copy_and_resolve_references()
        cfg.seed = int(seed)
        table = _seed_table(cfg, wd / f"seed{seed}", train, list(views))
        table.setdefault("flow", {})[BASELINE] = flow_statistics.evaluate(
            stats["train"], stats["test"], info.num_classes, cfg.linear, cfg.global_batch, int(seed)
        )
        tables.append(table)
        console.say(f"seed {seed}: {json.dumps(table)}")
    result = {
        "dataset": {"dir": config.data.dir, "name": config.data.name, "set": config.demo.set},
        "train": train,
        "views": list(views),
        "seeds": [int(s) for s in seeds],
        "config": config.to_dict(),
        "tables": tables,
        "summary": summarize(tables),
    }
    (wd / "fidelity.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def set_config(config, variant: str, data_root=None):
    """config for the family's set `variant`: its generator variant and class count, and its
    prepared data under data_root/<variant>/set (None: the benchmark's workdir decides)."""
    if variant not in motion_set.VARIANTS:
        raise ValueError(f"unknown set {variant!r}: the family is {list(motion_set.VARIANTS)}")
    cfg = config.copy_and_resolve_references()
    cfg.demo.update(set="motion", variant=variant, num_classes=len(motion_set.VARIANTS[variant].classes))
    cfg.demo.data_dir = str(Path(data_root) / variant / "set") if data_root else None
    # Every set trains as many steps as the config's own set: a set of fewer classes has fewer
    # videos, so more epochs.
    d, s = config.demo, cfg.schedule
    steps = s.init_epochs * _steps_per_epoch(d, d.num_classes, config.global_batch)
    s.init_epochs = -(-steps // _steps_per_epoch(d, cfg.demo.num_classes, config.global_batch))
    return cfg


def _steps_per_epoch(demo, num_classes: int, batch: int) -> int:
    """Steps per epoch over a generated set's split-1 train videos (two thirds of the groups),
    from the generator's settings: the set may not be prepared yet, so training.inputs'
    batches_per_epoch (which reads the prepared split) cannot tell it."""
    return max(1, num_classes * demo.clips_per_group * (demo.groups - demo.groups // 3) // batch)


def family(config, workdir, sets, seeds, train: str = "init", views=("flow",), data_root=None) -> dict:
    """`benchmark` on every set of the family named in `sets` (W/<set>), then the family's table
    {set: {'role', 'summary'}}, also written to WORKDIR/family.json (its 'summary' keyed
    '<set> <view>' for the run report)."""
    from configs import fidelity as recipe

    if config.demo.data_dir:
        raise ValueError(
            f"demo.data_dir={config.demo.data_dir} names one set's directory: the family prepares "
            "each set in DATA_ROOT/<set>/set, so pass --data_root instead"
        )
    configs = {v: set_config(config, v, data_root) for v in sets}  # every name checked first
    results = {v: benchmark(cfg, Path(workdir) / v, seeds, train, views) for v, cfg in configs.items()}
    table = {v: {"role": recipe.role(v), "summary": r["summary"]} for v, r in results.items()}
    out = {
        "sets": table,
        "seeds": [int(s) for s in seeds],
        "train": train,
        "summary": {f"{v} {view}": rows for v, r in results.items() for view, rows in r["summary"].items()},
    }
    Path(workdir, "family.json").write_text(json.dumps(out, indent=1))
    return out


FAMILY_ROWS = (
    ("random_init", "random init"),
    (BASELINE, "flow statistics"),
    ("init", "initialized"),
    ("cotrain", "co-trained"),
)


def format_family(table: dict, view: str = "flow") -> str:
    """The family's table of `view`: per set and encoder, R@1 and the linear probe, mean +- std
    over seeds, with the set's role."""
    lines = [f"{'set':<13}{'role':<10}{'encoder':<17}{'R@1':>16}{'linear_top1':>18}"]
    for name, entry in table.items():
        rows = entry["summary"].get(view, {})
        for key, label in FAMILY_ROWS:
            if key in rows:
                row = rows[key]
                cells = "".join(
                    f"{row[m]['mean']:>10.1f} +- {row[m]['std']:<4.1f}" for m in ("R@1", "linear_top1")
                )
                lines.append(f"{name:<13}{entry['role']:<10}{label:<17}{cells}")
    return "\n".join(lines)


def start_command(argv, workdir: str, name: str) -> None:
    """The benchmark commands' start: no stray arguments, everything but the console's lines in
    WORKDIR/logs/ (--verbose: not), TensorFlow off the accelerators, and a persistent compilation
    cache ($JAX_COMPILATION_CACHE_DIR, or WORKDIR/jax_cache)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    console.start(Path(workdir) / "logs", name, verbose=FLAGS.verbose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import jax
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(Path(workdir) / "jax_cache")
    jax.config.update("jax_compilation_cache_dir", cache)


def main(argv) -> None:
    start_command(argv, FLAGS.workdir, "fidelity")
    try:
        result = family(
            FLAGS.config, FLAGS.workdir, FLAGS.sets, FLAGS.seeds, FLAGS.train, FLAGS.views, FLAGS.data_root
        )
    except ValueError as e:
        console.error(str(e))
        sys.exit(2)
    for name, entry in result["sets"].items():
        console.say(f"{name} set, {FLAGS.train}, seeds {FLAGS.seeds} (mean +- std over seeds):")
        console.say(format_summary(entry["summary"]))
    console.say(f"the family, {FLAGS.train}, seeds {FLAGS.seeds} (flow, mean +- std over seeds):")
    console.say(format_family(result["sets"]))
    console.say(f"report: {report.make_report(FLAGS.workdir)}")


def define_flags() -> None:
    """The command's flags (defined here, not at import, so tests can import the module)."""
    config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "fidelity.py"), "a demo-mode config")
    flags.DEFINE_string("workdir", None, "the benchmark's directory", required=True)
    flags.DEFINE_list("sets", list(motion_set.VARIANTS), "the family's sets (motion_set.VARIANTS)")
    flags.DEFINE_string("data_root", None, "prepare the sets in DATA_ROOT/<set>/set (shared by workdirs)")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "training seeds")
    flags.DEFINE_enum("train", "init", list(TRAIN), "initialization only, or the whole schedule")
    flags.DEFINE_list("views", ["flow"], "--train=init: the views initialized")
    flags.DEFINE_bool("verbose", False, "the full log stream on the console instead of WORKDIR/logs/")


if __name__ == "__main__":
    define_flags()
    app.run(main)

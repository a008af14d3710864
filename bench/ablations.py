"""The paper's ablations in miniature, over training seeds, on a generated set (docs/fidelity.md).

    python bench/ablations.py --workdir=W --table=1 [--views=flow] [--seeds=0,1,2] [--config.key=value ...]
    python bench/ablations.py --workdir=W --table=3 [--top_k=0,1,5] [--init_dir=D] [--config.key=value ...]

Table 1, the LTCL terms in initialization: InfoNCE alone (contrast.beta=0), + L_local
(contrast.lt_weight=0), + L_LT (contrast.local_weight=0) and all three. Each row is
bench/fidelity.py's initialization of --views (default both) in W/table1/<row>, evaluated next to
random init and the hand-made flow feature.

Table 3, K (contrast.top_k, the positives mined in co-training): per seed both views are
initialized once in W/table3/init/seed<k> (or taken from D/seed<k>/init_<view>, e.g. a
bench/fidelity.py workdir trained with the same config), then for every K one co-training run of
--views (default rgb, the paper's: RGB trained, flow frozen and ranking; the schedule's first
cycle) in W/table3/k<K>/seed<k>, evaluated next to that view's random init and initialization.
RGB learns on the demo's set, not on the motion set: docs/fidelity.md runs Table 3 with
--config=configs/demo.py.

Prints the table (mean +- std over the seeds, ddof 1) and writes it with every seed's numbers to
W/table<N>.json. The set is prepared once (W/set, or --config.demo.data_dir); a re-run resumes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import fidelity  # noqa: E402
from cvtcl_jax import console, report  # noqa: E402

FLAGS = flags.FLAGS

# (row, its directory, the contrast overrides): the paper's Table 1 rows in its order.
TABLE1 = (
    ("InfoNCE", "infonce", {"beta": 0.0}),
    ("+ L_local", "local", {"lt_weight": 0.0}),
    ("+ L_LT", "lt", {"local_weight": 0.0}),
    ("+ L_local + L_LT", "ltcl", {}),
)
# The reference rows of every table: the same seeds and videos in every row's run.
REFERENCE = {"random_init": "random init", fidelity.BASELINE: "flow statistics"}


def table1(config, workdir, seeds, views=("rgb", "flow")) -> dict:
    """Table 1: {'summary': {view: {row: metrics}}, 'runs': {row: [per seed tables]}, ...}; the
    random-init and baseline rows come from the first row's run (every row's are the same)."""
    wd = Path(workdir)
    config, _ = fidelity.prepare(config, wd)  # once, before the rows share it
    rows, summary = {}, {}
    for label, name, overrides in TABLE1:
        cfg = config.copy_and_resolve_references()
        cfg.contrast.update(overrides)
        rows[label] = fidelity.benchmark(cfg, wd / "table1" / name, seeds, train="init", views=views)
        for view, stages in rows[label]["summary"].items():
            if "init" not in stages:  # the flow baseline of an RGB-only run
                continue
            out = summary.setdefault(view, {})
            if not out:
                out.update({REFERENCE[s]: stages[s] for s in REFERENCE if s in stages})
            out[label] = stages["init"]
    return _written(
        wd / "table1.json",
        {
            "table": 1,
            "seeds": list(seeds),
            "summary": summary,
            "runs": {k: v["tables"] for k, v in rows.items()},
        },
    )


def table3(config, workdir, seeds, top_ks=(0, 1, 5), views=("rgb",), init_dir: str | None = None) -> dict:
    """Table 3: {'summary': {view: {row: metrics}}, 'tables': [per seed]} with rows random init,
    initialized and 'K = k' (co-trained with contrast.top_k = k) for each co-trained view."""
    from cvtcl_jax.modes import evaluation, training
    from cvtcl_jax.training.stage import stage_name

    wd = Path(workdir)
    config, _ = fidelity.prepare(config, wd)
    config.schedule.cotrain_cycles = 1  # the evaluation's 'cotrain' stage is the run below
    tables = []
    for seed in seeds:
        cfg = config.copy_and_resolve_references()
        cfg.seed = int(seed)
        init = _initialized(cfg, wd / "table3" / "init" / f"seed{seed}", init_dir, seed)
        table = {}
        for view in views:
            cfg.schedule.eval_stages = ("random_init", "init")
            rows = evaluation.evaluate_stages(cfg, init, view)[view]
            table[view] = {REFERENCE.get(s, "initialized"): m for s, m in rows.items()}
        for k in top_ks:
            run = wd / "table3" / f"k{k}" / f"seed{seed}"
            kcfg = cfg.copy_and_resolve_references()
            kcfg.contrast.top_k = int(k)
            kcfg.schedule.eval_stages = ("cotrain",)
            for view in views:
                other = training.other_view(view)
                start, ranker = str(init / stage_name(view)), str(init / stage_name(other))
                stage = training.cotrain_stage(kcfg, stage_name(view, 1), view, start, ranker)
                training.run_stage(kcfg, run / stage.name, stage)
                table[view][f"K = {k}"] = evaluation.evaluate_stages(kcfg, run, view)[view]["cotrain"]
        tables.append(table)
        console.say(f"seed {seed}: {json.dumps(table)}")
    return _written(
        wd / "table3.json",
        {
            "table": 3,
            "seeds": list(seeds),
            "top_k": list(top_ks),
            "summary": fidelity.summarize(tables),
            "tables": tables,
        },
    )


def _initialized(config, init: Path, init_dir: str | None, seed) -> Path:
    """INIT holding both views' initialized stages: trained there, or links to
    INIT_DIR/seed<k>/init_<view> (finished stages of this model)."""
    from cvtcl_jax.modes import checks
    from cvtcl_jax.training.stage import finished_summary, stage_name

    views = ("rgb", "flow")
    if init_dir is None:
        linked = [init / stage_name(v) for v in views if (init / stage_name(v)).is_symlink()]
        if linked:
            raise ValueError(f"{linked[0]} links to {linked[0].resolve()}: pass that --init_dir again")
        fidelity.initialize(config, init, views)
        return init
    for view in views:
        target = init / stage_name(view)
        source = (Path(init_dir) / f"seed{seed}" / stage_name(view)).resolve()
        checks.check_stage_source(str(source), "--init_dir", view, config.model)
        if finished_summary(source) is None:
            raise ValueError(f"--init_dir: {source} has not finished its training; finish it first")
        if target.is_symlink() or target.exists():
            if target.resolve() != source:
                raise ValueError(
                    f"{target} already holds the initialization from {target.resolve()}, not {source}: "
                    "use another --workdir for another --init_dir"
                )
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source, target_is_directory=True)
    return init


def _written(path: Path, result: dict) -> dict:
    path.write_text(json.dumps(result, indent=1, default=str))
    return result


def main(argv) -> None:
    fidelity.start_command(argv, FLAGS.workdir, "ablations")
    table = int(FLAGS.table)
    views = FLAGS.views or (["rgb", "flow"] if table == 1 else ["rgb"])
    if not set(views) <= {"rgb", "flow"}:
        raise app.UsageError(f"--views must name rgb, flow or both; got {views}", exitcode=2)
    try:
        if table == 1:
            if FLAGS["init_dir"].present or FLAGS["top_k"].present:
                raise ValueError("--init_dir and --top_k belong to --table=3")
            result = table1(FLAGS.config, FLAGS.workdir, FLAGS.seeds, views)
        else:
            top_ks = [int(k) for k in FLAGS.top_k]
            result = table3(FLAGS.config, FLAGS.workdir, FLAGS.seeds, top_ks, views, FLAGS.init_dir)
    except ValueError as e:
        console.error(str(e))
        sys.exit(2)
    console.say(f"Table {table}, seeds {FLAGS.seeds} (mean +- std over seeds):")
    console.say(fidelity.format_summary(result["summary"]))
    console.say(f"report: {report.make_report(FLAGS.workdir)}")


def define_flags() -> None:
    """The command's flags (defined here, not at import, so tests can import the module)."""
    config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "fidelity.py"), "a demo-mode config")
    flags.DEFINE_string("workdir", None, "the ablations' directory", required=True)
    flags.DEFINE_enum("table", "1", ["1", "3"], "the paper's Table 1 (LTCL terms) or Table 3 (K)")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "training seeds")
    flags.DEFINE_list("views", None, "the views trained (Table 1: both; Table 3: rgb, the co-trained view)")
    flags.DEFINE_list("top_k", ["0", "1", "5"], "Table 3: the values of contrast.top_k")
    flags.DEFINE_string("init_dir", None, "Table 3: take seed k's initialized encoders from INIT_DIR/seed<k>")
    flags.DEFINE_bool("verbose", False, "the full log stream on the console instead of WORKDIR/logs/")


if __name__ == "__main__":
    define_flags()
    app.run(main)

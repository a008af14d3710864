"""What `main.py` can run: a small registry of modes, each a config check and a runner.

A mode's check runs before any work, so a bad config fails in seconds with a message that says
what to change. Evaluation modes register here the same way.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import jax
from absl import logging

from cvtcl_jax import checkpoints
from cvtcl_jax import config_checks as checks
from cvtcl_jax.config_checks import ConfigError
from cvtcl_jax.train import Stage, other_view, stage_done, train_stage


@dataclasses.dataclass(frozen=True)
class Mode:
    check: Callable  # (config, workdir) -> None; raises ConfigError
    run: Callable  # (config, workdir) -> dict summary


MODES: dict[str, Mode] = {}


def register(name: str, check: Callable):
    """Decorator: registers `run` as mode `name` with its config check."""

    def wrap(run):
        MODES[name] = Mode(check, run)
        return run

    return wrap


def run(config, workdir: str | Path) -> dict:
    """Checks the config for its mode, then runs it in `workdir`."""
    if config.get("mode") not in MODES:
        raise ConfigError(
            f"unknown mode {config.get('mode')!r}; the modes are {sorted(MODES)} "
            "(set by the config file, e.g. --config=configs/init_rgb.py)"
        )
    mode = MODES[config.mode]
    mode.check(config, workdir)
    return mode.run(config, workdir)


# ---------------------------------------------------------------------- training of one stage


def _check_pretrain(config, workdir) -> None:
    checks.check_view(config.train.view)
    checks.check_training(config)
    checks.check_data(config, (config.train.view,))


@register("pretrain", _check_pretrain)
def run_pretrain(config, workdir) -> dict:
    """Initialization of one view: alpha * InfoNCE + beta * LTCL (docs/method.md §3)."""
    view = config.train.view
    stage = Stage(f"init_{view}", view, config.schedule.init_epochs, tuple(config.optim.decay_epochs))
    return train_stage(config, workdir, stage)


def _check_cotrain(config, workdir) -> None:
    view = config.train.view
    checks.check_view(view)
    checks.check_training(config)
    checks.check_data(config, (view, other_view(view)))
    checks.check_stage_source(config.train.init_from, "train.init_from", view, config.model)
    checks.check_stage_source(config.train.other_from, "train.other_from", other_view(view), config.model)


def cotrain_stage(config, name: str, view: str, init_from: str, other_from: str) -> Stage:
    """A co-training run of `view` (the cotrain mode's, and each of the schedule's). Its LTCL weight
    is decided here, by the view trained: the RGB run keeps contrast.beta, the flow run takes
    schedule.cotrain_flow_beta (docs/method.md §3: LTCL on the RGB co-training run only)."""
    s = config.schedule
    return Stage(
        name,
        view,
        s.cotrain_epochs,
        tuple(s.cotrain_decay_epochs),
        other_view=other_view(view),
        init_from=init_from,
        other_from=other_from,
        key_from=config.train.key_from,
        other_encoder=config.train.other_encoder,
        beta=None if view == "rgb" else s.cotrain_flow_beta,
        lr=s.cotrain_lr,
    )


@register("cotrain", _check_cotrain)
def run_cotrain(config, workdir) -> dict:
    """Co-training of one view with the other view frozen: alpha * L_RF + beta * LTCL (docs/method.md §3)."""
    view, tc = config.train.view, config.train
    return train_stage(
        config, workdir, cotrain_stage(config, f"cotrain_{view}", view, tc.init_from, tc.other_from)
    )


# ---------------------------------------------------------------------- export


def export_stage(source: str | Path, out_dir: str | Path, encoder: str = "encoder") -> dict:
    """Exports the backbone of a stage's latest checkpoint (see cvtcl_jax/export.py)."""
    from cvtcl_jax.export import export_backbone
    from cvtcl_jax.features import backbone_variables
    from cvtcl_jax.models import ContrastiveEncoder

    info = checkpoints.stage_info(source)
    cfg = info["config"]
    model = ContrastiveEncoder.from_config(cfg["model"])
    d = cfg["data"]
    clip = (d["num_frames"], d["crop_size"], d["crop_size"])
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, *clip, 3)), train=False)
    )
    variables = checkpoints.restore_encoder(source, dict(shapes), encoder)
    where = {
        "workdir": str(Path(source).absolute()),
        "stage": info["progress"].get("stage"),
        "batch": info["step"],
        "epoch": info["progress"].get("epoch"),
        "encoder": encoder,
    }
    manifest = export_backbone(
        backbone_variables(variables), cfg["model"], clip, info["progress"]["view"], out_dir, where
    )
    logging.info("exported the %s encoder of %s to %s", encoder, source, out_dir)
    return manifest


def _check_export(config, workdir) -> None:
    checks.check_encoder_item(config.export.encoder, "export.encoder")
    checks.check_stage_source(config.export.source, "export.source", None)


@register("export", _check_export)
def run_export(config, workdir) -> dict:
    return export_stage(config.export.source, workdir, config.export.encoder)


# ---------------------------------------------------------------------- evaluation (docs/method.md §6)


def _register_evaluation(protocol: str) -> None:
    def check(config, workdir) -> None:
        checks.check_evaluation(config, protocol)

    def run_protocol(config, workdir) -> dict:
        from cvtcl_jax import evaluation

        results = evaluation.RUNNERS[protocol](config, workdir)
        if jax.process_index() == 0:
            print(evaluation.summary_line(protocol, results), flush=True)
        return results

    register(protocol, check)(run_protocol)


for _protocol in ("retrieval", "linear_probe", "finetune"):
    _register_evaluation(_protocol)

EVAL_STAGES = ("random_init", "init", "cotrain")
TABLE_METRICS = {"retrieval": ("R@1", "R@5"), "linear_probe": ("top1",), "finetune": ("top1",)}


def stage_sources(config, workdir: str | Path) -> dict[str, dict[str, str]]:
    """{eval stage: {view: source}} for the schedule's encoders (cotrain = the last cycle)."""
    wd = Path(workdir)
    out = {
        "random_init": {"rgb": "random", "flow": "random"},
        "init": {v: str(wd / f"init_{v}") for v in ("rgb", "flow")},
    }
    cycles = config.schedule.cotrain_cycles
    if cycles:
        out["cotrain"] = {v: str(wd / f"cotrain{cycles}_{v}") for v in ("rgb", "flow")}
    return out


def evaluate_stages(config, workdir: str | Path) -> dict:
    """Every protocol of schedule.eval_protocols on both views and two-stream, for each of
    schedule.eval_stages, in WORKDIR/eval/<stage>/. Returns the table
    {view: {stage: {'R@1', 'R@5', 'linear_top1', ...}}} (percent)."""
    from cvtcl_jax import evaluation

    sources = stage_sources(config, workdir)
    table: dict = {view: {} for view in evaluation.EVAL_VIEWS}
    for stage in config.schedule.eval_stages:
        if stage not in sources:
            logging.info("no %s stage to evaluate (schedule.cotrain_cycles=0)", stage)
            continue
        cfg = config.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.eval.view = evaluation.TWO_STREAM
            cfg.eval.rgb_source = sources[stage]["rgb"]
            cfg.eval.flow_source = sources[stage]["flow"]
        for protocol in config.schedule.eval_protocols:
            cfg.mode = protocol
            checks.check_evaluation(cfg, protocol)
            stage_dir = Path(workdir) / "eval" / stage
            results = evaluation.finished_results(cfg, stage_dir, protocol)
            if results is None:
                results = evaluation.RUNNERS[protocol](cfg, stage_dir)
            else:
                logging.info("%s of the %s encoders is done; not repeating it", protocol, stage)
            for view, record in results.items():
                row = table[view].setdefault(stage, {})
                for metric in TABLE_METRICS[protocol]:
                    name = metric if protocol == "retrieval" else f"{protocol.split('_')[0]}_{metric}"
                    row[name] = round(record["metrics"][metric], 2)
    return table


def format_table(table: dict) -> str:
    """The evaluation table as aligned text, one row per (view, stage)."""
    columns = sorted(
        {k for stages in table.values() for row in stages.values() for k in row}, key=_column_order
    )
    lines = [f"{'view':<12}{'stage':<13}" + "".join(f"{c:>13}" for c in columns)]
    for view, stages in table.items():
        for stage, row in stages.items():
            lines.append(
                f"{view:<12}{stage:<13}" + "".join(f"{row.get(c, float('nan')):>13.1f}" for c in columns)
            )
    return "\n".join(lines)


def _column_order(name: str):
    order = ["R@1", "R@5", "linear_top1", "finetune_top1"]
    return order.index(name) if name in order else len(order)


# ---------------------------------------------------------------------- the paper's whole schedule


def schedule_stages(config, workdir: str | Path) -> list[Stage]:
    """init RGB, init flow, then per cycle co-training of RGB (flow frozen) and of flow (RGB frozen)."""
    wd = Path(workdir)
    s = config.schedule
    stages = [Stage(f"init_{v}", v, s.init_epochs, tuple(config.optim.decay_epochs)) for v in ("rgb", "flow")]
    last = {"rgb": str(wd / "init_rgb"), "flow": str(wd / "init_flow")}
    for cycle in range(1, s.cotrain_cycles + 1):
        for view in ("rgb", "flow"):
            name = f"cotrain{cycle}_{view}"
            stages.append(cotrain_stage(config, name, view, last[view], last[other_view(view)]))
            last[view] = str(wd / name)
    return stages


def _export_once(source: Path, out_dir: Path, encoder: str) -> dict:
    """Exports unless out_dir already holds this very checkpoint's export (a re-run)."""
    manifest = out_dir / "manifest.json"
    if manifest.is_file():
        done = json.loads(manifest.read_text())
        step = checkpoints.stage_info(source)["step"]
        src = done["source"]
        if (src["workdir"], src["batch"], src["encoder"]) == (str(Path(source).absolute()), step, encoder):
            return done
    return export_stage(source, out_dir, encoder)


def _check_schedule(config, workdir) -> None:
    checks.check_training(config)
    checks.check_data(config, ("rgb", "flow"))
    if config.schedule.cotrain_cycles < 0 or config.schedule.init_epochs < 1:
        raise ConfigError("schedule.init_epochs must be >= 1 and schedule.cotrain_cycles >= 0")
    _check_schedule_evaluation(config)


def _check_eval_names(config) -> None:
    s = config.schedule
    unknown = [x for x in s.eval_stages if x not in EVAL_STAGES]
    unknown += [x for x in s.eval_protocols if x not in TABLE_METRICS]
    if unknown:
        raise ConfigError(
            f"schedule.eval_stages / eval_protocols name {unknown}; stages are {EVAL_STAGES}, protocols "
            f"{tuple(TABLE_METRICS)} (empty tuples skip the evaluation)"
        )


def _check_schedule_evaluation(config) -> None:
    """The evaluation modes' checks on the schedule's data, with a stand-in (random) source."""
    _check_eval_names(config)
    if config.schedule.eval_stages and config.schedule.eval_protocols:
        cfg = config.copy_and_resolve_references()
        cfg.eval.update(view="two_stream", rgb_source="random", flow_source="random")
        for protocol in config.schedule.eval_protocols:
            checks.check_evaluation(cfg, protocol)


@register("schedule", _check_schedule)
def run_schedule(config, workdir) -> dict:
    """Every stage in its own sub-workdir (finished ones are skipped), then both views exported."""
    wd = Path(workdir)
    results = {}
    stages = schedule_stages(config, wd)
    for stage in stages:
        if stage_done(wd / stage.name):
            logging.info("stage %s is finished; skipping it", stage.name)
        results[stage.name] = train_stage(config, wd / stage.name, stage)
    last = {stage.view: wd / stage.name for stage in stages}  # each view's latest stage
    exports = {
        view: _export_once(path, wd / "export" / view, config.export.encoder) for view, path in last.items()
    }
    summary = {"stages": results, "exports": {v: str(wd / "export" / v) for v in exports}}
    if config.schedule.eval_stages and config.schedule.eval_protocols:
        summary["evaluation"] = evaluate_stages(config, wd)
    if jax.process_index() == 0:
        (wd / "schedule.json").write_text(json.dumps(summary, indent=1))
        if "evaluation" in summary:
            print(f"evaluation on {config.data.dir} split {config.data.split}:", flush=True)
            print(format_table(summary["evaluation"]), flush=True)
    return summary


# ---------------------------------------------------------------------- the demo


def _check_demo(config, workdir) -> None:
    checks.check_training(config)
    _check_eval_names(config)  # the rest once the demo has made its data


@register("demo", _check_demo)
def run_demo(config, workdir) -> dict:
    """The whole schedule on a generated motion-class video set (data_prep's generator and command),
    ending with the evaluation table, also written to WORKDIR/demo_results.json."""
    from data_prep import build, synthetic

    wd = Path(workdir)
    raw, prepared = wd / "raw", wd / "data"
    demo = config.demo
    if not (prepared / "metadata.json").is_file():
        if not (raw / "ucfTrainTestlist").is_dir():
            synthetic.generate(
                raw,
                num_classes=demo.num_classes,
                groups=demo.groups,
                clips_per_group=demo.clips_per_group,
                num_frames=demo.num_frames,
                height=demo.height,
                width=demo.width,
                seed=config.seed,
                kind=demo.kind,
                shared_looks=demo.shared_looks,
                patterns=demo.patterns,
                square_size=demo.square_size,
            )
        argv = ["--dataset=ucf101", f"--raw_dir={raw}", f"--out_dir={prepared}", "--splits=1", "--quiet"]
        argv += [f"--short_side={demo.short_side}", f"--workers={demo.prep_workers}"]
        if build.main(argv) != 0:
            raise RuntimeError(f"data preparation of the demo set failed; see {prepared / 'metadata.json'}")
    with config.unlocked():
        config.data.dir = str(prepared)
    checks.check_data(config, ("rgb", "flow"))
    _check_schedule_evaluation(config)
    summary = run_schedule(config, wd)
    if "evaluation" in summary and jax.process_index() == 0:
        (wd / "demo_results.json").write_text(json.dumps(summary["evaluation"], indent=1))
    return summary


def main_error(e: Exception) -> None:
    """Prints a config error the way users should see it (no traceback) and exits with 2."""
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

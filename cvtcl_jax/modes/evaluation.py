"""The evaluation modes (retrieval, linear_probe, finetune) and the schedule's evaluation table."""

from __future__ import annotations

from pathlib import Path

from absl import logging

from cvtcl_jax import console
from cvtcl_jax.eval.protocols import PROTOCOLS, run_protocol
from cvtcl_jax.eval.store import (
    TWO_STREAM,
    finished_results,
    summary_line,
    views_and_fused,
    views_of,
)
from cvtcl_jax.modes import checks
from cvtcl_jax.modes.checks import ConfigError
from cvtcl_jax.training.stage import stage_name

EVAL_STAGES = ("random_init", "init", "cotrain")


def protocol_check(protocol: str):
    def check(config) -> None:
        checks.check_evaluation(config, protocol)

    return check


def protocol_runner(protocol: str):
    def run(config, workdir) -> dict:
        results = run_protocol(protocol, config, workdir)
        console.say(summary_line(PROTOCOLS[protocol], results))
        return results

    return run


def check_eval_names(config) -> None:
    """schedule.eval_stages and eval_protocols name known stages and protocols."""
    s = config.schedule
    unknown = [x for x in s.eval_stages if x not in EVAL_STAGES]
    unknown += [x for x in s.eval_protocols if x not in PROTOCOLS]
    if unknown:
        raise ConfigError(
            f"schedule.eval_stages / eval_protocols name {unknown}; stages are {EVAL_STAGES}, protocols "
            f"{tuple(PROTOCOLS)} (empty tuples skip the evaluation)"
        )


def check_schedule_evaluation(config) -> None:
    """The evaluation modes' checks on the schedule's data, with a stand-in (random) source."""
    check_eval_names(config)
    if config.schedule.eval_stages and config.schedule.eval_protocols:
        cfg = config.copy_and_resolve_references()
        cfg.eval.update(view=TWO_STREAM, rgb_source="random", flow_source="random")
        for protocol in config.schedule.eval_protocols:
            checks.check_evaluation(cfg, protocol)


def init_sources(config, workdir: str | Path) -> dict[str, str]:
    """{view: the schedule's initialization}: schedule.init_from_<view> where given (weights
    trained elsewhere, e.g. imported CoCLR checkpoints), else its init_<view> stage."""
    return {
        v: config.schedule.get(f"init_from_{v}") or str(Path(workdir) / stage_name(v))
        for v in ("rgb", "flow")
    }


def stage_sources(config, workdir: str | Path) -> dict[str, dict[str, str]]:
    """{eval stage: {view: source}} for the schedule's encoders (cotrain = the last cycle)."""
    wd = Path(workdir)
    out = {"random_init": {"rgb": "random", "flow": "random"}, "init": init_sources(config, wd)}
    cycles = config.schedule.cotrain_cycles
    if cycles:
        out["cotrain"] = {v: str(wd / stage_name(v, cycles)) for v in ("rgb", "flow")}
    return out


def evaluate_stages(config, workdir: str | Path, eval_view: str = TWO_STREAM) -> dict:
    """Every protocol of schedule.eval_protocols on `eval_view` (two_stream: both views and their
    fusion), for each of schedule.eval_stages, in WORKDIR/eval/<stage>/ (an evaluation already
    done is read back). Returns the table {view: {stage: {'R@1', 'R@5', 'linear_top1', ...}}}
    (percent)."""
    sources = stage_sources(config, workdir)
    table: dict = {view: {} for view in views_and_fused(eval_view)}
    for stage in config.schedule.eval_stages:
        if stage not in sources:
            logging.info("no %s stage to evaluate (schedule.cotrain_cycles=0)", stage)
            continue
        cfg = config.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.eval.view = eval_view
            for view in views_of(eval_view):
                cfg.eval[f"{view}_source"] = sources[stage][view]
        for name in config.schedule.eval_protocols:
            protocol = PROTOCOLS[name]
            cfg.mode = name
            checks.check_evaluation(cfg, name)
            stage_dir = Path(workdir) / "eval" / stage
            results = finished_results(cfg, stage_dir, protocol)
            if results is None:
                results = run_protocol(name, cfg, stage_dir)
                console.say(f"{stage} encoders, {summary_line(protocol, results)}")
            else:
                logging.info("%s of the %s encoders is done; not repeating it", name, stage)
            for view, record in results.items():
                row = table[view].setdefault(stage, {})
                for metric in protocol.table_metrics:
                    row[protocol.column(metric)] = round(record["metrics"][metric], 2)
    return table


def format_table(table: dict) -> str:
    """The evaluation table as aligned text, one row per (view, stage)."""
    columns = sorted(
        {k for stages in table.values() for row in stages.values() for k in row}, key=_column_order
    )
    widths = {c: max(13, len(c) + 2) for c in columns}
    lines = [f"{'view':<12}{'stage':<13}" + "".join(f"{c:>{widths[c]}}" for c in columns)]
    for view, stages in table.items():
        for stage, row in stages.items():
            cells = "".join(f"{row.get(c, float('nan')):>{widths[c]}.1f}" for c in columns)
            lines.append(f"{view:<12}{stage:<13}" + cells)
    return "\n".join(lines)


def _column_order(name: str):
    order = [p.column(m) for p in PROTOCOLS.values() for m in p.table_metrics]
    return order.index(name) if name in order else len(order)

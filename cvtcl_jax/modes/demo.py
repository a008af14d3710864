"""The demo mode: the whole schedule on a generated motion-class video set, made with data_prep's
generator and command (the one place the library runs data_prep, as a user would)."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from cvtcl_jax.modes import checks, evaluation, training


def check_demo(config) -> None:
    checks.check_training(config)
    evaluation.check_eval_names(config)  # the rest once the demo has made its data


def run_demo(config, workdir) -> dict:
    """Generates and prepares the set (once: a re-run reuses both), then runs the schedule on it,
    ending with the evaluation table, also written to WORKDIR/demo_results.json."""
    from data_prep import build, builders, synthetic

    wd = Path(workdir)
    raw, prepared = wd / "raw", wd / "data"
    demo = config.demo
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
        raise RuntimeError("data preparation of the demo set failed; its videos and reasons are listed above")
    with config.unlocked():
        config.data.dir = str(prepared)
        config.data.name = builders.dataset_name("ucf101", 1, short_side=demo.short_side)
    checks.check_data(config, ("rgb", "flow"))
    evaluation.check_schedule_evaluation(config)
    summary = training.run_schedule(config, wd)
    if "evaluation" in summary and jax.process_index() == 0:
        (wd / "demo_results.json").write_text(json.dumps(summary["evaluation"], indent=1))
    return summary

"""The demo mode: the whole schedule on a generated motion-class video set, made with data_prep's
generator and command (the one place the library runs data_prep, as a user would)."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from cvtcl_jax.modes import checks, evaluation, training

# The generators: generated/synthetic.py (the demo's speed classes) and generated/motion_set.py
# (the fidelity benchmark's kinds of motion, docs/fidelity.md).
DEMO_SETS = ("synthetic", "motion")


def check_demo(config) -> None:
    checks.check_training(config)
    if config.demo.set not in DEMO_SETS:
        raise checks.ConfigError(f"demo.set must be one of {DEMO_SETS}, got {config.demo.set!r}")
    if config.demo.set == "motion":
        _check_motion_variant(config.demo)
    evaluation.check_eval_names(config)  # the rest once the demo has made its data


def _check_motion_variant(demo) -> None:
    from generated import motion_set

    variant = motion_set.VARIANTS.get(demo.variant)
    if variant is None:
        raise checks.ConfigError(
            f"demo.variant must be one of {sorted(motion_set.VARIANTS)} (generated/motion_set.py), "
            f"got {demo.variant!r}"
        )
    if not 2 <= demo.num_classes <= len(variant.classes):
        raise checks.ConfigError(
            f"demo.num_classes={demo.num_classes}: the {demo.variant} motion set has "
            f"{len(variant.classes)} classes; set 2 to {len(variant.classes)}"
        )


def prepare_data(config, root: Path) -> tuple[str, str]:
    """Generates and prepares the demo's set under root (raw/ and data/; a re-run reuses both).
    Returns the TFDS (data_dir, name) to train and evaluate on."""
    from data_prep import build, builders
    from generated import motion_set, synthetic

    raw, prepared = root / "raw", root / "data"
    demo = config.demo
    if not (raw / "ucfTrainTestlist").is_dir():
        sizes = dict(
            groups=demo.groups,
            clips_per_group=demo.clips_per_group,
            num_frames=demo.num_frames,
            height=demo.height,
            width=demo.width,
            seed=demo.data_seed,
        )
        if demo.set == "motion":
            classes = motion_set.VARIANTS[demo.variant].classes[: demo.num_classes]
            motion_set.generate(raw, classes=classes, variant=demo.variant, **sizes)
        else:
            synthetic.generate(
                raw,
                num_classes=demo.num_classes,
                kind=demo.kind,
                shared_looks=demo.shared_looks,
                patterns=demo.patterns,
                square_size=demo.square_size,
                **sizes,
            )
    argv = ["--dataset=ucf101", f"--raw_dir={raw}", f"--out_dir={prepared}", "--splits=1", "--quiet"]
    argv += [f"--short_side={demo.short_side}", f"--workers={demo.prep_workers}"]
    if build.main(argv) != 0:
        raise RuntimeError("data preparation of the demo set failed; its videos and reasons are listed above")
    return str(prepared), builders.dataset_name("ucf101", 1, short_side=demo.short_side)


def run_demo(config, workdir) -> dict:
    """Generates and prepares the set (in demo.data_dir, or the workdir), then runs the schedule on
    it, ending with the evaluation table, also written to WORKDIR/demo_results.json."""
    wd = Path(workdir)
    data_dir, name = prepare_data(config, Path(config.demo.data_dir or wd))
    with config.unlocked():
        config.data.dir, config.data.name = data_dir, name
    checks.check_data(config, ("rgb", "flow"))
    evaluation.check_schedule_evaluation(config)
    summary = training.run_schedule(config, wd)
    if "evaluation" in summary and jax.process_index() == 0:
        (wd / "demo_results.json").write_text(json.dumps(summary["evaluation"], indent=1))
    return summary

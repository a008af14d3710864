"""cvtcl-jax: every mode from one command.

    python main.py --config=configs/<mode>.py --workdir=DIR [--config.key=value ...]

The config file selects the mode (see configs/); any value can be overridden on the command line,
e.g. --config.optim.lr=3e-4. Runs on one or many hosts: jax.distributed joins a cluster it detects
(SLURM, Open MPI, TPU pods); elsewhere start the same command on every host with
--coordinator_address=HOST0:PORT --num_processes=N --process_id=I. A bad config stops before any
work with a message naming the fix.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "a config file under configs/", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, TensorBoard events and results")
flags.DEFINE_bool("verbose", False, "print the full log stream (absl, TensorFlow, Orbax, ...) on the console")
flags.mark_flags_as_required(["config", "workdir"])
# For clusters jax cannot detect (plain GPU hosts): all three, the same address on every host.
flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0 (all hosts)")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes (hosts)", lower_bound=1)
flags.DEFINE_integer(
    "process_id", None, "multi-host: this process's index, 0 .. num_processes-1", lower_bound=0
)
MULTI_HOST_FLAGS = ("coordinator_address", "num_processes", "process_id")


def _init_distributed() -> None:
    import jax

    if FLAGS.coordinator_address is not None:  # with the other two (_check_multi_host_flags)
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
        return
    try:  # a cluster (SLURM, Open MPI, TPU pod) is detected automatically
        jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:  # single host: nothing to join
        logging.info("single-process run (jax.distributed.initialize: %s)", e)


def _check_multi_host_flags() -> None:
    """All three multi-host flags or none, and a process id below the process count."""
    given = [name for name in MULTI_HOST_FLAGS if FLAGS[name].value is not None]
    if given and len(given) < len(MULTI_HOST_FLAGS):
        missing = ", ".join(f"--{n}" for n in MULTI_HOST_FLAGS if n not in given)
        raise app.UsageError(
            f"multi-host runs need all of --coordinator_address, --num_processes and "
            f"--process_id; missing {missing}",
            exitcode=2,
        )
    if given and FLAGS.process_id >= FLAGS.num_processes:
        raise app.UsageError(
            f"--process_id={FLAGS.process_id} must be below --num_processes={FLAGS.num_processes}",
            exitcode=2,
        )


def _config_keys(node, prefix: str = "") -> list[str]:
    """Every key path of a config ('optim.lr', ...), sections included."""
    keys = []
    for key, value in node.items():
        keys.append(prefix + key)
        if hasattr(value, "items"):
            keys += _config_keys(value, f"{prefix}{key}.")
    return keys


def _bad_override(argv) -> str | None:
    """What is wrong with the command line's --config.<key>=<value> overrides, or None: a key the
    config does not have (with the nearest ones that it has)."""
    import difflib
    import importlib.util

    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    path, _, arg = spec.partition(":")
    try:
        loader = importlib.util.spec_from_file_location("_cvtcl_config_keys", path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
    except Exception:  # the config file itself is broken: absl's own message says how
        return None
    keys = _config_keys(config)
    for a in argv:
        if a.startswith("--config.") and "=" in a:
            key = a[len("--config.") :].split("=", 1)[0]
            if key not in keys:
                near = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(near)}?" if near else ""
                return (
                    f"--config.{key}: the config has no key {key}{hint} (configs/default.py lists every key)"
                )
    return None


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag or config override reported in one line, exit code 2."""
    problem = _bad_override(argv)
    if problem is None:
        try:
            return app.parse_flags_with_usage(argv)
        except SystemExit as e:  # absl printed what was wrong and exits 1
            raise SystemExit(2) from e
        except (AttributeError, KeyError, TypeError, ValueError) as e:  # a value of the wrong type
            problem = f"a --config override could not be applied: {e}"
    print(f"error: {problem}", file=sys.stderr)
    sys.exit(2)


def _quiet_orbax(record) -> bool:
    """Orbax logs every checkpoint I/O step at INFO; keep its warnings and errors only."""
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _overrides(argv) -> list[str]:
    """The command line's --config.<key>=<value> overrides, as key=value."""
    return [a[len("--config.") :] for a in argv if a.startswith("--config.")]


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    _check_multi_host_flags()
    from cvtcl_jax import console

    # Everything but the console's own lines goes to WORKDIR/logs/ (--verbose: the terminal).
    console.start(os.path.join(FLAGS.workdir, "logs"), "main", verbose=FLAGS.verbose)
    logging.get_absl_handler().addFilter(_quiet_orbax)
    # The pipeline (TensorFlow) must not take the accelerators from JAX.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")

    import jax

    from cvtcl_jax import modes
    from cvtcl_jax.data.records import DamagedRecordError
    from cvtcl_jax.modes.checks import ConfigError
    from cvtcl_jax.training.loop import EXIT_PREEMPTED, Preempted, TrainingDiverged

    _init_distributed()
    console.set_process(jax.process_index())
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(FLAGS.workdir, "jax_cache")
    jax.config.update("jax_compilation_cache_dir", cache)
    where = f"{jax.device_count()} {jax.devices()[0].device_kind} device(s)" + (
        f" on {jax.process_count()} hosts" if jax.process_count() > 1 else ""
    )
    changed = _overrides(sys.argv)
    console.say(
        f"{FLAGS.config.mode} in {FLAGS.workdir}, {where}"
        + (f"; config changed: {', '.join(changed)}" if changed else "")
    )
    logging.info(
        "process %d of %d, %d local devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
    )
    try:
        modes.run(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:
        modes.main_error(e)
    except Preempted as e:
        console.warn(f"stopped: {e}")
        sys.exit(EXIT_PREEMPTED)
    except (DamagedRecordError, TrainingDiverged) as e:
        console.error(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        console.error("interrupted")
        sys.exit(130)
    except Exception as e:
        traceback.print_exc()  # to the log
        console.error(f"{type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)

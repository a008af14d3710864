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

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "a config file under configs/", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, TensorBoard events and results")
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


def _quiet_orbax(record) -> bool:
    """Orbax logs every checkpoint I/O step at INFO; keep its warnings and errors only."""
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    _check_multi_host_flags()
    logging.get_absl_handler().addFilter(_quiet_orbax)
    # The pipeline (TensorFlow) must not take the accelerators from JAX.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")

    import jax

    from cvtcl_jax import modes
    from cvtcl_jax.modes.checks import ConfigError

    _init_distributed()
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(FLAGS.workdir, "jax_cache")
    jax.config.update("jax_compilation_cache_dir", cache)
    logging.info(
        "process %d of %d, %d local / %d global devices (%s), mode %r",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
        FLAGS.config.mode,
    )
    try:
        modes.run(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:
        modes.main_error(e)


if __name__ == "__main__":
    app.run(main)

"""Test set-up: 8 emulated CPU devices, so every test run exercises sharding.

Session fixtures: the pattern dataset and one tiny schedule run, shared by test_main and
test_evaluation. A persistent compilation cache for the session (inherited by `main.py`
subprocesses) lets runs of the same train step in several tests and processes compile it once.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="cvtcl_jax_test_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


import pytest  # noqa: E402

from cvtcl_jax import modes  # noqa: E402
from tests import tiny_config  # noqa: E402
from tests.pattern_records import write_pattern_dataset  # noqa: E402

LENGTHS = [40, 24, 30, 50, 35, 20, 44, 36, 25, 33, 41, 48]  # 8 train, 4 test videos


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """The pattern dataset of the main.py tests (labels video % 3: no test class is trained)."""
    root = tmp_path_factory.mktemp("pattern_data")
    write_pattern_dataset(root, LENGTHS, videos_per_shard=3)
    return root


@pytest.fixture(scope="session")
def schedule_run(data, tmp_path_factory):
    """One whole schedule with the tiny config: every stage, the exports and the evaluation."""
    wd = tmp_path_factory.mktemp("schedule")
    summary = modes.run(tiny_config.run_config(data, "schedule"), wd)
    return wd, summary

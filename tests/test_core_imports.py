"""The JAX core must import on accelerator hosts without TensorFlow, clu or ml_collections."""

import subprocess
import sys

CORE = ["models", "losses", "queue", "state", "steps", "sharding", "optim"]
# TF-free parts of the data package: benchmarks feed random batches of the pipeline's shapes.
CORE += ["data.clip_spec", "data.random_batches", "data.dataset_info"]
# The JAX TV-L1, for hosts that only want flow.
CORE += ["flow.params", "flow.tvl1", "flow.batching"]


def test_core_imports_without_tensorflow_clu_or_ml_collections():
    code = (
        "import sys\n"
        + "".join(f"import cvtcl_jax.{m}\n" for m in CORE)
        + "bad = [m for m in ('tensorflow', 'clu', 'ml_collections') if m in sys.modules]\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""})

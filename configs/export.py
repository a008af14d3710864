"""Export of a trained backbone: Orbax params, jax.export feature extractor, torchvision
safetensors and a manifest (see cvtcl_jax/export.py).

    python main.py --config=configs/export.py --workdir=runs/export_rgb \
        --config.export.source=runs/cotrain2_rgb
"""

from configs import default


def get_config():
    cfg = default.get_config()
    cfg.mode = "export"
    return cfg

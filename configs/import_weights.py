"""Another tool's S3D weights as an export directory that is also a finished stage: evaluate them,
start a stage from them or re-export them like weights trained here (docs/coming_from_coclr.md).

CoCLR's pretraining checkpoints (InfoNCE or CoCLR, `encoder_q`; the key encoder and the projection
head come along) or its evaluation / finetuning checkpoints (`backbone`), in either of PyTorch's
serialisations; CoCLR's checkpoints do not record their view, so name it:

    python main.py --config=configs/import_weights.py --workdir=runs/coclr_flow \
        --config.weights.path=ucf101-flow-infonce.pth.tar --config.weights.view=flow

torchvision's Kinetics-400 S3D (the file behind S3D_Weights.KINETICS400_V1; BatchNorm eps 1e-3,
which travels with the weights):

    python main.py --config=configs/import_weights.py --workdir=runs/tv_k400 \
        --config.weights.path=s3d-d76dad2f.pth --config.weights.view=rgb

The feature extractor is exported for --config.data.num_frames x crop_size^2 clips (CoCLR's
32x128x128 by default). Nothing runs the checkpoint's code: only tensors and plain containers
are read.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import default


def get_config():
    cfg = default.get_config()
    cfg.mode = "import_weights"
    cfg.weights = ml_collections.ConfigDict(
        dict(
            path=placeholder(str),  # a .pth / .pth.tar / .tar checkpoint, or our export's .safetensors
            view=placeholder(str),  # rgb or flow
            bn_epsilon=placeholder(float),  # None: the format's (CoCLR 1e-5, torchvision 1e-3)
        )
    )
    return cfg

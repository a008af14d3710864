"""The held-out check a pretraining stage runs every train.retrieval_every_epochs: R@k of test
videos querying train videos with the backbone's features (docs/method.md §6, centre crops),
computed by the retrieval protocol's own functions (eval/retrieval.py)."""

from __future__ import annotations

from cvtcl_jax.data.dataset_info import load_dataset_info
from cvtcl_jax.eval import features, retrieval
from cvtcl_jax.eval.store import dataset_rows
from cvtcl_jax.models import backbone_from_config, backbone_variables
from cvtcl_jax.sharding import make_mesh
from cvtcl_jax.training.stage import clip_spec


class RetrievalCheck:
    """(query encoder variables) -> {'R@1', 'R@5', 'R@10', 'R@20'} on `view` of config.data.

    The mesh and the jitted feature function are built at the first call and reused, so a stage
    compiles the extraction once. train.retrieval_max_videos (None: all) limits each subset.
    """

    def __init__(self, config, view: str):
        self.config, self.view = config, view
        self._mesh = self._fn = self._info = None

    def __call__(self, encoder_variables: dict) -> dict:
        config, view = self.config, self.view
        if self._fn is None:
            self._mesh = make_mesh()
            self._fn = features.make_feature_fn(backbone_from_config(config.model, view), self._mesh)
            self._info = load_dataset_info(config.data.dir, config.data.name)
        variables = backbone_variables(encoder_variables)
        spec = clip_spec(config, ltcl=False)
        rows = {
            subset: dataset_rows(
                self._fn,
                variables,
                config,
                self._info,
                self._mesh,
                view,
                subset,
                spec,
                "center",
                config.train.retrieval_max_videos,
            )
            for subset in ("train", "test")
        }
        return retrieval.recall(retrieval.query_and_gallery(rows["train"], rows["test"]))

"""EvalRun, the evaluation's store: the clip-feature cache (hit, miss on a changed key) and the
result files that let a finished evaluation be read back instead of run again."""

import json

import numpy as np
import pytest

from cvtcl_jax.eval import features, store
from cvtcl_jax.eval.protocols import PROTOCOLS
from tests import tiny_config


def _config(data_dir, **data):
    cfg = tiny_config.run_config(data_dir, "retrieval")
    cfg.eval.update(view="rgb", rgb_source="random", flow_source="random")
    cfg.data.update(data)
    return cfg


def test_clip_features_are_cached_per_key(data, tmp_path, monkeypatch):
    cfg = _config(data)
    with store.EvalRun.create(cfg, tmp_path, PROTOCOLS["retrieval"]) as ev:
        backbone = ev.load("rgb")
        first = ev.clip_features(backbone, "test", "center")
        test_videos = ev.info.subset("test").num_videos
        assert len(set(first["video_index"].tolist())) == test_videos
        assert first["features"].shape == (len(first["label"]), backbone.module.out_features)

        def extracted(*args, **kwargs):
            raise AssertionError("extracted again")

        monkeypatch.setattr(features, "extract", extracted)
        again = ev.clip_features(backbone, "test", "center")  # the cache, not the network
        for key in features.ROW_KEYS:
            np.testing.assert_array_equal(again[key], first[key])
        monkeypatch.undo()
    cfg = _config(data, eval_stride=cfg.data.eval_stride * 2)  # another key: a miss
    with store.EvalRun.create(cfg, tmp_path, PROTOCOLS["retrieval"]) as ev:
        sparser = ev.clip_features(ev.load("rgb"), "test", "center")
    assert len(sparser["label"]) < len(first["label"])


def test_results_are_read_back_only_for_the_same_evaluation(data, tmp_path):
    cfg = _config(data)
    with store.EvalRun.create(cfg, tmp_path, PROTOCOLS["retrieval"]) as ev:
        record = ev.write_result("rgb", {"R@1": 50.0}, {"crops": "center"})
    saved = json.loads((tmp_path / "retrieval_pattern_videos_split1_rgb.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["sources"]["rgb"]["kind"] == "random" and saved["config"] == store.run_key(
        cfg, PROTOCOLS["retrieval"]
    )
    assert store.finished_results(cfg, tmp_path, PROTOCOLS["retrieval"]) == {"rgb": saved}
    assert store.finished_results(_config(data, eval_stride=3), tmp_path, PROTOCOLS["retrieval"]) is None
    assert store.finished_results(cfg, tmp_path, PROTOCOLS["linear_probe"]) is None


@pytest.mark.parametrize("view, views", [("rgb", ("rgb",)), ("two_stream", ("rgb", "flow", "two_stream"))])
def test_views_and_fused(view, views):
    assert store.views_and_fused(view) == views

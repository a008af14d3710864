"""Retrieval metrics against hand-computed cases."""

import numpy as np
import pytest

from cvtcl_jax.retrieval import recall_at_k, video_features


def test_separated_classes_give_full_recall():
    gallery = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    labels = np.array([0, 0, 1, 1, 2, 2])
    query = np.eye(3)
    assert recall_at_k(query, np.array([0, 1, 2]), gallery, labels, ks=(1, 5)) == {"R@1": 100.0, "R@5": 100.0}


def test_known_nearest_neighbours():
    # Query 0's nearest gallery video has the wrong class, its second nearest the right one;
    # query 1's nearest is right.
    gallery = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    g_labels = np.array([1, 0, 1])
    query = np.array([[0.99, 0.141], [0.0, 1.0]])
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    out = recall_at_k(query, np.array([0, 1]), gallery, g_labels, ks=(1, 2, 3))
    assert out == {"R@1": 50.0, "R@2": 100.0, "R@3": 100.0}


def test_random_features_are_at_chance():
    rng = np.random.default_rng(0)
    n_classes = 10
    gallery = rng.standard_normal((500, 16))
    query = rng.standard_normal((400, 16))
    out = recall_at_k(
        query, rng.integers(0, n_classes, 400), gallery, rng.integers(0, n_classes, 500), ks=(1, 5)
    )
    assert abs(out["R@1"] - 10.0) < 4.0
    assert abs(out["R@5"] - 100 * (1 - 0.9**5)) < 6.0  # P(a hit among 5 independent draws)


def test_video_features_average_normalised_clips():
    clips = np.array([[2.0, 0.0], [0.0, 5.0], [3.0, 4.0], [0.0, -1.0]])
    videos, labels, feats = video_features(clips, np.array([7, 7, 3, 7]), np.array([1, 1, 0, 1]))
    np.testing.assert_array_equal(videos, [3, 7])
    np.testing.assert_array_equal(labels, [0, 1])
    np.testing.assert_allclose(feats[0], [0.6, 0.8])
    # video 7: mean of (1, 0), (0, 1), (0, -1) = (1/3, 0) -> (1, 0): the clip norms do not weigh in
    np.testing.assert_allclose(feats[1], [1.0, 0.0])


def test_empty_sets_are_refused():
    with pytest.raises(ValueError, match="needs queries and a gallery"):
        recall_at_k(np.zeros((0, 2)), np.zeros(0, int), np.eye(2), np.array([0, 1]))

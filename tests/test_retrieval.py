"""Retrieval metrics against hand-computed cases."""

import numpy as np
import pytest

from cvtcl_jax.eval.retrieval import centre, fuse, ranking, recall_at_k, single_clip_features, video_features


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


def test_coclr_protocol_takes_one_clip_per_video_and_centres_each_set():
    clips = np.arange(12.0).reshape(6, 2)
    videos, labels, feats = single_clip_features(
        clips, np.array([3, 3, 3, 8, 8, 1]), np.array([0, 0, 0, 1, 1, 2]), 0
    )
    np.testing.assert_array_equal(videos, [1, 3, 8])
    np.testing.assert_array_equal(labels, [2, 0, 1])
    np.testing.assert_array_equal(feats[0], clips[5])  # video 1 has one clip
    assert any((feats[1] == clips[i]).all() for i in (0, 1, 2)) and any(
        (feats[2] == clips[i]).all() for i in (3, 4)
    )
    again = single_clip_features(clips, np.array([3, 3, 3, 8, 8, 1]), np.array([0, 0, 0, 1, 1, 2]), 0)[2]
    np.testing.assert_array_equal(feats, again)  # seeded
    centred = centre(np.array([[1.0, 1.0], [3.0, 1.0]]))  # mean (2, 1): rows become (-1, 0), (1, 0)
    np.testing.assert_allclose(centred, [[-1.0, 0.0], [1.0, 0.0]])


def test_centring_removes_a_shared_offset():
    # Features dominated by a common direction: plain cosine retrieval misses, centred retrieval hits.
    offset = np.array([0.0, 0.0, 100.0])
    gallery = np.array([[1.0, 0, 0], [0, 1.0, 0]]) + offset
    query = np.array([[0.9, 0.1, 0], [0.1, 0.9, 0], [1.0, 0.0, 0], [0.0, 1.0, 0]]) + offset
    q_labels, g_labels = np.array([0, 1, 0, 1]), np.array([0, 1])
    assert recall_at_k(centre(query), q_labels, centre(gallery), g_labels, ks=(1,))["R@1"] == 100.0


def test_two_stream_fusion_averages_unit_vectors():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(fuse(a, b), [[np.sqrt(0.5), np.sqrt(0.5)], [0.0, 1.0]])


def test_ranking_orders_by_cosine_similarity():
    gallery = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    np.testing.assert_array_equal(
        ranking(np.array([[0.0, 1.0], [1.0, 0.0]]), gallery), [[2, 1, 0], [0, 1, 2]]
    )


def test_neighbour_picture_frames_hits_green_and_misses_red():
    from cvtcl_jax.eval.pictures import GREEN, RED, WHITE, neighbour_grid

    frames = {i: np.full((20, 30, 3), 10 * i, np.uint8) for i in range(5)}
    grid = neighbour_grid(
        [0, 1], [[2, 3, 4], [4, 3, 2]], [[True, False, True], [False, False, True]], frames, frames
    )
    assert grid.shape == (2 * 96, 4 * 128, 3) and grid.dtype == np.uint8
    corners = [[tuple(grid[r * 96, c * 128]) for c in range(4)] for r in range(2)]
    assert corners == [[WHITE, GREEN, RED, GREEN], [WHITE, RED, RED, GREEN]]
    assert tuple(grid[48, 128 + 64]) == (20, 20, 20)  # the first neighbour's frame inside its border

"""Metrics pinned on hand-checked score matrices (expected values worked out in the comments)."""
import numpy as np
import pytest
import torch

from isa_demo.evaluation import metrics as M

# A 5-image gallery (indices 0..4), three CIRR queries.
#   q0: reference 0 scores highest (0.9) but is removed -> order 3, 2, 4, 1; target 2 -> rank 2
#   q1: reference 1 removed -> order 4, 2, 3, 0 (2 and 3 tie at 0.4: gallery order); target 3 -> rank 3
#   q2: reference 4 removed -> order 0, 1, 2, 3; target 0 -> rank 1
SCORES = np.array([[0.9, 0.1, 0.5, 0.7, 0.3],
                   [0.2, 0.95, 0.4, 0.4, 0.8],
                   [0.6, 0.3, 0.2, 0.1, 0.99]], dtype=np.float32)
REFS = [0, 1, 4]
TARGETS = [[2], [3], [0]]
# subsets (reference included, as in img_set.members):
#   q0 {0,3,2,1} -> ranked 3, 2, 1 -> target 2 at 2;  q1 {1,4,2,3} -> 4, 2, 3 -> target at 3;
#   q2 {4,0,1} -> 0, 1 -> target at 1
MEMBERS = [[0, 3, 2, 1], [1, 4, 2, 3], [4, 0, 1]]


def test_rank_removes_reference_and_breaks_ties_by_gallery_order():
    order = M.rank(SCORES, exclude=REFS)
    assert order.tolist() == [[3, 2, 4, 1], [4, 2, 3, 0], [0, 1, 2, 3]]
    assert M.rank(SCORES)[0].tolist() == [0, 3, 2, 4, 1]
    assert M.rank(torch.tensor(SCORES), exclude=torch.tensor(REFS)).tolist() == order.tolist()
    with pytest.raises(ValueError, match="gallery index"):
        M.rank(SCORES, exclude=[0, 1, 7])


def test_cirr_recall_and_subset_recall_by_hand():
    order = M.rank(SCORES, exclude=REFS)
    first = M.first_relevant_rank(M.relevance(order, TARGETS))
    assert first.tolist() == [2, 3, 1]
    assert M.recall_at_k(first, (1, 2, 3, 4)) == pytest.approx({"R@1": 100 / 3, "R@2": 200 / 3, "R@3": 100.0,
                                                                "R@4": 100.0})
    sub = M.subset_ranking(order, MEMBERS)
    assert [s.tolist() for s in sub] == [[3, 2, 1], [4, 2, 3], [0, 1]]
    assert M.subset_first_rank(sub, TARGETS).tolist() == [2, 3, 1]
    m = M.cirr_metrics(SCORES, REFS, TARGETS, MEMBERS)
    assert m == pytest.approx({"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0,
                               "Rs@1": 100 / 3, "Rs@2": 200 / 3, "Rs@3": 100.0})


def test_reference_would_count_without_removal():
    # keeping the reference pushes q0's target from rank 2 to rank 3
    assert M.first_relevant_rank(M.relevance(M.rank(SCORES), TARGETS)).tolist() == [3, 4, 2]


def test_scene_level_hit_counts_any_ground_truth():
    # q1 with ground truths {3, 4} (world rule): 4 is ranked first -> hit at 1
    first = M.first_relevant_rank(M.relevance(M.rank(SCORES, exclude=REFS), [[2], [3, 4], [0]]))
    assert first.tolist() == [2, 1, 1]


def test_miss_is_infinite_rank():
    first = M.first_relevant_rank(M.relevance(np.array([[0, 1, 2]]), [[7]]))
    assert np.isinf(first[0])
    assert M.recall_at_k(first, (1, 50)) == {"R@1": 0.0, "R@50": 0.0}


def test_average_precision_by_hand():
    # relevance 1,0,1,0,0,1 with 3 ground truths:
    #   AP@5 = (P@1 + P@3) / min(5, 3) = (1 + 2/3) / 3 = 5/9
    #   AP@2 = P@1 / min(2, 3) = 1/2
    #   AP@10 = (1 + 2/3 + 3/6) / 3 = 13/18
    rel = np.array([[1, 0, 1, 0, 0, 1]], dtype=bool)
    assert M.average_precision_at_k(rel, [3], 5)[0] == pytest.approx(5 / 9)
    assert M.average_precision_at_k(rel, [3], 2)[0] == pytest.approx(1 / 2)
    assert M.average_precision_at_k(rel, [3], 10)[0] == pytest.approx(13 / 18)
    with pytest.raises(ValueError):
        M.average_precision_at_k(rel, [0], 5)


def test_circo_map_by_hand_reference_not_removed():
    # q0 ranks 0..5 in order, ground truths {0, 2, 5}: AP@5 = 5/9, AP@10 = AP@25 = AP@50 = 13/18
    # q1: its reference (index 1) scores highest and stays; ground truth {4} ranked 2nd:
    #   AP@k = P@2 * 1 / min(k, 1) = 1/2 for every k
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                       [0.1, 0.9, 0.2, 0.3, 0.8, 0.0]])
    m = M.circo_metrics(scores, [[0, 2, 5], [4]])
    assert m == pytest.approx({"mAP@5": 100 * (5 / 9 + 1 / 2) / 2, "mAP@10": 100 * (13 / 18 + 1 / 2) / 2,
                               "mAP@25": 100 * (13 / 18 + 1 / 2) / 2, "mAP@50": 100 * (13 / 18 + 1 / 2) / 2})


def test_fashioniq_recall_and_summary_by_hand():
    # 60-image gallery, score = -index, so gallery index i ranks i+1.
    # targets at ranks 1, 11, 55 and one not in the gallery (-1):
    #   R@10 = 1/4, R@50 = 2/4
    scores = np.tile(-np.arange(60, dtype=float), (4, 1))
    assert M.fashioniq_metrics(scores, [0, 10, 54, -1]) == pytest.approx({"R@10": 25.0, "R@50": 50.0})
    s = M.fashioniq_summary({"dress": {"R@10": 10.0, "R@50": 30.0}, "shirt": {"R@10": 20.0, "R@50": 40.0},
                             "toptee": {"R@10": 30.0, "R@50": 50.0}})
    assert s["dress/R@10"] == 10.0 and s["toptee/R@50"] == 50.0
    assert s["mean/R@10"] == pytest.approx(20.0)
    assert s["mean/R@50"] == pytest.approx(40.0)
    assert s["average"] == pytest.approx(30.0)


def test_fast_paths_equal_the_full_sort_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(40, 30)).astype(np.float32)  # many ties
    refs = rng.integers(0, 30, size=40)
    gts = [rng.choice(30, size=rng.integers(1, 4), replace=False).tolist() for _ in range(40)]
    gts[0] = [int(refs[0])]  # a ground truth that is the reference: removed, so never found
    members = [rng.choice(30, size=6, replace=False).tolist() + [int(r)] for r in refs]
    for exclude in (None, refs):
        full = M.rank(scores, exclude=exclude)
        for k in (1, 7, 29, 50):
            assert M.top_k(scores, k, exclude=exclude).tolist() == full[:, :k].tolist()
        assert M.first_relevant_rank_from_scores(scores, gts, exclude=exclude).tolist() == \
            M.first_relevant_rank(M.relevance(full, gts)).tolist()
        fast = M.subset_ranking_from_scores(scores, members, exclude=exclude)
        assert [f.tolist() for f in fast] == [s.tolist() for s in M.subset_ranking(full, members)]

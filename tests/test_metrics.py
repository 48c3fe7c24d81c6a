"""The evaluation protocol of docs/design.md §2 on hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest

from soundloc import metrics
from soundloc.localize import upsample
from soundloc.metrics import MetricError

N = 224 * 224


# -- upsampling --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 7), (5, 9), (1, 1), (1, 4), (300, 3), (250, 230)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_upsample_matches_torch_interpolate(shape, align_corners):
    torch = pytest.importorskip("torch")
    m = np.random.default_rng(sum(shape)).normal(size=shape)
    ref = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=(224, 224), mode="bilinear",
                                          align_corners=align_corners)[0, 0].numpy()
    np.testing.assert_allclose(upsample(m, 224, 224, align_corners, np.float64), ref, rtol=0, atol=1e-12)


def test_upsample_by_hand_2_to_4():
    m = np.array([[0.0, 4.0]])
    # pixel centres (OpenCV / align_corners=False): src x = (d + .5) / 2 - .5 = -.25(->0), .25, .75, 1.25(->1)
    np.testing.assert_allclose(upsample(m, 1, 4, False, np.float64)[0], [0.0, 1.0, 3.0, 4.0])
    # align_corners=True: src x = d / 3 -> 0, 4/3, 8/3, 4
    np.testing.assert_allclose(upsample(m, 1, 4, True, np.float64)[0], [0.0, 4 / 3, 8 / 3, 4.0])


# -- cIoU, GT maps -----------------------------------------------------------------------------
def test_ciou_hand_counted_4x4():
    pred = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], float)  # 6 pixels
    gt = np.array([[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]], float)  # 8 pixels
    # overlap 4; prediction outside GT 2: 4 / (8 + 2)
    assert metrics.ciou(pred, gt) == pytest.approx(0.4)
    assert metrics.ciou(gt, gt) == 1.0


def test_ciou_empty_gt_is_zero_never_nan():
    gt = np.zeros((4, 4))
    assert metrics.ciou(np.ones((4, 4)), gt) == 0.0
    assert metrics.ciou(np.zeros((4, 4)), gt) == 0.0  # 0/0 defined as 0


def test_union_gt_map_truncates_pixel_coordinates():
    # int(224 * .1) = 22, int(224 * .2) = 44, int(224 * .5) = 112, int(224 * .6) = 134
    g = metrics.union_gt_map([(0.1, 0.2, 0.5, 0.6)])
    assert g.sum() == 90 * 90
    assert g[44, 22] == 1 and g[133, 111] == 1 and g[134, 111] == 0 and g[43, 22] == 0
    g2 = metrics.union_gt_map([(0.1, 0.2, 0.5, 0.6), (0.1, 0.2, 0.5, 0.6)])
    assert set(np.unique(g2)) == {0.0, 1.0} and g2.sum() == 8100  # a union, not a sum
    assert metrics.union_gt_map([]).sum() == 0


def test_flickr_consensus_map_three_annotators():
    # pixels of a 256 frame: A (0,0,128,128) -> [0,112); B (64,64,192,192) -> [56,168); C (64,64,128,128) -> [56,112)
    a, b, c = (0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75), (0.25, 0.25, 0.5, 0.5)
    g = metrics.consensus_gt_map([a, b, c])
    assert g[60, 60] == 1.0  # three boxes: 3/2 capped at 1
    assert g[10, 10] == 0.5 and g[150, 150] == 0.5  # one annotator only
    assert g[200, 200] == 0.0
    # 56*56 pixels at 1, (112^2 - 56^2) * 2 pixels at 0.5
    assert g.sum() == 3136 + 0.5 * 18816
    pred = np.zeros((224, 224))
    pred[:112, :112] = 1  # exactly A: overlap 3136*1 + 9408*.5 = 7840 over |G| = 12544, nothing outside G
    assert metrics.ciou(pred, g) == pytest.approx(7840 / 12544)


def test_flickr_pixel_rescale_matches_reference_integer_formula():
    # the reference computes int(224 * px / 256); boxes here are px / 256
    for px in (0, 1, 37, 100, 255, 256):
        assert metrics._box_pixels((px / 256,) * 4)[0] == int(224 * px / 256)


# -- protocols ---------------------------------------------------------------------------------
def _tiered_map() -> np.ndarray:
    m = np.zeros((224, 224))
    m[:56] = 1.0  # a quarter at the maximum
    m[56:168] = 0.5  # half tied at the median
    return m


def test_lvs_and_ezvsl_differ_on_ties():
    gt = metrics.union_gt_map([(0.0, 0.0, 1.0, 0.25)])  # rows 0..55: 12544 pixels
    lvs = metrics.score_map(_tiered_map(), gt, "lvs")
    ez = metrics.score_map(_tiered_map(), gt, "ezvsl")
    # thr = sorted[25088] = 0.5; LVS keeps P > .5 (rows 0..55), EZ-VSL P >= .5 (rows 0..167)
    assert lvs.pred_pixels == 12544 and lvs.ciou == 1.0
    assert ez.pred_pixels == 37632 and ez.ciou == pytest.approx(12544 / 37632)


def test_lvs_keeps_maximum_when_more_than_half_ties_at_it():
    p = np.ones((224, 224))
    p[168:] = 0.0  # three quarters at the max, so thr == 1
    # reference: pred[pred > thr] = 1; pred[pred < 1] = 0 leaves the maxima at 1
    assert metrics.binarize(p, "lvs").sum() == 37632
    assert metrics.binarize(p, "ezvsl").sum() == 37632


def test_continuous_map_one_pixel_apart():
    p = np.random.default_rng(1).random((224, 224))
    assert metrics.binarize(p, "lvs").sum() == N - N // 2 - 1
    assert metrics.binarize(p, "ezvsl").sum() == N - N // 2


def test_constant_map_predicts_whole_frame():
    gt = metrics.union_gt_map([(0.0, 0.0, 0.5, 1.0)])  # half the frame
    for protocol in metrics.PROTOCOLS:
        s = metrics.score_map(np.full((7, 7), 3.0), gt, protocol)
        assert s.pred_pixels == N and s.ciou == pytest.approx(0.5)


def test_unknown_protocol_and_bad_shapes_raise():
    gt = np.zeros((224, 224))
    with pytest.raises(MetricError, match="unknown protocol"):
        metrics.score_map(np.ones((7, 7)), gt, "cv2")
    with pytest.raises(MetricError, match="2-D"):
        metrics.score_map(np.ones((2, 7, 7)), gt)
    with pytest.raises(MetricError, match="2-D"):
        metrics.score_map(np.ones((0, 7)), gt)
    assert metrics.score_map(np.ones((1, 1, 7, 7)), gt).pred_pixels == N  # leading singleton axes dropped


def test_non_finite_maps_are_flagged_and_never_predicted():
    m = np.zeros((224, 224))
    m[:56] = 1.0
    m[200:, :] = np.nan
    m[0, 0] = np.inf
    gt = metrics.union_gt_map([(0.0, 0.0, 1.0, 0.25)])
    s = metrics.score_map(m, gt, "lvs")
    # NaN/inf set to the finite min (0): prediction = rows 0..55 minus the former inf pixel
    assert s.non_finite and s.pred_pixels == 12543 and s.ciou == pytest.approx(12543 / 12544)
    dead = metrics.score_map(np.full((7, 7), np.nan), gt)
    assert dead == metrics.MapScore(0.0, False, 0, 12544.0, True)


def test_pointing_game():
    gt = metrics.union_gt_map([(0.375, 0.375, 0.625, 0.625)])  # central box
    prior = metrics.center_prior(7, 7)
    assert metrics.score_map(prior, gt).pointing
    corner = np.zeros((7, 7))
    corner[0, 0] = 1
    assert not metrics.score_map(corner, gt).pointing
    assert not metrics.score_map(prior, np.zeros((224, 224))).pointing  # empty GT: miss
    top_right = np.zeros((7, 7))
    top_right[0, 6] = 1  # peak at row 0, last column: (x, y) must not be swapped
    assert metrics.score_map(top_right, metrics.union_gt_map([(0.75, 0.0, 1.0, 0.25)])).pointing
    assert not metrics.score_map(top_right, metrics.union_gt_map([(0.0, 0.75, 0.25, 1.0)])).pointing


# -- summaries ---------------------------------------------------------------------------------
def test_auc_and_ap50_of_known_lists():
    s = metrics.summarize([0.0, 0.5, 1.0], [True, False, False])
    # success: 1 at t=0, 2/3 for t in (0, .5], 1/3 for t in (.5, 1]
    expected_auc = 0.05 * (1 + 2 / 3) / 2 + 9 * 0.05 * 2 / 3 + 0.05 * (2 / 3 + 1 / 3) / 2 + 9 * 0.05 / 3
    assert s["auc"] == pytest.approx(expected_auc) == pytest.approx(0.5166667, abs=1e-6)
    assert s["ap50"] == pytest.approx(2 / 3) and s["mean_ciou"] == 0.5
    assert s["pointing"] == pytest.approx(1 / 3) and s["n"] == 3
    assert metrics.auc([1.0, 1.0]) == pytest.approx(1.0)
    assert metrics.auc([0.0]) == pytest.approx(0.025)  # only success(0) = 1


def test_success_thresholds_are_the_reference_floats():
    # the reference builds thresholds as 0.05 * i: 0.05 * 3 is 0.15000000000000002
    t, s = metrics.success_curve([0.15])
    assert len(t) == 21 and s[3] == 0.0 and s[2] == 1.0


def test_center_prior_is_centred_gaussian():
    p = metrics.center_prior(5, 5)
    assert np.unravel_index(np.argmax(p), p.shape) == (2, 2) and p[2, 2] == 1.0
    np.testing.assert_allclose(p, p[::-1, ::-1])
    np.testing.assert_allclose(p, p.T)
    with pytest.raises(MetricError):
        metrics.center_prior(0, 5)


def test_success_curve_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = metrics.plot_success_curves({"a": [0.1, 0.6], "b": [0.9]}, tmp_path / "c.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- extended metrics (SLAVC) ---------------------------------------------------------------
# A direct transcription of the rule in SLAVC's evaluator (github.com/stoneMo/SLAVC, utils.py,
# EvaluatorFull.calc_precision_recall / calc_ap and finalize_stats' F1 list), written out here
# so that soundloc.metrics' own arithmetic is checked against it clip by clip.


def _slavc_precision_recall(bb_list, ciou_list, confidence_list, confidence_thr, ciou_thr=0.5):
    true_pos, false_pos, false_neg = 0, 0, 0
    for bb, ciou, confidence in zip(bb_list, ciou_list, confidence_list):
        if bb == 0:
            if confidence >= confidence_thr:
                false_pos += 1
        else:
            if confidence >= confidence_thr:
                if ciou >= ciou_thr:
                    true_pos += 1
                else:
                    false_pos += 1
            else:
                false_neg += 1
    precision = 1. if true_pos + false_pos == 0 else true_pos / (true_pos + false_pos)
    recall = 1. if true_pos + false_neg == 0 else true_pos / (true_pos + false_neg)
    return precision, recall


def _slavc_ap(bb_list, ciou_list, confidence_list, iou_thr=0.5):
    precision, recall, skip_thr = [], [], max(1, len(ciou_list) // 200)
    for thr in np.sort(np.array(confidence_list))[:-1][::-skip_thr]:
        p, r = _slavc_precision_recall(bb_list, ciou_list, confidence_list, thr, iou_thr)
        precision.append(p)
        recall.append(r)
    precision_max = [np.max(precision[i:]) for i in range(len(precision))]
    return sum([precision_max[i] * (recall[i + 1] - recall[i]) for i in range(len(precision_max) - 1)])


def _slavc_f1s(bb_list, ciou_list, conf_list, iou_thr=0.5):
    conf_thr = list(sorted(conf_list))[::max(1, len(conf_list) // 10)]
    pr = [_slavc_precision_recall(bb_list, ciou_list, conf_list, thr, iou_thr) for thr in conf_thr]
    return [2 * r * p / (r + p) if r + p > 0 else 0. for p, r in pr]


def _extended_case(n: int, seed: int):
    rng = np.random.default_rng(seed)
    boxes = rng.integers(0, 3, n) * (rng.random(n) < 0.6)  # 0: no visible sounding object
    cious = np.round(rng.random(n), 2)  # rounded: ties at the 0.5 boundary happen
    conf = np.round(rng.random(n), 1)  # rounded: tied confidences happen
    return boxes.tolist(), cious.tolist(), conf.tolist()


@pytest.mark.parametrize("n,seed", [(7, 0), (40, 1), (450, 2), (1000, 3)])
def test_extended_metrics_equal_slavcs_rule_clip_by_clip(n: int, seed: int) -> None:
    boxes, cious, conf = _extended_case(n, seed)
    for thr in sorted(set(conf)) + [-1000.0]:
        assert metrics.extended_precision_recall(boxes, cious, conf, thr) == _slavc_precision_recall(boxes, cious, conf, thr)
    assert metrics.extended_ap(boxes, cious, conf) == pytest.approx(_slavc_ap(boxes, cious, conf), abs=1e-12)
    assert metrics.extended_f1s(boxes, cious, conf) == pytest.approx(_slavc_f1s(boxes, cious, conf), abs=1e-12)
    s = metrics.extended_summary(boxes, cious, conf)
    assert s["precision"] == _slavc_precision_recall(boxes, cious, conf, -1000)[0]
    assert s["max_f1"] == pytest.approx(max(_slavc_f1s(boxes, cious, conf)))
    assert s["n_visible"] + s["n_negative"] == n and s["n_negative"] == boxes.count(0)


def test_extended_metrics_on_a_hand_made_case() -> None:
    """Three visible clips (two well localized), three without a visible source. A confidence
    that ranks the well-localized clips first: at the second-highest confidence (the highest
    is never a threshold in SLAVC's sweep) two clips are detected, both true positives
    (precision 1, recall 2/3); one step lower the badly localized one joins (recall 1), so AP =
    1 x (1 - 2/3)."""
    boxes, cious = [1, 1, 1, 0, 0, 0], [0.8, 0.7, 0.2, 0.0, 0.0, 0.0]
    good, bad = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.9, 0.8, 0.7]  # bad: negatives first
    assert metrics.extended_ap(boxes, cious, good) == pytest.approx(1 / 3) == _slavc_ap(boxes, cious, good)
    assert metrics.extended_ap(boxes, cious, bad) == pytest.approx(_slavc_ap(boxes, cious, bad))
    # everything detected: 2 true positives, 4 false positives
    assert metrics.extended_summary(boxes, cious, good)["precision"] == pytest.approx(2 / 6)
    assert metrics.extended_summary(boxes, cious, good)["max_f1"] == pytest.approx(0.8)  # threshold 0.8: p 1, r 2/3
    constant = [1.0] * 6
    assert metrics.extended_ap(boxes, cious, constant) == _slavc_ap(boxes, cious, constant) == 0

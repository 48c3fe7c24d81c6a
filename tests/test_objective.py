"""Issue 10's training objective: cosine maps, the class-aware contrastive term, the recipes.

Hand-computed loss on a tiny batch; gradients reach both backbones; a model trained with the
objective exports and verifies (ONNX vs torch, stream vs offline); `soundloc train` without
flags uses the default recipe, `--recipe paper` the paper's heads, loss and schedule.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) not installed")

import torch.nn.functional as F  # noqa: E402

from soundloc.config import RECIPES, SALIENCE_POWER, preset  # noqa: E402
from soundloc.localize import step_maps  # noqa: E402
from soundloc.model.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from soundloc.model.classifier import (AVClassifier, classification_loss, contrastive_loss,  # noqa: E402
                                       localization_maps, pair_similarity, training_loss)

from conftest import randomise_batchnorm  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_batch():
    """Three clips, D=2, T=1, a 1x2 map; cosines are 0, +-1 by construction (see below)."""
    V = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],      # clip 0: locations (1,0) and (0,1)
                      [[0.0, 0.0], [1.0, 2.0]],      # clip 1: (0,1) and (0,2)
                      [[1.0, -1.0], [0.0, 0.0]]])    # clip 2: (1,0) and (-1,0)
    V = V[:, :, None, None, :]  # (B, D, T=1, h=1, w=2)
    za = torch.tensor([[[1.0, 0.0]], [[0.0, 3.0]], [[-1.0, 0.0]]])  # (B, T=1, D)
    return V, za, torch.tensor([0, 0, 1])


def test_contrastive_loss_matches_a_hand_computed_value():
    V, za, labels = tiny_batch()
    # S[i, j] = max over locations of cos(video j, audio i):
    #   audio 0 (1,0):  video 0 -> 1, video 1 -> 0, video 2 -> 1
    #   audio 1 (0,1):  1, 1, 0
    #   audio 2 (-1,0): 0, 0, 1
    S = pair_similarity(V, za)
    np.testing.assert_allclose(S.numpy(), [[1, 0, 1], [1, 1, 0], [0, 0, 1]], atol=1e-6)
    # clips 0 and 1 share class 0: S[0,1] and S[1,0] are not negatives. With temperature 1:
    # audio->video rows: [1, -, 1] -> log 2; [-, 1, 0] -> log(1 + 1/e); [0, 0, 1] -> log(1 + 2/e)
    # video->audio rows: [1, -, 0] -> log(1 + 1/e); [-, 1, 0] -> log(1 + 1/e); [1, 0, 1] -> log(2 + 1/e)
    e = math.e
    a2v = (math.log(2) + math.log(1 + 1 / e) + math.log(1 + 2 / e)) / 3
    v2a = (2 * math.log(1 + 1 / e) + math.log(2 + 1 / e)) / 3
    assert float(contrastive_loss(V, za, labels, 1.0)) == pytest.approx((a2v + v2a) / 2, rel=1e-6)
    # without the class mask (all classes differ) clip 1's rows gain a negative: the loss grows
    assert float(contrastive_loss(V, za, torch.tensor([0, 1, 2]), 1.0)) > (a2v + v2a) / 2


def test_contrastive_loss_on_the_deployed_salient_map_matches_a_hand_computed_value():
    """Issue 24's peak term: the same loss on the peak of the salient map (cos x |V|^p, the
    map the model deploys). Only clip 1's second location has |V| != 1 (|(0, 2)| = 2), so
    S differs from the cosine's at [1, 1] alone: cos 1 x 2^p = q."""
    V, za, labels = tiny_batch()
    q = 2 ** SALIENCE_POWER
    S = pair_similarity(V, za, "salient")
    np.testing.assert_allclose(S.numpy(), [[1, 0, 1], [1, q, 0], [0, 0, 1]], atol=1e-6)
    e = math.e
    # audio->video rows: [1, -, 1] -> log 2; [-, q, 0] -> log(1 + e^-q); [0, 0, 1] -> log(1 + 2/e)
    # video->audio rows: [1, -, 0] -> log(1 + 1/e); [-, q, 0] -> log(1 + e^-q); [1, 0, 1] -> log(2 + 1/e)
    a2v = (math.log(2) + math.log(1 + e ** -q) + math.log(1 + 2 / e)) / 3
    v2a = (math.log(1 + 1 / e) + math.log(1 + e ** -q) + math.log(2 + 1 / e)) / 3
    assert float(contrastive_loss(V, za, labels, 1.0, "salient")) == pytest.approx((a2v + v2a) / 2, rel=1e-6)
    # at temperature 0.5 every logit doubles: the loss is the same sums with 2S
    half = float(contrastive_loss(V, za, labels, 0.5, "salient"))
    a2v2 = (math.log(2) + math.log(1 + e ** (-2 * q)) + math.log(1 + 2 / e ** 2)) / 3
    v2a2 = (math.log(1 + 1 / e ** 2) + math.log(1 + e ** (-2 * q)) + math.log(2 + 1 / e ** 2)) / 3
    assert half == pytest.approx((a2v2 + v2a2) / 2, rel=1e-6)
    # the peak, not the mean: a location that matches nothing does not lower a clip's score
    V2 = V.clone()
    V2[1, :, 0, 0, 0] = torch.tensor([0.0, -5.0])  # clip 1's first location turns away from audio 1
    assert float(pair_similarity(V2, za, "salient")[1, 1]) == pytest.approx(q)


def test_border_cells_are_left_out_of_the_peak():
    """``mil_border``: the peak over the interior cells only. On a 3x3 map whose best cell is a
    corner, border 1 scores the centre cell alone; the centre's value, computed by hand."""
    V = torch.zeros(2, 2, 1, 3, 3)
    V[0, :, 0, 0, 0] = torch.tensor([1.0, 0.0])   # clip 0: a corner matching audio 0 exactly
    V[0, :, 0, 1, 1] = torch.tensor([0.6, 0.8])   # and its centre, cos 0.6 with audio 0
    V[1, :, 0, 1, 1] = torch.tensor([0.0, 1.0])   # clip 1: its centre matches audio 1; rest zero
    za = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    labels = torch.tensor([0, 1])
    np.testing.assert_allclose(pair_similarity(V, za).numpy(), [[1, 0], [0.8, 1]], atol=1e-6)
    np.testing.assert_allclose(pair_similarity(V, za, border=1).numpy(), [[0.6, 0], [0.8, 1]], atol=1e-6)
    # temperature 1: rows [0.6, 0] and [0.8, 1]; columns [0.6, 0.8] and [0, 1]
    ce = lambda pos, neg: math.log(1 + math.exp(neg - pos))  # noqa: E731
    want = (ce(0.6, 0) + ce(1, 0.8) + ce(0.6, 0.8) + ce(1, 0)) / 4
    assert float(contrastive_loss(V, za, labels, 1.0, border=1)) == pytest.approx(want, rel=1e-6)
    cfg = preset("tiny", num_classes=2, head="tied-fc", contrastive_weight=1.0, contrastive_temperature=1.0,
                 mil_border=1)
    from soundloc.model.classifier import Features

    logits = {k: torch.zeros(2, 2) for k in ("vision", "audio", "av")}
    _, parts = training_loss(cfg, logits, Features(V=V, zv=za, za=za), labels)
    assert parts["contrastive"] == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="leaves nothing"):
        pair_similarity(V, za, border=2)
    from soundloc.config import ConfigError

    with pytest.raises(ConfigError, match="leaves nothing of the 2x2 training map"):  # refused before training
        preset("tiny", image_size=32, contrastive_weight=0.3, mil_border=1)


def test_training_loss_scores_the_map_contrastive_map_names():
    """``contrastive_map="deployed"`` scores the config's map_kind; "cosine" (the default, issue
    10's term) the cosine map whatever the map_kind; anything else is refused."""
    from soundloc.config import CONTRASTIVE_MAPS, ConfigError
    from soundloc.model.classifier import Features

    V, za, labels = tiny_batch()
    logits = {k: torch.zeros(3, 3) for k in ("vision", "audio", "av")}
    ce, _ = classification_loss(logits, labels)
    cfg = preset("tiny", num_classes=3, head="tied-fc", map_kind="salient", contrastive_weight=2.0,
                 contrastive_temperature=1.0)
    assert cfg.contrastive_map == "cosine" and CONTRASTIVE_MAPS == ("cosine", "deployed")
    feats = Features(V=V, zv=za, za=za)
    for name, kind in (("cosine", "cosine"), ("deployed", "salient")):
        total, parts = training_loss(cfg.replace(contrastive_map=name), logits, feats, labels)
        c = float(contrastive_loss(V, za, labels, 1.0, kind))
        assert parts["contrastive"] == pytest.approx(c) and float(total) == pytest.approx(float(ce) + 2 * c, rel=1e-6)
    assert float(contrastive_loss(V, za, labels, 1.0, "salient")) != pytest.approx(
        float(contrastive_loss(V, za, labels, 1.0, "cosine")))
    with pytest.raises(ConfigError, match="contrastive_map must be one of cosine, deployed"):
        cfg.replace(contrastive_map="peak")


def test_deployed_map_contrastive_gradients_reach_both_networks():
    """The peak term on the deployed map of a default-recipe model (salient, trained at 7x7)
    sends gradient into every stage of both backbones, and none into the classifier."""
    cfg = preset("tiny", num_classes=3, clip_seconds=0.4, **{**RECIPES["default"][0], "contrastive_weight": 1.0,
                                                            "contrastive_map": "deployed"})
    torch.manual_seed(0)
    model = AVClassifier(cfg).train()
    video, mel, labels = torch.randn(4, 3, 4, 112, 112), torch.randn(4, 1, 40, 80), torch.tensor([0, 1, 2, 0])
    _, feats = model(video, mel, with_features=True)
    contrastive_loss(feats.V, feats.za, labels, cfg.contrastive_temperature, cfg.map_kind).backward()
    for name, net in (("video", model.video), ("audio", model.audio)):
        for stage in ("stem", "layer1", "layer4"):
            g = sum(float(p.grad.abs().sum()) for p in getattr(net, stage).parameters() if p.grad is not None)
            assert g > 0, (name, stage)
    assert model.fc.weight.grad is None


def test_training_loss_adds_the_weighted_term_and_reports_it():
    cfg = preset("tiny", num_classes=3, head="tied-fc", map_kind="cosine", contrastive_weight=0.5,
                 contrastive_temperature=1.0)
    V, za, labels = tiny_batch()
    from soundloc.model.classifier import Features

    logits = {k: torch.randn(3, 3, generator=torch.Generator().manual_seed(i)) for i, k in enumerate(("vision", "audio", "av"))}
    ce, _ = classification_loss(logits, labels)
    total, parts = training_loss(cfg, logits, Features(V=V, zv=za, za=za), labels)
    c = float(contrastive_loss(V, za, labels, 1.0))
    assert float(total) == pytest.approx(float(ce) + 0.5 * c, rel=1e-6) and parts["contrastive"] == pytest.approx(c)
    total0, parts0 = training_loss(cfg.replace(contrastive_weight=0.0), logits, Features(V=V, zv=za, za=za), labels)
    assert float(total0) == pytest.approx(float(ce)) and "contrastive" not in parts0


def test_cosine_maps_torch_and_numpy_agree_and_ignore_feature_norms():
    g = torch.Generator().manual_seed(0)
    V, za = torch.randn(2, 8, 3, 4, 4, generator=g), torch.randn(2, 3, 8, generator=g)
    cos = localization_maps(V, za, "cosine")
    np.testing.assert_allclose(step_maps(V.numpy(), za.numpy(), "cosine"), cos.numpy(), atol=1e-5)
    np.testing.assert_allclose(step_maps(V.numpy(), za.numpy(), "dot"), localization_maps(V, za).numpy(), atol=1e-4)
    assert float(cos.abs().max()) <= 1.0 + 1e-6
    scaled = V * torch.rand(2, 1, 3, 4, 4, generator=g) * 10  # per-location saliency: gone in cosine maps
    np.testing.assert_allclose(localization_maps(scaled, 3 * za, "cosine").numpy(), cos.numpy(), atol=1e-5)


def test_salient_maps_are_the_cosine_times_a_power_of_the_feature_norm():
    g = torch.Generator().manual_seed(0)
    V, za = torch.randn(2, 8, 3, 4, 4, generator=g), torch.randn(2, 3, 8, generator=g)
    sal = localization_maps(V, za, "salient")
    by_hand = localization_maps(V, za, "cosine") * V.norm(dim=1) ** SALIENCE_POWER
    np.testing.assert_allclose(sal.numpy(), by_hand.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(step_maps(V.numpy(), za.numpy(), "salient"), sal.numpy(), rtol=1e-4, atol=1e-5)
    s = torch.rand(2, 1, 3, 4, 4, generator=g) * 10  # louder audio changes nothing, |V| counts softly
    np.testing.assert_allclose(localization_maps(V * s, 3 * za, "salient").numpy(),
                               (sal * s[:, 0] ** SALIENCE_POWER).numpy(), rtol=1e-4, atol=1e-5)
    assert 0 < SALIENCE_POWER < 1


def test_contrastive_gradients_reach_both_backbones():
    cfg = preset("tiny", num_classes=3, clip_seconds=0.4, image_size=32, head="tied-fc", map_kind="cosine",
                 contrastive_weight=1.0)
    torch.manual_seed(0)
    model = AVClassifier(cfg).train()
    video, mel = torch.randn(4, 3, 4, 32, 32), torch.randn(4, 1, 40, 80)
    labels = torch.tensor([0, 1, 2, 0])
    _, feats = model(video, mel, with_features=True)
    contrastive_loss(feats.V, feats.za, labels, cfg.contrastive_temperature).backward()
    for name, net in (("video", model.video), ("audio", model.audio)):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    assert model.fc.weight.grad is None  # the contrastive term alone does not touch the classifier


def test_model_trained_with_the_objective_exports_and_verifies(tmp_path):
    from soundloc.export.onnx import export_model
    from soundloc.export.verify import offline_onnx, random_clip, verify

    cfg = preset("small", num_classes=3, **{**RECIPES["default"][0], "contrastive_weight": 1.0,
                                              "contrastive_map": "deployed"})  # the peak term on the deployed map
    torch.manual_seed(0)
    model = AVClassifier(cfg)
    randomise_batchnorm(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):  # a few steps of the objective, so the weights are not the initial ones
        video, mel, labels = torch.randn(4, 3, 6, 112, 112, generator=g), torch.randn(4, 1, 60, 80, generator=g), torch.tensor([0, 1, 2, 1])
        logits, feats = model(video, mel, with_features=True)
        loss, parts = training_loss(cfg, logits, feats, labels)
        assert "contrastive" in parts
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    bundle = export_model(model, tmp_path / "export", precision="fp32")
    assert bundle.config.map_kind == RECIPES["default"][0]["map_kind"] == "salient"
    import onnx

    from soundloc.deploy.trt_ops import check_tensorrt_compat

    assert check_tensorrt_compat(onnx.load(bundle.path("step"))) == []  # the normalisation too
    report = verify(bundle, model, steps=40)
    assert report.ok, report.failures
    assert report.offline_vs_torch["alpha"] <= 1e-4 and report.stream_vs_offline["alpha"] <= 1e-4
    video, mel = random_clip(cfg, 12, seed=2)
    off = offline_onnx(bundle, video, mel)
    np.testing.assert_allclose(off["alpha"], step_maps(off["V"], off["za"], "salient"), rtol=1e-4, atol=1e-5)
    assert not np.allclose(off["alpha"], np.einsum("bdthw,btd->bthw", off["V"], off["za"]), atol=1e-3)


def _synth(root: Path) -> Path:
    from soundloc.data.synth import make_synthetic_dataset

    make_synthetic_dataset(root, num_clips=6, seconds=1.0, num_classes=2, val_fraction=0.34, workers=1, size=64)
    return root


def test_train_defaults_use_the_default_recipe_and_paper_recipe_is_the_paper(tmp_path):
    from typer.testing import CliRunner

    from soundloc.cli import app

    data = _synth(tmp_path / "data")
    base = ["train", str(data), "--workers", "0", "--batch-size", "3", "--epochs", "1", "--preset", "tiny",
            "--set", "clip_seconds=1"]
    runner = CliRunner()
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "default")])
    assert r.exit_code == 0, r.output
    model, data_d = load_checkpoint(tmp_path / "default" / "last.pt")
    cfg = model.config
    assert (cfg.head, cfg.map_kind, cfg.contrastive_weight) == ("tied-fc", "salient", RECIPES["default"][0]["contrastive_weight"])
    assert data_d["schedule"] == "cosine" and "T_max" in data_d["scheduler"]
    assert data_d["zoom"] == RECIPES["default"][1].get("zoom", 1.0) == 1.0  # recorded; an option (issue 24)
    (line,) = [json.loads(x) for x in (tmp_path / "default" / "log.jsonl").read_text().splitlines()]
    assert line["monitor"] == "val_minus_loss"
    assert ("contrastive" in line["train"]["loss_parts"]) == (cfg.contrastive_weight > 0)
    assert line["audio_dependence"]["clips"] == 2 and "audio_dependence_warning" in line

    r = runner.invoke(app, [*base, "--out", str(tmp_path / "paper"), "--recipe", "paper"])
    assert r.exit_code == 0, r.output
    model, data_p = load_checkpoint(tmp_path / "paper" / "last.pt")
    cfg = model.config
    assert (cfg.head, cfg.map_kind, cfg.contrastive_weight) == ("individual-fc", "dot", 0.0)
    assert data_p["schedule"] == "plateau" and data_p["scheduler"]["mode"] == "max"
    assert data_p["zoom"] == 1.0 and "zoom" not in RECIPES["paper"][1]
    assert {n for n, _ in model.named_children()} == {"video", "audio", "fc_v", "fc_a", "fc_av"}
    (line,) = [json.loads(x) for x in (tmp_path / "paper" / "log.jsonl").read_text().splitlines()]
    assert line["monitor"] == "val_accuracy_av" and set(line["train"]["loss_parts"]) == {"vision", "audio", "av"}
    # the paper's loss exactly: CE of FC_v(z^V, 0) + CE of FC_a(0, z^A) + CE of FC_av(z^V, z^A)
    g = torch.Generator().manual_seed(0)
    video, mel, labels = torch.randn(2, 3, 4, 112, 112, generator=g), torch.randn(2, 1, 40, 80, generator=g), torch.tensor([0, 1])
    model.eval()
    with torch.no_grad():
        logits, f = model(video, mel, with_features=True)
        loss, _ = training_loss(cfg, logits, f, labels)
        mv, ma, zero = f.zv.mean(1), f.za.mean(1), torch.zeros_like(f.zv.mean(1))
        expected = (F.cross_entropy(model.fc_v(torch.cat([mv, zero], 1)), labels)
                    + F.cross_entropy(model.fc_a(torch.cat([zero, ma], 1)), labels)
                    + F.cross_entropy(model.fc_av(torch.cat([mv, ma], 1)), labels))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert read_checkpoint(tmp_path / "paper" / "last.pt")["config"]["map_kind"] == "dot"

    resume = ["train", str(data), "--workers", "0", "--batch-size", "3", "--out", str(tmp_path / "paper"),
              "--epochs", "2", "--resume"]
    r = runner.invoke(app, resume)  # no --preset: the checkpoint's config and schedule, not the default recipe's
    assert r.exit_code == 0, r.output
    assert read_checkpoint(tmp_path / "paper" / "last.pt")["schedule"] == "plateau"
    assert read_checkpoint(tmp_path / "paper" / "last.pt")["zoom"] == 1.0
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "zoom"), "--zoom", "0.75"])
    assert r.exit_code == 0, r.output
    assert read_checkpoint(tmp_path / "zoom" / "last.pt")["zoom"] == 0.75
    r = runner.invoke(app, [*resume[:-5], "--out", str(tmp_path / "zoom"), "--epochs", "2", "--resume"])
    assert r.exit_code == 0, r.output  # a resume goes on with the run's own zoom, not TrainOptions' 1.0
    assert read_checkpoint(tmp_path / "zoom" / "last.pt")["zoom"] == 0.75
    r = runner.invoke(app, [*resume[:-3], "--epochs", "3", "--resume", "--schedule", "cosine"])
    assert r.exit_code == 2 and "trained with the plateau schedule" in r.output
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "x"), "--recipe", "fancy"])
    assert r.exit_code == 2 and "unknown recipe 'fancy'" in r.output and os.path.isdir(data)

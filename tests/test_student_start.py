"""A student that starts from its teacher (`soundloc train --family ezvsl --init TEACHER.pt`,
``model.deflate``) and the border-free contrastive max (``config.mil_border``), issue 26.

- the deflated image trunk computes exactly the teacher's video net on a still clip (its
  extra ResNet-18 blocks are identities), and the folded input normalisation gives the teacher's
  stem output on interior pixels;
- a training run's first step is the mapped model's (same weights, same loss);
- the border ring is left out of the loss's max and nowhere else: the loss by hand, and an
  exported student trained with it verifies (stream vs offline) and streams;
- provenance records the mapping; a teacher of another width is refused in one line.

Teachers are random classifiers with random BatchNorm statistics (their weights' values do not
matter to a mapping; every one of them must land), at the ``tiny`` width (1/16).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from soundloc.config import VIDEO_MEAN, VIDEO_STD, Config, preset  # noqa: E402
from soundloc.families import IMAGENET_MEAN, IMAGENET_STD, ezvsl_config  # noqa: E402
from soundloc.model.checkpoint import read_checkpoint, save_checkpoint  # noqa: E402
from soundloc.model.classifier import AVClassifier  # noqa: E402
from soundloc.model.deflate import map_video_net, start_from_teacher  # noqa: E402
from soundloc.model.ezvsl import EZVSL, init_weights, mil_contrastive_loss  # noqa: E402
from soundloc.train.datasets import ClipRecord  # noqa: E402
from soundloc.train.distributed import DistInfo  # noqa: E402
from soundloc.train.epoch import forward_backward  # noqa: E402
from soundloc.train.frames import FrameChoice, FrameDataset, collate_frames  # noqa: E402
from soundloc.train.loop import build_state  # noqa: E402
from soundloc.train.types import TrainOptions  # noqa: E402
from conftest import soundloc_cli  # noqa: E402
from test_student import clips, write_counting_clip  # noqa: E402,F401  (the module fixture and its clips)

STUDENT = ezvsl_config("tiny", image_size=96)
TAU = STUDENT.contrastive_temperature


def random_teacher(layers: tuple[int, int, int, int] = (1, 1, 1, 1), seed: int = 0) -> AVClassifier:
    """A tiny classifier whose every BatchNorm has non-trivial statistics and affine terms."""
    torch.manual_seed(seed)
    teacher = AVClassifier(preset("tiny", layers=layers, num_classes=2))
    for m in teacher.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return teacher.eval()


def trunk_without_maxpool(trunk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The student's image trunk minus ResNet's max pool (which MC3 has not)."""
    x = trunk.relu(trunk.bn1(trunk.conv1(x)))
    return trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(x))))


@pytest.mark.parametrize("layers", [(1, 1, 1, 1), (2, 2, 2, 2), (2, 1, 1, 2)])
def test_deflated_trunk_equals_the_teacher_video_net_on_a_still_clip(layers) -> None:
    teacher = random_teacher(layers)
    student = EZVSL(STUDENT)
    init_weights(student)
    record = map_video_net(student.imgnet, teacher.state_dict(), teacher.config, normalisation=None)
    assert len(record["blocks_mapped"]) == sum(layers) and len(record["blocks_identity"]) == 8 - sum(layers)
    student.eval()
    frame = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    still = frame[:, :, None].repeat(1, 1, 15, 1, 1)  # 15 copies: the middle one sees only copies (5 3-tap convs at most)
    with torch.no_grad():
        want = teacher.video(still)[:, :, 7]
        got = trunk_without_maxpool(student.imgnet, frame)
    assert got.shape == want.shape == (2, STUDENT.channels(512), 6, 6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert want.abs().max() > 0.1  # not a comparison of zeros


def test_folded_normalisation_gives_the_teacher_stem_on_interior_pixels() -> None:
    teacher = random_teacher()
    plain, folded = EZVSL(STUDENT), EZVSL(STUDENT)
    map_video_net(plain.imgnet, teacher.state_dict(), teacher.config, normalisation=None)
    map_video_net(folded.imgnet, teacher.state_dict(), teacher.config)
    raw = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    def norm(mean, std):
        return (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]

    def stem(net, x):
        return net.imgnet.bn1(net.imgnet.conv1(x))

    plain.eval(), folded.eval()
    with torch.no_grad():
        want = stem(plain, norm(VIDEO_MEAN, VIDEO_STD))[..., 2:-2, 2:-2]  # 7x7, stride 2: 2 cells reach the padding
        got = stem(folded, norm(IMAGENET_MEAN, IMAGENET_STD))[..., 2:-2, 2:-2]
        unfolded = stem(plain, norm(IMAGENET_MEAN, IMAGENET_STD))[..., 2:-2, 2:-2]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (unfolded - want).abs().max() > 0.05  # the fold mattered


def test_start_from_teacher_sets_the_projection_to_identity_and_leaves_audio() -> None:
    teacher = random_teacher()
    torch.manual_seed(3)
    student = EZVSL(STUDENT)
    init_weights(student)
    audio_before = {k: v.clone() for k, v in student.audnet.state_dict().items()}
    record = start_from_teacher(student, teacher.state_dict(), teacher.config)
    assert torch.equal(student.img_proj.weight[:, :, 0, 0], torch.eye(STUDENT.embed_dim))
    assert all(torch.equal(student.audnet.state_dict()[k], v) for k, v in audio_before.items())
    assert record["audio"].startswith("not mapped") and record["img_proj"] == "identity"


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(path, random_teacher(seed=5))
    return path


def test_a_run_from_the_teacher_starts_from_the_mapped_weights(teacher_ckpt: Path, clips: Path) -> None:
    torch.manual_seed(0)
    state = build_state(STUDENT, TrainOptions(lr=1e-3, schedule="cosine", progress=False), DistInfo(),
                        torch.device("cpu"), init=teacher_ckpt)
    torch.manual_seed(0)  # the same draws: the family's initialisation, then the mapping
    reference = EZVSL(STUDENT)
    init_weights(reference)
    teacher = AVClassifier(Config.from_dict(read_checkpoint(teacher_ckpt)["config"]))
    teacher.load_state_dict(read_checkpoint(teacher_ckpt)["model"])
    start_from_teacher(reference, teacher.state_dict(), teacher.config)
    for k, v in reference.state_dict().items():
        assert torch.equal(state.module.state_dict()[k], v), k
    assert torch.equal(state.module.imgnet.layer2[0].conv2.weight, teacher.video.layer2[0].conv2[0].weight[:, :, 0])
    records = [ClipRecord(f"clip{k}", clips / f"clip{k}.mp4", k % 2) for k in range(4)]
    batch = collate_frames([FrameDataset(records, ["a", "b"], STUDENT, FrameChoice("mid"))[i] for i in range(4)])
    state.model.train()
    first, _, _ = forward_backward(state, batch)
    with torch.no_grad():
        want = float(mil_contrastive_loss(*reference.train()(batch["frame"], batch["spec"]), TAU))
    assert first == pytest.approx(want, rel=1e-5)


def test_border_ring_is_left_out_of_the_max_by_hand() -> None:
    g = torch.Generator().manual_seed(4)
    V = torch.nn.functional.normalize(torch.randn(3, 5, 4, 4, generator=g), dim=1)
    za = torch.nn.functional.normalize(torch.randn(3, 5, generator=g), dim=1)
    inner = V[:, :, 1:3, 1:3]
    logits = torch.tensor([[max(float(inner[i, :, y, x] @ za[j]) for y in range(2) for x in range(2))
                            for j in range(3)] for i in range(3)]) / TAU
    ce = torch.nn.functional.cross_entropy
    want = ce(logits, torch.arange(3)) + ce(logits.t(), torch.arange(3))
    assert float(mil_contrastive_loss(V, za, TAU, border=1)) == pytest.approx(float(want), rel=1e-5)
    V2 = V.clone()
    V2[:, :, 0, :] = za[:, :, None]  # the border now matches each clip's own audio perfectly ...
    assert float(mil_contrastive_loss(V2, za, TAU, border=1)) == pytest.approx(float(want), rel=1e-5)  # ... unseen
    assert float(mil_contrastive_loss(V2, za, TAU)) < float(want)  # the plain max takes it
    with pytest.raises(ValueError, match="leaves nothing"):
        mil_contrastive_loss(V, za, TAU, border=2)


def test_cli_student_from_the_teacher_with_a_border_exports_verifies_and_streams(teacher_ckpt: Path, clips: Path,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = soundloc_cli("train", clips, "--family", "ezvsl", "--init", teacher_ckpt, "--preset", "tiny",
                     "--set", "image_size=96", "--set", "mil_border=1", "--out", out, "--epochs", "1",
                     "--batch-size", "3", "--workers", "0", "--lr", "1e-3")
    assert r.returncode == 0, r.stderr
    data = read_checkpoint(out / "last.pt")
    assert data["config"]["mil_border"] == 1 and data["config"]["width"] == 0.0625
    mapping = data["provenance"]["init"]["from_teacher"]
    assert mapping["blocks_mapped"] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert mapping["blocks_identity"] == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert mapping["normalisation_folded"] and mapping["img_proj"] == "identity"
    e = soundloc_cli("export", out / "last.pt", "--out", tmp_path / "export", "--verify")
    assert e.returncode == 0, e.stderr
    manifest = json.loads((tmp_path / "export" / "soundloc.json").read_text())
    report = manifest["verify"]
    assert report["ok"] and report["stream_vs_offline"]["alpha"] <= report["allowed"]["alpha"]
    assert manifest["checkpoint"]["provenance"]["init"]["from_teacher"] == mapping
    s = soundloc_cli("stream", tmp_path / "export", "--video", clips / "clip1.mp4", "--out", tmp_path / "o.mp4",
                     "--events", tmp_path / "ev.jsonl", "--gate-db", "-200")
    assert s.returncode == 0, s.stderr
    events = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines() if x.strip()]
    assert len(events) == 20 and all("peak" in ev for ev in events)


def test_a_teacher_of_another_width_is_refused_in_one_line(teacher_ckpt: Path, clips: Path, tmp_path: Path) -> None:
    r = soundloc_cli("train", clips, "--family", "ezvsl", "--init", teacher_ckpt, "--set", "width=0.125",
                     "--out", tmp_path / "run", "--epochs", "1", "--workers", "0")
    assert r.returncode != 0
    assert "starts a student of its own width" in r.stderr and len(r.stderr.strip().splitlines()) == 1

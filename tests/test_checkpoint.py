import os
import pickle

import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) not installed")

from soundloc.config import preset  # noqa: E402
from soundloc.model.checkpoint import (CheckpointError, load_checkpoint, load_video_weights,  # noqa: E402
                                       save_checkpoint)
from soundloc.model.classifier import AVClassifier  # noqa: E402


def test_round_trip(tmp_path):
    cfg = preset("tiny", num_classes=3, class_names=("a", "b, c", "d"))
    model = AVClassifier(cfg)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, epoch=4)
    loaded, data = load_checkpoint(path)
    assert loaded.config == cfg and loaded.config.class_names == ("a", "b, c", "d")
    assert data["epoch"] == 4
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_code_running_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "soundloc-checkpoint", "model": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_garbage_and_other_formats_give_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as e:
        load_checkpoint(tmp_path / "junk.pt")
    assert "\n" not in str(e.value)
    model = AVClassifier(preset("tiny", num_classes=2))
    save_checkpoint(tmp_path / "v9.pt", model)
    data = torch.load(tmp_path / "v9.pt", weights_only=True)
    data["format_version"] = 99
    torch.save(data, tmp_path / "v9.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "v9.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")


def test_weights_from_another_config_are_rejected(tmp_path):
    model = AVClassifier(preset("tiny", num_classes=2))
    save_checkpoint(tmp_path / "m.pt", model)
    data = torch.load(tmp_path / "m.pt", weights_only=True)
    data["config"]["width"] = 0.125  # weights of width 1/16 under a width-1/8 config
    torch.save(data, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "m.pt")


def test_bare_mc3_state_dict_initialises_video(tmp_path):
    src = AVClassifier(preset("tiny", num_classes=2))
    sd = {k: v + 1 if v.is_floating_point() else v for k, v in src.video.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(400, 32), torch.zeros(400)
    torch.save(sd, tmp_path / "kinetics.pth")
    with pytest.raises(CheckpointError, match="bare MC3-18"):
        load_checkpoint(tmp_path / "kinetics.pth")
    dst = AVClassifier(preset("tiny", num_classes=2))
    assert load_video_weights(dst, tmp_path / "kinetics.pth") == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.video.stem[0].weight, sd["stem.0.weight"])


def test_pickle_error_type_is_what_torch_raises(tmp_path):
    # guards the except clause in read_checkpoint against torch changing its exception type
    torch.save({"x": _Evil()}, tmp_path / "e.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "e.pt", weights_only=True)

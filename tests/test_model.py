import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) not installed")

from soundloc.config import Config, preset  # noqa: E402
from soundloc.model.classifier import AVClassifier, classification_loss, localization_maps, moment_scores  # noqa: E402
from soundloc.model.video import VideoNet, load_torchvision_mc3  # noqa: E402
from soundloc.model.audio import AudioNet  # noqa: E402
from soundloc.model.cost import macs_per_step  # noqa: E402

from conftest import randomise_batchnorm  # noqa: E402

# torchvision mc3_18 keys and shapes, written down from torchvision 0.2x's models/video/resnet.py
TORCHVISION_KEYS = {
    "stem.0.weight": (64, 3, 3, 7, 7),
    "stem.1.running_var": (64,),
    "layer1.0.conv1.0.weight": (64, 64, 3, 3, 3),
    "layer1.1.conv2.1.bias": (64,),
    "layer2.0.conv1.0.weight": (128, 64, 1, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer3.1.conv2.0.weight": (256, 256, 1, 3, 3),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1, 1),
    "layer4.1.conv2.1.num_batches_tracked": (),
}


def test_video_backbone_parameter_count_and_names():
    net = VideoNet(Config())
    assert sum(p.numel() for p in net.parameters()) == 11_490_240
    sd = net.state_dict()
    for key, shape in TORCHVISION_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    assert len(sd) == 120  # torchvision mc3_18 has 122 entries, fc.weight and fc.bias aside
    assert not any(k.startswith("fc") for k in sd)


@pytest.mark.parametrize("T", [1, 7, 100])
def test_video_time_length_preserved(T):
    net = VideoNet(Config(width=0.125)).eval()
    with torch.no_grad():
        v = net(torch.zeros(1, 3, T, 112, 112))
    assert v.shape == (1, 64, T, 7, 7)


def test_full_width_output_shape():
    net = VideoNet(Config()).eval()
    with torch.no_grad():
        v = net(torch.zeros(1, 3, 2, 112, 112))
    assert v.shape == (1, 512, 2, 7, 7)
    assert VideoNet.pool(v).shape == (1, 2, 512)


def _changed_steps(fn, x, k, axis, per_step=1):
    base = fn(x)
    y = x.clone()
    idx = [slice(None)] * x.dim()
    idx[axis] = slice(k * per_step, (k + 1) * per_step)
    y[tuple(idx)] += torch.randn_like(y[tuple(idx)])
    diff = (fn(y) - base).abs()
    return diff


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("net_cls, shape, per_step", [(VideoNet, (1, 3, 24, 112, 112), 1), (AudioNet, (1, 1, 240, 80), 10)])
def test_receptive_field(net_cls, shape, per_step, causal):
    torch.manual_seed(0)
    net = net_cls(Config(width=0.125, causal=causal)).eval()
    randomise_batchnorm(net)
    T, k = 24, 9
    with torch.no_grad():
        diff = _changed_steps(net, torch.randn(*shape), k, axis=2, per_step=per_step)
    # video output (B, D, T, h, w): time is axis 2; audio output (B, T, D): axis 1
    per_t = diff.amax(dim=(0, 1, 3, 4)) if net_cls is VideoNet else diff.amax(dim=(0, 2))
    changed = [t for t in range(T) if per_t[t] > 1e-6]
    # centred: five 3-tap convs see +-5 steps; causal: each sees 2 past steps, so 10 back
    assert changed == (list(range(k, k + 11)) if causal else list(range(k - 5, k + 6)))


def test_audio_output_shape():
    net = AudioNet(Config(width=0.25)).eval()
    with torch.no_grad():
        z = net(torch.zeros(2, 1, 70, 80))
    assert z.shape == (2, 7, 128)


def _grads(model, head):
    model.zero_grad()
    torch.manual_seed(0)
    out = model(torch.randn(2, 3, 4, 112, 112), torch.randn(2, 1, 40, 80))
    loss, _ = classification_loss({head: out[head]}, torch.tensor([0, 1]))
    loss.backward()
    has = lambda m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())  # noqa: E731
    return has(model.video), has(model.audio)


@pytest.mark.parametrize("head", ["individual-fc", "tied-fc"])
def test_each_head_sends_gradient_only_where_it_should(head):
    model = AVClassifier(preset("tiny", num_classes=3, head=head)).train()
    assert _grads(model, "vision") == (True, False)
    assert _grads(model, "audio") == (False, True)
    assert _grads(model, "av") == (True, True)


@pytest.mark.parametrize("head", ["individual-fc", "shared-fc", "av-only", "tied-fc"])
def test_head_variants_train_one_step(head):
    torch.manual_seed(0)
    model = AVClassifier(preset("tiny", num_classes=3, head=head)).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    video, mel, y = torch.randn(2, 3, 4, 112, 112), torch.randn(2, 1, 40, 80), torch.tensor([0, 2])
    logits = model(video, mel)
    assert set(logits) == ({"av"} if head == "av-only" else {"vision", "audio", "av"})
    loss, parts = classification_loss(logits, y)
    assert loss.item() == pytest.approx(sum(parts.values()), rel=1e-5)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_alpha_equals_explicit_channel_loop():
    torch.manual_seed(0)
    V, za = torch.randn(2, 16, 3, 7, 7), torch.randn(2, 3, 16)
    alpha = localization_maps(V, za)
    for b in range(2):
        for t in range(3):
            ref = sum(V[b, c, t] * za[b, t, c] for c in range(16))
            torch.testing.assert_close(alpha[b, t], ref)
    zv = V.mean(dim=(3, 4)).transpose(1, 2)
    torch.testing.assert_close(moment_scores(zv, za)[1, 2], (zv[1, 2] * za[1, 2]).sum())


def test_load_torchvision_layout_state_dict():
    src = VideoNet(Config(width=0.125))
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(400, 64), torch.zeros(400)
    dst = VideoNet(Config(width=0.125))
    assert load_torchvision_mc3(dst, sd) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(dst.state_dict()["layer3.0.conv1.0.weight"], sd["layer3.0.conv1.0.weight"])
    bad = dict(sd)
    bad["stem.0.weight"] = torch.zeros(1, 3, 3, 7, 7)
    with pytest.raises(ValueError, match="other shapes"):
        load_torchvision_mc3(dst, bad)


def test_gmac_per_frame_full_size():
    model = AVClassifier(Config()).eval()
    macs = macs_per_step(model, model.config, steps=4)
    assert 2.6e9 < macs["video"] < 2.8e9  # docs/design.md §1: about 2.7 GMAC per frame
    assert macs["audio"] < 0.1 * macs["video"]

"""The streaming step graph's PyTorch form equals the offline model, step for step."""

import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) not installed")

from soundloc.config import Config  # noqa: E402
from soundloc.model.classifier import AVClassifier, localization_maps, moment_scores  # noqa: E402
from soundloc.model.streaming import StreamingModel  # noqa: E402

from conftest import randomise_batchnorm  # noqa: E402


def _stream(sm, video, mel):
    B, _, T = video.shape[:3]
    states = sm.initial_state(B)
    alphas, scores, logits = [], [], []
    for n in range(T + sm.lookahead):
        real = n < T
        frame = video[:, :, n:n + 1] if real else torch.zeros_like(video[:, :, :1])
        m = mel[:, :, 10 * n:10 * n + 10] if real else torch.zeros_like(mel[:, :, :10])
        out = sm(frame, m, torch.full((B, 1), float(real)), *states)
        alpha, score, _, _, valid = out[:5]
        states = list(out[len(sm.output_names):])  # the label heads' logits come before the states
        assert bool(valid.all()) == (n >= sm.lookahead)
        if n >= sm.lookahead:
            alphas.append(alpha)
            scores.append(score)
            logits.append(torch.stack(out[5:len(sm.output_names)], 1))  # (B, heads, C)
    _stream.logits = torch.stack(logits, 1)  # (B, T, heads, C)
    return torch.stack(alphas, 1), torch.stack(scores, 1)


@pytest.mark.parametrize("causal", [False, True])
def test_stream_equals_offline(causal):
    torch.manual_seed(0)
    model = AVClassifier(Config(width=0.125, num_classes=4, causal=causal)).eval()
    randomise_batchnorm(model)
    T = 24
    video, mel = torch.randn(2, 3, T, 112, 112), torch.randn(2, 1, 10 * T, 80)
    with torch.no_grad():
        f = model.features(video, mel)
        ref_alpha, ref_score = localization_maps(f.V, f.za), moment_scores(f.zv, f.za)
        sm = StreamingModel(model)
        assert sm.lookahead == (0 if causal else 5)
        alpha, score = _stream(sm, video, mel)
    assert alpha.shape == ref_alpha.shape
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-4, rtol=0)
    torch.testing.assert_close(score, ref_score, atol=1e-4, rtol=1e-5)
    # the label heads per step, and over a window: the mean of the streamed logits is the head
    # on the window's mean features (Eq. 1), what the runtime reports as the window's classes
    assert sm.output_names[5:] == ["logits_vision", "logits_audio", "logits_av"]
    with torch.no_grad():
        per_step = torch.stack([torch.stack(model.step_logits(f.zv[:, t], f.za[:, t]), 1) for t in range(T)], 1)
        window = model.heads(f.zv[:, 4:20], f.za[:, 4:20])
    torch.testing.assert_close(_stream.logits, per_step, atol=1e-4, rtol=0)
    torch.testing.assert_close(_stream.logits[:, 4:20].mean(1), torch.stack([window[h] for h in model.label_heads], 1),
                               atol=1e-4, rtol=0)


def test_state_layout_is_named_and_shaped():
    sm = StreamingModel(AVClassifier(Config(width=0.125, num_classes=4)).eval())
    assert sm.state_names[0] == "state.valid" and sm.state_shapes[0] == (5,)
    assert "video.layer1.1.conv2" in sm.state_names and "audio.stem" in sm.state_names
    assert len(sm.state_names) == len(sm.state_shapes) == 1 + 2 * 5  # valid + 5 temporal convs per net
    assert sm.state_shapes[sm.state_names.index("video.stem")] == (3, 2, 112, 112)
    assert sm.state_shapes[sm.state_names.index("audio.stem")] == (1, 20, 80)

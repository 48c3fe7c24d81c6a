import numpy as np
import pytest

from soundloc.mel import StreamingLogMel, log_mel, mel_filters, pad_or_trim
from soundloc.config import MELS_PER_STEP, N_MELS


def test_real_clip_log_mel_shape_and_finite(real_audio):
    mel = log_mel(pad_or_trim(real_audio, 160_000))
    assert mel.shape == (1000, N_MELS)
    assert np.isfinite(mel).all()
    assert mel.std() > 0.5  # a violin, not silence


def test_torch_dft_conv_matches_numpy(real_audio):
    torch = pytest.importorskip("torch", reason="torch (the train extra) not installed")
    from soundloc.model.audio import LogMel

    ref = log_mel(real_audio)
    out = LogMel()(torch.from_numpy(real_audio)[None])[0].numpy()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4


def test_streaming_log_mel_equals_offline(real_audio):
    s = StreamingLogMel()
    steps = []
    for i in range(0, 50_000, 777):  # odd chunk sizes: not aligned with hops or steps
        s.push(real_audio[i:i + 777])
        while (m := s.pop_step()) is not None:
            steps.append(m)
    ref = log_mel(real_audio[:50_000])
    got = np.concatenate(steps)
    assert got.shape == (len(steps) * MELS_PER_STEP, N_MELS)
    np.testing.assert_allclose(got, ref[: len(got)], atol=1e-5)


def test_step_features_depend_only_on_their_own_audio():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(16_000).astype(np.float32)
    b = a.copy()
    b[1600 * 5:] = 0  # change everything from step 5 on
    ma, mb = log_mel(a), log_mel(b)
    np.testing.assert_array_equal(ma[:50], mb[:50])
    assert np.abs(ma[50:60] - mb[50:60]).max() > 1


def test_mel_filters_cover_spectrum():
    f = mel_filters()
    assert f.shape == (N_MELS, 201)
    assert (f.sum(axis=1) > 0).all()


def test_log_mel_rejects_stereo():
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 1600)))

"""Waveform -> log-mel: the one implementation used by training, evaluation, export checks and
the runtime (numpy only, so an edge box needs no torch).

Framing is chosen for streaming: mel frame ``i`` is the 400-sample (25 ms) Hann window that
*ends* at the end of its 10 ms hop, samples ``[160*i - 240, 160*i + 160)``, zero before the
signal start. So the 10 mel frames of model step ``t`` depend only on samples
``< 1600*(t+1)``: a step's audio features are final as soon as its own audio has arrived, and
the incremental mel of a live stream equals the mel of the whole recording, bit for bit up to
float rounding. (A centred STFT would need 12.5 ms of future audio per frame and reflect-pad
the clip's start, which a stream cannot reproduce.)
"""

from __future__ import annotations

import functools

import numpy as np

from .config import HOP_LENGTH, MELS_PER_STEP, N_FFT, N_MELS, SAMPLE_RATE, SAMPLES_PER_STEP

LOG_FLOOR = 1e-6  # added to the mel power before the log: silence maps to log(1e-6) = -13.8
PAD_BEFORE = N_FFT - HOP_LENGTH  # 240 samples of history each frame looks back over

# EZ-VSL's log spectrogram (log_spectrogram below): scipy.signal.spectrogram's settings.
SPEC_NPERSEG = 512  # EZ-VSL's scipy.signal.spectrogram: Tukey(0.25) window, PSD, constant detrend
SPEC_NOVERLAP = 274
SPEC_FLOOR = 1e-7  # log(spectrogram + floor) / scale
SPEC_SCALE = 12.0


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney-normalised triangular filters, (n_mels, n_fft // 2 + 1) float32, 0 Hz to Nyquist."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    lower = (fft_freqs[None, :] - hz_pts[:-2, None]) / (hz_pts[1:-1] - hz_pts[:-2])[:, None]
    upper = (hz_pts[2:, None] - fft_freqs[None, :]) / (hz_pts[2:] - hz_pts[1:-1])[:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    weights.setflags(write=False)
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=1)
def hann_window(n_fft: int = N_FFT) -> np.ndarray:
    """Periodic Hann window (as ``torch.hann_window`` and ``scipy.signal.get_window``)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def _frames_to_log_mel(frames: np.ndarray) -> np.ndarray:
    spec = np.fft.rfft(frames * hann_window(), axis=-1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    return np.log(power @ mel_filters().T + LOG_FLOOR).astype(np.float32)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Log-mel of a 16 kHz mono waveform: (N,) float -> (N // 160, 80) float32.

    Trailing samples that do not fill a whole hop are ignored; 10 s (160,000 samples) gives
    exactly 1,000 frames, 10 per video frame.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"log_mel expects a mono waveform (N,), got shape {audio.shape}")
    n_frames = len(audio) // HOP_LENGTH
    padded = np.concatenate([np.zeros(PAD_BEFORE, np.float32), audio[: n_frames * HOP_LENGTH]])
    if n_frames == 0:
        return np.zeros((0, N_MELS), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_frames]
    return _frames_to_log_mel(frames)


def pad_or_trim(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad or cut a waveform to exactly ``num_samples``."""
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) >= num_samples:
        return audio[:num_samples]
    return np.concatenate([audio, np.zeros(num_samples - len(audio), np.float32)])


class StreamingLogMel:
    """Incremental log-mel for a live stream: push samples, pop whole steps of 10 mel frames.

    Keeps 240 samples of history, so the concatenation of everything it returns equals
    ``log_mel`` of the whole recording.
    """

    def __init__(self) -> None:
        self._buf = np.zeros(PAD_BEFORE, np.float32)

    def push(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, samples])

    @property
    def steps_ready(self) -> int:
        return (len(self._buf) - PAD_BEFORE) // SAMPLES_PER_STEP

    def pop_step(self) -> np.ndarray | None:
        """The next step's (10, 80) log-mel, or None until 1,600 new samples are buffered."""
        if self.steps_ready < 1:
            return None
        chunk = self._buf[: PAD_BEFORE + SAMPLES_PER_STEP]
        frames = np.lib.stride_tricks.sliding_window_view(chunk, N_FFT)[::HOP_LENGTH][:MELS_PER_STEP]
        self._buf = self._buf[SAMPLES_PER_STEP:]
        return _frames_to_log_mel(frames)


def log_spectrogram(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, noverlap: int = SPEC_NOVERLAP) -> np.ndarray:
    """EZ-VSL's audio input: ``scipy.signal.spectrogram`` (nperseg 512, noverlap 274, its
    defaults otherwise: Tukey(0.25) window, PSD scaling) of the waveform clipped to [-1, 1],
    then ``log(S + 1e-7) / 12``: 3 s at 16 kHz -> (257, 200) float32. LVS uses the same on
    10 s (257, 671); SSL-Align ``noverlap`` 353 on 3 s (257, 299)."""
    from scipy import signal

    x = np.clip(np.asarray(audio, np.float64), -1.0, 1.0)
    _, _, spec = signal.spectrogram(x, sample_rate, nperseg=SPEC_NPERSEG, noverlap=noverlap)
    return (np.log(spec + SPEC_FLOOR) / SPEC_SCALE).astype(np.float32)


def spectrogram_shape(seconds: float, sample_rate: int = SAMPLE_RATE, noverlap: int = SPEC_NOVERLAP) -> tuple[int, int]:
    """(frequencies, frames) of ``log_spectrogram`` on ``seconds`` of audio."""
    n = int(round(seconds * sample_rate))
    return SPEC_NPERSEG // 2 + 1, (n - noverlap) // (SPEC_NPERSEG - noverlap)


def audio_window(audio: np.ndarray, start: int, length: int) -> np.ndarray:
    """``audio[start:start + length]``, zeros where that runs outside the signal (a stream's
    start and end)."""
    out = np.zeros(length, np.float32)
    lo, hi = max(start, 0), min(start + length, len(audio))
    if hi > lo:
        out[lo - start:hi - start] = audio[lo:hi]
    return out

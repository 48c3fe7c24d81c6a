"""Draw a step's localization onto its frame: heatmap overlay, box, label, gated indicator.

The map is upsampled with pixel-centre bilinear interpolation (like OpenCV's resize and
``align_corners=False``, the convention of the LVS protocol's maps) by two separable
numpy lerps, then coloured and blended in Pillow's C loops (palette lookup, paste
through alpha); box, label and indicator touch only their own pixels. Measured on the
2-core dev machine while other jobs loaded it (load average ~7): 1280x720 with map, box
and label ~11 ms CPU per frame (its parts timed on a quiet machine add up to ~6 ms),
1920x1080 ~32 ms, a gated frame ~0.4 ms: inside the 100 ms of a 10 fps step."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..localize import lerp_indices
from .results import StepResult

BOX_COLOR = (0, 255, 0)  # pure green: absent from the turbo colormap, so never confused with it
TEXT_COLOR = (255, 255, 255)
TEXT_BACKGROUND = (0, 0, 0)
INDICATOR_COLOR = (160, 160, 160)
INDICATOR_TEXT = "gated"

# Google's polynomial fit of the turbo colormap (Mikhailov 2019): coefficients of
# 1, x, ..., x^5 for red, green and blue.
_TURBO_COEFFS = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def turbo_lut() -> np.ndarray:
    """The turbo colormap as a (256, 3) uint8 table: index 0 is dark blue, 255 dark red.

    Turbo rather than inferno because its hot end (red) stands out against most scenes
    when blended, and it is the jet-like look the localization literature uses.
    """
    x = np.linspace(0.0, 1.0, 256)
    powers = np.stack([x**k for k in range(6)])  # (6, 256)
    rgb = np.clip(_TURBO_COEFFS @ powers, 0.0, 1.0).T  # (256, 3)
    return np.round(rgb * 255).astype(np.uint8)


TURBO = turbo_lut()


def overlay(
    frame: np.ndarray,
    heatmap: np.ndarray | None,
    box: tuple[float, float, float, float] | None,
    *,
    alpha: float = 0.45,
    label: str | None = None,
    box_label: str | None = None,
) -> np.ndarray:
    """Return a new (H, W, 3) uint8 RGB frame with the localization drawn on it.

    ``frame``: (H, W, 3) uint8 RGB at any resolution. ``heatmap``: (h, w) map normalised
    to [0, 1] (values outside are clipped, NaN counts as 0), or None when the step is
    gated: the frame then passes through unchanged except for a small indicator in the
    top-right corner. The map colour is blended with weight ``alpha * value`` so cold
    regions keep the scene visible. ``box``: normalised (xmin, ymin, xmax, ymax);
    ``box_label``: the class drawn beside it (above its top-left corner, inside when no room).
    """
    _check_frame(frame)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = frame.shape[:2]
    if heatmap is None:
        out = frame.copy()
    else:
        out = _blend_heatmap(frame, heatmap, alpha)
    if box is not None:
        _draw_box(out, box)
        if box_label:
            _draw_box_label(out, box, box_label)
    if label:
        _draw_label(out, label)
    if heatmap is None:
        _draw_indicator(out)
    return out


Labeler = Callable[[StepResult], "str | None"]


class _LastRender:
    """One-entry memo so the mp4 sink and the preview draw each step once between them.

    Keyed on the identity of the step's frame, map and box objects (held here, so their
    ids cannot be reused while cached) plus the drawing options.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple = ()
        self._image: np.ndarray | None = None

    def get(self, result: StepResult, alpha: float, label: str | None) -> np.ndarray:
        key = (result.frame, result.heatmap, result.box, alpha, label, result.label)
        with self._lock:
            if self._image is not None and _same(key, self._key):
                return self._image
        image = overlay(result.frame, result.heatmap, result.box, alpha=alpha, label=label, box_label=result.label)
        image.setflags(write=False)  # shared between sinks: nobody may draw on it
        with self._lock:
            self._key, self._image = key, image
        return image


def _same(a: tuple, b: tuple) -> bool:
    """Arrays compare by identity (cheap, and a new step brings new arrays), the rest by value."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x is y:
            continue
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray) or x != y:
            return False
    return True


_LAST = _LastRender()


def render_step(result: StepResult, *, alpha: float = 0.45, labeler: Labeler | None = None) -> np.ndarray:
    """``overlay`` of one step, read-only (H, W, 3) uint8; drawn once however many sinks ask."""
    label = labeler(result) if labeler is not None else None
    return _LAST.get(result, alpha, label)


def render_on(image: np.ndarray, result: StepResult, *, alpha: float = 0.45, labeler: Labeler | None = None,
              time_s: float | None = None) -> np.ndarray:
    """``result``'s map, box and label drawn on ``image`` (any frame of its 0.1 s, at any size),
    with the outline of the map's hot region (visible whatever the object's colour) and a
    status bar: media time, the step's score and whether the map is shown or gated."""
    out = overlay(image, result.heatmap, result.box, alpha=alpha,
                  label=labeler(result) if labeler is not None else None, box_label=result.label)
    if result.heatmap is not None:
        _draw_outline(out, result.heatmap)
    t = result.pts if time_s is None else time_s
    gate = "gated (map hidden)" if result.gated else "audible"
    _draw_status(out, f"{t:5.1f} s   score {result.score:.3g}   {gate}")
    return out


def _draw_outline(out: np.ndarray, heatmap: np.ndarray, level: int = 128) -> None:
    """A white line, 2 px, with a black edge around where the upsampled map is above half its
    range: the turbo tint alone can vanish on an object of its own colour."""
    height, width = out.shape[:2]
    hot = heat_levels(heatmap, height, width) >= level
    edge = np.zeros_like(hot)
    edge[1:, :] |= hot[1:, :] != hot[:-1, :]
    edge[:, 1:] |= hot[:, 1:] != hot[:, :-1]
    thick = edge.copy()
    thick[1:, :] |= edge[:-1, :]
    thick[:, 1:] |= edge[:, :-1]
    out[thick] = (0, 0, 0)
    out[edge] = TEXT_COLOR


def _draw_status(out: np.ndarray, text: str) -> None:
    """White text on a black band across the bottom of the frame."""
    height, width = out.shape[:2]
    size = _text_size(height)
    font = _font(size)
    pad = max(2, size // 5)
    _, _, _, bottom = font.getbbox(text)
    band = min(height, bottom + 2 * pad + 1)
    region = (0, height - band, width, height)

    def paint(draw: ImageDraw.ImageDraw, x0: int, y0: int) -> None:
        draw.rectangle((0, 0, width, band), fill=TEXT_BACKGROUND)
        draw.text((pad, pad), text, fill=TEXT_COLOR, font=font)

    _draw_patch(out, region, paint)


def heat_levels(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [0, 1] map as (height, width) uint8 levels 0-255 for drawing: ``localize.upsample``'s
    pixel-centre lerps (``lerp_indices``), on levels and in place: the small (h, width)
    horizontal pass, then one full-size vertical lerp. No BLAS call, so
    no thread pool wakes up next to the model's (BLAS matmuls here took 1-15 ms on a
    busy 2-core machine, this takes ~0.6 ms at 720p).
    """
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {values.shape}")
    levels = np.clip(values, 0.0, 1.0) * np.float32(255.0)
    col_lo, col_hi, col_frac = lerp_indices(width, values.shape[1])
    rows = levels[:, col_lo] + (levels[:, col_hi] - levels[:, col_lo]) * col_frac  # (h, width)
    row_lo, row_hi, row_frac = lerp_indices(height, values.shape[0])
    out = rows[row_hi]
    top = rows[row_lo]
    out -= top
    out *= row_frac[:, None]
    out += top
    out += np.float32(0.5)
    return out.astype(np.uint8)



def indicator_region(width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel rectangle (x0, y0, x1, y1), end-exclusive, that the gated indicator may touch."""
    return _indicator_layout(width, height)[0]


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise ValueError("frame must be a uint8 numpy array")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"frame must be (H, W, 3) RGB, got shape {frame.shape}")


def _blend_heatmap(frame: np.ndarray, heatmap: np.ndarray, alpha: float) -> np.ndarray:
    """Colour the upsampled map through an RGBA palette whose alpha is ``alpha * level``
    and paste it through its own alpha: one lookup and one blend, both in C."""
    height, width = frame.shape[:2]
    image = Image.fromarray(frame, "RGB")
    levels = Image.fromarray(heat_levels(heatmap, height, width), "L")
    levels.putpalette(_rgba_palette(round(alpha * 1000)), "RGBA")
    colored = levels.convert("RGBA")
    image.paste(colored, (0, 0), colored)
    return np.array(image)


@lru_cache(maxsize=8)
def _rgba_palette(alpha_milli: int) -> bytes:
    weight = np.round(np.arange(256) * alpha_milli / 1000).astype(np.uint8)[:, None]
    return np.concatenate([TURBO, weight], axis=1).tobytes()


def _thickness(width: int, height: int) -> int:
    """Line thickness in pixels: 2 px up to 360p, 4 px at 720p, 6 px at 1080p."""
    return max(2, round(min(width, height) / 180))


def _text_size(height: int) -> int:
    return max(10, round(height / 30))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font at ``size`` px (a fixed bitmap font without FreeType)."""
    return ImageFont.load_default(size=size)


def _draw_box(out: np.ndarray, box: tuple[float, ...]) -> None:
    """Outline the normalised box in place by slicing: edges lie inside the box."""
    height, width = out.shape[:2]
    x0, y0, x1, y1 = (float(np.clip(v, 0.0, 1.0)) for v in box)
    left, right = sorted((round(x0 * width), round(x1 * width)))
    top, bottom = sorted((round(y0 * height), round(y1 * height)))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    t = _thickness(width, height)
    for rows, cols in (
        (slice(top, min(top + t, bottom)), slice(left, right)),
        (slice(max(bottom - t, top), bottom), slice(left, right)),
        (slice(top, bottom), slice(left, min(left + t, right))),
        (slice(top, bottom), slice(max(right - t, left), right)),
    ):
        out[rows, cols] = BOX_COLOR


def _draw_patch(out: np.ndarray, region: tuple[int, int, int, int], paint) -> None:
    """Run Pillow drawing ``paint(draw, x0, y0)`` on the ``region`` crop only and copy it
    back: text needs Pillow, but converting the whole frame would cost ~1 ms at 720p."""
    x0, y0, x1, y1 = region
    if x1 <= x0 or y1 <= y0:
        return
    patch = Image.fromarray(np.ascontiguousarray(out[y0:y1, x0:x1]), "RGB")
    paint(ImageDraw.Draw(patch), x0, y0)
    out[y0:y1, x0:x1] = np.asarray(patch)


def _draw_label(out: np.ndarray, label: str) -> None:
    """White text on a black band in the top-left corner, readable over any map."""
    height, width = out.shape[:2]
    size = _text_size(height)
    font = _font(size)
    pad = max(2, size // 5)
    _, _, right, bottom = font.getbbox(label)
    region = (0, 0, min(width, right + 2 * pad + 1), min(height, bottom + 2 * pad + 1))

    def paint(draw: ImageDraw.ImageDraw, x0: int, y0: int) -> None:
        draw.rectangle((0, 0, region[2], region[3]), fill=TEXT_BACKGROUND)
        draw.text((pad, pad), label, fill=TEXT_COLOR, font=font)

    _draw_patch(out, region, paint)


def _draw_box_label(out: np.ndarray, box: tuple[float, ...], text: str) -> None:
    """The box's class in white on the box's green, just above its top-left corner (or just
    inside it when the box touches the top of the frame)."""
    height, width = out.shape[:2]
    size = _text_size(height)
    font = _font(size)
    pad = max(1, size // 6)
    _, _, right, bottom = font.getbbox(text)
    w, h = min(width, right + 2 * pad + 1), min(height, bottom + 2 * pad + 1)
    x0 = min(max(0, int(float(np.clip(box[0], 0, 1)) * width)), max(0, width - w))
    top = int(float(np.clip(box[1], 0, 1)) * height)
    y0 = top - h if top - h >= 0 else min(top, max(0, height - h))
    region = (x0, y0, x0 + w, y0 + h)

    def paint(draw: ImageDraw.ImageDraw, ox: int, oy: int) -> None:
        draw.rectangle((0, 0, w, h), fill=BOX_COLOR)
        draw.text((pad, pad), text, fill=TEXT_BACKGROUND, font=font)

    _draw_patch(out, region, paint)


def _indicator_layout(width: int, height: int) -> tuple[tuple[int, int, int, int], tuple, tuple]:
    """(region, dot ellipse box, text origin) of the indicator, anchored to the top-right."""
    size = _text_size(height)
    margin = _thickness(width, height) * 2
    _, text_top, text_right, text_bottom = _font(size).getbbox(INDICATOR_TEXT)
    dot = max(4, size // 2)
    x0 = width - margin - (dot + dot // 2 + text_right)
    y0 = margin
    cy = y0 + (text_top + text_bottom) // 2
    dot_box = (x0, cy - dot // 2, x0 + dot, cy - dot // 2 + dot)
    origin = (x0 + dot + dot // 2, y0)
    bottom = max(y0 + text_bottom, dot_box[3]) + 2
    region = (max(0, x0 - 1), max(0, min(y0, dot_box[1]) - 1), width, min(height, bottom))
    return region, dot_box, origin


def _draw_indicator(out: np.ndarray) -> None:
    """A grey hollow dot and the word "gated" on a black patch: the map is hidden on
    purpose (silence or off-screen sound), not missing."""
    height, width = out.shape[:2]
    region, dot_box, origin = _indicator_layout(width, height)
    size = _text_size(height)

    def paint(draw: ImageDraw.ImageDraw, x0: int, y0: int) -> None:
        draw.rectangle((0, 0, region[2] - x0, region[3] - y0), fill=TEXT_BACKGROUND)  # readable anywhere
        box = (dot_box[0] - x0, dot_box[1] - y0, dot_box[2] - x0, dot_box[3] - y0)
        draw.ellipse(box, outline=INDICATOR_COLOR, width=max(1, size // 10))
        draw.text((origin[0] - x0, origin[1] - y0), INDICATOR_TEXT, fill=INDICATOR_COLOR, font=_font(size))

    _draw_patch(out, region, paint)

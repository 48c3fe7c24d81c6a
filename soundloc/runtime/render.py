"""Draw a step's localization onto its frame: heatmap overlay, box, label, gated indicator.

Everything runs in Pillow's C loops (resize, palette lookup, composite) so one 1280x720
frame costs a few milliseconds on one CPU core, well inside the 100 ms of a 10 fps step.
The map is upsampled with pixel-centre bilinear interpolation (like OpenCV's resize and
``align_corners=False``), the convention the LVS protocol uses for its maps.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
_TURBO_PALETTE = TURBO.ravel().tolist()


def overlay(
    frame: np.ndarray,
    heatmap: np.ndarray | None,
    box: tuple[float, float, float, float] | None,
    *,
    alpha: float = 0.45,
    label: str | None = None,
) -> np.ndarray:
    """Return a new (H, W, 3) uint8 RGB frame with the localization drawn on it.

    ``frame``: (H, W, 3) uint8 RGB at any resolution. ``heatmap``: (h, w) map normalised
    to [0, 1] (values outside are clipped, NaN counts as 0), or None when the step is
    gated: the frame then passes through unchanged except for a small indicator in the
    top-right corner. The map colour is blended with weight ``alpha * value`` so cold
    regions keep the scene visible. ``box``: normalised (xmin, ymin, xmax, ymax).
    """
    _check_frame(frame)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = frame.shape[:2]
    image = Image.fromarray(frame, "RGB")
    if heatmap is not None:
        image = _blend_heatmap(image, heatmap, alpha)
    draw = ImageDraw.Draw(image)
    if box is not None:
        _draw_box(draw, box, width, height)
    if label:
        _draw_label(draw, label, height)
    if heatmap is None:
        _draw_indicator(draw, width, height)
    return np.array(image)


def upsample(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear, pixel-centre upsampling of a [0, 1] map to a (height, width) uint8 map.

    The map is quantised to 8 bits before resizing (what the 256-entry colormap needs
    anyway); edges are clamped, as in OpenCV's resize.
    """
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {values.shape}")
    levels = np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    small = Image.fromarray(levels, "L")
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))


def indicator_region(width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel rectangle (x0, y0, x1, y1), end-exclusive, that the gated indicator may touch."""
    return _indicator_layout(width, height)[0]


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise ValueError("frame must be a uint8 numpy array")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"frame must be (H, W, 3) RGB, got shape {frame.shape}")


def _blend_heatmap(image: Image.Image, heatmap: np.ndarray, alpha: float) -> Image.Image:
    """Colour the upsampled map through the palette and composite it with per-pixel weight."""
    levels = Image.fromarray(upsample(heatmap, image.width, image.height), "L")
    colored = levels.copy()
    colored.putpalette(_TURBO_PALETTE)
    weight_lut = [round(v * alpha) for v in range(256)]
    return Image.composite(colored.convert("RGB"), image, levels.point(weight_lut))


def _thickness(width: int, height: int) -> int:
    """Line thickness in pixels: 2 px at 240p, 4 px at 720p, 6 px at 1080p."""
    return max(1, round(min(width, height) / 180))


def _text_size(height: int) -> int:
    return max(10, round(height / 30))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font at ``size`` px (a fixed bitmap font without FreeType)."""
    return ImageFont.load_default(size=size)


def _draw_box(draw: ImageDraw.ImageDraw, box: tuple[float, ...], width: int, height: int) -> None:
    x0, y0, x1, y1 = (float(np.clip(v, 0.0, 1.0)) for v in box)
    left, right = sorted((round(x0 * width), round(x1 * width)))
    top, bottom = sorted((round(y0 * height), round(y1 * height)))
    right, bottom = max(left, right - 1), max(top, bottom - 1)  # box edges are end-exclusive
    draw.rectangle((left, top, right, bottom), outline=BOX_COLOR, width=_thickness(width, height))


def _draw_label(draw: ImageDraw.ImageDraw, label: str, height: int) -> None:
    """White text on a black band in the top-left corner, readable over any map."""
    font = _font(_text_size(height))
    pad = max(2, _text_size(height) // 5)
    left, top, right, bottom = draw.textbbox((pad, pad), label, font=font)
    draw.rectangle((0, 0, right + pad, bottom + pad), fill=TEXT_BACKGROUND)
    draw.text((pad, pad), label, fill=TEXT_COLOR, font=font)


def _indicator_layout(width: int, height: int) -> tuple[tuple[int, int, int, int], tuple, tuple]:
    """(region, dot ellipse box, text origin) of the indicator, anchored to the top-right."""
    size = _text_size(height)
    margin = _thickness(width, height) * 2
    text_left, text_top, text_right, text_bottom = _font(size).getbbox(INDICATOR_TEXT)
    dot = max(4, size // 2)
    total_w = dot + dot // 2 + text_right
    x0 = width - margin - total_w
    y0 = margin
    cy = y0 + (text_top + text_bottom) // 2
    dot_box = (x0, cy - dot // 2, x0 + dot, cy - dot // 2 + dot)
    origin = (x0 + dot + dot // 2, y0)
    bottom = max(y0 + text_bottom, dot_box[3]) + 1
    region = (max(0, x0 - 1), max(0, min(y0, dot_box[1]) - 1), width, min(height, bottom + 1))
    return region, dot_box, origin


def _draw_indicator(draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """A grey hollow dot and the word "gated": the map is hidden on purpose, not missing."""
    _, dot_box, origin = _indicator_layout(width, height)
    size = _text_size(height)
    draw.ellipse(dot_box, outline=INDICATOR_COLOR, width=max(1, size // 10))
    draw.text(origin, INDICATOR_TEXT, fill=INDICATOR_COLOR, font=_font(size))

"""The scanner screen around the sector in the synthetic videos: canvas layout, burned-in fake
patient text, depth markers and UI bar (what ingestion must blank)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sonossl.data.synthetic.scene import DEPTH_CM


# --------------------------------------------------------------------------------------------
# The scanner screen (videos only)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScreenLayout:
    """Canvas ``(height, width)`` and the range of sector-box origins; all in pixels."""

    height: int
    width: int
    panel: int  # text panel width at the left
    top: int
    slack_x: int
    slack_y: int
    bar: int  # UI bar height at the bottom


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_w(s: str) -> int:
    box = _font().getbbox(s)
    return int(box[2] - box[0])


def screen_layout(size: int) -> ScreenLayout:
    """Canvas layout for sector boxes of ``size`` px (fixed per dataset; origin varies per clip)."""
    panel = _text_w("SYNTH^PATIENT^0000") + 10
    top, bar, right = 14, 22, 34
    slack_x, slack_y = max(size // 8, 4), max(size // 16, 2)
    w = panel + slack_x + size + right
    h = top + slack_y + size + 6 + bar
    return ScreenLayout(h + h % 2, w + w % 2, panel, top, slack_x, slack_y, bar)


def burned_in_overlay(lay: ScreenLayout, box: tuple[int, int, int, int], lines: list[str], fps: float
             ) -> np.ndarray:
    """The static screen (uint8 (H, W)): UI bar, burned-in text and depth markers, none in ``box``."""
    img = Image.new("L", (lay.width, lay.height), 0)
    draw = ImageDraw.Draw(img)
    font = _font()
    draw.text((4, 2), "SONOSSL SYNTH", fill=235, font=font)
    for k, s in enumerate(lines):
        draw.text((4, lay.top + 4 + 13 * k), s, fill=200, font=font)
    x0, y0, x1, y1 = box
    for k in range(5):  # depth markers, right of the sector box
        yy = y0 + round(k * (y1 - y0 - 1) / 4)
        draw.line([(x1 + 2, yy), (x1 + 6, yy)], fill=220)
        if k % 2 == 0:
            draw.text((x1 + 9, max(yy - 5, 0)), f"{k * DEPTH_CM / 4:g}", fill=220, font=font)
    draw.rectangle([0, lay.height - lay.bar, lay.width - 1, lay.height - 1], fill=90)
    draw.text((4, lay.height - lay.bar + 5), f"B  FR {fps:.0f}Hz  DR 60", fill=240, font=font)
    arr = np.asarray(img, dtype=np.uint8).copy()
    arr[y0:y1, x0:x1] = 0  # never any text inside the sector box
    return arr


def compose_screen(fan: np.ndarray, screen: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Paste sector frames ``fan`` (T, S, S) into the screen ``screen`` (H, W) at ``box``: (T, H, W)."""
    x0, y0, x1, y1 = box
    out = np.broadcast_to(screen, (fan.shape[0], *screen.shape)).copy()
    out[:, y0:y1, x0:x1] = fan
    return out



"""Pictures a person can look at: images and progress grids as PNG files (Pillow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def to_pil(image: torch.Tensor, *, scale: int = 1):
    """``(C, H, W)`` in [0, 1] to a PIL image, upscaled ``scale`` times (nearest neighbour)."""
    from PIL import Image

    x = image.detach().clamp(0, 1).mul(255).round().byte()
    array = x.detach().cpu().permute(1, 2, 0).numpy()
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_image(image: torch.Tensor, path: str | Path, *, scale: int = 1) -> Path:
    """Write ``(C, H, W)`` in [0, 1] as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image, scale=scale).save(path)
    return path


def save_grid(rows: Sequence[Sequence[torch.Tensor]], path: str | Path, *, scale: int = 3,
              row_titles: Sequence[str] = (), column_titles: Sequence[str] = (), pad: int = 2) -> Path:
    """A grid of images ``(C, H, W)`` (rows of equal-size images), with optional captions, as a PNG."""
    from PIL import Image, ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tiles = [[to_pil(im, scale=scale).convert("RGB") for im in row] for row in rows]
    w = max(t.width for row in tiles for t in row)
    h = max(t.height for row in tiles for t in row)
    left = 8 + 7 * max((len(t) for t in row_titles), default=0) if row_titles else 0
    top = 14 if column_titles else 0
    ncols = max(len(row) for row in tiles)
    canvas = Image.new("RGB", (left + ncols * (w + pad) + pad, top + len(tiles) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(column_titles):
        draw.text((left + pad + j * (w + pad), 1), str(title), fill="black")
    for i, row in enumerate(tiles):
        y = top + pad + i * (h + pad)
        if i < len(row_titles):
            draw.text((2, y + h // 2 - 5), str(row_titles[i]), fill="black")
        for j, tile in enumerate(row):
            canvas.paste(tile, (left + pad + j * (w + pad), y))
    canvas.save(path)
    return path


def save_curves(curves: dict[str, Sequence[tuple[float, float]]], path: str | Path, *, xlabel: str = "",
                ylabel: str = "", log_y: bool = False, size: tuple[int, int] = (640, 400)) -> Path:
    """Line plot of named ``(x, y)`` series as a PNG (Pillow only: axes, ticks, legend)."""
    from PIL import Image, ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    m_left, m_right, m_top, m_bottom = 70, 150, 20, 45
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    pts = [(x, y) for series in curves.values() for x, y in series if np.isfinite(y) and (y > 0 or not log_y)]
    if not pts:
        draw.text((10, 10), "no finite points", fill="black")
        img.save(path)
        return path
    f = (lambda v: float(np.log10(v))) if log_y else float
    xs, ys = [p[0] for p in pts], [f(p[1]) for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def at(x: float, y: float) -> tuple[float, float]:
        return (m_left + (x - x0) / (x1 - x0) * (width - m_left - m_right),
                height - m_bottom - (f(y) - y0) / (y1 - y0) * (height - m_top - m_bottom))

    draw.rectangle([m_left, m_top, width - m_right, height - m_bottom], outline="black")
    for k in range(5):
        xv, yv = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        px = m_left + k / 4 * (width - m_left - m_right)
        py = height - m_bottom - k / 4 * (height - m_top - m_bottom)
        draw.text((px - 12, height - m_bottom + 4), f"{xv:.3g}", fill="black")
        draw.text((4, py - 6), f"1e{yv:.2g}" if log_y else f"{yv:.3g}", fill="black")
    draw.text(((width - m_right + m_left) // 2 - 20, height - 18), xlabel, fill="black")
    draw.text((4, 2), ylabel, fill="black")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf"]
    for k, (name, series) in enumerate(curves.items()):
        color = colors[k % len(colors)]
        line = [at(x, y) for x, y in series if np.isfinite(y) and (y > 0 or not log_y)]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        elif line:
            draw.ellipse([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2], fill=color)
        y_key = m_top + 8 + 14 * k
        draw.line([width - m_right + 8, y_key, width - m_right + 28, y_key], fill=color, width=2)
        draw.text((width - m_right + 32, m_top + 2 + 14 * k), str(name)[:18], fill="black")
    img.save(path)
    return path

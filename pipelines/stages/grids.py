"""The sampling grid as pictures: one cell's class x sample grid, labelled for the MLflow UI, and every cell's grid
side by side for the pipeline run."""

import io

import numpy as np
from PIL import Image, ImageDraw

from components.config.grid import Cell
from components.images import class_grid


def labeled_grid(images: np.ndarray, labels: np.ndarray, caption: str, names=None, width: int = 512) -> bytes:
    """The class x sample grid as PNG bytes, upscaled (nearest) to about `width` px so that the MLflow UI does not show
    a 16 px-per-image thumbnail, with each row's class name (`names[label]`, else "class <label>") at its left and
    `caption` (the grid cell) on top."""

    grid = class_grid(images, labels)  # uint8 [H, W, C], one row of images per class, classes ascending
    classes = sorted(set(labels.tolist()))[:10]
    factor = max(1, width // grid.shape[1])
    big = grid.repeat(factor, axis=0).repeat(factor, axis=1)
    picture = Image.fromarray(big[..., 0] if big.shape[-1] == 1 else big).convert("RGB")
    margin, top = 64, 20
    canvas = Image.new("RGB", (picture.width + margin, picture.height + top), "white")
    canvas.paste(picture, (margin, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), caption, fill="black")
    row = picture.height / max(1, len(classes))
    for i, label in enumerate(classes):
        name = names[label] if names is not None and label < len(names) else f"class {label}"
        draw.text((4, top + int((i + 0.5) * row) - 6), name, fill="black")
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def cells_sheet(grids: dict, cells: list[Cell]) -> bytes:
    """All cells' grid PNGs (cell key -> bytes) side by side as one PNG: a row per sampler, method and interval, a
    column per guidance scale ascending. Scale 0 is one cell for every method (nothing is guided there): each row
    shows it in its first column."""

    scales = sorted({c.scale for c in cells})
    rows = list(dict.fromkeys((c.sampler, c.method, c.interval) for c in cells if c.scale != 0)) or \
        [(c.sampler, c.method, c.interval) for c in cells]
    tiles = {key: Image.open(io.BytesIO(png)).convert("RGB") for key, png in grids.items()}
    width = max(t.width for t in tiles.values())
    height = max(t.height for t in tiles.values())
    sheet = Image.new("RGB", (width * len(scales), height * len(rows)), "white")
    for i, (sampler, method, interval) in enumerate(rows):
        for j, scale in enumerate(scales):
            unguided = scale == 0
            cell = Cell(sampler, scale, None if unguided else interval, "classifier" if unguided else method)
            if cell.key in tiles:
                sheet.paste(tiles[cell.key], (j * width, i * height))
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()

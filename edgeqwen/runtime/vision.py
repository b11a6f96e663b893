"""Qwen2.5-VL's image path without torch: preprocessing, the vision encoder's grid inputs, and 3-D (M-RoPE) positions.

numpy and Pillow only; copied into vision artifacts next to runner.py. Every function mirrors transformers 4.57's
`Qwen2VLImageProcessor` (slow path) and `Qwen2_5_VLModel` (`rot_pos_emb`, `get_window_index`, `get_rope_index`), which
the tests check it against:

- `ImageProcessor.preprocess(image)`: RGB, resize to a multiple of patch × merge within [min_pixels, max_pixels]
  (bicubic), scale to [0, 1], normalize with the model's mean/std, cut into temporal×patch×patch patches in the
  order the encoder's patch merger expects → `pixel_values` [N, C·T·P·P] and `grid_thw` (1, H/P, W/P).
- `encoder_inputs(grids)`: what the exported encoder takes besides the pixels: rotary cos/sin per patch in window
  order, the window permutation and its inverse, and per-patch segment ids for the full-attention and windowed
  blocks (each block attends within its segment).
- `rope_index(ids, grids)`: the decoder's [3, S] (temporal, height, width) positions for a prompt whose image
  placeholders are expanded, and the next text position.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # a data URI or file larger than this is refused before decoding


class ImageError(ValueError):
    """An image that cannot be read or used: the message says which and why."""


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ImageError(f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 is over 200:1; crop it")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _pil():
    try:
        import PIL.Image

        return PIL.Image
    except ImportError:
        raise ImageError("reading images needs Pillow, which this environment lacks: pip install pillow "
                         "(or pip install 'edgeqwen[vision]')") from None


def load_image(source, allow_files: bool = True):
    """A PIL image from a data URI, raw bytes, a PIL image or (when allowed) a local file path."""
    if hasattr(source, "convert"):
        return source
    Image = _pil()  # noqa: N806 - the module, as PIL names it
    UnidentifiedImageError = Image.UnidentifiedImageError  # noqa: N806

    if isinstance(source, str) and source.startswith("data:"):
        head, _, payload = source.partition(",")
        if ";base64" not in head or not head[5:].startswith("image/"):
            raise ImageError("image data URI must be data:image/<type>;base64,<data>")
        if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise ImageError(f"image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("image data URI is not valid base64") from None
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        text = str(source)
        if text.startswith(("http://", "https://")):
            raise ImageError("image URLs are not fetched (the server is offline-first); send a data: URI")
        if not allow_files:
            raise ImageError("local image paths are refused by this server (start it with --allow-local-images); "
                             "send a data: URI")
        path = Path(text[7:] if text.startswith("file://") else text).expanduser()
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise ImageError(f"image file {path} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
        data = path.read_bytes()
    else:
        raise ImageError(f"cannot read an image from {type(source).__name__}")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    return img


@dataclass(frozen=True)
class VisionConfig:
    """The encoder's geometry and the preprocessor's settings (the artifact's vision_config.json)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    window_size: int = 112
    head_dim: int = 80
    fullatt_blocks: tuple[int, ...] = ()
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    image_token_id: int = 151655
    vision_start_token_id: int = 151652
    tokens_per_second: float = 2.0

    @classmethod
    def load(cls, path: Path) -> "VisionConfig":
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        for key in ("fullatt_blocks", "image_mean", "image_std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


class ImageProcessor:
    def __init__(self, cfg: VisionConfig):
        self.cfg = cfg

    def preprocess(self, image) -> tuple[np.ndarray, np.ndarray]:
        """One image → (pixel_values [N, C·T·P·P] float32, grid_thw [3] int64)."""
        c = self.cfg
        Image = _pil()  # noqa: N806
        img = load_image(image).convert("RGB")
        w, h = img.size
        rh, rw = smart_resize(h, w, c.patch_size * c.merge_size, c.min_pixels, c.max_pixels)
        if (rh, rw) != (h, w):
            img = img.resize((rw, rh), resample=Image.Resampling.BICUBIC)
        x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)  # uint8 → [0, 1], like rescale_factor 1/255
        x = (x - np.asarray(c.image_mean, np.float32)) / np.asarray(c.image_std, np.float32)
        x = x.transpose(2, 0, 1)[None]  # [1, C, H, W]
        x = np.repeat(x, c.temporal_patch_size, axis=0)  # one image = a clip of T identical frames
        gh, gw, m, p, t = rh // c.patch_size, rw // c.patch_size, c.merge_size, c.patch_size, c.temporal_patch_size
        x = x.reshape(1, t, 3, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return np.ascontiguousarray(x.reshape(gh * gw, 3 * t * p * p), dtype=np.float32), np.array([1, gh, gw], np.int64)


def _window_index(grids: np.ndarray, c: VisionConfig) -> tuple[np.ndarray, list[int]]:
    window_index, cu = [], [0]
    base = 0
    win = c.window_size // c.merge_size // c.patch_size
    unit = c.merge_size * c.merge_size
    for gt, gh, gw in grids:
        lh, lw = gh // c.merge_size, gw // c.merge_size
        index = np.arange(gt * lh * lw).reshape(gt, lh, lw)
        pad_h, pad_w = win - lh % win, win - lw % win
        nh, nw = (lh + pad_h) // win, (lw + pad_w) // win
        padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
        padded = padded.reshape(gt, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(gt, nh * nw, win, win)
        seqlens = (padded != -100).sum(axis=(2, 3)).reshape(-1)
        flat = padded.reshape(-1)
        window_index.append(flat[flat != -100] + base)
        cu.extend((np.cumsum(seqlens) * unit + cu[-1]).tolist())
        base += int(gt * lh * lw)
    return np.concatenate(window_index), cu


def _segments(bounds, n: int) -> np.ndarray:
    """Segment id per position for cumulative bounds [0, b1, b2, …] (repeated bounds collapse, like unique_consecutive)."""
    seg = np.zeros(n, np.int64)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        seg[a:b] = i
    return seg


def encoder_inputs(grids, c: VisionConfig) -> dict[str, np.ndarray]:
    """The exported encoder's inputs besides pixel_values, for images of the given (t, h, w) patch grids."""
    grids = np.asarray(grids, dtype=np.int64).reshape(-1, 3)
    m = c.merge_size
    pos = []
    for gt, gh, gw in grids:
        hp = np.broadcast_to(np.arange(gh)[:, None], (gh, gw)).reshape(gh // m, m, gw // m, m).transpose(0, 2, 1, 3)
        wp = np.broadcast_to(np.arange(gw)[None], (gh, gw)).reshape(gh // m, m, gw // m, m).transpose(0, 2, 1, 3)
        pos.append(np.tile(np.stack([hp.reshape(-1), wp.reshape(-1)], axis=-1), (gt, 1)))
    pos = np.concatenate(pos)
    dim = c.head_dim // 2
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    freqs = np.outer(np.arange(int(grids[:, 1:].max()), dtype=np.float32), inv_freq)
    rot = freqs[pos].reshape(len(pos), -1)  # [N, head_dim / 2]
    n = len(pos)
    unit = m * m
    windex, cu_window = _window_index(grids, c)
    rot = rot.reshape(n // unit, unit, -1)[windex].reshape(n, -1)
    emb = np.concatenate([rot, rot], axis=-1)
    cu_full = np.concatenate([[0], np.cumsum(np.repeat(grids[:, 1] * grids[:, 2], grids[:, 0]))])
    return {"rotary_cos": np.cos(emb).astype(np.float32), "rotary_sin": np.sin(emb).astype(np.float32),
            "window_index": windex.astype(np.int64), "reverse_index": np.argsort(windex).astype(np.int64),
            "full_segments": _segments(cu_full.tolist(), n), "window_segments": _segments(cu_window, n)}


def image_token_count(grid: np.ndarray, c: VisionConfig) -> int:
    t, h, w = (int(v) for v in np.asarray(grid).reshape(3))
    return t * h * w // (c.merge_size * c.merge_size)


def rope_index(ids, grids, c: VisionConfig, start: int = 0) -> tuple[np.ndarray, int]:
    """[3, S] M-RoPE positions of a prompt (image placeholders already expanded), and the next text position.

    Text advances all three axes together; an image's tokens take (t, h, w) of its merged grid offset by the text
    before it; the text after an image resumes after the image's largest position (Qwen2_5_VLModel.get_rope_index)."""
    ids = np.asarray(ids, dtype=np.int64)
    grids = [np.asarray(g, dtype=np.int64).reshape(3) for g in grids]
    out = np.zeros((3, len(ids)), np.int64)
    i, nxt, img = 0, start, 0
    where = np.flatnonzero(ids == c.image_token_id)
    while i < len(ids):
        if ids[i] != c.image_token_id:
            j = int(where[where > i][0]) if (where > i).any() else len(ids)
            out[:, i:j] = nxt + np.arange(j - i)
            nxt += j - i
            i = j
            continue
        if img >= len(grids):
            raise ImageError("the prompt has more image placeholders than images")
        gt, gh, gw = int(grids[img][0]), int(grids[img][1]) // c.merge_size, int(grids[img][2]) // c.merge_size
        n = gt * gh * gw
        if i + n > len(ids) or not (ids[i:i + n] == c.image_token_id).all():
            raise ImageError(f"image {img + 1} needs {n} placeholder tokens in a row")
        t = np.zeros((gt, gh, gw), np.int64)  # still images: second_per_grid_t = 0, every frame at time 0
        h = np.arange(gh)[None, :, None].repeat(gt, 0).repeat(gw, 2)
        w = np.arange(gw)[None, None, :].repeat(gt, 0).repeat(gh, 1)
        out[:, i:i + n] = np.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)]) + nxt
        nxt = int(out[:, i:i + n].max()) + 1
        i += n
        img += 1
    if img != len(grids):
        raise ImageError(f"{len(grids)} image(s) given but the prompt has placeholders for {img}")
    return out, nxt

"""MobileVLM image preprocessing with PIL + numpy only (no transformers at run time).

Reproduces `image_aspect_ratio = pad` (LLaVA's expand2square) followed by the slow PIL/numpy
CLIP image processor (`CLIPImageProcessorPil` in transformers 5.x, the old `CLIPImageProcessor`):
convert to RGB -> resize shortest edge to `size` (PIL bicubic on uint8) -> centre crop
size x size -> rescale by 1/255 -> normalise. Output is HWC float32, bit-identical to transformers'
CHW output transposed (see tests/test_images.py).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
# MobileVLM/LLaVA: tuple(int(m * 255) for m in image_mean); int() truncates (122.77 -> 122).
PAD_COLOR: tuple[int, int, int] = tuple(int(m * 255) for m in CLIP_MEAN)  # type: ignore[assignment]
assert PAD_COLOR == (122, 116, 104)

# float32 copies, built once: transformers normalises in the image dtype (float32) with float32 mean/std.
_MEAN32 = np.asarray(CLIP_MEAN, dtype=np.float32)
_STD32 = np.asarray(CLIP_STD, dtype=np.float32)


def to_rgb(image: Image.Image, composite_alpha: bool = True) -> Image.Image:
    """Return an RGB copy of `image` (any PIL mode).

    composite_alpha=True matches transformers 5.x `convert_to_rgb`: images with an alpha band or a
    `transparency` entry (palette/L/RGB tRNS) are alpha-composited onto white. composite_alpha=False
    is the plain `.convert("RGB")` that the original MobileVLM loader and transformers 4.x use,
    which drops alpha and keeps the (often black) colour under transparent pixels.
    """
    if composite_alpha and ("A" in image.getbands() or image.info.get("transparency") is not None):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    rgb = image.convert("RGB")
    # convert() keeps info["transparency"] (as an RGB key); drop it so a later to_rgb (e.g. in
    # preprocess, or transformers' own convert_to_rgb) does not composite after all.
    rgb.info.pop("transparency", None)
    return rgb


def load_image(path: str | os.PathLike, composite_alpha: bool = True) -> Image.Image:
    """Open and fully decode an image file as RGB; ValueError naming `path` if it can't be read."""
    try:
        with Image.open(path) as image:
            # Image.open is lazy: force the decode here so truncated files fail inside the try.
            image.load()
            return to_rgb(image, composite_alpha)
    except Exception as err:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise ValueError(f"cannot read image {os.fspath(path)!r}: {type(err).__name__}: {err}") from err


def pad_to_square(image: Image.Image, fill: tuple[int, int, int] = PAD_COLOR) -> Image.Image:
    """LLaVA expand2square: [H, W] -> [max(H, W), max(H, W)] RGB canvas of `fill`.

    The original sits at offset (W-H)//2 (floor) on the short axis: for W > H it is pasted at
    (x=0, y=(W-H)//2), for H > W at (x=(H-W)//2, y=0). Non-RGB input is converted with `to_rgb`
    first so that a 3-tuple fill is always valid.
    """
    if image.mode != "RGB" or "transparency" in image.info:
        image = to_rgb(image)
    width, height = image.size
    if width == height:
        return image.copy()
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), tuple(fill))
    canvas.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return canvas


def resize_shortest_edge(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the shortest edge is `size`; long edge = int(size * long / short).

    Mirrors transformers' get_resize_output_image_size(default_to_square=False): truncation,
    not rounding, and ties (square input) go through the `width <= height` branch.
    """
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    # reducing_gap=None as in transformers; PIL antialiases (widens the kernel) when shrinking.
    return image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """[H, W, C] -> [size, size, C]; offsets (H-size)//2, (W-size)//2 like transformers.

    After resize_shortest_edge both sides are >= size, so transformers' zero-pad branch never runs.
    """
    height, width = array.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return array[top:top + size, left:left + size]


def normalize(array: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [H, W, 3], replicating transformers' dtype sequence exactly."""
    # rescale: upcast to float64, multiply by 1/255 (the processor's rescale_factor), downcast.
    scaled = (array.astype(np.float64) * (1 / 255)).astype(np.float32)
    # normalise in float32 with float32 mean/std, so results are bit-identical.
    return (scaled - _MEAN32) / _STD32


def square_pixels(image: Image.Image, size: int, pad: bool = True) -> np.ndarray:
    """The geometric part of the preprocessing: PIL image (any mode, any resolution) -> uint8 [size, size, 3].

    pad=True: MobileVLM `image_aspect_ratio = pad` (stage 2, released models). pad=False: plain
    processor (stage-1 pretraining, ScienceQA eval), which crops away the sides of non-square images.
    """
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has an empty side: {image.size}")
    size = int(size)
    # Convert before padding: padding happens on RGB in MobileVLM, and the processor's own
    # convert_to_rgb is a no-op afterwards.
    rgb = to_rgb(image)
    if pad:
        rgb = pad_to_square(rgb)
    return center_crop(np.asarray(resize_shortest_edge(rgb, size), dtype=np.uint8), size)


def square_box(box: tuple[float, float, float, float], width: int, height: int, pad: bool = True
               ) -> tuple[float, float, float, float]:
    """A box [x0, y0, x1, y1] in pixels of a width x height image -> the same box in [0, 1] coordinates of
    square_pixels' output (x right, y down): pad=True places the image in its padded square as pad_to_square
    does; pad=False keeps the centred square of side min(width, height) that the resize and centre crop
    keep (to within the crop's rounding of a pixel). Parts outside the square fall outside [0, 1]."""
    x0, y0, x1, y1 = box
    if pad:  # the image's origin sits at (dx, dy) in its square
        side = max(width, height)
        dx, dy = (0, (width - height) // 2) if width > height else ((height - width) // 2, 0)
    else:  # the square's origin sits at (-dx, -dy) in the image
        side = min(width, height)
        dx, dy = -(width - side) / 2, -(height - side) / 2
    return (x0 + dx) / side, (y0 + dy) / side, (x1 + dx) / side, (y1 + dy) / side


def preprocess(image: Image.Image, size: int, pad: bool = True) -> np.ndarray:
    """PIL image (any mode, any resolution) -> float32 [size, size, 3] HWC, CLIP-normalised (see
    square_pixels for `pad`)."""
    return normalize(square_pixels(image, size, pad))


def preprocess_file(path: str | os.PathLike, size: int, pad: bool = True) -> np.ndarray:
    """path -> float32 [size, size, 3] as the official training code reads images:
    `Image.open(path).convert('RGB')` (transparency dropped, not composited), then the processor."""
    return preprocess(load_image(path, composite_alpha=False), size, pad)

"""Image preprocessing: bit-exact parity with transformers' slow (PIL/numpy) CLIP processor."""
import numpy as np
import pytest
from PIL import Image

from data_pipelines.images import (CLIP_MEAN, CLIP_STD, PAD_COLOR, load_image, pad_to_square, preprocess,
                                   preprocess_file, to_rgb)

transformers = pytest.importorskip("transformers")
from transformers.image_transforms import convert_to_rgb as hf_convert_to_rgb  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

# (width, height): tiny, thin, odd differences, square, wide/tall extremes, larger photo-like;
# 96x101 makes size * long / short end in .5 / .75, so truncation vs rounding of the long edge shows.
SHAPES = [(1, 1), (3, 5), (5, 3), (7, 300), (300, 7), (13, 8), (101, 96), (96, 101), (336, 336), (640, 480),
          (480, 640), (2000, 100), (100, 2000), (1200, 900)]
SIZES = [336, 168, 48]


@pytest.fixture(scope="module")
def processors() -> dict[int, CLIPImageProcessorPil]:
    """The slow processor, configured like MobileVLM's preprocessor_config for each test size."""
    return {s: CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s}) for s in SIZES}


def hf(proc: CLIPImageProcessorPil, image: Image.Image) -> np.ndarray:
    """transformers' output [3, S, S] as HWC [S, S, 3]."""
    return proc(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


def numpy_pad(rgb: np.ndarray) -> np.ndarray:
    """Independent expand2square: uint8 [H, W, 3] -> [M, M, 3] with literal (122, 116, 104)."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = (122, 116, 104)
    top, left = (side - h) // 2, (side - w) // 2  # one of them is 0
    canvas[top:top + h, left:left + w] = rgb
    return canvas


def random_rgb(w: int, h: int, seed: int) -> np.ndarray:
    """Noise is the hardest case for a resize filter: any kernel/rounding difference shows up."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_constants_match_processor(processors):
    proc = processors[48]
    assert tuple(proc.image_mean) == CLIP_MEAN and tuple(proc.image_std) == CLIP_STD
    assert PAD_COLOR == tuple(int(m * 255) for m in proc.image_mean) == (122, 116, 104)
    assert proc.resample == Image.Resampling.BICUBIC == 3


@pytest.mark.parametrize("size", SIZES)
def test_parity_with_hf_processor(processors, size):
    """Bit-exact (tolerance 0) for pad=False and pad=True, every shape."""
    proc = processors[size]
    for i, (w, h) in enumerate(SHAPES):
        array = random_rgb(w, h, seed=1000 * size + i)
        image = Image.fromarray(array)
        plain = preprocess(image, size, pad=False)
        assert plain.shape == (size, size, 3) and plain.dtype == np.float32
        np.testing.assert_array_equal(plain, hf(proc, image), err_msg=f"pad=False {w}x{h}")
        padded = np.asarray(pad_to_square(image))
        np.testing.assert_array_equal(padded, numpy_pad(array), err_msg=f"pad_to_square {w}x{h}")
        ours = preprocess(image, size, pad=True)
        np.testing.assert_array_equal(ours, hf(proc, Image.fromarray(numpy_pad(array))), err_msg=f"pad {w}x{h}")


def test_pad_is_not_crop_for_non_square(processors):
    """Guards against pad being silently ignored: padded and plain outputs must differ."""
    image = Image.fromarray(random_rgb(640, 480, seed=7))
    assert not np.array_equal(preprocess(image, 48, pad=True), preprocess(image, 48, pad=False))
    square = Image.fromarray(random_rgb(50, 50, seed=8))
    np.testing.assert_array_equal(preprocess(square, 48, pad=True), preprocess(square, 48, pad=False))


@pytest.mark.parametrize("w,h,top,left", [(13, 8, 2, 0), (8, 13, 0, 2), (12, 8, 2, 0), (8, 11, 0, 1), (2, 1, 0, 0)])
def test_pad_colour_and_offset(w, h, top, left):
    """W-H = 5 -> offset 5//2 = 2 (floor); the rest of the canvas is exactly PAD_COLOR."""
    array = random_rgb(w, h, seed=w * 100 + h)
    out = np.asarray(pad_to_square(Image.fromarray(array)))
    side = max(w, h)
    assert out.shape == (side, side, 3)
    np.testing.assert_array_equal(out[top:top + h, left:left + w], array)
    mask = np.ones((side, side), bool)
    mask[top:top + h, left:left + w] = False
    assert mask.sum() == side * side - w * h
    assert (out[mask] == np.array([122, 116, 104], np.uint8)).all()


def test_pad_custom_fill_and_square_passthrough():
    array = random_rgb(4, 2, seed=3)
    out = np.asarray(pad_to_square(Image.fromarray(array), fill=(1, 2, 3)))
    assert (out[0] == (1, 2, 3)).all() and (out[3] == (1, 2, 3)).all()
    square = random_rgb(6, 6, seed=4)
    np.testing.assert_array_equal(np.asarray(pad_to_square(Image.fromarray(square))), square)


def mode_images() -> dict[str, Image.Image]:
    """One image per awkward PIL mode, with partly/fully transparent pixels where possible."""
    rng = np.random.default_rng(11)
    rgba = rng.integers(0, 256, (9, 14, 4), dtype=np.uint8)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255  # fully transparent and fully opaque rows
    grey = rng.integers(0, 256, (9, 14), dtype=np.uint8)
    images = {
        "RGBA": Image.fromarray(rgba),
        "LA": Image.fromarray(np.ascontiguousarray(rgba[..., 2:])),
        "L": Image.fromarray(grey),
        "P": Image.fromarray(np.ascontiguousarray(rgba[..., :3])).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "CMYK": Image.fromarray(np.ascontiguousarray(rgba[..., :3])).convert("CMYK"),
        "1": Image.fromarray(grey > 128),
        "I;16": Image.fromarray(grey.astype(np.uint16) * 257),
    }
    for mode in ("P", "L"):  # transparency key (PNG tRNS) instead of an alpha band
        keyed = images[mode].copy()
        keyed.info["transparency"] = int(np.asarray(keyed)[0, 0])
        images[mode + "+tRNS"] = keyed
    keyed_rgb = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    keyed_rgb.info["transparency"] = tuple(int(v) for v in rgba[0, 0, :3])
    images["RGB+tRNS"] = keyed_rgb
    return images


@pytest.mark.parametrize("name", list(mode_images()))
def test_modes_match_hf(processors, name):
    """RGBA/LA/tRNS are composited onto white like transformers 5.x; grey/palette/CMYK just convert."""
    image = mode_images()[name]
    hf_rgb = hf_convert_to_rgb(image, return_numpy=True)
    np.testing.assert_array_equal(np.asarray(to_rgb(image)), hf_rgb)
    np.testing.assert_array_equal(preprocess(image, 48, pad=False), hf(processors[48], image))
    np.testing.assert_array_equal(preprocess(image, 48, pad=True),
                                  hf(processors[48], Image.fromarray(numpy_pad(hf_rgb))))


def test_composite_alpha_false_is_plain_convert():
    """The legacy MobileVLM loader behaviour (.convert('RGB')) must survive later preprocess calls."""
    image = mode_images()["RGBA"]
    plain = to_rgb(image, composite_alpha=False)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(image.convert("RGB")))
    assert not np.array_equal(np.asarray(plain), np.asarray(to_rgb(image)))  # row 0 is transparent
    keyed = to_rgb(mode_images()["P+tRNS"], composite_alpha=False)
    assert "transparency" not in keyed.info
    np.testing.assert_array_equal(np.asarray(to_rgb(keyed)), np.asarray(keyed))


def test_load_image_and_preprocess_file(tmp_path, processors):
    image = mode_images()["RGBA"]
    path = tmp_path / "alpha.png"
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(loaded), hf_convert_to_rgb(Image.open(path), return_numpy=True))
    np.testing.assert_array_equal(np.asarray(load_image(path, composite_alpha=False)),
                                  np.asarray(Image.open(path).convert("RGB")))
    # The pipelines read images as the official training code does: Image.open(path).convert("RGB").
    official = Image.open(path).convert("RGB")
    np.testing.assert_array_equal(preprocess_file(path, 48, pad=False), hf(processors[48], official))
    np.testing.assert_array_equal(preprocess_file(str(path), 48), preprocess(official, 48))
    assert not np.array_equal(preprocess_file(path, 48), preprocess(loaded, 48))  # compositing would differ


def test_load_image_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ValueError, match="nope.jpg"):
        load_image(missing)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not an image" * 10)
    with pytest.raises(ValueError, match="garbage.png"):
        load_image(garbage)
    # A valid header with the pixel data cut off: Image.open succeeds lazily, decoding fails.
    good = tmp_path / "good.png"
    Image.fromarray(random_rgb(64, 64, seed=5)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(truncated)
    with pytest.raises(ValueError, match="garbage.png"):
        preprocess_file(garbage, 48)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_size_rejected(size):
    with pytest.raises(ValueError):
        preprocess(Image.new("RGB", (4, 4)), size)

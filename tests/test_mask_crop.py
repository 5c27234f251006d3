"""Region masks quantised and cropped by torch on the model's device (``a2dpipe.masks.device_crop``): byte for byte
the numpy path's (``CroppedMasks.from_regions``), and written to the cache as such."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from a2dpipe.masks import CroppedMasks, MaskCache, MaskCacheWriter, Regions
from a2dpipe.masks.cropped import NONZERO_LEVEL
from a2dpipe.masks.device_crop import cropped_on_device
from a2dpipe.masks.stage import _to_regions


def _hard_regions(height=37, width=53, seed=0) -> Regions:
    """Soft blobs crossing the frame edges, values outside [0, 1], masks of only zeros, of one faint pixel in each
    corner, below and at the first non-zero level, and values at and beside every half level (k + 0.5) / 255,
    where rounding half to even decides."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    masks = []
    for _ in range(8):
        cy, cx = rng.uniform(-8, height + 8), rng.uniform(-8, width + 8)
        d2 = ((yy - cy) / rng.uniform(2, height / 2)) ** 2 + ((xx - cx) / rng.uniform(2, width / 2)) ** 2
        masks.append((1 / (1 + np.exp(-4 * (1 - np.minimum(d2, 2))))) * (d2 < 1.5))
    masks.append(rng.uniform(-0.3, 1.3, (height, width)))
    masks.append(np.zeros((height, width)))
    below = np.nextafter(NONZERO_LEVEL, np.float32(0))
    for row, col in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        for value in (below, NONZERO_LEVEL):
            one = np.zeros((height, width), np.float32)
            one[row, col] = value
            masks.append(one)
    halves = (np.arange(256, dtype=np.float32) + np.float32(0.5)) / np.float32(255)
    ties = np.concatenate([np.nextafter(halves, np.float32(0)), halves, np.nextafter(halves, np.float32(1))])
    masks.append(np.resize(rng.permutation(ties), (height, width)))
    n = len(masks)
    boxes = np.sort(rng.uniform(0, 1, (n, 4)), axis=1) * np.float32([width, height, width, height])
    return Regions(boxes, rng.uniform(0, 1, n), rng.integers(0, 8, n), np.stack(masks).astype(np.float32))


def _on_device(regions: Regions) -> CroppedMasks:
    return cropped_on_device(*(torch.from_numpy(a) for a in (regions.boxes, regions.scores, regions.labels,
                                                                regions.masks)))


def _assert_same(got: CroppedMasks, want: CroppedMasks) -> None:
    assert got.size == want.size
    for field in ("boxes", "scores", "labels", "extents", "data"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), field


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_crop_equals_the_numpy_path_byte_for_byte(seed):
    regions = _hard_regions(seed=seed)
    _assert_same(_on_device(regions), CroppedMasks.from_regions(regions))


def test_torch_crop_of_no_regions_and_of_only_empty_masks():
    for regions in (Regions.empty(9, 11), Regions(np.zeros((3, 4)), np.ones(3), np.ones(3), np.zeros((3, 9, 11)))):
        got = _on_device(regions)
        _assert_same(got, CroppedMasks.from_regions(regions))
        assert got.data.size == 0


def test_the_model_output_cropped_on_its_device_is_the_cache_written_from_full_masks(tmp_path):
    """``_to_regions(..., cropped=True)`` (what a GPU job hands the writer) writes the same cache as the full-frame
    regions it replaces, read back pixel for pixel."""
    regions = _hard_regions(seed=3)
    n = len(regions)
    scores = torch.linspace(1.0, 0.3, n)
    output = {"boxes": torch.from_numpy(regions.boxes), "labels": torch.from_numpy(regions.labels),
              "scores": scores, "masks": torch.from_numpy(regions.masks)[:, None]}
    cfg = {"score_threshold": 0.5, "max_regions": 12}
    full, cropped = (_to_regions(output, regions.size, cfg, False, crop) for crop in (False, True))
    assert isinstance(cropped, CroppedMasks) and len(cropped) == len(full) == 12
    _assert_same(cropped, CroppedMasks.from_regions(full))
    empty = _to_regions(output, regions.size, {"score_threshold": 2.0, "max_regions": 12}, False, True)
    assert len(empty) == 0 and empty.size == regions.size
    paths = {kind: tmp_path / f"{kind}.h5" for kind in ("full", "cropped")}
    for kind, frame in (("full", full), ("cropped", cropped)):
        with MaskCacheWriter(paths[kind], source="dataset") as writer:
            writer.write("v", 1, frame)
            writer.write("v", 2, empty)
    with MaskCache(paths["full"]) as a, MaskCache(paths["cropped"]) as b:
        for frame in (1, 2):
            x, y = a.read("v", frame), b.read("v", frame)
            for field in ("boxes", "scores", "labels", "masks"):
                assert np.array_equal(getattr(x, field), getattr(y, field)), (frame, field)


@pytest.mark.parametrize("shape", [(1, 1), (4, 1), (1, 4), (3, 5), (8, 8), (37, 53)])
def test_quantising_equals_the_formula_for_any_size_and_layout(shape):
    """OpenCV's one pass (and numpy's for a few pixels) is ``rint(clip(mask * 255, 0, 255))`` byte for byte, at and
    beside every half level, on contiguous masks, windows of a frame and mirrored views."""
    from a2dpipe.masks.cropped import _quantise

    masks = _hard_regions().masks
    ties = masks[-1]
    frame = np.concatenate([ties, masks[-10]])  # half levels and values outside [0, 1]
    h, w = shape
    for source in (frame[:h, :w], frame[5:5 + h, 0:w], frame[:h, ::-1][:, :w],
                   np.ascontiguousarray(frame[3:3 + h, 2:2 + w])):
        out = np.empty(source.shape, np.uint8)
        _quantise(source, out)
        want = np.rint(np.clip(source * np.float32(255), 0, 255)).astype(np.uint8)
        assert np.array_equal(out, want), (shape, source.strides)

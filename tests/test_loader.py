"""The segmentation data path: a DataLoader over the shards whose results do not depend on its workers.

Stores are written with the pipeline's own writers (frames shard + flow cache of the same shard), small frames of
two sizes; the checks: listing a split decodes nothing, samples pickle without open files, batches normalise as
the network expects, and training (both stages) and prediction give identical results with 0 and 2 workers.
"""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from a2dpipe.dataset.frames import FrameWriter, masks_to_boxes
from a2dpipe.flow import FlowWriter
from a2dpipe.flow.encode import flow_to_rgb
from a2dpipe.labels import VALID_PAIRS, to_setting
from a2dpipe.masks import MaskCache
from a2dpipe.segmentation.loader import (MEAN, STD, collate, loader_options, network_threads,
                                         same_size_batches, to_device)
from a2dpipe.segmentation.samples import StoreSamples, View
from a2dpipe.stores import pixel_chunks
from conftest import complete

torch.set_num_threads(1)

CONFIG = complete({
    "seed": 0,
    "device": "cpu",
    "segmentation": {
        "width": 8, "aspp_rates": [1, 2], "crop": [24, 32],
        "stage1": {"iterations": 4, "batch_size": 3, "checkpoint_every": 2},
        "stage2": {"iterations": 3, "batch_size": 2, "checkpoint_every": 2, "fc_dim": 16, "roi_size": 3},
    },
})


def write_shard(folder, name: str, sizes, seed: int, encoding: str = "xym", layout: str = "pipeline") -> tuple:
    """A frames shard and its flow cache: one annotated frame per video, an actor instance in each.

    ``layout``: ``pipeline`` writes the frames as the writer does now (64 x 64-pixel chunks); ``before`` as frames
    shards written earlier still are (h5py's automatic chunks, read plane by plane). The flow cache is the writer's.
    """
    rng = np.random.default_rng(seed)
    (folder / "frames").mkdir(exist_ok=True)
    (folder / "flow").mkdir(exist_ok=True)
    frames_path, flow_path = folder / "frames" / name, folder / "flow" / name
    with FrameWriter(frames_path) as frames, FlowWriter(flow_path, method="test", encoding=encoding) as flows:
        flows.seconds_per_frame = 0.0
        for k, (h, w) in enumerate(sizes):
            pid = VALID_PAIRS[rng.integers(len(VALID_PAIRS))]
            masks = np.zeros((1, h, w), np.uint8)
            masks[0, rng.integers(0, h // 2):h - 2, rng.integers(0, w // 2):w - 3] = 1
            group = frames.create_group(f"{name[:9]}v{k}", 1)
            group.attrs.update({"split": "test" if k == 0 else "train", "neighbour_frame": 2, "direction": "next"})
            rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            for key, data in (("rgb", rgb), ("neighbour", rgb), ("label", masks[0] * np.uint8(pid)),
                              ("instance_masks", masks), ("instance_boxes", masks_to_boxes(masks)),
                              ("instance_ids", np.uint8([pid]))):
                image = layout == "pipeline" and key in ("rgb", "neighbour", "label")
                group.create_dataset(key, data=data, compression="lzf", fletcher32=True,
                                     chunks=pixel_chunks(data.shape) if image else None)
            flow = rng.normal(0, 3, (h, w, 2)).astype(np.float32)
            flows.write(f"{name[:9]}v{k}", 1, flow, flow_to_rgb(flow, encoding))
    return frames_path, flow_path


def write_region_cache(folder, frames_path):
    """A region-mask cache of the shard: per frame a few soft elliptical masks around random boxes (some reaching
    past the frame edge, so the stored rectangles are clipped), and a frame without regions."""
    from a2dpipe.dataset.frames import FrameStore
    from a2dpipe.masks import MaskCacheWriter, Regions

    rng = np.random.default_rng(9)
    path = folder / "regions" / frames_path.name
    path.parent.mkdir(exist_ok=True)
    with FrameStore(frames_path) as frames, MaskCacheWriter(path, source="dataset") as writer:
        for k, (video, frame) in enumerate(frames.keys()):
            h, w = frames.read_arrays(video, frame, ("label",))["label"].shape
            n = 0 if k == 2 else int(rng.integers(1, 6))
            yy, xx = np.mgrid[:h, :w].astype(np.float32)
            centre, half = rng.uniform(0, 1, (n, 2)) * [w, h], rng.uniform(0.1, 0.6, (n, 2)) * [w, h]
            d2 = sum(((grid[None] - centre[:, i, None, None]) / half[:, i, None, None]) ** 2
                     for i, grid in enumerate((xx, yy)))
            masks = np.exp(-d2) * (d2 < 2)
            boxes = np.clip(np.concatenate([centre - half, centre + half], 1), 0, [w, h, w, h])
            writer.write(video, frame, Regions(boxes, rng.uniform(0, 1, n), rng.integers(0, 8, n), masks))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stores")
    shards = [write_shard(folder, "shard-000.h5", [(30, 40), (30, 40), (28, 44), (30, 40)], 0),
              write_shard(folder, "shard-001.h5", [(28, 44), (30, 40), (28, 44)], 1)]
    return [f for f, _ in shards], [f for _, f in shards]


def test_listing_a_split_decodes_no_frame_and_samples_pickle_without_open_files(stores, monkeypatch):
    frames, flow = stores

    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was read while listing")

    with monkeypatch.context() as patch:
        patch.setattr(h5py.Dataset, "__getitem__", refuse)
        patch.setattr(h5py.Dataset, "read_direct", refuse)
        samples = StoreSamples(frames, split="train", flow=flow, gt_regions=True)
        assert len(samples) == 5 and samples.size(1) == (28, 44)  # sizes from dataset shapes, nothing decoded
    first = samples[View(1, flip=True)]
    assert samples._open  # handles are open in this process ...
    copy = pickle.loads(pickle.dumps(samples))  # ... and do not travel
    assert not copy._open
    again = copy[View(1, flip=True)]
    assert all(np.array_equal(first[k], again[k]) for k in ("rgb", "flow_rgb", "label", "boxes", "masks"))
    samples.close()
    copy.close()


@pytest.mark.parametrize("layout", ["pipeline", "before"])
@pytest.mark.parametrize("encoding", ["xym", "wheel"])
def test_window_reads_equal_whole_frame_reads_cropped(tmp_path, encoding, layout):
    """Views read from the stores (only the window's rows and columns, the flow field only when mirrored) equal
    the same views of the whole stored frames held in memory (whose windows are plain crops, mirrored ones
    re-encoded from the field, on the wheel's per-frame scale from the whole field), in the frames writer's layout
    and in the one before it (automatic chunks); mirrored windows are read from the cache's ``rgb_mirror``."""
    from a2dpipe.flow import FlowStore
    from a2dpipe.dataset.frames import FrameStore
    from a2dpipe.segmentation.samples import ArraySamples, plan_view

    # the first frame is the test split's; then A2D's sizes: frames in 64 x 64-pixel chunks with partial tiles at
    # the edges, or (layout before) automatic chunks of one channel each (read plane by plane); flow images whole
    frames, flow = write_shard(tmp_path, "shard-000.h5", [(30, 40), (320, 568), (240, 426), (320, 568)], 3, encoding,
                               layout)
    with h5py.File(frames) as f, h5py.File(flow) as g:  # the layout is what the test says it is
        image, flow_image = f["shard-000v1/00001/rgb"], g["shard-000v1/00001/rgb"]
        assert flow_image.chunks == (320, 568, 3) and "rgb_mirror" in g["shard-000v1/00001"]  # one chunk
        assert image.chunks == (64, 64, 3) if layout == "pipeline" else image.chunks[2] == 1
    regions = write_region_cache(tmp_path, frames)
    samples = StoreSamples([frames], split="train", flow=[flow], masks=[regions], gt_regions=True,
                           flow_encoding=encoding)
    whole = []
    with FrameStore(frames) as frame_store, FlowStore(flow) as flow_store, MaskCache(regions) as cache:
        for video, frame in samples.keys():
            arrays = frame_store.read_arrays(video, frame, ("rgb", "label", "instance_masks"))
            stored = flow_store.read_arrays(video, frame, ("rgb", "flow"))
            cached = cache.read(video, frame)  # full-frame masks, then the ground truth's
            whole.append({"video": video, "frame": frame, "rgb": arrays["rgb"], "label": arrays["label"],
                          "flow_rgb": stored["rgb"], "flow": stored["flow"].astype(np.float32),
                          "masks": np.concatenate([cached.masks, arrays["instance_masks"].astype(np.float32)]),
                          "boxes": np.concatenate([cached.boxes, masks_to_boxes(arrays["instance_masks"])])})
    in_memory = ArraySamples(whole, flow_encoding=encoding)
    rng = np.random.default_rng(0)
    flips = set()
    for crop in [(320, 320), (352, 400), (200, 600), None]:
        for i in range(len(samples)):
            view = plan_view(i, samples.size(i), crop, rng) if crop else View(i, flip=bool(rng.random() < 0.5))
            flips.add(view.flip)
            got, want = samples[view], in_memory[view]
            for key in ("rgb", "flow_rgb", "label", "masks", "boxes"):
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key} of {view}")
                assert got[key].dtype == want[key].dtype and got[key].flags.c_contiguous, key
    assert flips == {True, False}
    samples.close()


def test_to_device_normalises_images_and_maps_labels_to_classes(stores):
    samples = StoreSamples(stores[0], split="train", flow=stores[1])
    items = [samples[View(i)] for i in (0, 2)]  # both 30 x 40
    batch = to_device(collate(items), "cpu")
    rgb = np.stack([s["rgb"] for s in items]).astype(np.float32)
    want = torch.from_numpy((rgb - MEAN) / STD).permute(0, 3, 1, 2)
    assert batch["rgb"].is_contiguous() and torch.equal(batch["rgb"], want)
    labels = np.stack([s["label"] for s in items])
    assert torch.equal(batch["actor"], torch.from_numpy(to_setting(labels, "actor").astype(np.int64)))
    assert torch.equal(batch["action"], torch.from_numpy(to_setting(labels, "action").astype(np.int64)))
    assert batch["flow"].shape == batch["rgb"].shape and batch["keys"] == [samples.key(0), samples.key(2)]
    assert to_device(collate(items), "cpu", with_flow=False)["flow"] is None
    samples.close()


def test_inference_batches_hold_frames_of_one_size_in_order_up_to_the_cap(stores, monkeypatch):
    """Train split: shard 0's frames 30 x 40, 28 x 44, 30 x 40, shard 1's 30 x 40, 28 x 44; each with its mirror."""
    frames, flow = stores
    samples = StoreSamples(frames, split="train", flow=flow)
    views = [View(i, flipped) for i in range(len(samples)) for flipped in (False, True)]
    with monkeypatch.context() as patch:  # sizes come from dataset shapes: nothing is decoded
        patch.setattr(h5py.Dataset, "__getitem__", lambda *a, **k: pytest.fail("a dataset was read while grouping"))
        by_three = same_size_batches(samples, views, 3)
        by_eight = same_size_batches(samples, views, 8)
    ids = [[(v.index, v.flip) for v in batch] for batch in by_three]
    assert ids == [[(0, False), (0, True), (2, False)], [(2, True), (3, False), (3, True)],
                   [(1, False), (1, True), (4, False)], [(4, True)]]
    assert [len(b) for b in by_eight] == [6, 4] and sum(by_eight, []) == sum(by_three, [])
    assert all(len({samples.size(v.index) for v in batch}) == 1 for batch in by_three + by_eight)
    assert same_size_batches(samples, views, 1) == [[v] for v in sum(by_three, [])]
    assert same_size_batches(samples, views, 3) == by_three  # a function of the views alone
    with pytest.raises(ValueError, match="at least 1"):
        same_size_batches(samples, views, 0)
    samples.close()


def test_loader_options_and_threads_come_from_the_segmentation_section():
    assert loader_options({"loader_workers": 3, "loader_prefetch": 4}) == {"workers": 3, "prefetch": 4}
    assert network_threads(4, 3) == 1 and network_threads(2, 3) == 1 and network_threads(8, 0) == 8


def _run_all(stores, tmp_path, workers: int) -> dict:
    """Stage 1, stage 2 (cached features and crops) and the Ours prediction with ``workers`` loader workers."""
    from a2dpipe.segmentation.predict import predict
    from a2dpipe.segmentation.train import train
    from a2dpipe.variants import Variant

    frames, flow = stores
    seg = {**CONFIG["segmentation"], "loader_workers": workers}
    config = {**CONFIG, "segmentation": seg}
    train_samples = StoreSamples(frames, split="train", flow=flow, gt_regions=True)
    out = {"stage1": train(config, stage=1, input="rgbflow", samples=train_samples, out=tmp_path / "s1" / "m.pt")}
    for cache in (True, False):
        cfg = {**config, "segmentation": {**seg, "stage2": {**seg["stage2"], "cache_features": cache}}}
        out[f"stage2 cache={cache}"] = train(cfg, stage=2, input="rgbflow", samples=train_samples,
                                             out=tmp_path / f"s2-{cache}" / "m.pt", stage1=tmp_path / "s1" / "m.pt")
    test_samples = StoreSamples(frames, split="test", flow=flow, gt_regions=True)
    predict(config, variant=Variant("ours", "rgbflow", "dataset", "gt"), model=tmp_path / "s2-False" / "m.pt",
            samples=test_samples, out=tmp_path / "pred.h5")
    with h5py.File(tmp_path / "pred.h5") as f:
        out["predictions"] = {f"{v}/{k}/{m}": f[v][k][m][()] for v in f for k in f[v] for m in f[v][k]}
    return out


def test_training_and_prediction_give_the_same_results_with_or_without_workers(stores, tmp_path):
    serial, parallel = _run_all(stores, tmp_path / "w0", 0), _run_all(stores, tmp_path / "w2", 2)
    for name in ("stage1", "stage2 cache=True", "stage2 cache=False"):
        a, b = serial[name], parallel[name]
        assert a["curve"] == b["curve"], name
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
        # the loader is no part of what a model is made with
        assert not {"loader_workers", "loader_prefetch"} & set(a["builder"]), a["builder"]
        assert "loader_workers" not in a["provenance"]["settings"]["segmentation"]
    assert serial["predictions"].keys() == parallel["predictions"].keys() and serial["predictions"]
    assert all(np.array_equal(serial["predictions"][k], parallel["predictions"][k]) for k in serial["predictions"])

"""Region masks stage: cache format, mask model, training and resume, sources, mask AP."""

from __future__ import annotations

import csv
import copy
import math

import h5py
import numpy as np
import pytest
import torch

from a2dpipe.cli import main as cli_main
from conftest import schema_section
from a2dpipe.dataset.frames import FORMAT as FRAMES
from a2dpipe.errors import A2DError
from a2dpipe.masks import MaskCache, MaskCacheWriter, Regions
from a2dpipe.masks import train as train_module
from a2dpipe.masks.data import masks_to_boxes
from a2dpipe.masks.model import build_mask_model, load_coco_checkpoint, load_mask_model
from a2dpipe.masks.quality import EncodedFrame, coco_mask_ap, mask_quality
from a2dpipe.masks.cache import CroppedMasks
from a2dpipe.masks.stage import _to_regions, cache_regions

# actor -> colour of its synthetic shape; distractors are grey
_COLOURS = {1: (230, 40, 40), 3: (40, 200, 40), 5: (40, 60, 230)}


def _disc(height, width, cy, cx, r):
    yy, xx = np.mgrid[:height, :width]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def make_frames_shard(path, *, videos=3, frames=2, height=48, width=64, seed=0, distractors=True):
    """A frames store following the Frames contract: coloured discs as actors, grey squares as distractors."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = FRAMES.schema
        for v in range(videos):
            split = "train" if v < videos - 1 else "test"
            for frame in range(1, frames + 1):
                rgb = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
                masks, ids = [], []
                for actor in rng.choice(list(_COLOURS), size=rng.integers(1, 3), replace=False):
                    m = _disc(height, width, rng.integers(10, height - 10), rng.integers(10, width - 10),
                              rng.integers(5, 9))
                    rgb[m > 0] = _COLOURS[actor]
                    masks.append(m)
                    ids.append(actor * 10 + 9)
                g = f.create_group(f"vid{v:02d}/{frame:05d}")
                g.attrs.update(split=split, neighbour_frame=frame + 1, direction="next")
                masks = np.stack(masks)
                label = np.zeros((height, width), np.uint8)
                for m, i in zip(masks, ids):
                    label[m > 0] = i
                g["rgb"], g["neighbour"], g["label"] = rgb, rgb, label
                g["instance_masks"] = masks
                g["instance_boxes"] = masks_to_boxes(masks)
                g["instance_ids"] = np.array(ids, np.uint8)
                if distractors:
                    d = np.zeros((1, height, width), np.uint8)
                    y, x = rng.integers(0, height - 10), rng.integers(0, width - 10)
                    d[0, y:y + 8, x:x + 8] = 1
                    rgb[d[0] > 0] = 128
                    g["distractor_masks"] = d
    return path


def _regions(n, height=20, width=30, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.sort(rng.uniform(0, 20, (n, 4)), axis=1).astype(np.float32)
    return Regions(boxes, rng.uniform(0, 1, n), rng.integers(0, 8, n), rng.uniform(0, 1, (n, height, width)))


def _config(**masks):
    """Mask R-CNN's settings (tests/test_fcis.py covers FCIS, the default), at test sizes."""
    cfg = dict(model="maskrcnn", backbone="tiny", coco_checkpoint=None, min_size=48, max_size=64, iterations=30, batch_size=2,
               optimizer="sgd", lr=0.01, checkpoint_every=10, score_threshold=0.05, max_regions=10)
    cfg.update(masks)
    return {"seed": 0, "device": "cpu", "masks": schema_section("masks", cfg)}  # the schema fills the rest


# --- cache ---------------------------------------------------------------------------------------------------------


def test_cache_round_trip_many_single_and_zero_regions(tmp_path):
    path = tmp_path / "shard-000.h5"
    stored = {("a", 1): _regions(3), ("a", 2): _regions(1, seed=1), ("b", 7): Regions.empty(20, 30)}
    with MaskCacheWriter(path, source="dataset", model="m.pt sha256:0", config={"max_regions": 20}) as writer:
        for (video, frame), regions in stored.items():
            writer.write(video, frame, regions)
        writer.seconds_per_frame = 0.25
    with MaskCache(path) as cache:
        assert cache.keys() == sorted(stored)
        assert (cache.source, cache.model, cache.seconds_per_frame, len(cache)) == ("dataset", "m.pt sha256:0", 0.25, 3)
        assert cache.config == {"max_regions": 20}
        for (video, frame), want in stored.items():
            got = cache.read(video, frame)
            assert len(got) == len(want) and got.size == (20, 30)
            assert got.masks.dtype == np.float32 and got.labels.dtype == np.int64
            np.testing.assert_array_equal(got.boxes, want.boxes)
            np.testing.assert_array_equal(got.scores, want.scores)
            np.testing.assert_array_equal(got.labels, want.labels)
            np.testing.assert_allclose(got.masks, want.masks, atol=0.5 / 255 + 1e-6)  # uint8 quantisation
        with pytest.raises(A2DError, match="no regions for frame b/00008"):
            cache.read("b", 8)


def test_cache_is_atomic_and_refuses_duplicates(tmp_path):
    path = tmp_path / "c.h5"
    with pytest.raises(A2DError, match="written twice"):
        with MaskCacheWriter(path, source="gt") as writer:
            writer.write("a", 1, _regions(1))
            writer.write("a", 1, _regions(1))
    assert not path.exists() and not list(tmp_path.iterdir())


def test_truncated_foreign_and_non_hdf5_files_are_clear_errors(tmp_path):
    path = tmp_path / "shard-000.h5"
    with MaskCacheWriter(path, source="gt") as writer:
        for frame in range(1, 6):
            writer.write("v", frame, _regions(4, 64, 64, seed=frame))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(A2DError, match="truncated.h5"):
        with MaskCache(truncated) as cache:
            for key in cache.keys():
                cache.read(*key)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["v/00001/rgb"] = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(A2DError, match="foreign.h5: not a region-mask cache"):
        MaskCache(foreign)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(A2DError, match="notes.h5: not a readable HDF5 file"):
        MaskCache(text)
    with pytest.raises(A2DError, match="missing.h5: region-mask cache not found"):
        MaskCache(tmp_path / "missing.h5")


def _version_1_masks(masks: np.ndarray) -> np.ndarray:
    """Masks as a version-1 cache returned them: full frame, rint(clip(m) * 255) as uint8, times 1/255."""
    levels = np.multiply(masks, np.float32(255.0), dtype=np.float32)
    np.clip(levels, 0.0, 255.0, out=levels)
    return np.rint(levels).astype(np.uint8).astype(np.float32) * np.float32(1.0 / 255.0)


def _soft_regions(height=40, width=60, seed=0) -> Regions:
    """Regions as mask models give them: soft masks fading to 0 around their boxes (some crossing the frame
    edge), a binary mask, an all-zero one, one below the first quantised level, values outside [0, 1], and a
    mask whose only non-zero level sits in a frame corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    masks, boxes = [], []
    for _ in range(6):
        cy, cx = rng.uniform(-5, height + 5), rng.uniform(-5, width + 5)
        ry, rx = rng.uniform(3, height / 2), rng.uniform(3, width / 2)
        d2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        masks.append((1 / (1 + np.exp(-4 * (1 - np.minimum(d2, 2))))) * (d2 < 1.5))
        boxes.append([cx - rx, cy - ry, cx + rx, cy + ry])
    binary = np.zeros((height, width), np.float32)
    binary[5:17, 9:30] = 1
    faint = np.full((height, width), 0.5 / 255 * 0.99, np.float32)  # every pixel quantises to 0
    outside = rng.uniform(-0.3, 1.3, (height, width)).astype(np.float32)
    corner = np.zeros((height, width), np.float32)
    corner[-1, -1] = 0.5 / 255 * 1.01
    masks += [binary, np.zeros((height, width), np.float32), faint, outside, corner]
    boxes += [[9, 5, 29, 16], [0, 0, 1, 1], [0, 0, width, height], [0, 0, width, height],
              [width - 1, height - 1, width, height]]
    boxes = np.clip(np.float32(boxes), 0, [width, height, width, height])
    n = len(masks)
    return Regions(boxes, rng.uniform(0, 1, n), rng.integers(0, 8, n), np.stack(masks).astype(np.float32))


def test_cropped_cache_gives_version_1_masks_pixel_for_pixel_in_any_window(tmp_path):
    """Masks stored cropped to their rectangles read back exactly as the full-frame format gave them, whole and in
    any window (stage 2 reads windows), from files written with and without the writer thread."""
    stored = {("v", 1): _soft_regions(seed=1), ("v", 2): _soft_regions(seed=2), ("w", 3): Regions.empty(40, 60)}
    for threaded in (True, False):
        path = tmp_path / f"shard-{threaded}.h5"
        with MaskCacheWriter(path, source="dataset", threaded=threaded) as writer:
            for key, regions in stored.items():
                writer.write(*key, regions)
        with MaskCache(path) as cache:
            for key, regions in stored.items():
                want = _version_1_masks(regions.masks)
                got = cache.read(*key)
                assert got.masks.dtype == np.float32 and np.array_equal(got.masks, want), key
                cropped = cache.read_cropped(*key)
                for mask, (top, left, height, width) in zip(want, cropped.extents.tolist()):  # tight rectangles
                    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
                    tight = ((rows[0], cols[0], rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]) if len(rows)
                             else (0, 0, 0, 0))
                    assert (top, left, height, width) == tuple(map(int, tight)), key
                for rows, cols in ((slice(0, 40), slice(0, 60)), (slice(3, 31), slice(10, 60)),
                                   (slice(39, 40), slice(0, 1)), (slice(20, 20), slice(5, 9))):
                    assert np.array_equal(cropped.window(rows, cols), want[:, rows, cols]), (key, rows, cols)


def test_a_cache_is_written_off_the_calling_thread_and_its_failures_reach_the_caller(tmp_path, monkeypatch):
    import threading

    from a2dpipe.masks import cache as cache_module

    threads = []
    original = cache_module.CroppedMasks.from_regions

    def recording(regions):
        threads.append(threading.current_thread())
        if len(threads) == 3:
            raise RuntimeError("disk on fire")
        return original(regions)

    monkeypatch.setattr(cache_module.CroppedMasks, "from_regions", staticmethod(recording))
    path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with MaskCacheWriter(path, source="gt") as writer:
            for frame in range(1, 9):
                writer.write("v", frame, _regions(2, seed=frame))
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert not path.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("version", [1, 2, 3])
def test_older_caches_are_refused_with_the_rebuilding_rule(tmp_path, version):
    old = tmp_path / "shard-000.h5"
    with h5py.File(old, "w") as f:
        f.attrs.update(schema=f"a2dpipe.masks/{version}", source="gt", model="", config="{}", frames=1)
        f.create_dataset("v/00001/masks", data=np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(A2DError) as err:
        MaskCache(old)
    message = str(err.value)
    assert message.startswith(f"{old}: not a region-mask cache of schema 'a2dpipe.masks/4'"), message
    assert f"'a2dpipe.masks/{version}'" in message and "snakemake --forcerun region_masks" in message, message


def test_every_dataset_is_checksummed_and_a_flipped_byte_names_the_file(tmp_path):
    path = tmp_path / "shard-000.h5"
    with MaskCacheWriter(path, source="dataset") as writer:
        writer.write("v", 1, _soft_regions())
        writer.write("v", 2, Regions.empty(40, 60))
    with h5py.File(path) as f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        assert len(datasets) == 4, [d.name for d in datasets]
        # one uncompressed chunk each, checksummed; an empty dataset has no chunk (and nothing to flip)
        assert all(d.fletcher32 == (d.size > 0) and d.compression is None for d in datasets)
        assert all(d.chunks == d.shape for d in datasets if d.size), [(d.name, d.chunks) for d in datasets]
        chunk = f["v/00001/masks"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + chunk.size // 2] ^= 0xFF
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(bytes(data))
    with MaskCache(damaged) as cache:
        cache.read("v", 2)  # an intact frame still reads
        with pytest.raises(A2DError, match="damaged.h5.*v/00001"):
            cache.read("v", 1)


@pytest.mark.parametrize("field, value, problem", [
    ("score", 1.5, r"scores outside \[0, 1\]"),
    ("score", np.nan, r"scores outside \[0, 1\]"),
    ("box", np.inf, "boxes not finite or outside the 60 x 40 frame"),
    ("box", 61.0, "boxes not finite or outside the 60 x 40 frame"),
    ("box", -0.5, "boxes not finite or outside the 60 x 40 frame"),
    ("extent", 45, "mask rectangles outside the frame"),
])
def test_values_out_of_range_are_errors_naming_file_frame_and_rule(tmp_path, field, value, problem):
    path = tmp_path / "shard-000.h5"
    with MaskCacheWriter(path, source="dataset") as writer:
        writer.write("v", 1, _soft_regions())
    with h5py.File(path, "r+") as f:  # h5py recomputes the checksum: only the range check can notice
        records = f["v/00001/regions"][()]
        values = records[field]
        values.flat[2] = value
        records[field] = values
        f["v/00001/regions"][...] = records
    with MaskCache(path) as cache, pytest.raises(A2DError) as err:
        cache.read("v", 1)
    message = str(err.value)
    assert message.startswith(f"{path}: frame v/00001: ") and "snakemake --forcerun region_masks" in message
    assert __import__("re").search(problem, message), message


def test_masks_to_boxes_is_tight_and_exclusive():
    masks = np.zeros((2, 10, 12), np.uint8)
    masks[0, 2:5, 3:9] = 1
    np.testing.assert_array_equal(masks_to_boxes(masks), [[3, 2, 9, 5], [0, 0, 0, 0]])


# --- model ---------------------------------------------------------------------------------------------------------


def test_coco_checkpoint_loads_everything_but_the_class_heads(tmp_path):
    torch.manual_seed(0)
    coco = build_mask_model(backbone="tiny", num_classes=91, min_size=48, max_size=64).eval()
    path = tmp_path / "coco.pth"
    torch.save(coco.state_dict(), path)
    torch.manual_seed(1)
    model = build_mask_model(backbone="tiny", num_classes=8, min_size=48, max_size=64, coco_checkpoint=path).eval()
    image = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        want, got = coco.backbone(image), model.backbone(image)
    for level in want:
        torch.testing.assert_close(got[level], want[level], rtol=0, atol=0)
    torch.testing.assert_close(model.roi_heads.box_head.fc6.weight, coco.roi_heads.box_head.fc6.weight)
    torch.testing.assert_close(model.rpn.head.conv[0][0].weight, coco.rpn.head.conv[0][0].weight)
    assert model.roi_heads.box_predictor.cls_score.out_features == 8
    # wrapped checkpoints (reference scripts) load too; one that matches nothing is an error
    torch.save({"model": coco.state_dict()}, tmp_path / "wrapped.pth")
    fresh = load_coco_checkpoint(model, tmp_path / "wrapped.pth")
    assert set(fresh) == {"roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
                          "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
                          "roi_heads.mask_predictor.mask_fcn_logits.weight",
                          "roi_heads.mask_predictor.mask_fcn_logits.bias"}
    torch.save({"x": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(A2DError, match="other.pth: no tensor matches"):
        load_coco_checkpoint(model, tmp_path / "other.pth")


def test_resnet50_fpn_takes_torchvision_coco_layout(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "maskrcnn_coco.pth"
    torch.save(reference.state_dict(), path)
    model = build_mask_model(backbone="resnet50_fpn", num_classes=8, min_size=64, max_size=96, coco_checkpoint=path)
    fresh = load_coco_checkpoint(model, path)
    assert all(k.startswith(("roi_heads.box_predictor", "roi_heads.mask_predictor.mask_fcn_logits")) for k in fresh)
    body, reference_body = model.backbone.body, reference.backbone.body
    torch.testing.assert_close(body.layer4[0].conv1.weight, reference_body.layer4[0].conv1.weight)
    torch.testing.assert_close(body.bn1.running_var, reference_body.bn1.running_var)


# --- training, sources, quality ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    return make_frames_shard(tmp_path_factory.mktemp("frames") / "shard-000.h5", videos=4, frames=3)


@pytest.fixture(scope="module")
def trained(shard, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("model") / "model.pt"
    train_module.train_mask_model(_config(), "dataset", [shard], out)
    return out


def test_training_lowers_the_loss_and_writes_curve_and_checkpoint(trained):
    with open(trained.with_name("loss.csv")) as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    model, checkpoint = load_mask_model(trained)
    assert checkpoint["source"] == "dataset" and not checkpoint["class_agnostic"]
    assert model.roi_heads.box_predictor.cls_score.out_features == 8
    assert not trained.with_name("checkpoint.pt").exists()  # only an unfinished run leaves one


def _killed_and_resumed(shard, tmp_path, monkeypatch, name: str, die, match: str, killed: dict, resumed: dict):
    """(straight, resumed) checkpoints of an 8-step training (checkpoints every 4): straight through, and killed at
    step 6 by ``die()`` raised from ``train_module.<name>`` (called as (reader, refs, source, seed, step, ...)),
    which leaves no model and a step-4 checkpoint, then run again. ``killed``, ``resumed``: the two runs' loader
    arguments (workers, prefetch)."""
    config = _config(iterations=8, checkpoint_every=4)
    torch.set_num_threads(1)
    straight = train_module.train_mask_model(config, "dataset", [shard], tmp_path / "a" / "model.pt")
    real = getattr(train_module, name)

    def dying(reader, refs, source, seed, step, *args):
        if step == 6:
            raise die()
        return real(reader, refs, source, seed, step, *args)

    monkeypatch.setattr(train_module, name, dying)
    out = tmp_path / "b" / "model.pt"
    with pytest.raises(type(die()), match=match):
        train_module.train_mask_model(config, "dataset", [shard], out, **killed)
    assert not out.exists() and torch.load(out.with_name("checkpoint.pt"), weights_only=True)["step"] == 4
    monkeypatch.setattr(train_module, name, real)
    return straight, train_module.train_mask_model(config, "dataset", [shard], out, **resumed)


def test_killed_training_resumes_to_the_same_weights(shard, tmp_path, monkeypatch):
    straight, resumed = _killed_and_resumed(shard, tmp_path, monkeypatch, "training_batch",
                                            lambda: KeyboardInterrupt("killed"), "killed", {}, {})
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, msg=key)


def test_frames_read_by_loader_workers_give_the_same_weights_and_resume(shard, tmp_path, monkeypatch):
    """segmentation.loader_workers: worker processes read the steps' frames; the weights are the one-thread
    read's bit for bit, and a run that dies there (step 7's frames) resumes from its checkpoint to them."""

    def die():
        return RuntimeError(f"killed; in a worker: {torch.utils.data.get_worker_info() is not None}")

    straight, resumed = _killed_and_resumed(shard, tmp_path, monkeypatch, "training_frames", die,
                                            "killed; in a worker: True", {"workers": 2, "prefetch": 2},
                                            {"workers": 2, "prefetch": 1})
    assert resumed["final_loss"] == straight["final_loss"]
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_mask_training_steps_run_under_the_precision_the_device_gets(shard, tmp_path, monkeypatch):
    """masks.amp: every step runs under the accelerator's autocast choice (bfloat16 here, as a GPU of compute
    capability 8.0 gets it, forced onto the CPU, where bfloat16 autocast runs too); weights stay float32 and the
    loss finite. Without amp, no autocast. Mask R-CNN only: torchvision casts ps_roi_align (FCIS) to float32
    under CUDA's autocast but has no such rule on the CPU."""
    torch.set_num_threads(1)
    monkeypatch.setattr(train_module, "autocast_dtype", lambda device, amp: torch.bfloat16 if amp else None)
    seen, real_model = [], train_module._initial_model

    def watched_model(*args):
        model = real_model(*args)
        model.register_forward_pre_hook(lambda *_: seen.append(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
        return model

    monkeypatch.setattr(train_module, "_initial_model", watched_model)
    for amp, want in ((True, torch.bfloat16), (False, None)):
        seen.clear()
        config = _config(iterations=3, amp=amp)
        checkpoint = train_module.train_mask_model(config, "dataset", [shard], tmp_path / str(amp) / "model.pt")
        assert seen == [want] * 3, (amp, seen)
        assert math.isfinite(checkpoint["final_loss"]), amp
        assert {v.dtype for v in checkpoint["model"].values() if v.is_floating_point()} == {torch.float32}


def test_mask_training_reads_each_step_once_on_its_reading_thread():
    """A run resumed at step 1 of 4 reads steps 1, 2, 3 once each, on the read-ahead thread, none past the end."""
    import threading
    from contextlib import closing

    reads = []

    def read(step):
        reads.append((step, threading.current_thread().name))
        return step * 10

    with closing(train_module._ReadAhead(read, 4)) as batches:
        assert [batches(step) for step in (1, 2, 3)] == [10, 20, 30]
    assert sorted(step for step, _ in reads) == [1, 2, 3], reads
    assert all(name.startswith("mask-batches") for _, name in reads), reads


def test_generic_needs_distractors_and_trains_one_class(tmp_path):
    bare = make_frames_shard(tmp_path / "bare.h5", videos=2, frames=1, distractors=False)
    with pytest.raises(A2DError, match="bare.h5: frame vid00/00001 has no 'distractor_masks'"):
        train_module.train_mask_model(_config(iterations=1), "generic", [bare], tmp_path / "g" / "model.pt")
    shard = make_frames_shard(tmp_path / "frames.h5", videos=2, frames=1)
    checkpoint = train_module.train_mask_model(_config(iterations=2), "generic", [shard], tmp_path / "g" / "model.pt")
    assert checkpoint["class_agnostic"] and checkpoint["builder"]["num_classes"] == 2


def test_dataset_model_fine_tunes_from_its_start_model_class_heads_aside(shard, tmp_path):
    torch.set_num_threads(1)
    generic = tmp_path / "g" / "model.pt"
    config = _config(iterations=2, finetune_iterations=1)
    start = train_module.train_mask_model(config, "generic", [shard], generic)
    arch = train_module.model_arch(config["masks"], "dataset", train_module.NUM_CLASSES["dataset"])
    model = build_mask_model(**arch)
    train_module._load_start(model, generic, arch, config)
    heads = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")
    for key, value in model.state_dict().items():
        if key.startswith(heads):
            assert value.shape != start["model"][key].shape, key  # 8 actor classes, not 1 object class
        else:
            torch.testing.assert_close(value, start["model"][key], msg=key)
    tuned = train_module.train_mask_model(config, "dataset", [shard], tmp_path / "d" / "model.pt", start=generic)
    assert tuned["steps"] == 1 and tuned["start"].startswith(f"{generic.as_posix()} sha256:")
    fcis = _config(model="fcis", iterations=2, finetune_iterations=1)
    with pytest.raises(A2DError, match="g/model.pt: made with masks.model = 'maskrcnn', while this job has "
                                       "masks.model = 'fcis'"):
        train_module.train_mask_model(fcis, "dataset", [shard], tmp_path / "f" / "model.pt", start=generic)


def test_gt_source_and_model_source_caches(shard, trained, tmp_path):
    config = _config()
    gt_path = tmp_path / "gt.h5"
    assert cli_main(["region-masks", "--config", _write_config(tmp_path, config), "--source", "gt",
                     "--frames", str(shard), "--out", str(gt_path)]) == 0
    with MaskCache(gt_path) as cache, h5py.File(shard) as frames:
        assert len(cache.keys()) == 12 and cache.source == "gt" and cache.model == ""
        regions = cache.read("vid01", 2)
        group = frames["vid01/00002"]
        np.testing.assert_array_equal(regions.masks, group["instance_masks"][()])
        np.testing.assert_array_equal(regions.labels, group["instance_ids"][()] // 10)
        np.testing.assert_array_equal(regions.scores, 1)
    out = tmp_path / "dataset.h5"
    cache_regions(config, "dataset", shard, out, model_path=trained)
    with MaskCache(out) as cache:
        assert len(cache.keys()) == 12 and cache.seconds_per_frame > 0 and "sha256:" in cache.model
        assert cache.attrs["device"].startswith("CPU ")
        for key in cache.keys():
            r = cache.read(*key)
            assert len(r) <= 10 and (r.scores >= 0.05).all() and np.isin(r.labels, range(1, 8)).all()
            assert r.masks.shape[1:] == (48, 64) and ((0 <= r.masks) & (r.masks <= 1)).all()
    with pytest.raises(A2DError, match="a dataset mask model, but --source is generic"):
        cache_regions(config, "generic", shard, tmp_path / "g.h5", model_path=trained)


def test_a_frames_regions_do_not_depend_on_the_frames_batched_with_it(shard, trained, tmp_path):
    """Frames of other sizes in the same shard (so possibly in the same batch) leave a frame's regions unchanged:
    a batch pads every frame to its largest one, which would change the features near the frame's edges."""
    small = make_frames_shard(tmp_path / "small.h5", videos=2, frames=3, height=32, width=64, seed=2)
    mixed = tmp_path / "mixed.h5"
    with h5py.File(small) as a, h5py.File(shard) as b, h5py.File(mixed, "w") as m:
        m.attrs.update(a.attrs)
        for video in a:
            a.copy(a[video], m, name=video)
            b.copy(b[video], m, name=f"{video}b")  # listed right after it: 32x64 and 48x64 frames interleave
    config = _config()  # batches of 2, and 3 frames per video: one batch would pair a 32x64 and a 48x64 frame
    cache_regions(config, "dataset", small, tmp_path / "alone.h5", model_path=trained)
    cache_regions(config, "dataset", mixed, tmp_path / "mixed-regions.h5", model_path=trained)
    with MaskCache(tmp_path / "alone.h5") as alone, MaskCache(tmp_path / "mixed-regions.h5") as together:
        assert len(together.keys()) == 12
        for key in alone.keys():  # equal up to float rounding (batches of one or two frames); padding moved boxes 8 px
            a, b = alone.read(*key), together.read(*key)
            np.testing.assert_array_equal(a.labels, b.labels)
            for field in ("boxes", "masks", "scores"):
                np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-4, err_msg=field)


def _write_config(tmp_path, config):
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_mask_ap_is_perfect_for_ground_truth_and_drops_with_false_positives(shard, tmp_path):
    gt = tmp_path / "gt.h5"
    cache_regions(_config(), "gt", shard, gt)
    table = mask_quality([shard], {"dataset": [gt]})
    assert table["categories"].tolist() == ["actor", "agnostic"]
    np.testing.assert_allclose(table["AP"], 100.0)
    with MaskCache(gt) as cache:
        truth = [(r.masks.astype(np.uint8), r.labels) for r in (cache.read(*k) for k in cache.keys())]
        noisy = []
        for masks, labels in truth:  # add a confident region on the background of every frame
            extra = np.zeros((1, *masks.shape[1:]), np.float32)
            extra[0, :6, :6] = 1
            noisy.append(Regions(np.vstack([masks_to_boxes(masks), [[0, 0, 6, 6]]]),
                                 np.r_[np.full(len(masks), 0.5), 0.9], np.r_[labels, 0],
                                 np.concatenate([masks, extra])))
    perfect = copy.deepcopy(noisy)
    for r in perfect:
        r.labels[-1] = r.labels[0]
    truth = [EncodedFrame.from_masks(masks, labels) for masks, labels in truth]
    noisy, perfect = ([EncodedFrame.from_regions(r) for r in found] for found in (noisy, perfect))
    assert coco_mask_ap(truth, noisy, agnostic=False)["AP"] == pytest.approx(100.0)  # label 0 matches no actor
    assert coco_mask_ap(truth, noisy, agnostic=True)["AP"] < 90.0
    assert coco_mask_ap(truth, perfect, agnostic=False)["AP"] < 90.0


def test_synthetic_benchmark_writes_visible_distractors_for_the_generic_source(tmp_path):
    from a2dpipe.dataset.a2d import annotation_path, list_annotated_frames
    from a2dpipe.dataset.annotation import read_annotation
    from a2dpipe.dataset.synthetic import read_distractors, synthesize

    root = tmp_path / "a2d"
    synthesize(schema_section("synthetic", {"videos": 2, "height": 48, "widths": [64], "frames": 4,
                                            "annotated_frames": 2, "distractors": 2}), seed=0, out=root)
    found = 0
    for row in list_annotated_frames(root).itertuples():
        distractors = read_distractors(root, row.video, row.frame)
        actors = read_annotation(annotation_path(root, row.video, row.frame)).id_map > 0
        assert distractors.ndim == 3 and distractors.shape[1:] == actors.shape and set(np.unique(distractors)) <= {0, 1}
        assert not (distractors.any(axis=0) & actors).any()  # actors occlude distractors
        found += len(distractors)
    assert found > 0
    assert read_distractors(tmp_path, "none", 1) is None  # real A2D: no sidecar


def test_generic_from_a_coco_checkpoint_is_used_as_is_and_labels_nothing(shard, tmp_path):
    torch.manual_seed(0)
    coco = build_mask_model(backbone="tiny", num_classes=91, min_size=48, max_size=64)
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    config = _config(coco_checkpoint=str(tmp_path / "coco.pth"), score_threshold=0.0)
    out = tmp_path / "generic" / "model.pt"
    checkpoint = train_module.train_mask_model(config, "generic", [shard], out)
    assert checkpoint["steps"] == 0 and checkpoint["class_agnostic"] and checkpoint["builder"]["num_classes"] == 91
    for key, value in coco.state_dict().items():
        torch.testing.assert_close(checkpoint["model"][key], value, msg=key)
    cache_regions(config, "generic", shard, tmp_path / "generic.h5", model_path=out)
    with MaskCache(tmp_path / "generic.h5") as cache:
        labels = np.concatenate([cache.read(*k).labels for k in cache.keys()])
    assert len(labels) and (labels == 0).all()


def test_quantised_masks_and_kept_regions_do_not_depend_on_how_they_are_computed():
    """The one-temporary quantisation equals the textbook formula (values outside [0, 1] clipped), and the regions
    kept from best-first detections (taken as a view) equal those from the same detections in another order."""
    rng = np.random.default_rng(0)
    masks = (rng.random((5, 9, 11), dtype=np.float32) * 1.4 - 0.2)
    cropped = CroppedMasks.from_regions(Regions(np.zeros((5, 4)), np.ones(5), np.ones(5), masks))
    levels = np.rint(np.clip(masks, 0.0, 1.0) * 255.0).astype(np.uint8)
    assert np.array_equal(cropped.window(), levels.astype(np.float32) * np.float32(1 / 255))

    scores = torch.tensor([0.9, 0.7, 0.5, 0.2])
    output = {"boxes": torch.rand(4, 4) * 8, "labels": torch.tensor([1, 2, 3, 1]), "scores": scores,
              "masks": torch.rand(4, 1, 9, 11)}
    shuffle = torch.tensor([2, 0, 3, 1])
    shuffled = {key: value[shuffle] for key, value in output.items()}
    cfg = {"score_threshold": 0.4, "max_regions": 20}
    best_first, reordered = _to_regions(output, (9, 11), cfg, False), _to_regions(shuffled, (9, 11), cfg, False)
    assert len(best_first) == 3
    for field in ("boxes", "scores", "labels", "masks"):
        assert np.array_equal(getattr(best_first, field), getattr(reordered, field))

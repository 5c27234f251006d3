"""Two-stage training: loss curve, resume equality after a simulated kill, frozen front-end, augmentation (views of
a sample: mirrored and cropped windows, exactly as mirroring the whole frame, padding and cropping)."""

import csv

import numpy as np
import pytest
import torch

from a2dpipe.segmentation.samples import ArraySamples, View, plan_view
from a2dpipe.flow.encode import flow_to_rgb
from a2dpipe.labels import IGNORE, VALID_PAIRS
from a2dpipe.segmentation.train import CURVE_COLUMNS, load_checkpoint, train
from conftest import complete, segmenter

torch.set_num_threads(1)

CONFIG = complete({
    "seed": 0,
    "device": "cpu",
    "segmentation": {
        "width": 8,
        "aspp_rates": [1, 2],
        "crop": [40, 56],
        "stage1": {"iterations": 6, "batch_size": 4, "checkpoint_every": 2, "lr_front": 0.002, "lr_back": 0.01},
        "stage2": {"iterations": 6, "batch_size": 2, "checkpoint_every": 2, "fc_dim": 32, "roi_size": 3},
    },
})


def make_samples(n=6, h=48, w=64, seed=0):
    """Frames with one coloured rectangle actor, its motion, and its ground-truth region."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        pid = VALID_PAIRS[rng.integers(len(VALID_PAIRS))]
        rgb = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        label = np.zeros((h, w), np.uint8)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        y1, x1 = y0 + rng.integers(8, h // 2), x0 + rng.integers(8, w // 2)
        label[y0:y1, x0:x1] = pid
        rgb[y0:y1, x0:x1] = (pid // 10 * 30, pid % 10 * 25, 200)
        flow = np.zeros((h, w, 2), np.float32)
        flow[y0:y1, x0:x1] = (pid % 10 - 5, 1.0)
        out.append({"video": f"v{k}", "frame": 1, "rgb": rgb, "label": label, "flow": flow,
                    "flow_rgb": flow_to_rgb(flow, "xym"), "boxes": np.array([[x0, y0, x1 - 1, y1 - 1]], np.float32),
                    "masks": (label > 0).astype(np.float32)[None]})
    return ArraySamples(out)


def _equal_states(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1") / "model.pt"
    return out, train(CONFIG, stage=1, input="rgbflow", samples=make_samples(), out=out)


def test_stage1_writes_model_and_loss_curve(stage1):
    out, result = stage1
    ckpt = load_checkpoint(out, 1)
    assert ckpt["stage"] == 1 and ckpt["input"] == "rgbflow"
    assert _equal_states(ckpt["model"], result["model"])
    with open(out.with_name("loss.csv")) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CURVE_COLUMNS and len(rows) == 6
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert not out.with_name("checkpoint.pt").exists()  # removed once the model is written


def test_resume_after_kill_gives_identical_weights(stage1, tmp_path):
    _, uninterrupted = stage1
    out = tmp_path / "model.pt"
    assert train(CONFIG, stage=1, input="rgbflow", samples=make_samples(), out=out, max_steps=3) is None
    assert out.with_name("checkpoint.pt").exists() and not out.exists()   # killed after step 3, checkpoint at 2
    resumed = train(CONFIG, stage=1, input="rgbflow", samples=make_samples(), out=out)
    assert _equal_states(resumed["model"], uninterrupted["model"])
    assert resumed["curve"] == uninterrupted["curve"]


def test_checkpoint_of_other_settings_is_not_resumed(stage1, tmp_path):
    out = tmp_path / "model.pt"
    train(CONFIG, stage=1, input="rgbflow", samples=make_samples(), out=out, max_steps=2)
    other = {**CONFIG, "seed": 1}
    result = train(other, stage=1, input="rgbflow", samples=make_samples(), out=out)
    assert not _equal_states(result["model"], stage1[1]["model"])
    assert len(result["curve"]) == 6


@pytest.mark.parametrize("cache", [True, False])
def test_stage2_trains_region_back_end_only(stage1, tmp_path, cache):
    s1_path, s1 = stage1
    cfg = {**CONFIG, "segmentation": {**CONFIG["segmentation"],
                                       "stage2": {**CONFIG["segmentation"]["stage2"], "cache_features": cache}}}
    result = train(cfg, stage=2, input="rgbflow", samples=make_samples(), out=tmp_path / "model.pt", stage1=s1_path)
    before, after = s1["model"], result["model"]
    for key in before:
        if key.startswith(("front_end.", "baseline.")):
            assert torch.equal(before[key], after[key]), key  # weights and batch-norm statistics
    assert not any(key.startswith("region.") for key in before)  # stage 1 has no region back-end
    torch.manual_seed(cfg["seed"])
    initial = segmenter(cfg, input="rgbflow", pretrained=False).state_dict()  # what stage 2 starts from
    assert not torch.equal(initial["region.box_head.fc6.weight"], after["region.box_head.fc6.weight"])
    assert all(np.isfinite(row["loss"]) for row in result["curve"])


def test_stage2_refuses_a_stage1_model_of_another_input(stage1, tmp_path):
    from a2dpipe.errors import A2DError

    with pytest.raises(A2DError, match="rgbflow"):
        train(CONFIG, stage=2, input="rgb", samples=make_samples(), out=tmp_path / "m.pt", stage1=stage1[0])


def test_flip_negates_flow_u_and_mirrors_regions():
    samples = make_samples(1)
    sample, flipped = samples.samples[0], samples[View(0, flip=True)]
    mirrored_flow = sample["flow"][:, ::-1] * np.float32([-1, 1])
    np.testing.assert_array_equal(flipped["flow_rgb"], flow_to_rgb(mirrored_flow, "xym"))
    np.testing.assert_array_equal(flipped["rgb"], sample["rgb"][:, ::-1])
    ys, xs = np.nonzero(flipped["masks"][0])
    x1, y1, x2, y2 = flipped["boxes"][0]
    # the mirrored box still holds the mirrored mask (box convention: pixel indices, closed)
    w = sample["rgb"].shape[1]
    assert xs.min() >= x1 - 1 and xs.max() <= x2 and ys.min() >= y1 and ys.max() <= y2
    assert xs.min() == w - 1 - sample["boxes"][0, 2]


def test_crop_pads_with_ignore_and_is_deterministic():
    samples = make_samples(1, h=30, w=40)
    a = samples[plan_view(0, samples.size(0), (36, 48), np.random.default_rng(3))]
    b = samples[plan_view(0, samples.size(0), (36, 48), np.random.default_rng(3))]
    assert a["label"].shape == (36, 48) and a["rgb"].shape == (36, 48, 3) and a["masks"].shape[1:] == (36, 48)
    assert (a["label"] == IGNORE).sum() == 36 * 48 - 30 * 40
    assert all(np.array_equal(a[k], b[k]) for k in ("rgb", "label", "masks", "boxes", "flow_rgb"))


def reference_view(sample: dict, view: View, encoding: str, wheel_max) -> dict:
    """What a view must equal: mirror the whole frame (re-encoding the flow), pad bottom and right, crop."""
    s = dict(sample)
    h, w = s["label"].shape
    if view.flip:
        s["rgb"], s["label"] = sample["rgb"][:, ::-1], sample["label"][:, ::-1]
        s["flow_rgb"] = flow_to_rgb(sample["flow"][:, ::-1] * np.float32([-1, 1]), encoding, wheel_max)
        s["masks"] = sample["masks"][:, :, ::-1]
        s["boxes"] = np.stack([w - sample["boxes"][:, 2], sample["boxes"][:, 1], w - sample["boxes"][:, 0],
                               sample["boxes"][:, 3]], 1).astype(np.float32)
    ch, cw = view.crop
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    window = np.s_[view.top:view.top + ch, view.left:view.left + cw]
    out = {key: np.pad(s[key], [(0, ph), (0, pw)] + [(0, 0)] * (s[key].ndim - 2), constant_values=fill)[window]
           for key, fill in (("rgb", 0), ("flow_rgb", 0), ("label", IGNORE))}
    masks = np.pad(s["masks"], [(0, 0), (0, ph), (0, pw)])[(slice(None), *window)]
    boxes = np.clip(s["boxes"] - np.float32([view.left, view.top, view.left, view.top]), 0, [cw, ch, cw, ch])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out["boxes"], out["masks"] = boxes.astype(np.float32)[keep], masks[keep]
    return out


@pytest.mark.parametrize("encoding, wheel_max", [("xym", None), ("wheel", None), ("wheel", 2.0)])
def test_views_read_only_their_window_yet_equal_mirroring_padding_and_cropping_the_frame(encoding, wheel_max):
    frames = make_samples(4, h=30, w=44, seed=2).samples
    for s in frames:  # flows of every length, so that the wheel's per-frame scale matters
        s["flow"] = np.random.default_rng(1).normal(0, 3, s["flow"].shape).astype(np.float32)
        s["flow_rgb"] = flow_to_rgb(s["flow"], encoding, wheel_max)
    samples = ArraySamples(frames, flow_encoding=encoding, wheel_max=wheel_max)
    rng = np.random.default_rng(0)
    flips = set()
    for crop in [(24, 32), (36, 40), (20, 50), (30, 44)]:
        for i in range(len(samples)):
            view = plan_view(i, samples.size(i), crop, rng)
            flips.add(view.flip)
            got, want = samples[view], reference_view(frames[i], view, encoding, wheel_max)
            for key in ("rgb", "flow_rgb", "label", "masks", "boxes"):
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key} of {view}")
                assert got[key].dtype == want[key].dtype, key
    assert flips == {True, False}


def mixed_size_samples():
    """Five frames of two sizes, interleaved (44 x 60, 40 x 56, 44 x 60, 40 x 56, 44 x 60)."""
    large, small = make_samples(3, h=44, w=60, seed=5).samples, make_samples(2, h=40, w=56, seed=6).samples
    frames = [large[0], small[0], large[1], small[1], large[2]]
    return ArraySamples([{**f, "video": f"v{k}"} for k, f in enumerate(frames)])


@pytest.fixture(scope="module")
def stage2(stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2") / "model.pt"
    train(CONFIG, stage=2, input="rgbflow", samples=make_samples(), out=out, stage1=stage1[0])
    return out


@pytest.mark.parametrize("kind", ["baseline", "ours"])
def test_predict_writes_valid_label_maps_at_frame_size(stage1, stage2, tmp_path, kind):
    import h5py

    from a2dpipe.labels import is_valid
    from a2dpipe.segmentation.predict import predict
    from a2dpipe.variants import Variant

    model = stage2 if kind == "ours" else stage1[0]
    samples = make_samples(3, h=44, w=60, seed=5)
    variant, name = ((Variant("baseline", "rgbflow"), "baseline-rgbflow") if kind == "baseline"
                     else (Variant("ours", "rgbflow", "dataset", "gt"), "ours-rgbflow-dataset-gt"))
    out = tmp_path / "pred.h5"
    predict(CONFIG, variant=variant, model=model, samples=samples, out=out)
    with h5py.File(out) as f:
        assert f.attrs["variant"].decode() == name and f.attrs["seconds_per_frame"] > 0
        assert f.attrs["device"].decode().startswith("CPU ")  # where it was measured, for the timing table
        for video, frame in samples.keys():
            g = f[f"{video}/{frame:05d}"]
            for name, top in (("actor", 7), ("action", 9)):
                assert g[name].shape == (44, 60) and g[name].dtype == np.uint8 and g[name][()].max() <= top
            assert is_valid(g["joint"][()]).all()
    with pytest.raises(Exception, match="stage-"):
        predict(CONFIG, variant=Variant("ours", "rgb", "dataset", "gt"), model=model, samples=samples,
                out=tmp_path / "x.h5")


@pytest.mark.parametrize("kind", ["baseline", "maskvote", "ours"])
def test_batched_prediction_equals_prediction_one_frame_at_a_time(stage1, stage2, tmp_path, kind):
    """Frames of two sizes, predicted one at a time, in batches of at most 2 (a size's frames split 2 + 1) and of
    at most 8: every label map is the same."""
    import h5py

    from a2dpipe.segmentation.predict import predict
    from a2dpipe.variants import NONE, Variant

    variant = {"baseline": Variant("baseline", "rgbflow"), "maskvote": Variant("maskvote", "rgbflow", NONE, "gt"),
               "ours": Variant("ours", "rgbflow", "dataset", "gt")}[kind]
    model = stage2 if kind == "ours" else stage1[0]
    samples = mixed_size_samples()
    maps = {}
    for batch in (1, 2, 8):
        seg = CONFIG["segmentation"]
        vote = {"uncovered_background": 1.0, "pixel_stride": 1}  # what the mask vote reads of stage 2's settings
        config = {**CONFIG, "segmentation": {**seg, "inference_batch": batch, "stage2": {**seg["stage2"], **vote}}}
        out = tmp_path / f"pred-{batch}.h5"
        predict(config, variant=variant, model=model, samples=samples, out=out)
        with h5py.File(out) as f:
            assert f.attrs["seconds_per_frame"] > 0
            maps[batch] = {f"{v}/{frame:05d}/{m}": f[f"{v}/{frame:05d}/{m}"][()] for v, frame in samples.keys()
                           for m in ("actor", "action", "joint")}
    assert maps[1]["v1/00001/actor"].shape == (40, 56) and maps[1]["v0/00001/actor"].shape == (44, 60)
    assert any(len(np.unique(m)) > 1 for m in maps[1].values())  # not all background: there is something to compare
    for batch in (2, 8):
        assert maps[batch].keys() == maps[1].keys()
        for key, want in maps[1].items():
            np.testing.assert_array_equal(maps[batch][key], want, err_msg=f"{key}, inference_batch {batch}")


def test_batched_feature_cache_equals_the_cache_of_one_view_at_a_time(stage1):
    from a2dpipe.segmentation.train import cache_features

    torch.manual_seed(0)
    model = segmenter(CONFIG, input="rgbflow", pretrained=False)
    model.load_state_dict(stage1[1]["model"], strict=False)
    model.eval()
    samples = mixed_size_samples()
    one, batched = (cache_features(model, samples, torch.device("cpu"), False, batch_size=b) for b in (1, 4))
    assert sorted(one) == sorted(batched) == [(i, flip) for i in range(5) for flip in (False, True)]
    for key, want in one.items():
        assert batched[key].shape == want.shape and want.shape[0] == 1, key
        torch.testing.assert_close(batched[key], want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{key}: {m}")
    assert not torch.equal(one[(0, False)], one[(0, True)])  # a mirror is a view of its own


def test_stage2_refuses_a_stage1_model_of_another_backbone(stage1, tmp_path):
    from a2dpipe.errors import A2DError

    other = {**CONFIG, "segmentation": {**CONFIG["segmentation"], "width": 4}}
    with pytest.raises(A2DError, match="segmentation.width = 8, while this job has segmentation.width = 4"):
        train(other, stage=2, input="rgbflow", samples=make_samples(), out=tmp_path / "m.pt", stage1=stage1[0])


def test_stage_steps_under_bfloat16_autocast_give_finite_losses_and_float32_boxes(stage1, monkeypatch):
    """What CUDA AMP runs, on the CPU: stage-1 and stage-2 steps under bfloat16 autocast."""
    import torchvision

    from a2dpipe.segmentation.models import backends
    from a2dpipe.segmentation.train import CachedStep, CropStep, cache_features

    boxes_at_roi_align = []

    def spy(features, rois, *args, **kwargs):
        boxes_at_roi_align.extend(r.dtype for r in rois)
        return torchvision.ops.roi_align(features, rois, *args, **kwargs)

    monkeypatch.setattr(backends, "roi_align", spy)
    samples = make_samples()
    torch.manual_seed(0)
    model = segmenter(CONFIG, input="rgbflow", pretrained=False)
    model.load_state_dict(stage1[1]["model"], strict=False)  # stage 1 holds no region back-end
    steps = {
        "stage 1": CropStep(model, samples, stage=1, seed=0, batch_size=2, crop=(40, 56), device=torch.device("cpu"),
                            iterations=1),
        "stage 2 crops": CropStep(model, samples, stage=2, seed=0, batch_size=2, crop=(40, 56),
                                  device=torch.device("cpu"), iterations=1),
        "stage 2 cached": CachedStep(model, samples,
                                     cache_features(model.eval(), samples, torch.device("cpu"), torch.bfloat16,
                                                    batch_size=4),
                                     seed=0, batch_size=2, device=torch.device("cpu"), iterations=1),
    }
    for name, step in steps.items():
        model.train()
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = step(0)
        total = losses["loss_actor"] + losses["loss_action"]
        assert torch.isfinite(total), (name, losses)
        total.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
    assert boxes_at_roi_align and set(boxes_at_roi_align) == {torch.float32}


def test_a_non_finite_loss_stops_training_naming_the_step_and_the_loss():
    from a2dpipe.errors import A2DError
    from a2dpipe.trainer import Trainer

    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def step_fn(step):
        bad = torch.tensor(float("nan")) if step == 2 else torch.tensor(0.0)
        return {"loss_good": (weight ** 2).sum(), "loss_bad": bad}

    trainer = Trainer(weight, optimizer, scheduler, step_fn, iterations=5, hint="; lower config x.lr")
    with pytest.raises(A2DError, match=r"not finite at step 3 \(loss_good=0.4096, loss_bad=nan\); lower config x.lr"):
        trainer.train()
    assert [row["step"] for row in trainer.history] == [1, 2]
    assert list(trainer.history[0]) == ["step", "loss", "lr", "loss_good", "loss_bad"]
    assert weight.item() == pytest.approx(0.64)  # the failing step changed no weight


def _stage2_crop_step(stage1, path: str, iterations: int):
    """A seeded RGB + flow stage-2 model on ``path`` of region-to-pixel (stage 1's weights) and its crop step on a
    batch of 2 crops of :func:`make_samples`."""
    from a2dpipe.segmentation.train import CropStep

    torch.manual_seed(0)
    model = segmenter(CONFIG, input="rgbflow", pretrained=False, regions=True)
    model.load_state_dict(stage1[1]["model"], strict=False)
    model.region.region_to_pixel.path = path
    step = CropStep(model, make_samples(), stage=2, seed=0, batch_size=2, crop=(40, 56), device=torch.device("cpu"),
                    iterations=iterations)
    return model, step


def _in_optimizer(event) -> bool:
    """Whether a profiled event runs inside ``optimizer.step``: the CPU kernels of fused Adam read the step count
    on the host (the CUDA ones read it on the device), so the CPU cannot stand in for the GPU there."""
    while event is not None:
        if event.name.startswith("Optimizer.step#"):
            return True
        event = event.cpu_parent
    return False


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("path", ["loop", "dense"])
def test_a_stage2_training_step_asks_the_device_for_its_numbers_once(stage1, monkeypatch, path, optimizer):
    """At most one host sync per step: no ``item``/``bool`` of a tensor (``aten::_local_scalar_dense``) nor
    ``nonzero`` anywhere in the step on the dense (CUDA) path, and one ``tolist`` of the losses together. The loop,
    the CPU's path, reads its boxes on the host (free there)."""
    from torch.profiler import ProfilerActivity, profile

    from a2dpipe.recipe import build_optimizer
    from a2dpipe.trainer import Trainer

    model, step = _stage2_crop_step(stage1, path, iterations=3)
    optimizer = build_optimizer(optimizer, [{"params": list(model.region.parameters()), "lr": 1e-3}],
                                momentum=0.9, weight_decay=1e-4)  # the stages' own
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    trainer = Trainer(model, optimizer, scheduler, step, iterations=3)
    trainer.run_step()  # the loader starts
    lists = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: lists.append(self.shape) or original(self))
    trainer.step = 1
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        row = trainer.run_step()
    syncing = [e.name for e in prof.events()
               if e.name in ("aten::_local_scalar_dense", "aten::nonzero", "aten::item") and not _in_optimizer(e)]
    assert lists[-1] == (3,), lists  # the total and both losses, in one call
    if path == "dense":
        assert syncing == [] and lists == [(3,)], (syncing, lists)
    assert set(row) == {"step", "loss", "lr", "loss_actor", "loss_action"} and np.isfinite(row["loss"])


def test_a_stage2_batch_gives_the_same_losses_and_gradients_on_both_region_to_pixel_paths(stage1):
    """A stage-2 step on a batch of 2 crops: the CUDA path (one dense call for the batch) forced on the CPU equals
    the CPU's loop, losses to rounding and every region back-end gradient to rounding."""
    results = {}
    for path in ("loop", "dense"):
        model, step = _stage2_crop_step(stage1, path, iterations=1)
        losses = step(0)
        sum(losses.values()).backward()
        results[path] = ({k: v.detach() for k, v in losses.items()},
                         {n: p.grad.clone() for n, p in model.region.named_parameters() if p.grad is not None})
    (loop_losses, loop_grads), (dense_losses, dense_grads) = results["loop"], results["dense"]
    assert loop_grads and set(loop_grads) == set(dense_grads)
    for key in loop_losses:
        torch.testing.assert_close(dense_losses[key], loop_losses[key], rtol=1e-6, atol=1e-7)
    for name in loop_grads:
        torch.testing.assert_close(dense_grads[name], loop_grads[name], rtol=1e-4, atol=1e-6)

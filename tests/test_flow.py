"""Flow stage: .flo files, encodings, DIS against real ground truth, the FlowNet family and RAFT, the stage."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from a2dpipe.flow import FlowStore, build_estimator, endpoint_error, flow_to_rgb, read_flo, write_flo
from a2dpipe.flow import flownet_layers
from a2dpipe.flow.estimators import NEURAL_METHODS, load_state_strict
from a2dpipe.dataset.frames import FORMAT as FRAMES
from a2dpipe.errors import A2DError

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-data"
VENUS = REAL / "flow-venus"


@pytest.fixture(scope="module")
def venus():
    """(frame1, frame2) RGB uint8 and the ground-truth flow of the Venus pair."""
    if not VENUS.is_dir():
        pytest.skip(f"real data folder {VENUS} is absent")
    import cv2

    read = lambda name: cv2.cvtColor(cv2.imread(str(VENUS / name)), cv2.COLOR_BGR2RGB)  # noqa: E731
    return read("frame1.png"), read("frame2.png"), read_flo(VENUS / "example.flo")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_pair(venus, size=(96, 80)):
    """The Venus pair downscaled (width, height) for fast CPU runs of the neural networks."""
    import cv2

    return tuple(cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in venus[:2])


# --- .flo -------------------------------------------------------------------------------------------------------


def test_flo_round_trip(tmp_path):
    flow = np.random.default_rng(0).normal(size=(7, 11, 2)).astype(np.float32)
    write_flo(tmp_path / "a.flo", flow)
    data = (tmp_path / "a.flo").read_bytes()
    assert np.frombuffer(data[:4], "<f4")[0] == np.float32(202021.25)
    assert tuple(np.frombuffer(data[4:12], "<i4")) == (11, 7)  # width first
    np.testing.assert_array_equal(read_flo(tmp_path / "a.flo"), flow)


def test_flo_rejects_bad_files(tmp_path):
    (tmp_path / "bad.flo").write_bytes(np.array([1.0, 2, 2], "<f4").tobytes())
    with pytest.raises(A2DError, match="magic"):
        read_flo(tmp_path / "bad.flo")
    (tmp_path / "short.flo").write_bytes(np.array([202021.25], "<f4").tobytes() + np.array([4, 4], "<i4").tobytes())
    with pytest.raises(A2DError, match="4x4"):
        read_flo(tmp_path / "short.flo")


def test_real_flo_reads(venus):
    frame1, _, truth = venus
    assert truth.shape == frame1.shape[:2] + (2,) == (380, 420, 2)
    assert np.isfinite(truth).all() and 1.0 < np.abs(truth).max() < 20.0


def test_endpoint_error_ignores_unknown():
    truth = np.zeros((2, 2, 2), np.float32)
    truth[0, 0] = 1e10  # unknown
    estimate = np.zeros_like(truth)
    estimate[1, 1] = (3.0, 4.0)
    assert endpoint_error(estimate, truth) == pytest.approx(5.0 / 3)


# --- encodings --------------------------------------------------------------------------------------------------


def test_xym_encoding_known_values():
    flow = np.array([[[1.0, -2.0], [3.0, 4.0], [10.0, -10.0], [0.0, 0.0]]], np.float32)
    rgb = flow_to_rgb(flow, "xym")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    np.testing.assert_array_equal(
        rgb[0], [[144, 96, 128 + round(16 * 5**0.5)], [176, 192, 208], [255, 0, 255], [128, 128, 128]]
    )


def test_xym_encoding_rounds_every_flow_as_the_formula_does():
    """Plane by plane, as computed, equals the formula on interleaved channels (np.linalg.norm for the magnitude),
    bit for bit: half-way levels, clipping edges, infinities, float16 input, a batch, a mirrored (strided) view."""
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 5, (2, 24, 30, 2)).astype(np.float32)
    flow.reshape(-1)[:600] = np.round(flow.reshape(-1)[:600] * 32) / 32  # levels exactly half-way
    flow.reshape(-1)[:10] = [8, -8, 7.96875, -8.03125, 7.97, np.inf, -np.inf, 1 / 32, -1 / 32, 0.03125]
    for case in (flow, flow[0], flow[0, :, ::-1], flow.astype(np.float16), flow.astype(np.float64)):
        as_float32 = np.asarray(case, np.float32)
        magnitude = np.linalg.norm(as_float32, axis=-1, keepdims=True)
        levels = np.concatenate([as_float32, magnitude], axis=-1) * np.float32(16) + np.float32(128)
        np.testing.assert_array_equal(flow_to_rgb(case, "xym"), np.clip(np.rint(levels), 0, 255).astype(np.uint8))


def test_wheel_encoding_known_flows():
    from torchvision.utils import flow_to_image

    flow = np.zeros((4, 6, 2), np.float32)
    flow[0, 0] = (4.0, 0.0)  # rightwards, full length
    flow[1, 1] = (2.0, 0.0)  # rightwards, half length
    flow[2, 2] = (0.0, 3.0)
    wheel = flow_to_rgb(flow, "wheel", wheel_max=4.0)
    np.testing.assert_array_equal(wheel[3, 5], [255, 255, 255])  # no motion: white
    np.testing.assert_array_equal(wheel[0, 0], [255, 0, 0])  # Middlebury wheel: rightwards is red
    assert wheel[1, 1][0] == 255 and 120 <= wheel[1, 1][1] == wheel[1, 1][2] <= 135  # half saturated red
    # per-frame maximum: exactly torchvision's image, and invariant to scaling the whole field
    per_frame = flow_to_rgb(flow, "wheel")
    np.testing.assert_array_equal(per_frame, flow_to_image(torch.from_numpy(flow).permute(2, 0, 1)).permute(1, 2, 0))
    np.testing.assert_array_equal(flow_to_rgb(flow * 0.5, "wheel"), per_frame)
    np.testing.assert_array_equal(wheel, per_frame)  # here the fixed maximum equals the frame's maximum
    # fixed maximum: halving the field halves the saturation; longer flows clip to full saturation
    assert not np.array_equal(flow_to_rgb(flow * 0.5, "wheel", wheel_max=4.0), wheel)
    np.testing.assert_array_equal(flow_to_rgb(flow * 3, "wheel", wheel_max=4.0)[0, 0], [255, 0, 0])
    # a batch is normalised per frame
    batch = flow_to_rgb(np.stack([flow, flow * 0.1]), "wheel")
    np.testing.assert_array_equal(batch[0], batch[1])


def _torchvision_wheel(flow: np.ndarray, wheel_max: float | None) -> np.ndarray:
    """The wheel image as the encoder made it before (torchvision's ``flow_to_image``, a pinning row for a fixed
    maximum): the reference the vectorised encoder must equal byte for byte."""
    from torchvision.utils import flow_to_image

    tensor = torch.from_numpy(np.ascontiguousarray(flow, np.float32)).permute(2, 0, 1)
    if wheel_max is None:
        return flow_to_image(tensor).permute(1, 2, 0).numpy()
    norm = tensor.pow(2).sum(0, keepdim=True).sqrt()
    tensor = tensor * torch.clamp(wheel_max / norm.clamp_min(1e-12), max=1.0)
    pin = torch.zeros(2, 1, tensor.shape[2])
    pin[0, 0, 0] = wheel_max
    return flow_to_image(torch.cat([tensor, pin], dim=1))[:, :-1].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("wheel_max", [None, 0.3, 4.0, 7.77])
def test_wheel_and_mirror_images_equal_torchvision_byte_for_byte(wheel_max):
    from a2dpipe.flow.encode import flow_images

    rng = np.random.default_rng(5)
    for scale in (0.01, 1.0, 3.0, 20.0):  # fields in float16, as the cache stores them; a still patch
        flow = (rng.standard_normal((60, 90, 2)) * scale).astype(np.float16).astype(np.float32)
        flow[:5, :7] = 0
        image, mirror = flow_images(flow, "wheel", wheel_max)
        np.testing.assert_array_equal(image, _torchvision_wheel(flow, wheel_max))
        np.testing.assert_array_equal(mirror, _torchvision_wheel(flow * np.float32([-1, 1]), wheel_max))
        np.testing.assert_array_equal(flow_to_rgb(flow, "wheel", wheel_max), image)


def test_xym_mirror_image_is_the_image_of_the_negated_field():
    from a2dpipe.flow.encode import flow_images

    rng = np.random.default_rng(6)
    flow = (rng.standard_normal((40, 50, 2)) * 6).astype(np.float32)
    flow[0, :4, 0] = [7.96875, -7.96875, 8.03125, 0.03125]  # half-way levels and the clipping edges
    image, mirror = flow_images(flow, "xym")
    np.testing.assert_array_equal(image, flow_to_rgb(flow, "xym"))
    np.testing.assert_array_equal(mirror, flow_to_rgb(flow * np.float32([-1, 1]), "xym"))


# --- DIS --------------------------------------------------------------------------------------------------------


def test_dis_recovers_subpixel_translation(venus):
    import cv2

    frame1 = venus[0]
    shift = (1.4, -0.6)  # pixels (x, y): frame2(x) = frame1(x - shift), so the flow is +shift everywhere
    moved = cv2.warpAffine(frame1, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), frame1.shape[1::-1],
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    flow = build_estimator("dis", dis_preset="medium")(frame1, moved)[0]
    interior = flow[16:-16, 16:-16]
    error = np.linalg.norm(interior - np.float32(shift), axis=-1)
    assert error.mean() < 0.5, error.mean()
    assert np.abs(np.median(interior.reshape(-1, 2), axis=0) - shift).max() < 0.1


def test_dis_matches_real_ground_truth(venus):
    frame1, frame2, truth = venus
    flow = build_estimator("dis", dis_preset="medium")(np.stack([frame1]), np.stack([frame2]))
    assert flow.shape == (1, 380, 420, 2) and flow.dtype == np.float32
    assert endpoint_error(flow[0], truth) <= 0.45


# --- FlowNet family and RAFT --------------------------------------------------------------------------------------


def _reference_correlation(a, b, pad, max_disp, stride1, stride2):
    """Straightforward loops over output pixels and displacements, as the CUDA kernel computes them."""
    a = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    b = np.pad(b, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, hp, wp = a.shape
    r = max_disp // stride2
    d = 2 * r + 1
    oh, ow = -(-(hp - 2 * max_disp) // stride1), -(-(wp - 2 * max_disp) // stride1)
    out = np.zeros((n, d * d, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y, x = i * stride1 + max_disp, j * stride1 + max_disp
            for tj in range(-r, r + 1):
                for ti in range(-r, r + 1):
                    product = a[:, :, y, x] * b[:, :, y + tj * stride2, x + ti * stride2]
                    out[:, (tj + r) * d + ti + r, i, j] = product.sum(1) / c
    return out


@pytest.mark.parametrize("pad,max_disp,stride1,stride2", [(4, 4, 1, 2), (3, 3, 1, 1), (4, 4, 2, 2), (2, 4, 1, 2)])
def test_correlation_matches_reference(pad, max_disp, stride1, stride2):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 2, 6, 9, 11, generator=g)
    out = flownet_layers.correlation(a, b, pad_size=pad, max_displacement=max_disp, stride1=stride1, stride2=stride2)
    ref = _reference_correlation(a.double().numpy(), b.double().numpy(), pad, max_disp, stride1, stride2)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5, rtol=0)


def test_flownetc_correlation_shape():
    out = flownet_layers.correlation(torch.randn(1, 8, 5, 7), torch.randn(1, 8, 5, 7))  # FlowNetC's settings
    assert out.shape == (1, 441, 5, 7)


@pytest.fixture(scope="module")
def flownet2_estimator():
    """One randomly initialised FlowNet2 for the tests that need it (building one takes seconds)."""
    torch.manual_seed(3)
    return build_estimator("flownet2", random_init=True, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def net2(flownet2_estimator):
    return flownet2_estimator.model


def test_flownet_parameter_layout(net2):
    """Parameter counts stated by the reference models; names of the stacked network's sub-networks."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net2.flownetc) == 39_175_298
    assert count(net2.flownets_d) == 45_371_666
    assert count(net2.flownetfusion) == 581_226
    assert count(net2) == 162_518_834
    keys = net2.state_dict().keys()
    for name in ("flownetc.corr_activation", "flownetc.conv_redir.0.weight", "flownets_1.conv1.0.weight",
                 "flownets_2.upsampled_flow6_to_5.weight", "flownets_d.inter_conv5.0.weight",
                 "flownetfusion.predict_flow0.bias"):
        assert name in keys or name.endswith("corr_activation")
    assert net2.state_dict()["flownets_1.conv1.0.weight"].shape == (64, 12, 7, 7)
    assert "flownets_2.upsampled_flow6_to_5.bias" not in keys  # FlowNetS's flow upsamplers have no bias


@pytest.mark.parametrize("method", NEURAL_METHODS)
def test_neural_estimators_run_on_real_pair(venus, method, request):
    torch.manual_seed(0)
    frame1, frame2 = small_pair(venus)
    if method == "flownet2":
        estimator = request.getfixturevalue("flownet2_estimator")
    else:
        estimator = build_estimator(method, random_init=True, device="cpu", batch_size=2)
    flow = estimator(np.stack([frame1, frame2]), np.stack([frame2, frame1]))
    assert flow.shape == (2, 80, 96, 2) and flow.dtype == np.float32
    assert np.isfinite(flow).all()


@pytest.mark.parametrize("method", NEURAL_METHODS)
def test_neural_method_without_weights_is_an_error(method):
    with pytest.raises(A2DError, match="weights"):
        build_estimator(method, weights=None)


def test_flownet_checkpoint_round_trip(venus, tmp_path):
    """A checkpoint in flownet2-pytorch's layout (a dict holding 'state_dict') reproduces the network's output."""
    torch.manual_seed(1)
    frame1, frame2 = small_pair(venus)
    source = build_estimator("flownetc", random_init=True, device="cpu")
    before = source(frame1, frame2)
    torch.save({"epoch": 7, "best_EPE": 2.5, "state_dict": source.model.state_dict()}, tmp_path / "c.pth.tar")
    torch.manual_seed(2)  # a different random init underneath
    loaded = build_estimator("flownetc", weights=tmp_path / "c.pth.tar", device="cpu")
    np.testing.assert_array_equal(loaded(frame1, frame2), before)
    with pytest.raises(A2DError, match="not a FlowNetSD checkpoint"):
        build_estimator("flownetsd", weights=tmp_path / "c.pth.tar", device="cpu")


def test_flownet2_loads_its_state_dict(venus, net2):
    """FlowNet2's keys and shapes load strictly (in memory: its checkpoint would be 650 MB)."""
    import copy

    frame1, frame2 = small_pair(venus, (64, 64))
    a, b = net2, copy.deepcopy(net2)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(0.9)
    image1, image2 = (torch.from_numpy(f).permute(2, 0, 1)[None].float() for f in (frame1, frame2))
    with torch.inference_mode():
        before = a(image1, image2)
        assert not torch.equal(b(image1, image2), before)
        load_state_strict(b, {"module." + k: v for k, v in a.state_dict().items()}, "in memory", "FlowNet2")
        torch.testing.assert_close(b(image1, image2), before, rtol=0, atol=0)


def test_raft_checkpoint_round_trip(venus, tmp_path):
    torch.manual_seed(4)
    frame1, frame2 = small_pair(venus)
    source = build_estimator("raft", raft_variant="small", random_init=True, device="cpu")
    before = source(frame1, frame2)
    torch.save(source.model.state_dict(), tmp_path / "raft_small.pth")
    torch.manual_seed(5)
    loaded = build_estimator("raft", raft_variant="small", weights=tmp_path / "raft_small.pth", device="cpu")
    np.testing.assert_array_equal(loaded(frame1, frame2), before)
    with pytest.raises(A2DError, match="raft_large"):
        build_estimator("raft", raft_variant="large", weights=tmp_path / "raft_small.pth", device="cpu")


def test_missing_weights_file_is_an_error(tmp_path):
    with pytest.raises(A2DError, match="not found"):
        build_estimator("flownets", weights=tmp_path / "nope.pth", device="cpu")


# --- the stage --------------------------------------------------------------------------------------------------


def _write_frames_shard(path, records):
    """A frames shard following the Frames contract: (video, frame, rgb, neighbour, direction) per record."""
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = FRAMES.schema
        for video, frame, rgb, neighbour, direction in records:
            g = f.create_group(f"{video}/{frame:05d}")
            h, w = rgb.shape[:2]
            g["rgb"], g["neighbour"] = rgb, neighbour
            g["label"] = np.zeros((h, w), np.uint8)
            g["instance_masks"] = np.zeros((0, h, w), np.uint8)
            g["instance_boxes"] = np.zeros((0, 4), np.float32)
            g["instance_ids"] = np.zeros((0,), np.uint8)
            g.attrs["split"] = "train"
            g.attrs["direction"] = direction
            g.attrs["neighbour_frame"] = frame + 1 if direction == "next" else frame - 1


def test_stage_writes_flow_cache(venus, tmp_path):
    from a2dpipe.cli import main

    frame1 = venus[0]
    shifted = np.roll(frame1, 2, axis=1)  # the neighbour's content lies 2 px further right
    small = np.ascontiguousarray(frame1[:96, :128])
    records = [
        ("vidA", 5, frame1, shifted, "next"),  # flow frame -> neighbour: +2 px
        ("vidA", 24, frame1, shifted, "previous"),  # flow neighbour -> frame: -2 px
        ("vidB", 1, small, np.roll(small, 1, axis=0), "next"),  # another size, downwards 1 px
    ]
    _write_frames_shard(tmp_path / "frames.h5", records)
    config = {"device": "cpu", "flow": {"method": "dis", "dis_preset": "medium", "encoding": "wheel",
                                        "wheel_max": 8.0, "weights": None, "batch_size": 8}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "flow" / "dis" / "shard-000.h5"
    assert main(["flow", "--config", str(tmp_path / "config.yaml"), "--frames", str(tmp_path / "frames.h5"),
                 "--out", str(out)]) == 0
    with h5py.File(out) as f:
        assert f["vidA/00005/flow"].dtype == np.float16
    with FlowStore(out) as store:
        assert store.keys() == [("vidA", 5), ("vidA", 24), ("vidB", 1)]
        assert store.method == "dis" and store.encoding == "wheel"
        assert store.attrs["seconds_per_frame"] > 0 and store.attrs["wheel_max"] == 8.0
        expected = {("vidA", 5): (2, 0), ("vidA", 24): (-2, 0), ("vidB", 1): (0, 1)}
        for key, (u, v) in expected.items():
            flow, rgb = store.read(*key)
            assert flow.dtype == np.float32 and rgb.dtype == np.uint8
            assert flow.shape[:2] == rgb.shape[:2] == store.read(*key)[0].shape[:2]
            np.testing.assert_allclose(np.median(flow[8:-8, 8:-8].reshape(-1, 2), axis=0), (u, v), atol=0.1)
            np.testing.assert_array_equal(rgb, flow_to_rgb(flow, "wheel", 8.0))
        with pytest.raises(A2DError, match="vidC"):
            store.read("vidC", 1)
    # a neural method with no weights: a clear error, and nothing written
    config["flow"]["method"] = "flownet2"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    bad = tmp_path / "flow" / "flownet2" / "shard-000.h5"
    assert main(["flow", "--config", str(tmp_path / "config.yaml"), "--frames", str(tmp_path / "frames.h5"),
                 "--out", str(bad)]) == 1
    assert not bad.exists()


def test_flow_benchmark_runs_on_real_pairs(monkeypatch):
    """benchmarks/flow_methods.py's DIS row: errors on both real pairs (stereo sign convention: u = -disparity) and
    a speed."""
    if not VENUS.is_dir():
        pytest.skip(f"real data folder {VENUS} is absent")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from flow_methods import bench_flow, format_table

    (row,) = bench_flow(methods=["dis"], presets=["ultrafast"], real_data=REAL, dis_repeat=1)
    assert row["method"] == "dis-ultrafast" and row["epe_venus"] < 1.0
    assert row["epe_motorcycle"] < 5.0  # the wrong sign would give about twice the mean disparity (> 20 px)
    assert row["cpu_pairs_per_s"] > 0 and row["gpu_pairs_per_s"] is None
    assert "dis-ultrafast" in format_table([row])


def test_a_dis_job_does_not_import_torch(venus, tmp_path):
    """DIS with the xym encoding needs no PyTorch: its import alone costs more than the flow of a small shard."""
    import subprocess
    import sys

    small = np.ascontiguousarray(venus[0][:96, :128])
    _write_frames_shard(tmp_path / "frames.h5", [("vidA", 1, small, np.roll(small, 1, axis=1), "next")])
    settings = {"device": "cpu", "flow": {"method": "dis", "dis_preset": "ultrafast", "encoding": "xym"}}
    out = tmp_path / "flow.h5"
    code = ("import sys; from a2dpipe.cli import main; code = main(sys.argv[1:]); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, "flow", "--settings", json.dumps(settings),
                           "--frames", str(tmp_path / "frames.h5"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "no torch" and out.is_file()


# --- the flow cache's writer ------------------------------------------------------------------------------------


def _cache_arrays(path) -> dict:
    """Every dataset and group attribute of a flow cache, by path."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda key, obj: found.update(
            {key: obj[()] if isinstance(obj, h5py.Dataset) else dict(obj.attrs)}))
    return found


def test_the_threaded_writer_stores_what_the_calling_thread_stores_uncompressed_with_checksums(tmp_path):
    from a2dpipe.flow.encode import flow_images
    from a2dpipe.flow.store import FlowWriter, flow_chunks

    rng = np.random.default_rng(0)
    fields = [rng.normal(0, 4, (70, 90, 2)).astype(np.float32) for _ in range(9)]
    for threads in (0, 3):
        with FlowWriter(tmp_path / f"t{threads}.h5", method="test", encoding="wheel", threads=threads) as writer:
            for k, field in enumerate(fields, 1):
                writer.write("v", k, field, direction="next", neighbour_frame=k + 1)
            writer.seconds_per_frame = 0.0
    one, three = _cache_arrays(tmp_path / "t0.h5"), _cache_arrays(tmp_path / "t3.h5")
    assert one.keys() == three.keys() and len(one) == 1 + 9 * 4  # the video, then each frame and its datasets
    for key, value in one.items():
        assert (np.array_equal(value, three[key]) if isinstance(value, np.ndarray) else value == three[key]), key
    with FlowStore(tmp_path / "t3.h5") as store, h5py.File(tmp_path / "t3.h5", "r") as f:
        assert store.attrs["schema"] == "a2dpipe.flow/3" and store.attrs["frames"] == 9
        for k, field in enumerate(fields, 1):
            stored = field.astype(np.float16)
            image, mirror = flow_images(stored.astype(np.float32), "wheel")  # the bytes schema 2 stored
            assert np.array_equal(one[f"v/{k:05d}/rgb"], image) and np.array_equal(one[f"v/{k:05d}/rgb_mirror"], mirror)
            assert np.array_equal(one[f"v/{k:05d}/flow"], stored)
            for name in ("flow", "rgb", "rgb_mirror"):
                dataset = f[f"v/{k:05d}/{name}"]
                assert dataset.compression is None and dataset.fletcher32
                assert dataset.chunks == flow_chunks(dataset.shape)


def test_a_failure_on_the_writer_threads_fails_the_job_and_leaves_no_file(tmp_path):
    from a2dpipe.flow.store import FlowWriter

    path = tmp_path / "flow.h5"
    with pytest.raises(ValueError, match=r"flow must be \(H, W, 2\)"):
        with FlowWriter(path, method="test", encoding="xym", threads=2) as writer:
            writer.write("v", 1, np.zeros((4, 6, 2), np.float32))
            writer.write("v", 2, np.zeros((4, 6, 3), np.float32))  # the encoder's error, raised later
            writer.seconds_per_frame = 0.0
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(A2DError, match="frame v/00001 written twice"):
        with FlowWriter(path, method="test", encoding="xym", threads=2) as writer:
            writer.write("v", 1, np.zeros((4, 6, 2), np.float32))
            writer.write("v", 1, np.zeros((4, 6, 2), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_a_neural_flow_job_on_several_cpus_writes_what_one_cpu_writes(venus, tmp_path):
    """Reader processes, encoder threads and the writer thread change nothing in the cache but its timing."""
    from a2dpipe.flow.stage import compute_shard

    frame1, frame2 = small_pair(venus)
    records = [("vidA", k, frame1, frame2, "next" if k % 2 else "previous") for k in range(1, 6)]
    records.append(("vidB", 1, np.ascontiguousarray(frame1[:64]), np.ascontiguousarray(frame2[:64]), "next"))
    _write_frames_shard(tmp_path / "frames.h5", records)
    cfg = {"method": "flownets", "random_init": True, "encoding": "wheel", "wheel_max": None, "dis_preset": "medium",
           "weights": None, "raft_variant": "small", "batch_size": 2}
    for threads in (1, 3):
        torch.manual_seed(0)
        attrs = compute_shard(tmp_path / "frames.h5", tmp_path / f"t{threads}.h5", cfg, device="cpu", threads=threads)
        assert attrs["frames"] == 6
    one, three = _cache_arrays(tmp_path / "t1.h5"), _cache_arrays(tmp_path / "t3.h5")
    assert one.keys() == three.keys() and "vidB/00001/rgb_mirror" in one
    for key, value in one.items():
        assert (np.array_equal(value, three[key]) if isinstance(value, np.ndarray) else value == three[key]), key

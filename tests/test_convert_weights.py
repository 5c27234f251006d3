"""The official FCIS's weights: MXNet's ``.params`` reader against files real MXNet wrote, the converter's name
and channel mapping and its errors, and the official-layout FCIS's parts (legacy anchors, Caffe ResNet, the
official position-sensitive pooling against a loop over the CUDA kernel's arithmetic)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from a2dpipe.cli import main
from a2dpipe.errors import A2DError
from a2dpipe.masks import convert
from a2dpipe.masks.fcis_official import LegacyAnchorGenerator
from a2dpipe.masks.model import build_mask_model
from a2dpipe.masks.mxnet_params import read_params
from a2dpipe.masks.position_sensitive import psroi_pool

DATA = Path(__file__).resolve().parent / "data" / "mxnet"


def write_params(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An MXNet ``.params`` file (V2 records, as ``mx.nd.save`` writes them) of float32 / int32 arrays."""
    flags = {np.dtype(np.float32): 0, np.dtype(np.int32): 4}
    out = [struct.pack("<QQQ", 0x112, 0, len(arrays))]
    for array in arrays.values():
        out.append(struct.pack("<Iii", 0xF993FAC9, 0, array.ndim) + struct.pack(f"<{array.ndim}q", *array.shape))
        out.append(struct.pack("<iii", 1, 0, flags[array.dtype]) + array.astype(array.dtype.newbyteorder("<")).tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        out.append(struct.pack("<Q", len(name)) + name.encode())
    path.write_bytes(b"".join(out))


# --- reader ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_reader_returns_what_mxnet_saved(version):
    expected = np.load(DATA / "expected.npz")
    arrays = read_params(DATA / f"tiny_{version}.params")
    wanted = {name.split("/", 1)[1]: expected[name] for name in expected.files if name.startswith(version)}
    assert sorted(arrays) == sorted(wanted)
    for name, value in wanted.items():
        assert arrays[name].dtype == value.dtype and arrays[name].shape == value.shape, name
        np.testing.assert_array_equal(arrays[name], value)
    assert {a.dtype for a in arrays.values()} >= ({np.dtype(t) for t in ("float32", "float16", "float64", "int32")}
                                                  if version == "v2" else {np.dtype("float32")})


def test_reader_round_trips_the_test_writer(tmp_path):
    arrays = {"arg:w": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "aux:n": np.array([7, -1], np.int32)}
    write_params(tmp_path / "a.params", arrays)
    read = read_params(tmp_path / "a.params")
    for name, value in arrays.items():
        np.testing.assert_array_equal(read[name], value)


def test_reader_refuses_another_format(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(A2DError, match=r"model\.pt: not an MXNet NDArray \.params file"):
        read_params(path)


@pytest.mark.parametrize("cut", [4, 30, 100, 400])
def test_reader_names_a_truncated_file(tmp_path, cut):
    path = tmp_path / "cut.params"
    path.write_bytes((DATA / "tiny_v2.params").read_bytes()[:cut])
    with pytest.raises(A2DError, match=r"cut\.params: truncated MXNet \.params file"):
        read_params(path)


def test_reader_refuses_an_unknown_dtype_flag(tmp_path):
    path = tmp_path / "odd.params"
    write_params(path, {"arg:w": np.zeros(2, np.float32)})
    data = bytearray(path.read_bytes())
    flag_at = 24 + 4 + 4 + 4 + 8 + 8  # list header, magic, storage, rank, one dim, device
    data[flag_at:flag_at + 4] = struct.pack("<i", 99)
    path.write_bytes(bytes(data))
    with pytest.raises(A2DError, match="odd.params: array 0 has dtype flag 99"):
        read_params(path)


# --- converter --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_model():
    return build_mask_model(model="fcis", backbone="resnet101", num_classes=81, min_size=600, max_size=1000,
                            layout="official")


def official_arrays(model) -> dict[str, np.ndarray]:
    """Arrays of every official FCIS name, of the official shapes (zeros: the mapping is under test, not values)."""
    own = model.state_dict()
    arrays = {}
    for name, (key, _) in convert._name_map(model).items():
        shape = list(own[key].shape)
        if name.startswith(("rpn_cls_score", "fcis_bbox")):  # background and foreground outputs
            shape[0] *= 2
        arrays[name] = np.zeros(shape, np.float32)
    return arrays


def test_name_map_covers_the_network_once(official_model):
    targets = [key for key, _ in convert._name_map(official_model).values()]
    weights = [k for k in official_model.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(targets) == len(set(targets)) == len(weights) == 532
    assert set(targets) == set(weights)


def test_converter_refuses_unknown_and_missing_names(tmp_path, official_model):
    path = tmp_path / "other.params"
    write_params(path, {"arg:fcis_cls_seg_weight": np.zeros((2 * 98, 8, 1, 1), np.float32),
                        "arg:fc6_weight": np.zeros((4, 2), np.float32)})
    with pytest.raises(A2DError, match=r"other\.params: not the official FCIS ResNet-101's weights: 1 arrays this "
                       r"network has no place for: fc6_weight; \d+ tensors of the network it lacks"):
        convert.convert_fcis_mxnet(path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_converter_names_a_shape_mismatch(official_model):
    arrays = official_arrays(official_model)
    arrays["res2a_branch2b_weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(A2DError, match=r"x\.params: .*arrays of another shape: backbone\.body\.layer1\.0\.conv2\."
                       r"weight \(64, 64, 1, 1\) \(the network wants \(64, 64, 3, 3\)\)"):
        convert.fcis_state_dict(arrays, official_model, Path("x.params"))


def test_converter_refuses_names_without_mxnet_prefix(tmp_path):
    path = tmp_path / "bare.params"
    write_params(path, {"fcis_cls_seg_weight": np.zeros((2, 1), np.float32)})
    with pytest.raises(A2DError, match="bare.params: array name 'fcis_cls_seg_weight' lacks MXNet's arg: / aux:"):
        convert.convert_fcis_mxnet(path, tmp_path / "out.pt")


def test_command_reports_a_bad_file(tmp_path, capsys):
    path = tmp_path / "not.params"
    path.write_bytes(b"\x00" * 64)
    assert main(["convert-weights", "fcis-mxnet", str(path), str(tmp_path / "out.pt")]) == 1
    assert "not.params: not an MXNet NDArray .params file" in capsys.readouterr().err


def test_score_maps_reordered_to_the_project_layout():
    classes, k = 3, 2
    # official channel ((c * 2 + o) * k + i) * k + j holds its own index; o = 1 is inside
    official = np.arange(2 * classes * k * k, dtype=np.float32)[:, None]
    ours = convert.score_map_order(classes, k)(official)[:, 0]
    for part, o in ((0, 1), (1, 0)):  # ours: part 0 inside, 1 outside
        for c in range(classes):
            for cell in range(k * k):
                assert ours[(part * classes + c) * k * k + cell] == (c * 2 + o) * k * k + cell


def test_rpn_logit_gives_the_official_softmax():
    scores = np.array([[0.3], [-1.2], [2.0], [0.5]], np.float32)  # 2 anchors: background rows, then foreground
    logit = convert._foreground_minus_background(scores)[:, 0]
    softmax = np.exp(scores[2:, 0]) / (np.exp(scores[2:, 0]) + np.exp(scores[:2, 0]))
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), softmax, rtol=1e-6)


def test_box_maps_take_the_foreground_deltas_scaled():
    k = 1
    official = np.arange(8, dtype=np.float32)[:, None]  # background dx..dh, foreground dx..dh
    ours = convert.box_map_order(k, (10.0, 10.0, 5.0, 5.0))(official)[:, 0]
    np.testing.assert_allclose(ours, [4 * 2.0, 5 * 2.0, 6 * 2.5, 7 * 2.5])


def test_converter_keeps_float64_when_asked(official_model):
    """The float64 conversion (the numerical check against MXNet in float64) rounds nothing to float32."""
    arrays = official_arrays(official_model)
    rng = np.random.default_rng(0)
    for name in ("conv1_weight", "rpn_cls_score_weight", "fcis_bbox_weight"):
        arrays[name] = rng.normal(size=arrays[name].shape)
    state = convert.fcis_state_dict(arrays, official_model, Path("x.params"), dtype=np.float64)
    assert {value.dtype for value in state.values() if value.is_floating_point()} == {torch.float64}
    np.testing.assert_array_equal(state["backbone.body.conv1.weight"].numpy(), arrays["conv1_weight"][:, ::-1])
    scores = arrays["rpn_cls_score_weight"]
    np.testing.assert_array_equal(state["rpn.head.cls_logits.weight"].numpy(), scores[12:] - scores[:12])
    weights = official_model.roi_heads.box_coder.weights
    expected = convert.box_map_order(7, weights)(arrays["fcis_bbox_weight"].astype(np.float32))
    np.testing.assert_allclose(state["roi_heads.box_maps.weight"].numpy(), expected, rtol=1e-6)
    assert not np.array_equal(state["roi_heads.box_maps.weight"].numpy(), expected)


# --- official layout ------------------------------------------------------------------------------------------------


def test_legacy_anchors_are_faster_rcnn_s_plus_one_at_the_end():
    anchors = LegacyAnchorGenerator(((128, 256, 512),), ((0.5, 1.0, 2.0),)).cell_anchors[0]
    inclusive = anchors - torch.tensor([0.0, 0.0, 1.0, 1.0])
    expected = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199], [-56, -56, 71, 71],
                [-120, -120, 135, 135], [-248, -248, 263, 263], [-36, -80, 51, 95], [-80, -168, 95, 183],
                [-168, -344, 183, 359]]  # py-faster-rcnn's generate_anchors()
    assert inclusive.tolist() == expected


def test_caffe_resnet_strides_the_1x1_and_dilates_res5a(official_model):
    body = official_model.backbone.body
    assert body.layer2[0].conv1.stride == (2, 2) and body.layer2[0].conv2.stride == (1, 1)
    assert body.layer3[0].conv1.stride == (2, 2) and body.layer3[0].conv2.stride == (1, 1)
    assert body.layer4[0].conv2.dilation == (2, 2) and body.layer4[0].conv2.stride == (1, 1)
    assert official_model.rpn.head.conv[0].out_channels == 512
    assert official_model.rpn.anchor_generator.num_anchors_per_location() == [12]


def test_official_layout_refuses_the_tiny_backbone_and_torchvision_imagenet_weights():
    with pytest.raises(ValueError, match="official layout apply to the resnet50 / resnet101"):
        build_mask_model(model="fcis", backbone="tiny", num_classes=3, min_size=48, max_size=64, layout="official")
    with pytest.raises(ValueError, match="official FCIS layout starts from the converted official weights"):
        build_mask_model(model="fcis", backbone="resnet50", num_classes=3, min_size=48, max_size=64,
                         layout="official", imagenet_weights="resnet50.pth")
    with pytest.raises(ValueError, match="FCIS layout must be one of"):
        build_mask_model(model="fcis", num_classes=3, min_size=48, max_size=64, layout="caffe")


def _psroi_loop(maps, rois, k, size, scale):
    """msracver/FCIS psroi_pooling.cu's forward kernel, one output value at a time, in float32."""
    f32 = np.float32
    out = np.zeros((len(rois), maps.shape[1] // (k * k), size, size), np.float32)
    height, width = maps.shape[2:]
    for n, roi in enumerate(rois.numpy()):
        start_w, start_h = f32(math.floor(roi[1] + 0.5)) * f32(scale), f32(math.floor(roi[2] + 0.5)) * f32(scale)
        end_w = f32(math.floor(roi[3] + 0.5) + 1.0) * f32(scale)
        end_h = f32(math.floor(roi[4] + 0.5) + 1.0) * f32(scale)
        bin_h, bin_w = max(end_h - start_h, f32(0.1)) / f32(size), max(end_w - start_w, f32(0.1)) / f32(size)
        for ctop in range(out.shape[1]):
            for ph in range(size):
                for pw in range(size):
                    h0 = min(max(math.floor(f32(ph) * bin_h + start_h), 0), height)
                    h1 = min(max(math.ceil(f32(ph + 1) * bin_h + start_h), 0), height)
                    w0 = min(max(math.floor(f32(pw) * bin_w + start_w), 0), width)
                    w1 = min(max(math.ceil(f32(pw + 1) * bin_w + start_w), 0), width)
                    c = (ctop * k + ph * k // size) * k + pw * k // size
                    if h1 > h0 and w1 > w0:
                        out[n, ctop, ph, pw] = maps[int(roi[0]), c, h0:h1, w0:w1].double().mean()
    return out


def test_psroi_pool_equals_the_official_kernel():
    torch.manual_seed(0)
    k, size, classes = 2, 5, 2
    maps = torch.randn(2, 2 * classes * k * k, 9, 11)
    rois = torch.tensor([[0, 3.2, 4.7, 60.4, 50.5], [1, 0.0, 0.0, 175.0, 143.0], [0, 80.0, 20.0, 82.0, 22.0],
                         [1, 150.0, 130.0, 200.0, 160.0]])
    ours = psroi_pool(maps, rois + torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]), k, size, 1 / 16, chunk=3)
    assert ours.shape == (4, 2, classes, size, size)
    np.testing.assert_allclose(ours.reshape(4, -1, size, size).numpy(), _psroi_loop(maps, rois, k, size, 1 / 16),
                               atol=1e-6)


def test_psroi_pool_is_differentiable():
    maps = torch.randn(1, 2 * 2 * 4, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 8.0, 4.0, 70.0, 60.0], [0, 20.0, 30.0, 90.0, 80.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m: psroi_pool(m, rois, 2, 3, 1 / 16), (maps,))

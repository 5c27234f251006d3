"""The official FCIS run in real MXNet, the reference side of the converter's numerical check.

    <venv with mxnet==1.9.1 "numpy<1.24">/bin/python benchmarks/fcis_mxnet.py --fcis-repo FCIS --out DIR
    python benchmarks/fcis_mxnet_compare.py --out DIR          # this project's side, in the project's venv

Builds the official test symbol (``fcis/symbols/resnet_v1_101_fcis.py`` of a msracver/FCIS checkout, COCO config:
81 classes, class-agnostic boxes, 12 anchors, two box iterations) with random weights, saves them as
``DIR/fcis_random-0000.params`` (``mx.nd.save``, as the published file) and writes its outputs on ``--images``
random images to ``DIR/reference.npz``. The operators the official code adds to MXNet and 1.9.1 lacks are
CustomOps here, written from the official code: ``ChannelOperator`` (``operator_cxx/channel_operator*.cu``:
Group_Max, Group_Softmax, Group_Pick with Score_Pick), ``proposal`` (``operator_py/proposal.py``, its NumPy NMS
``lib/nms/nms.py``) and ``BoxParser`` (``operator_py/box_parser.py``, ``lib/bbox/bbox_transform.py``);
``PSROIPooling`` is MXNet's own ``contrib`` operator.

``--dtype float64`` runs the whole network in float64 (parameters, input and every operator), to tell float32
rounding from a difference of implementation. The weights are the same in both dtypes (drawn in float64, rounded
to float32, saved in ``--dtype``), and so are the images. Departures from the official code in float64 only:
``SoftmaxActivation``, which has no float64 kernel, is ``softmax`` over the same axis (:func:`softmax_activation_64`);
the proposal operator's NMS, which casts the boxes to float32, keeps them in float64 (its RoIs output too).

``--fixture DIR`` instead writes the reader's test files (``tests/data/mxnet``): two small ``.params`` files (V2
records of four dtypes; V3 records, NumPy semantics, with a 0-d array) and ``expected.npz``, what MXNet reads back.
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import sys
import types
from pathlib import Path

import mxnet as mx
import numpy as np

PIXEL_MEANS_BGR = np.array([103.06, 115.90, 123.15])  # float64, as config.network.PIXEL_MEANS


def legacy_anchors(base=16, ratios=(0.5, 1, 2), scales=(4, 8, 16, 32)) -> np.ndarray:
    """lib/rpn/generate_anchor.py's generate_anchors."""
    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws, hs, x, y):
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack((x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)))

    w, h, x, y = whctrs(np.array([1, 1, base, base]) - 1)
    ws = np.round(np.sqrt(w * h / np.array(ratios)))
    ratio_anchors = mk(ws, np.round(ws * np.array(ratios)), x, y)
    out = []
    for anchor in ratio_anchors:
        w, h, x, y = whctrs(anchor)
        out.append(mk(w * np.array(scales), h * np.array(scales), x, y))
    return np.vstack(out)


def bbox_pred(boxes, deltas):
    """lib/bbox/bbox_transform.py nonlinear_pred."""
    boxes = boxes.astype(np.float64)
    widths, heights = boxes[:, 2] - boxes[:, 0] + 1.0, boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * (widths - 1.0), boxes[:, 1] + 0.5 * (heights - 1.0)
    dx, dy, dw, dh = deltas[:, 0::4], deltas[:, 1::4], deltas[:, 2::4], deltas[:, 3::4]
    px, py = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
    pw, ph = np.exp(dw) * widths[:, None], np.exp(dh) * heights[:, None]
    out = np.zeros(deltas.shape)
    out[:, 0::4], out[:, 1::4] = px - 0.5 * (pw - 1.0), py - 0.5 * (ph - 1.0)
    out[:, 2::4], out[:, 3::4] = px + 0.5 * (pw - 1.0), py + 0.5 * (ph - 1.0)
    return out


def clip_boxes(boxes, shape):
    """lib/bbox/bbox_transform.py clip_boxes."""
    boxes[:, 0::4] = np.maximum(np.minimum(boxes[:, 0::4], shape[1] - 1), 0)
    boxes[:, 1::4] = np.maximum(np.minimum(boxes[:, 1::4], shape[0] - 1), 0)
    boxes[:, 2::4] = np.maximum(np.minimum(boxes[:, 2::4], shape[1] - 1), 0)
    boxes[:, 3::4] = np.maximum(np.minimum(boxes[:, 3::4], shape[0] - 1), 0)
    return boxes


def nms(dets, thresh):
    """lib/nms/nms.py nms (the CPU twin of the GPU NMS the official proposal operator calls)."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        ovr = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


class Proposal(mx.operator.CustomOp):
    """operator_py/proposal.py's forward (one image, no score output), NMS and output in the network's type (the
    official code's float32, or float64)."""

    kept: list[int] = []  # proposals before the padding, per call (one call per image)

    def __init__(self, stride, scales, ratios, pre, post, thresh, min_size):
        super().__init__()
        self.stride, self.pre, self.post, self.thresh, self.min_size = stride, pre, post, thresh, min_size
        self.anchors = legacy_anchors(stride, ratios, scales)

    def forward(self, is_train, req, in_data, out_data, aux):
        count, dtype = len(self.anchors), in_data[0].dtype
        scores = in_data[0].asnumpy()[:, count:, :, :]
        deltas, im_info = in_data[1].asnumpy(), in_data[2].asnumpy()[0]
        height, width = scores.shape[-2:]
        sx, sy = np.meshgrid(np.arange(width) * self.stride, np.arange(height) * self.stride)
        shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).T
        anchors = (self.anchors[None] + shifts[:, None]).reshape(-1, 4)
        proposals = clip_boxes(bbox_pred(anchors, deltas.transpose(0, 2, 3, 1).reshape(-1, 4)), im_info[:2])
        scores = scores.transpose(0, 2, 3, 1).reshape(-1, 1)
        ws, hs = proposals[:, 2] - proposals[:, 0] + 1, proposals[:, 3] - proposals[:, 1] + 1
        keep = np.where((ws >= self.min_size) & (hs >= self.min_size))[0]
        proposals, scores = proposals[keep], scores[keep]
        order = scores.ravel().argsort()[::-1][:self.pre]
        proposals, scores = proposals[order], scores[order]
        keep = nms(np.hstack((proposals, scores)).astype(dtype), self.thresh)[:self.post]
        Proposal.kept.append(len(keep))
        if len(keep) < self.post:  # the official operator pads with repeats; marked here by the count output
            keep = keep + [keep[0]] * (self.post - len(keep))
        blob = np.hstack((np.zeros((len(keep), 1)), proposals[keep]))
        self.assign(out_data[0], req[0], mx.nd.array(blob, dtype=dtype))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        pass


@mx.operator.register("proposal")
class ProposalProp(mx.operator.CustomOpProp):
    def __init__(self, feat_stride="16", scales="(8, 16, 32)", ratios="(0.5, 1, 2)", output_score="False",
                 rpn_pre_nms_top_n="6000", rpn_post_nms_top_n="300", nms_threshold="0.3", rpn_min_size="16"):
        super().__init__(need_top_grad=False)
        self.args = (int(feat_stride), eval(scales), eval(ratios), int(rpn_pre_nms_top_n), int(rpn_post_nms_top_n),
                     float(nms_threshold), int(rpn_min_size))

    def list_arguments(self):
        return ["cls_prob", "bbox_pred", "im_info"]

    def infer_shape(self, in_shape):
        return [in_shape[0], in_shape[1], (in_shape[0][0], 3)], [(self.args[4], 5)], []

    def create_operator(self, ctx, shapes, dtypes):
        return Proposal(*self.args)


class BoxParser(mx.operator.CustomOp):
    """operator_py/box_parser.py's forward."""

    def __init__(self, clip, agnostic, means, stds):
        super().__init__()
        self.clip, self.agnostic, self.means, self.stds = clip, agnostic, np.array(means), np.array(stds)

    def forward(self, is_train, req, in_data, out_data, aux):
        rois, delta, cls_prob, im_info = (x.asnumpy() for x in in_data)
        index = np.ones(len(rois)) if self.agnostic else np.argmax(cls_prob[:, 1:], axis=1) + 1
        index = (index[:, None] * 4 + np.arange(4)).astype(np.intp)
        delta = delta[np.arange(len(rois))[:, None], index] * self.stds + self.means
        boxes = bbox_pred(rois[:, 1:], delta)
        if self.clip:
            boxes = clip_boxes(boxes, im_info[0, :2])
        rois[:, 1:] = boxes
        self.assign(out_data[0], req[0], mx.nd.array(rois, dtype=rois.dtype))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        pass


@mx.operator.register("BoxParser")
class BoxParserProp(mx.operator.CustomOpProp):
    def __init__(self, b_clip_boxes, bbox_class_agnostic, bbox_means="(0,0,0,0)", bbox_stds="(0.1,0.1,0.2,0.2)"):
        super().__init__(need_top_grad=False)
        self.args = (b_clip_boxes == "True", bbox_class_agnostic == "True", eval(bbox_means), eval(bbox_stds))

    def list_arguments(self):
        return ["bottom_rois", "bbox_delta", "cls_prob", "im_info"]

    def infer_shape(self, in_shape):
        return in_shape, [in_shape[0]], []

    def create_operator(self, ctx, shapes, dtypes):
        return BoxParser(*self.args)


class ChannelOperator(mx.operator.CustomOp):
    """operator_cxx/channel_operator.cu's forward kernels (the official CPU code is not implemented)."""

    def __init__(self, operation, group):
        super().__init__()
        self.operation, self.group = operation, group

    def forward(self, is_train, req, in_data, out_data, aux):
        data = in_data[0].asnumpy()
        grouped = data.reshape(data.shape[0], self.group, -1, *data.shape[2:])
        if self.operation == "Group_Max":
            out = grouped.max(2)
        elif self.operation == "Group_Softmax":
            e = np.exp(grouped - grouped.max(2, keepdims=True))
            out = (e / e.sum(2, keepdims=True)).reshape(data.shape)
        else:  # Group_Pick, Score_Pick: the highest-scoring class other than the background (GetMaxIdxKernel)
            pick = in_data[1].asnumpy().reshape(data.shape[0], self.group)[:, 1:].argmax(1) + 1
            out = grouped[np.arange(data.shape[0]), pick]
        self.assign(out_data[0], req[0], mx.nd.array(out, dtype=data.dtype))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        pass


@mx.operator.register("channel_operator")
class ChannelOperatorProp(mx.operator.CustomOpProp):
    def __init__(self, operation, group, pick_type="Label_Pick"):
        super().__init__(need_top_grad=False)
        self.operation, self.group = operation, int(group)

    def list_arguments(self):
        return ["data", "pick_idx"] if self.operation == "Group_Pick" else ["data"]

    def infer_shape(self, in_shape):
        n, c, h, w = in_shape[0]
        out = {"Group_Max": (n, self.group, h, w), "Group_Softmax": (n, c, h, w)}.get(
            self.operation, (n, c // self.group, h, w))
        return in_shape, [out], []

    def create_operator(self, ctx, shapes, dtypes):
        return ChannelOperator(self.operation, self.group)


def channel_operator(name, data, group, op_type, pick_idx=None, pick_type="Label_Pick"):
    """``mx.contrib.sym.ChannelOperator``'s signature, as the official symbol calls it."""
    if pick_type != "Score_Pick" and op_type == "Group_Pick":
        raise NotImplementedError("only the test symbol's Score_Pick is needed")
    inputs = {"data": data} if pick_idx is None else {"data": data, "pick_idx": pick_idx}
    return mx.sym.Custom(name=name, op_type="channel_operator", operation=op_type, group=group, pick_type=pick_type,
                         **inputs)


SOFTMAX_ACTIVATION = mx.sym.SoftmaxActivation


def softmax_activation_64(data, mode="instance", name=None):
    """``SoftmaxActivation`` for float64: that operator reads its tensors as float32 only (``real_t`` in
    softmax_activation-inl.h); ``softmax`` over axis 1 (of the data flattened to 2-d, for mode ``instance``) is the
    same function, with float64 kernels."""
    if mode == "channel":
        return mx.sym.softmax(data=data, axis=1, name=name)
    return mx.sym.reshape_like(mx.sym.softmax(data=mx.sym.flatten(data), axis=1, name=name), data)


def load_symbol(repo: Path, dtype=np.float32):
    """The official ``resnet_v1_101_fcis`` class, its Python 2 imports stubbed (cPickle is pickle; the training
    operators it imports are not used by the test symbol); in float64, its ``SoftmaxActivation`` is
    :func:`softmax_activation_64`."""
    sys.modules["cPickle"] = pickle
    utils, symbol = types.ModuleType("utils"), types.ModuleType("utils.symbol")
    symbol.Symbol = type("Symbol", (object,), {})
    sys.modules.update({"utils": utils, "utils.symbol": symbol, "operator_py": types.ModuleType("operator_py")})
    for name in ("proposal", "proposal_annotator", "box_parser", "box_annotator_ohem"):
        sys.modules[f"operator_py.{name}"] = types.ModuleType(f"operator_py.{name}")
    mx.contrib.sym.ChannelOperator = channel_operator
    mx.sym.SoftmaxActivation = softmax_activation_64 if np.dtype(dtype) == np.float64 else SOFTMAX_ACTIVATION
    spec = importlib.util.spec_from_file_location("resnet_v1_101_fcis",
                                                  repo / "fcis" / "symbols" / "resnet_v1_101_fcis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.resnet_v1_101_fcis


def ns(**items):
    return types.SimpleNamespace(**items)


def coco_config():
    """The test-time keys of experiments/fcis/cfgs/resnet_v1_101_coco_fcis_end2end_ohem.yaml."""
    test = ns(BATCH_IMAGES=1, CXX_PROPOSAL=False, ITER=2, RPN_MIN_SIZE=2, RPN_NMS_THRESH=0.7, RPN_PRE_NMS_TOP_N=6000,
              RPN_POST_NMS_TOP_N=300)
    train = ns(CONVNEW3=True, BBOX_MEANS=(0.0, 0.0, 0.0, 0.0), BBOX_STDS=(0.2, 0.2, 0.5, 0.5))
    network = ns(NUM_ANCHORS=12, RPN_FEAT_STRIDE=16, ANCHOR_SCALES=(4, 8, 16, 32), ANCHOR_RATIOS=(0.5, 1, 2))
    return ns(CLASS_AGNOSTIC=True, MASK_SIZE=21, TEST=test, TRAIN=train, network=network,
              dataset=ns(NUM_CLASSES=81))


HEAD_SCALE = {"conv1": np.sqrt(2.0) / 128, "rpn_cls_score": 0.1, "rpn_bbox_pred": 0.1, "fcis_cls_seg": 1.0,
              "fcis_bbox": 0.2}


def random_params(sym, shape, rng, dtype):
    """Random weights that keep activations of order one through 101 layers (``conv1`` scaled for the 0-255
    input, He-scaled convolutions, batch norm statistics near (0, 1), each residual branch's last scale small), and
    head outputs of order one (RPN and box deltas ~0.1: proposals of a sensible size); float32 values in
    ``dtype``."""
    arg_shapes, _, aux_shapes = sym.infer_shape(data=shape, im_info=(1, 3))
    args, auxs = {}, {}
    for name, dims in zip(sym.list_arguments(), arg_shapes):
        if name in ("data", "im_info"):
            continue
        if name.endswith("_weight"):
            fan_in = int(np.prod(dims[1:]))
            std = HEAD_SCALE.get(name[:-len("_weight")], np.sqrt(2.0)) / np.sqrt(fan_in)
            value = rng.normal(0, std, dims)
        elif name.endswith("_gamma"):
            value = rng.uniform(0.1, 0.3, dims) if name.endswith("branch2c_gamma") else rng.uniform(0.5, 1.5, dims)
        else:  # biases and betas
            value = rng.normal(0, 0.1, dims)
        args[name] = mx.nd.array(value.astype(np.float32), dtype=dtype)
    for name, dims in zip(sym.list_auxiliary_states(), aux_shapes):
        value = rng.uniform(0.5, 1.5, dims) if name.endswith("moving_var") else rng.normal(0, 0.1, dims)
        auxs[name] = mx.nd.array(value.astype(np.float32), dtype=dtype)
    return args, auxs


INTERNALS = {"res4": "res4b22_relu_output", "res5": "res5c_relu_output", "rpn_prob": "rpn_cls_prob_reshape_output",
             "score_maps": "fcis_cls_seg_output", "box_maps": "fcis_bbox_output"}
OUTPUTS = ("rois", "cls_prob", "bbox_pred", "seg_pred")


def run_image(sym, args, auxs, image_rgb, dtype):
    """The symbol's outputs on one RGB uint8 image, in ``dtype``: the input as lib/utils/image.py's transform makes
    it (BGR minus the means in float64), cast to ``dtype``."""
    data = (image_rgb[:, :, ::-1] - PIXEL_MEANS_BGR).transpose(2, 0, 1)[None].astype(dtype)
    height, width = image_rgb.shape[:2]
    executor = sym.simple_bind(mx.cpu(), grad_req="null", type_dict={"data": dtype, "im_info": dtype},
                               data=data.shape, im_info=(1, 3))
    executor.copy_params_from(args, auxs)
    executor.forward(is_train=False, data=mx.nd.array(data, dtype=dtype),
                     im_info=mx.nd.array([[height, width, 1.0]], dtype=dtype))
    names = list(OUTPUTS) + list(INTERNALS)
    return {name: out.asnumpy() for name, out in zip(names, executor.outputs)}


def write_fixture(folder: Path) -> None:
    """The reader's test files, written and read back by MXNet."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"arg:conv_weight": (np.arange(24).reshape(2, 3, 2, 2) / 7 - 1).astype(np.float32),
              "arg:fc_bias": np.array([0.5, -1.25, 3.0], np.float16),
              "aux:bn_moving_var": np.array([1e-3, 2.5], np.float64), "arg:index": np.array([[1, -2], [3, 4]], np.int32)}
    mx.nd.save(str(folder / "tiny_v2.params"), {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
    expected = {f"v2/{k}": v.asnumpy() for k, v in mx.nd.load(str(folder / "tiny_v2.params")).items()}
    mx.npx.set_np()
    mx.npx.save(str(folder / "tiny_v3.params"), {"arg:w": mx.np.array(np.arange(6, dtype=np.float32).reshape(2, 3)),
                                                 "arg:s": mx.np.array(np.float32(2.5))})
    expected.update({f"v3/{k}": v.asnumpy() for k, v in mx.npx.load(str(folder / "tiny_v3.params")).items()})
    np.savez(folder / "expected.npz", **expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, help="write the reader's test files into this folder instead")
    parser.add_argument("--fcis-repo", type=Path, help="a msracver/FCIS checkout")
    parser.add_argument("--out", type=Path, help="folder for the .params and reference.npz")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 480), help="height width (multiples of 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="of the weights, the input and every operator (float32: as the official code)")
    args = parser.parse_args()
    if args.fixture:
        write_fixture(args.fixture)
        return
    if not (args.fcis_repo and args.out):
        parser.error("--fcis-repo and --out are needed (or --fixture)")
    rng = np.random.default_rng(args.seed)
    test_symbol = load_symbol(args.fcis_repo, args.dtype)().get_symbol(coco_config(), is_train=False)
    internals = test_symbol.get_internals()
    sym = mx.sym.Group([test_symbol[i] for i in range(len(OUTPUTS))] + [internals[n] for n in INTERNALS.values()])
    height, width = args.size
    weights, stats = random_params(test_symbol, (1, 3, height, width), rng, np.dtype(args.dtype))
    args.out.mkdir(parents=True, exist_ok=True)
    mx.nd.save(str(args.out / "fcis_random-0000.params"),
               {**{f"arg:{k}": v for k, v in weights.items()}, **{f"aux:{k}": v for k, v in stats.items()}})
    results = {}
    for index in range(args.images):
        smooth = rng.uniform(0, 255, (height // 8 + 1, width // 8 + 1, 3))  # blocky images, some structure
        image = np.kron(smooth, np.ones((8, 8, 1)))[:height, :width] + rng.normal(0, 20, (height, width, 3))
        image = image.clip(0, 255).astype(np.uint8)
        outputs = run_image(sym, weights, stats, image, np.dtype(args.dtype))
        results.update({f"{index}/{k}": v for k, v in outputs.items()})
        results[f"{index}/image"], results[f"{index}/kept"] = image, np.array(Proposal.kept[-1])
        print(f"image {index}: {Proposal.kept[-1]} proposals kept of {outputs['rois'].shape[0] // 2}")
    np.savez(args.out / "reference.npz", **results)


if __name__ == "__main__":
    main()

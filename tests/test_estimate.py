import copy
import math
import time

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from a2dpipe.cli import main
from a2dpipe.config import load_config
from a2dpipe.evaluation import estimate
from a2dpipe.evaluation.paper_results import TIMING_MS

from conftest import REPO

PAPER = REPO / "config" / "paper.yaml"
REAL_METADATA = REPO.parent / "shared" / "real-data" / "a2d-metadata" / "videoset.csv"


@pytest.fixture(scope="module")
def tiny():
    return load_config(REPO / "tests" / "config.tiny.yaml")


def test_flop_count_of_a_small_conv_net_is_the_hand_count():
    with torch.device("meta"):
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1, stride=2),
                            nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        flops = estimate.count_flops(net, torch.empty(2, 3, 16, 16))
    # 2 FLOPs per multiply-add: outputs x (inputs per output)
    conv1 = 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)
    conv2 = 2 * (2 * 4 * 8 * 8) * 8
    linear = 2 * (2 * 10) * (4 * 8 * 8)
    assert flops == conv1 + conv2 + linear


def test_frame_counts_and_size_are_those_of_the_a2d_release():
    if not REAL_METADATA.exists():
        pytest.skip("the real A2D metadata (shared/real-data/a2d-metadata) is not present")
    videos = pd.read_csv(REAL_METADATA, header=None,
                         names=["video", "label", "start", "end", "height", "width", "frames", "annotated", "usage"])
    per_split = videos.groupby("usage")["annotated"].sum()
    assert estimate.A2D_FRAMES == {"train": per_split[0], "test": per_split[1]}
    assert (videos["height"] == estimate.A2D_FRAME_SIZE[0]).all()
    mean_width = (videos["width"] * videos["annotated"]).sum() / videos["annotated"].sum()
    assert estimate.A2D_FRAME_SIZE[1] == round(mean_width)


def _by_stage(rows):
    return {r["stage"]: r for r in rows}


def test_estimate_scales_linearly_with_iterations_and_frames(tiny, monkeypatch):
    base = _by_stage(estimate.work_units(tiny))
    longer = copy.deepcopy(tiny)
    longer["segmentation"]["stage1"]["iterations"] *= 2
    longer["masks"]["iterations"] *= 3
    longer["masks"]["finetune_iterations"] *= 3
    monkeypatch.setattr(estimate, "A2D_FRAMES", {k: 2 * v for k, v in estimate.A2D_FRAMES.items()})
    scaled = _by_stage(estimate.work_units(longer))
    factors = {"train stage 1 (rgbflow)": 2, "train mask models": 3, "region masks": 2, "inference ours (rgbflow)": 2}
    for stage, factor in factors.items():
        assert scaled[stage]["units"] == factor * base[stage]["units"]
        assert scaled[stage]["flops"] == base[stage]["flops"]  # the work of one unit does not change
    one = estimate.estimate_table(list(base.values()), amp=False).set_index("stage")
    other = estimate.estimate_table(list(scaled.values()), amp=False).set_index("stage")
    for stage, factor in factors.items():
        for device in estimate.DEVICES:
            assert other.loc[stage, f"{device} hours"] == pytest.approx(factor * one.loc[stage, f"{device} hours"])
    assert not any(stage.startswith("flow") for stage in base)  # DIS runs on the CPU: nothing to count
    # two streams: twice the front-end of one
    assert base["inference baseline (rgbflow)"]["flops"] > 1.9 * base["inference baseline (rgb)"]["flops"]


def test_time_is_flops_over_peak_times_utilisation():
    units = [{"stage": "region masks", "unit": "frame", "units": 1000, "flops": 1e12}]
    row = estimate.estimate_table(units, amp=True, cpu_flops_per_s=1e10).iloc[0]
    k80, h200 = estimate.DEVICES["K80"], estimate.DEVICES["H200"]
    assert row["K80 ms_per_unit"] == pytest.approx(1000 * 1e12 / (k80.fp32 * k80.utilisation))  # no bf16 on a K80
    assert row["H200 ms_per_unit"] == pytest.approx(1000 * 1e12 / (h200.bf16 * h200.utilisation))
    assert row["this CPU hours"] == pytest.approx(1000 * 100 / 3600)
    assert row["paper K80 ms_per_unit"] == TIMING_MS["masks"] and row["basis"] == estimate.BASIS


def test_command_on_the_paper_preset_writes_the_table_in_seconds(tmp_path):
    out = tmp_path / "timing" / "estimate.csv"
    start = time.perf_counter()
    assert main(["estimate", "--config", str(PAPER), "--out", str(out)]) == 0
    # meta-device counts and the CPU side's few frames: seconds, even on a busy machine (59 s at load 23 on 2 cores)
    assert time.perf_counter() - start < 120
    table = pd.read_csv(out).set_index("stage")
    paper = yaml.safe_load(PAPER.read_text())
    assert table.loc["train stage 1 (rgbflow)", "units"] == paper["segmentation"]["stage1"]["iterations"]
    assert table.loc["train stage 2 (rgbflow)", "units"] == paper["segmentation"]["stage2"]["iterations"]
    assert table.loc["region masks", "units"] == sum(estimate.A2D_FRAMES.values())
    assert table.loc["inference ours (rgbflow)", "paper K80 ms_per_unit"] == TIMING_MS["region"]
    flow = f"flow ({paper['flow']['method']})"
    assert table.loc[flow, "units"] == sum(estimate.A2D_FRAMES.values())
    assert table.loc[flow, "paper K80 ms_per_unit"] == TIMING_MS["flow"]
    assert (table["basis"] == estimate.BASIS).all()
    # two ResNet-101 streams at 320 x 320, batch 10: trillions of FLOPs per step, hours on one K80
    assert table.loc["train stage 1 (rgbflow)", "gflop_per_unit"] > 1000
    assert table.loc["train stage 1 (rgbflow)", "K80 hours"] > 1
    assert (table["this CPU ms_per_unit"] > 0).all()
    # the CPU side, measured: every stage has some, the loader's workers feed training and prediction
    assert (table["cpu ms_per_unit"] > 0).all()
    assert table.loc["train stage 1 (rgbflow)", "cpu processes"] == paper["segmentation"]["loader_workers"]
    assert table.loc["region masks", "cpu processes"] == 1
    # a flow job's readers and encoders: as many as the loader's workers (the job asks for as many CPUs)
    assert table.loc[flow, "cpu processes"] == paper["segmentation"]["loader_workers"]
    for device in estimate.DEVICES:
        assert (table[f"{device} wall hours"] >= table[f"{device} hours"]).all()
        assert set(table[f"{device} bound"]) <= {"GPU", "CPU"}
    markdown = out.with_suffix(".md").read_text()
    assert estimate.BASIS in markdown and "this CPU" in markdown and "K80" in markdown
    assert "Stages in all, with the CPU side: K80" in markdown


def test_mask_training_is_fed_by_the_loaders_workers_or_without_them_by_a_thread(tiny):
    """As training reads its frames: worker processes when segmentation.loader_workers asks for them (the rule
    asks for their CPUs), else one read-ahead thread beside the step."""
    for workers, fed_by in ((0, "thread"), (3, "loader")):
        config = copy.deepcopy(tiny)
        config["segmentation"]["loader_workers"] = workers
        row = _by_stage(estimate.work_units(config))["train mask models"]
        assert row["fed_by"] == fed_by
        costs = {"mask_frame": 9.0}
        table = estimate.estimate_table([row], amp=True, cpu_costs=costs, workers=workers).iloc[0]
        assert table["cpu processes"] == max(workers, 1)


def test_the_cpu_side_overlaps_with_loader_workers_and_adds_up_without():
    costs = {"sample_crop": {"rgbflow": 10.0}, "mask_write": 30.0, "sample_frame": {"rgb": 2.0}}
    units = [{"stage": "train", "unit": "step", "units": 3600, "flops": 1.0, "fed_by": "loader",
              "cpu": [("sample_crop", "rgbflow", 10)]},
             {"stage": "masks", "unit": "frame", "units": 3600, "flops": 1.0, "fed_by": "job",
              "cpu": [("sample_frame", "rgb", 1), ("mask_write", None, 1)]}]
    h200 = estimate.DEVICES["H200"]
    gpu_ms = 1000 / h200.throughput(True)  # a FLOP: nothing next to the CPU side
    table = estimate.estimate_table(units, amp=True, cpu_costs=costs, workers=4).set_index("stage")
    assert table.loc["train", "cpu ms_per_unit"] == 100 and table.loc["train", "cpu processes"] == 4
    assert table.loc["train", "H200 wall hours"] == pytest.approx(100 / 4 * 3600 / 3.6e6)  # 4 workers share it
    assert table.loc["masks", "cpu ms_per_unit"] == 32 and table.loc["masks", "cpu processes"] == 1
    assert table.loc["masks", "H200 wall hours"] == pytest.approx((32 + gpu_ms) * 3600 / 3.6e6)  # one process
    assert (table["H200 bound"] == "CPU").all()
    # a read-ahead thread overlaps its one share with the GPU, as workers do
    ahead = [{**units[1], "fed_by": "thread"}]
    row = estimate.estimate_table(ahead, amp=True, cpu_costs=costs, workers=4).iloc[0]
    assert row["cpu processes"] == 1 and row["H200 wall hours"] == pytest.approx(32 * 3600 / 3.6e6)
    # a flow job's readers and encoders overlap with the GPU as workers do; its writer thread's share is a floor
    flow = [{**units[1], "fed_by": "pool", "cpu": [("flow_store", None, 1), ("sample_frame", "rgb", 1)],
             "serial": [("flow_store", None, 1)]}]
    for store, wall in ((3.0, 3.0), (0.2, 2.2 / 4)):  # one thread stores every frame: 3 ms; else 4 share 2.2 ms
        row = estimate.estimate_table(flow, amp=True, cpu_costs={**costs, "flow_store": store}, workers=4).iloc[0]
        assert row["cpu processes"] == 4 and row["cpu ms_per_unit"] == pytest.approx(store + 2)
        assert row["H200 wall hours"] == pytest.approx(wall * 3600 / 3.6e6) and row["H200 bound"] == "CPU"
    # the GPU side dominates a unit of real work; without workers the loader's process adds the two
    heavy = [{**units[0], "flops": 1e15}]
    row = estimate.estimate_table(heavy, amp=True, cpu_costs=costs, workers=0).iloc[0]
    gpu_ms = 1000 * 1e15 / h200.throughput(True)
    assert row["H200 bound"] == "GPU" and row["cpu processes"] == 1
    assert row["H200 wall hours"] == pytest.approx((gpu_ms + 100) * 3600 / 3.6e6)
    # a job's writer thread stores beside the GPU (after the job's reads: one HDF5 lock): reads, then the slower
    writer = [{**units[1], "cpu": [("sample_frame", "rgb", 1), ("mask_write", None, 1)],
               "beside_gpu": [("mask_write", None, 1)], "flops": 1e15 * 30 / gpu_ms * k} for k in (0.5, 2)]
    fast_gpu, slow_gpu = estimate.estimate_table(writer, amp=True, cpu_costs=costs, workers=4).to_dict("records")
    assert fast_gpu["cpu ms_per_unit"] == 32 and fast_gpu["H200 bound"] == "CPU"
    assert fast_gpu["H200 wall hours"] == pytest.approx((2 + 30) * 3600 / 3.6e6)
    assert slow_gpu["H200 bound"] == "GPU" and slow_gpu["H200 wall hours"] == pytest.approx((2 + 60) * 3600 / 3.6e6)
    # its pool's checksums run beside everything, holding no lock: they set the pace only where they are slowest
    pooled = [{**row, "cpu": [*row["cpu"], ("flow_read", None, 1)], "pool": [("flow_read", None, 1)]} for row in writer]
    for pool_ms, fast_ms in ((5.0, 32), (40.0, 40)):
        fast_gpu, slow_gpu = estimate.estimate_table(pooled, amp=True, cpu_costs={**costs, "flow_read": pool_ms},
                                                     workers=4).to_dict("records")
        assert fast_gpu["cpu ms_per_unit"] == 32 + pool_ms and fast_gpu["H200 bound"] == "CPU"
        assert fast_gpu["H200 wall hours"] == pytest.approx(fast_ms * 3600 / 3.6e6)
        assert slow_gpu["H200 bound"] == ("GPU" if pool_ms < 60 else "CPU")
        assert slow_gpu["H200 wall hours"] == pytest.approx(max(2 + 60, pool_ms) * 3600 / 3.6e6)


def test_cpu_costs_are_measured_with_the_packages_readers_and_writers(monkeypatch):
    from a2dpipe.evaluation import cpu_costs
    from a2dpipe.masks import cache

    calls = []
    encode = cache.MaskCacheWriter.encode
    monkeypatch.setattr(cache.MaskCacheWriter, "encode", staticmethod(lambda r: calls.append(len(r)) or encode(r)))
    costs = cpu_costs.measure_cpu_costs(frame_size=(40, 56), crop=(32, 32), regions=5, encoding="xym")
    # a faster cache writer is what gets timed: from full-frame masks (mask_write) and cropped ones (mask_encode,
    # then mask_store)
    assert calls == [5] * 2 * cpu_costs.FRAMES
    assert {"mask_write", "mask_encode", "mask_store"} <= set(costs)
    assert set(costs["sample_crop"]) == {"rgb", "rgbflow"}
    assert {"flow_read", "flow_encode", "flow_store"} <= set(costs)  # a flow job's parts, timed apart
    assert "mask_frame" in costs  # a mask model's training frame, as its trainer reads it
    assert all(v > 0 for kind in costs.values() for v in (kind.values() if isinstance(kind, dict) else [kind]))


def test_fcis_counts_its_score_maps_over_the_frame_and_mask_rcnn_its_heads_per_roi():
    config = load_config(PAPER)
    config["masks"].update(model="fcis", backbone="resnet101")
    fcis = estimate._mask_flops(config)
    assert fcis["heads_train"] == fcis["heads_test"] > 0  # score maps over the frame; per RoI only gathers
    # at least the 1 x 1 score-map convolutions from 1024 channels at stride 16: 2 x 8 class maps and 4 box maps per
    # cell of the k x k grid
    k, (height, width) = config["masks"]["fcis_k"], estimate._padded(estimate.A2D_FRAME_SIZE)
    assert fcis["heads_test"] >= 2 * 1024 * (2 * 8 + 4) * k * k * math.ceil(height / 16) * math.ceil(width / 16)
    config["masks"].update(model="maskrcnn", backbone="resnet50_fpn")
    maskrcnn = estimate._mask_flops(config)
    assert 0 < maskrcnn["heads_test"] != maskrcnn["heads_train"] > 0  # per RoI: test proposals against sampled ones
    assert fcis["backbone"] > maskrcnn["backbone"]  # ResNet-101 at stride 16 against ResNet-50 + FPN
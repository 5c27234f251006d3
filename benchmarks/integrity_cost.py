"""Cost of the integrity checks, each in isolation, on artifacts shaped like the embedded default's (384 annotated
frames of 96 x 128 pixels: 128 clips x 3 annotated frames).

Writes each per-frame artifact (flow cache, predictions) with and without Fletcher-32 and reads it back in full
with and without the range checks; times the digest of an evaluation JSON and of a per-video .npz, and the content
digest a training job computes of its inputs. Every pair is timed side by side in one process, alternating, best
of ``--repeat``: ratios are what to read on a shared machine, not absolute times.

    python benchmarks/integrity_cost.py [--frames 384] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from a2dpipe import integrity, stores  # noqa: E402
from a2dpipe.evaluation.bootstrap import read_per_video, write_per_video  # noqa: E402
from a2dpipe.flow.store import FlowStore, FlowWriter  # noqa: E402
from a2dpipe.segmentation.predictions import PredictionStore, PredictionWriter  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def side_by_side(checked, plain, repeat: int) -> tuple[float, float]:
    """Best of ``repeat`` of each, run alternately, so that a load change on the machine hits both alike."""
    times = {checked: [], plain: []}
    for _ in range(repeat):
        for fn in (checked, plain):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return min(times[checked]), min(times[plain])


def write_flow(path: Path, frames: int) -> None:
    rng = np.random.default_rng(0)
    with FlowWriter(path, method="dis", encoding="xym") as writer:
        for frame in range(1, frames + 1):
            writer.write("vid", frame, rng.normal(0, 3, (96, 128, 2)), rng.integers(0, 255, (96, 128, 3)))
        writer.seconds_per_frame = 0.0


def write_predictions(path: Path, frames: int) -> None:
    rng = np.random.default_rng(0)
    label = np.zeros((96, 128), np.uint8)
    label[20:70, 30:90] = 11
    with PredictionWriter(path, variant="v", model="m", device="CPU") as writer:
        for frame in range(1, frames + 1):
            noise = rng.random(label.shape) < 0.1
            writer.write("vid", frame, {"actor": np.where(noise, 0, label // 10), "action": np.where(noise, 0, label % 10),
                                        "joint": np.where(noise, 0, label)})
        writer.seconds_per_frame = 0.0


def read_all(store_class, path: Path, checked: bool) -> None:
    with store_class(path) as store:
        if not checked:
            store.check_values = lambda *a: None
        for key in store.keys():
            store.read(*key)


class Unchecksummed(stores.ChecksummedGroup):
    def create_dataset(self, name, shape=None, dtype=None, data=None, **kwargs):
        kwargs.pop("fletcher32", None)
        return self._group.create_dataset(name, shape=shape, dtype=dtype, data=data, **kwargs)


def compare_writes(write, folder: Path, frames: int, repeat: int) -> tuple[float, float]:
    """(seconds with checksums and room checks, without either) to write one artifact."""
    original_group, original_room = stores.ChecksummedGroup, stores.check_room

    def plain():
        stores.ChecksummedGroup, stores.check_room = Unchecksummed, lambda *a: None
        try:
            write(folder / "plain.h5", frames)
        finally:
            stores.ChecksummedGroup, stores.check_room = original_group, original_room

    return side_by_side(lambda: write(folder / "checked.h5", frames), plain, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, write, store in (("flow cache", write_flow, FlowStore),
                                   ("predictions", write_predictions, PredictionStore)):
            with_checks, without = compare_writes(write, folder, args.frames, args.repeat)
            rows.append((f"write {name}", with_checks, without))
            rows.append((f"read {name}", *side_by_side(lambda: read_all(store, folder / "checked.h5", True),
                                                       lambda: read_all(store, folder / "plain.h5", False),
                                                       args.repeat)))
            rows.append((f"read {name}, checksums only", *side_by_side(
                lambda: read_all(store, folder / "checked.h5", False),
                lambda: read_all(store, folder / "plain.h5", False), args.repeat)))
            digest = best(lambda: integrity.file_digest(folder / "checked.h5"), args.repeat)
            size = (folder / "checked.h5").stat().st_size
            rows.append((f"content digest of the {name} ({size / 1e6:.1f} MB)", digest, 0.0))
        # an evaluation document as big as the real one: 44 x 44 confusion matrices, 2 regions x 3 settings
        doc = {"metrics": {}, "confusion": {r: {s: np.ones((44, 44), int).tolist() for s in ("a", "b", "c")}
                                            for r in ("whole", "non_boundary")}}
        text = json.dumps(integrity.with_digest(doc))
        rows.append(("evaluation JSON: parse + digest check",
                     *side_by_side(lambda: integrity.checked_json(json.loads(text), "e.json", "evaluation"),
                                   lambda: json.loads(text), args.repeat)))
        videos = [f"v{i}" for i in range(48)]
        stacks = {r: {s: np.ones((48, 44, 44), np.int64) for s in ("a", "b", "c")} for r in ("whole", "non_boundary")}
        write_per_video(folder / "p.npz", "v", videos, stacks)
        rows.append(("per-video .npz: read + digest check",
                     *side_by_side(lambda: read_per_video(folder / "p.npz"), lambda: dict(np.load(folder / "p.npz")),
                                   args.repeat)))
        integrity.forget_code_digests()
        from a2dpipe.cli import COMMANDS, command_digest

        start = time.perf_counter()
        for command in COMMANDS:
            command_digest(command)
        rows.append(("code digests of every command (once per Snakefile parse)", time.perf_counter() - start, 0.0))
    print(f"{'what':60s} {'checked s':>10s} {'plain s':>10s} {'extra s':>9s}")
    for what, checked, plain in rows:
        print(f"{what:60s} {checked:10.4f} {plain:10.4f} {checked - plain:9.4f}")


if __name__ == "__main__":
    main()

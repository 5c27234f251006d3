"""The artifact base (a2dpipe.stores): atomic writing, schema check, group keys, split listing from attributes."""

import json

import h5py
import numpy as np
import pytest

from a2dpipe.dataset.frames import FrameStore, FrameWriter
from a2dpipe.flow import FlowStore, FlowWriter
from a2dpipe.errors import A2DError
from a2dpipe.masks import MaskCache, MaskCacheWriter
from a2dpipe.segmentation.predictions import PredictionStore, PredictionWriter
from a2dpipe.stores import ArtifactFormat, ArtifactReader, ArtifactWriter, group_key, parse_key

TOY = ArtifactFormat("toy", 2, "toy cache")


class ToyWriter(ArtifactWriter):
    FORMAT = TOY

    def finish(self) -> None:
        self.set_attrs(frames=self.count)


class ToyReader(ArtifactReader):
    FORMAT = TOY


def write_toy(path, frames, settings=None):
    """``frames``: {(video, frame): split}; each group gets a ``value`` dataset and its split."""
    with ToyWriter(path, attrs={"note": "toy", "absent": None}, settings=settings) as writer:
        for (video, frame), split in frames.items():
            group = writer.create_group(video, frame)
            group.attrs["split"] = split
            group.create_dataset("value", data=np.full(3, frame, np.int16))


def test_group_key_is_video_and_five_digit_frame_and_parses_back():
    assert group_key("EadxBPmQvtg", 25) == "EadxBPmQvtg/00025"
    assert group_key("v", np.int64(7)) == "v/00007"
    assert parse_key("EadxBPmQvtg/00025") == ("EadxBPmQvtg", 25)
    assert parse_key(group_key("a-b_c", 123456)) == ("a-b_c", 123456)


def test_writer_stamps_schema_attributes_and_settings_and_counts_frames(tmp_path):
    path = tmp_path / "toy.h5"
    write_toy(path, {("b", 2): "test", ("a", 10): "train", ("a", 3): "test"}, settings={"z": 1, "a": [2, 3]})
    with h5py.File(path, "r") as f:
        assert f.attrs["schema"].decode() == "a2dpipe.toy/2" and f.attrs["note"].decode() == "toy" and "absent" not in f.attrs
        assert f.attrs["frames"] == 3
        assert f.attrs["settings"].decode() == json.dumps({"a": [2, 3], "z": 1})
        assert sorted(f["a"]) == ["00003", "00010"]
    with ToyReader(path) as reader:
        assert reader.keys() == [("a", 3), ("a", 10), ("b", 2)]
        assert len(reader) == 3 and ("a", 10) in reader and ("a", 4) not in reader
        assert reader.attrs["note"] == "toy" and reader.attrs["frames"] == 3
        assert reader.read_arrays("b", 2, ("value",))["value"].tolist() == [2, 2, 2]
        with pytest.raises(A2DError, match=r"toy.h5: frame b/00002 lacks dataset\(s\) \['label'\]"):
            reader.read_arrays("b", 2, ("value", "label"))
        assert set(reader.read_arrays("b", 2, ("value",), optional=("label",))) == {"value"}
        with pytest.raises(A2DError, match="toy.h5: no frame c/00001 in this toy cache"):
            reader.group("c", 1)


def test_writing_is_atomic(tmp_path):
    path = tmp_path / "toy.h5"
    with pytest.raises(ZeroDivisionError):
        with ToyWriter(path) as writer:
            writer.create_group("a", 1)
            assert not path.exists() and len(list(tmp_path.iterdir())) == 1  # only the hidden temporary
            1 / 0
    assert not list(tmp_path.iterdir())
    with pytest.raises(A2DError, match="toy.h5: frame a/00001 written twice"):
        with ToyWriter(path) as writer:
            writer.create_group("a", 1)
            writer.create_group("a", 1)
    assert not list(tmp_path.iterdir())


def test_a_failing_finish_leaves_no_file(tmp_path):
    class Failing(ToyWriter):
        def finish(self) -> None:
            raise A2DError("cannot finish")

    with pytest.raises(A2DError, match="cannot finish"):
        with Failing(tmp_path / "toy.h5") as writer:
            writer.create_group("a", 1)
    assert not list(tmp_path.iterdir())


def test_writer_writes_only_inside_with(tmp_path):
    writer = ToyWriter(tmp_path / "toy.h5")
    with pytest.raises(RuntimeError, match="inside a `with` block"):
        writer.create_group("a", 1)


def test_reader_refuses_other_kinds_and_versions_naming_file_and_rebuild(tmp_path):
    def made(name, schema):
        with h5py.File(tmp_path / name, "w") as f:
            if schema is not None:
                f.attrs["schema"] = schema
        return tmp_path / name

    cases = {
        made("none.h5", None): "has no 'schema' root attribute",
        made("old.h5", "a2dpipe.toy/1"): "written with schema 'a2dpipe.toy/1'; this version reads 'a2dpipe.toy/2'",
        made("masks.h5", "a2dpipe.masks/1"): "is an 'a2dpipe.masks/1' file",
    }
    for path, problem in cases.items():
        with pytest.raises(A2DError) as err:
            ToyReader(path)
        message = str(err.value)
        assert message.startswith(f"{path}: not a toy cache of schema 'a2dpipe.toy/2'"), message
        assert problem in message and message.endswith("rebuild it: delete it and run snakemake again"), message
    for reader, rule in ((FrameStore, "extract_frames"), (FlowStore, "flow"), (MaskCache, "region_masks"),
                         (PredictionStore, "predict")):  # the pipeline's artifacts: the rule that rebuilds them
        with pytest.raises(A2DError, match=f"old.h5: not a .* rebuild it with `snakemake --forcerun {rule}`"):
            reader(tmp_path / "old.h5")
    with pytest.raises(A2DError, match="missing.h5: toy cache not found"):
        ToyReader(tmp_path / "missing.h5")


def test_earlier_flow_caches_and_predictions_are_refused_with_the_rule_that_rebuilds_them(tmp_path):
    """Earlier layouts had files without what readers now rely on (a flow cache of version 1 without
    ``rgb_mirror``, predictions without ``device``) or stored otherwise (a flow cache of version 2: lzf in 64 x 64
    chunks): such files are rebuilt, never read."""
    for version in (1, 2):  # as versions 1 and 2 wrote them: a field and its image (and, 2, its mirror image)
        with h5py.File(tmp_path / f"flow{version}.h5", "w") as f:
            f.attrs.update(schema=f"a2dpipe.flow/{version}", method="dis", encoding="xym", seconds_per_frame=0.01,
                           frames=1)
            for name, channels, dtype in (("flow", 2, np.float16), ("rgb", 3, np.uint8), ("rgb_mirror", 3, np.uint8)):
                if version == 2 or name != "rgb_mirror":
                    f.create_dataset(f"v/00001/{name}", data=np.zeros((4, 6, channels), dtype), compression="lzf")
    predictions = tmp_path / "predictions.h5"
    with h5py.File(predictions, "w") as f:
        f.attrs.update(schema="a2dpipe.predictions/1", variant="baseline-rgb", model="model.pt", frames=0)
    for reader, path, rule, (now, then) in ((FlowStore, tmp_path / "flow1.h5", "flow", (3, 1)),
                                            (FlowStore, tmp_path / "flow2.h5", "flow", (3, 2)),
                                            (PredictionStore, predictions, "predict", (2, 1))):
        with pytest.raises(A2DError, match=rf"{path.name}: not a .* of schema 'a2dpipe.\w+/{now}' \(it was "
                                           rf"written with schema 'a2dpipe.\w+/{then}'.*snakemake --forcerun {rule}`"):
            reader(path)


def test_split_listing_reads_attributes_only(tmp_path, monkeypatch):
    path = tmp_path / "frames.h5"
    with FrameWriter(path, attrs={"shard": "000"}) as writer:
        for video, frame, split in (("v2", 1, "test"), ("v1", 12, "train"), ("v1", 3, "test")):
            group = writer.create_group(video, frame)
            group.attrs["split"] = split
            group.create_dataset("rgb", data=np.zeros((4, 4, 3), np.uint8))

    def no_data(*args):
        raise AssertionError("listing keys read a dataset")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", no_data)
    monkeypatch.setattr(h5py.Dataset, "read_direct", no_data)
    with FrameStore(path) as store:
        assert store.keys("test") == [("v1", 3), ("v2", 1)]
        assert store.keys("train") == [("v1", 12)]
        assert store.keys() == [("v1", 3), ("v1", 12), ("v2", 1)]
        assert store.split_of("v2", 1) == "test"
        with pytest.raises(AssertionError, match="read a dataset"):  # the guard itself works
            store.read_arrays("v2", 1, ("rgb",))


def test_a_group_without_split_is_an_error_naming_it(tmp_path):
    path = tmp_path / "frames.h5"
    with FrameWriter(path) as writer:
        writer.create_group("v", 1)
    with FrameStore(path) as store:
        assert store.keys() == [("v", 1)]
        with pytest.raises(A2DError, match="frames.h5: group v/00001 has no 'split' attribute"):
            store.keys("test")


@pytest.mark.parametrize("make", [
    lambda path, settings: FrameWriter(path, settings=settings),
    lambda path, settings: FlowWriter(path, method="dis", encoding="xym", settings=settings),
    lambda path, settings: MaskCacheWriter(path, source="gt", settings=settings),
    lambda path, settings: PredictionWriter(path, variant="baseline-rgb", model="m.pt", device="CPU",
                                            settings=settings),
], ids=["frames", "flow", "masks", "predictions"])
def test_every_writer_stamps_the_settings_it_is_given(tmp_path, make):
    with make(tmp_path / "a.h5", {"seed": 0}) as writer:
        writer.create_group("v", 1)
    with make(tmp_path / "b.h5", None) as writer:
        writer.create_group("v", 1)
    with h5py.File(tmp_path / "a.h5", "r") as a, h5py.File(tmp_path / "b.h5", "r") as b:
        assert a.attrs["settings"].decode() == '{"seed": 0}' and "settings" not in b.attrs
        assert set(a.attrs) - set(b.attrs) == {"settings", "a2dpipe_version", "code"}


def test_predictions_round_trip(tmp_path):
    path = tmp_path / "baseline-rgb.h5"
    maps = {"actor": np.full((2, 3), 1, np.uint8), "action": np.full((2, 3), 2, np.uint8),
            "joint": np.full((2, 3), 12, np.uint8)}
    with PredictionWriter(path, variant="baseline-rgb", model="model.pt", device="CPU") as writer:
        writer.write("v", 4, maps)
        writer.seconds_per_frame = 0.5
    with PredictionStore(path) as store:
        assert store.variant == "baseline-rgb" and store.keys() == [("v", 4)]
        assert store.attrs["seconds_per_frame"] == 0.5 and store.attrs["frames"] == 1
        assert store.attrs["schema"] == "a2dpipe.predictions/2" and store.attrs["model"] == "model.pt"
        assert store.attrs["device"] == "CPU"
        read = store.read("v", 4)
        assert all(np.array_equal(read[k], maps[k]) and read[k].dtype == np.uint8 for k in maps)
        assert list(store.read("v", 4, ("joint",))) == ["joint"]
    with h5py.File(path, "r") as f:
        assert f["v/00004/joint"].compression == "gzip" and f["v/00004/joint"].compression_opts == 4


@pytest.mark.parametrize("shape, dtype, fill", [
    ((320, 510, 3), np.uint8, None), ((320, 510, 2), np.float16, None), ((3, 5, 3), np.uint8, None),
    ((4, 5, 2), np.uint8, 0xFF), ((4, 5, 3), np.uint8, 0), ((7, 7, 3), np.uint8, 0xFF), ((1, 1, 1), np.uint8, 7),
    ((815_301,), np.uint8, None), ((3,), np.dtype([("box", "<f4", (4,)), ("label", "u1")]), None),
    ((0,), np.uint8, None),
], ids=["image", "field", "odd", "all-ones", "zeros", "odd-ones", "one-byte", "masks", "records", "empty"])
def test_the_writers_checksum_is_the_one_hdf5_computes(tmp_path, shape, dtype, fill):
    """stored_chunk's Fletcher-32 equals HDF5's own filter's, byte for byte, and HDF5 reads such a chunk back
    (write_stored), checking it."""
    from a2dpipe.chunks import stored_chunk, write_stored

    rng = np.random.default_rng(0)
    size = int(np.prod(shape))
    array = rng.integers(0, 256, size * np.dtype(dtype).itemsize, dtype=np.uint8).view(dtype).reshape(shape)
    if dtype == np.float16:
        array = rng.normal(0, 3, shape).astype(dtype)
    array = array if fill is None else np.full(shape, fill, dtype)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        if size:
            hdf5 = f.create_dataset("hdf5", data=array, chunks=shape, fletcher32=True)
            assert hdf5.id.read_direct_chunk((0,) * len(shape))[1] == stored_chunk(array).tobytes()
        assert write_stored(f, "direct", array, stored_chunk(array)).fletcher32 == (size > 0)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert np.array_equal(f["direct"][()], array)
        assert f["direct"].compression is None

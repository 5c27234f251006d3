import os
import socket
from pathlib import Path

import pytest

from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path


def test_atomic_path_renames_only_on_success(tmp_path):
    out = tmp_path / "sub" / "table.csv"
    with atomic_path(out) as tmp:
        tmp.write_text("done")
        assert not out.exists()
    assert out.read_text() == "done"
    with pytest.raises(ZeroDivisionError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            1 / 0
    assert out.read_text() == "done"
    assert [p.name for p in out.parent.iterdir()] == ["table.csv"]


def test_atomic_path_removes_temporaries_of_killed_writers(tmp_path):
    dead = f"{socket.gethostname()}-99999999-0a1b2c3d"  # beyond pid_max: no such process
    stale = tmp_path / f".frames.h5.tmp-{dead}"
    stale.write_text("half-written")
    other = tmp_path / f".other.h5.tmp-{dead}"
    other.write_text("someone else's")
    unknown = tmp_path / ".frames.h5.tmp-99999"  # not a token atomic_path writes: left to whoever made it
    unknown.write_text("not ours")
    with atomic_path(tmp_path / "frames.h5") as tmp:
        tmp.write_text("whole")
    assert not stale.exists() and other.exists() and unknown.exists()


def test_two_writers_of_one_output_keep_their_own_temporaries(tmp_path):
    out = tmp_path / "index.csv"
    with atomic_path(out) as first:
        first.write_text("first")
        with atomic_path(out) as second:  # a second command writing the same output meanwhile
            assert second != first
            second.write_text("second")
        assert first.read_text() == "first", "the second writer touched the first one's live temporary"
        assert out.read_text() == "second"
    assert out.read_text() == "first"  # the last writer to finish wins
    assert [p.name for p in tmp_path.iterdir()] == ["index.csv"]


def test_temporaries_of_live_or_foreign_writers_are_left_alone(tmp_path):
    host = socket.gethostname()
    live = tmp_path / f".frames.h5.tmp-{host}-{os.getppid()}-0a1b2c3d"  # the parent process is running
    foreign = tmp_path / ".frames.h5.tmp-another-node-99999-0a1b2c3d"  # liveness on another host is unknowable
    dead = tmp_path / f".frames.h5.tmp-{host}-99999999-0a1b2c3d"  # beyond pid_max: no such process
    for path in (live, foreign, dead):
        path.write_text("partial")
    with atomic_path(tmp_path / "frames.h5") as tmp:
        tmp.write_text("whole")
    assert live.exists() and foreign.exists() and not dead.exists()


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    out = tmp_path / "dataset"
    for content in ("old", "new"):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / content).write_text(content)
    assert [p.name for p in out.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_atomic_path_handles_directories(tmp_path):
    with atomic_path(tmp_path / "dataset") as tmp:
        tmp.mkdir()
        (tmp / "videoset.csv").write_text("x")
    assert (tmp_path / "dataset" / "videoset.csv").exists()


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(A2DError, match="produced no output"):
        with atomic_path(tmp_path / "empty.h5"):
            pass


def test_damaged_hdf5_artifact_names_the_file_and_its_rebuild(tmp_path):
    import h5py
    import numpy as np

    from a2dpipe.dataset.frames import FORMAT, FrameStore

    path = tmp_path / "shard-000.h5"
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = FORMAT.schema
        f.create_dataset("v/00001/rgb", data=np.arange(4096, dtype=np.uint8), fletcher32=True)
        chunk = f["v/00001/rgb"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + 100] ^= 0x01
    path.write_bytes(bytes(data))
    with FrameStore(path) as store, pytest.raises(A2DError) as err:
        store.read_arrays("v", 1, ("rgb",))
    assert str(err.value).startswith(f"{path}: cannot read frame v/00001: ")
    assert "rebuild it with `snakemake --forcerun extract_frames`, or delete it" in str(err.value)
    path.write_bytes(bytes(data[:1000]))
    with pytest.raises(A2DError, match="not a readable HDF5 file .*`snakemake --forcerun extract_frames`"):
        FrameStore(path)


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc" or not Path("/proc/self/statm").exists(),
                    reason="glibc's malloc_trim and Linux's /proc")
def test_released_memory_leaves_the_resident_set():
    """Freed heap blocks held between live ones (a long prediction job's holes) go back to the system."""
    from a2dpipe.memory import release_free_memory

    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    blocks = [b"x" * (64 << 10) for _ in range(2048)]  # 128 MB of heap blocks, each under the mmap threshold
    pinned = blocks[-1]  # keeps the heap's top in use, so freeing the rest leaves a hole glibc does not trim
    del blocks
    before = resident_mb()
    release_free_memory()
    assert before - resident_mb() > 64
    assert pinned[:1] == b"x"


def test_the_allocators_mmap_threshold_is_fixed_where_glibc_allows(caplog):
    """Large per-frame buffers then go back to the system when freed (peak memory flat in the frames of a job)."""
    import ctypes.util

    from a2dpipe.memory import fixed_mmap_threshold

    with caplog.at_level("INFO", logger="a2dpipe"):
        fixed_mmap_threshold(32 << 20)
    glibc = ctypes.util.find_library("c") is not None and __import__("platform").libc_ver()[0] == "glibc"
    assert ("could not fix" in caplog.text) is not glibc


def test_torch_stages_flush_denormals():
    """A stage's device choice makes denormal floats zero on the CPU (at ~100 cycles per operation on them, they
    made stage-1 training twice as slow); in a fresh process, since the setting stays with the process."""
    import subprocess
    import sys

    script = (
        "import torch; from a2dpipe.devices import select_device\n"
        "torch.set_num_threads(1)\n"
        "x = torch.full((1 << 16,), 1e-39)\n"
        "assert int((x * 1.0).count_nonzero()) == x.numel()  # denormal, and kept, before\n"
        "select_device('cpu')\n"
        "print(int((x * 1.0).count_nonzero()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"

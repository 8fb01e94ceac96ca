"""steerlab.files: atomic folder swaps (renameat2 and the two-rename fallback), refusals, and the cleanup of
dead writers' temporaries. The kill -9 runs of the real writers are in test_writer_kills.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from steerlab import files
from steerlab.files import TEMP_SUFFIX, recover, remove_stale_temporaries, temporaries, write_folder, write_text_files


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def contents(folder) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


@pytest.fixture(params=["renameat2", "two renames"])
def swap(request, monkeypatch):
    if request.param == "two renames":
        monkeypatch.setattr(files, "_renameat2", lambda src, dst, flags: False)
    return request.param


def test_a_folder_is_written_refused_then_replaced_whole(tmp_path, swap):
    out = tmp_path / "out"
    write_text_files(out, {"a.txt": "old", "b.txt": "old"})
    with pytest.raises(FileExistsError, match=f"^{out} already exists; choose another path"):
        write_text_files(out, {"c.txt": "new"})
    assert contents(out) == {"a.txt": "old", "b.txt": "old"}
    write_text_files(out, {"c.txt": "new"}, overwrite=True)
    assert contents(out) == {"c.txt": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_fill_leaves_the_old_folder_and_no_temporary(tmp_path, swap):
    out = tmp_path / "out"
    write_text_files(out, {"a.txt": "old"})

    def fail(tmp):
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder(out, fail, overwrite=True)
    assert contents(out) == {"a.txt": "old"} and temporaries(out) == []


def test_a_folder_replaces_a_file_when_asked(tmp_path, swap):
    out = tmp_path / "out"
    out.write_text("a file")
    write_text_files(out, {"a.txt": "new"}, overwrite=True)
    assert contents(out) == {"a.txt": "new"} and temporaries(out) == []


def test_the_folder_the_process_runs_in_is_never_replaced(tmp_path, monkeypatch):
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileExistsError, match="holds the current folder"):
        write_text_files(".", {"a.txt": "new"}, overwrite=True)
    with pytest.raises(FileExistsError, match="holds the current folder"):
        write_text_files(tmp_path.parent, {"a.txt": "new"}, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_new_folders_and_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        out = write_text_files(tmp_path / "out", {"a.txt": "x"})
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777, (out / "a.txt").stat().st_mode & 0o777) == (0o750, 0o640)


def test_a_backup_left_between_the_two_renames_is_put_back_by_the_next_write(tmp_path):
    out = tmp_path / "out"
    backup = tmp_path / f".out.{dead_pid()}.backup{TEMP_SUFFIX}"
    write_text_files(backup, {"a.txt": "old"})  # what a writer killed between its two renames leaves
    half = tmp_path / f".out.{dead_pid()}.abcd1234{TEMP_SUFFIX}"
    write_text_files(half, {"half.txt": "half"})
    with pytest.raises(FileExistsError):  # the old output is back, so a write not asked to overwrite is refused
        write_text_files(out, {"a.txt": "new"})
    assert contents(out) == {"a.txt": "old"} and temporaries(out) == []


def test_recover_leaves_a_running_writers_backup_and_an_existing_target_alone(tmp_path):
    out = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".out.{sleeper.pid}.backup{TEMP_SUFFIX}"
        busy.mkdir()
        assert recover(out) is None and remove_stale_temporaries(out) == [] and busy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    time.sleep(0.05)
    assert recover(out) == out and not busy.exists()
    other = tmp_path / f".out.{dead_pid()}.backup{TEMP_SUFFIX}"
    other.mkdir()
    assert recover(out) is None and remove_stale_temporaries(out) == [other] and not other.exists()


def test_temporaries_of_other_targets_are_not_touched(tmp_path):
    mine = tmp_path / f".out2.{dead_pid()}.abc{TEMP_SUFFIX}"
    mine.mkdir()
    write_text_files(tmp_path / "out", {"a.txt": "x"})
    assert mine.exists()


def test_temporaries_of_a_target_whose_name_extends_this_one_are_not_touched(tmp_path):
    theirs = tmp_path / f".out.1.{dead_pid()}.abc{TEMP_SUFFIX}"  # a temporary of `out.1`, not of `out`
    theirs.mkdir()
    write_text_files(tmp_path / "out", {"a.txt": "x"})
    assert theirs.exists() and temporaries(tmp_path / "out") == []

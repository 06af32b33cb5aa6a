"""Output directories: atomic swaps that survive a kill, ownership markers, one writer at a time.

The stages here are real (synth, fetch, the prepare job's entry point); a process is killed with
SIGKILL at each step of the swap (``RECSYS_CRASH_AT``) and the output is read back."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.datasets.readers import read_movielens
from recsys.datasets.synth import generate
from recsys.errors import ArtifactError, RecsysError
from recsys.outputs import MARKER, replacing
from tests.conftest import ENV, ROOT

SMALL = dict(ratings=3_000, users=60, movies=120, progress=False)


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _siblings(dest: Path) -> list[str]:
    """Anything a run leaves beside ``dest`` (temporary copies, old copies, lock files)."""
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


def _synth_in_subprocess(dest: Path, seed: int, crash_at: str, no_exchange: bool = False):
    code = ("import sys; from recsys import outputs; from recsys.datasets.synth import generate\n"
            + ("outputs._EXCHANGE = None\n" if no_exchange else "")
            + f"generate(sys.argv[1], ratings={SMALL['ratings']}, users={SMALL['users']}, movies={SMALL['movies']}, "
              f"seed={seed}, progress=False)\n")
    return subprocess.run([sys.executable, "-c", code, str(dest)], env=dict(ENV, RECSYS_CRASH_AT=crash_at),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("crash_at,no_exchange,expect", [
    ("written", False, "previous"),      # new output complete beside the old one, not swapped yet
    ("swapped", False, "new"),           # exchanged; the old copy not yet removed
    ("moved-aside", True, "previous"),   # no atomic exchange: old renamed aside, new not yet in
])
def test_killed_mid_swap_leaves_a_complete_loadable_output(tmp_path, crash_at, no_exchange, expect):
    dest = tmp_path / "raw"
    generate(dest, seed=1, **SMALL)
    before = _digest(dest)
    generate(tmp_path / "ref", seed=2, **SMALL)
    after = _digest(tmp_path / "ref")

    proc = _synth_in_subprocess(dest, seed=2, crash_at=crash_at, no_exchange=no_exchange)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    if not no_exchange:  # with the exchange, dest is complete at every instant
        assert _digest(dest) == (before if expect == "previous" else after)
        assert len(read_movielens(dest).ratings) == SMALL["ratings"]
    assert _siblings(dest), "the kill should have left its temporary copy behind"

    # the next run puts back an output a half swap left aside, removes the leftovers and swaps in
    generate(dest, seed=3, **SMALL)
    assert len(read_movielens(dest).ratings) == SMALL["ratings"]
    assert _siblings(dest) == []


def test_fallback_swap_recovers_the_previous_output(tmp_path):
    """Without the atomic exchange, a run killed between the two renames loses nothing: the next
    writer finds dest missing and the old copy aside, and puts it back before anything else."""
    from recsys.outputs import _recover_and_clean

    dest = tmp_path / "raw"
    generate(dest, seed=1, **SMALL)
    before = _digest(dest)
    assert _synth_in_subprocess(dest, seed=2, crash_at="moved-aside", no_exchange=True).returncode == -signal.SIGKILL
    assert not dest.exists()
    _recover_and_clean(dest)
    assert _digest(dest) == before and read_movielens(dest).format == "ml-1m"


def test_failed_write_keeps_previous_output(tmp_path):
    dest = tmp_path / "out"
    with replacing(dest, "synth") as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with replacing(dest, "synth") as tmp:
            (tmp / "a.txt").write_text("second, half")
            raise RuntimeError("disk full")
    assert (dest / "a.txt").read_text() == "first"
    assert _siblings(dest) == []


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("months of work")
    (path / "notes").mkdir()
    (path / "notes" / "a.md").write_text("more")
    return {str(p.relative_to(path)): p.read_bytes().hex() for p in path.rglob("*") if p.is_file()}


def _unchanged(path: Path, before: dict[str, str]) -> bool:
    return {str(p.relative_to(path)): p.read_bytes().hex() for p in path.rglob("*") if p.is_file()} == before


def test_synth_and_fetch_refuse_a_folder_they_did_not_write(tmp_path):
    folder = tmp_path / "mine"
    before = _user_folder(folder)
    with pytest.raises(ArtifactError, match=r"mine.*not empty and was not written by recsys synth.*thesis.tex"):
        generate(folder, seed=1, **SMALL)
    from recsys.datasets.fetch import fetch_dataset

    with pytest.raises(ArtifactError, match="not written by recsys fetch"):
        fetch_dataset("ml-100k", folder, force=True)  # refused before any download
    assert _unchanged(folder, before) and _siblings(folder) == []

    # another stage's output is refused too, naming the stage that wrote it
    synth_dir = tmp_path / "synth"
    generate(synth_dir, seed=1, **SMALL)
    with pytest.raises(ArtifactError, match="holds the output of recsys synth, not fetch"):
        fetch_dataset("ml-100k", synth_dir, force=True)
    assert (synth_dir / MARKER).is_file() and read_movielens(synth_dir).format == "ml-1m"


def _prepare_job(prepared: Path, raw: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs/prepare.py"), "--config", str(ROOT / "conf/default.yaml"),
                           "--set", f"paths.raw={raw}", "--set", f"paths.prepared={prepared}"],
                          env=ENV, capture_output=True, text=True, timeout=120)


def test_prepare_refuses_a_foreign_folder_before_starting_spark(tmp_path, ml1m_dir):
    folder = tmp_path / "prepared"
    before = _user_folder(folder)
    proc = _prepare_job(folder, ml1m_dir)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"error: paths.prepared ({folder}) is not empty and was not written by recsys prepare")
    assert "Traceback" not in proc.stderr and "[prepare] start" not in proc.stderr
    assert _unchanged(folder, before) and _siblings(folder) == []


def test_second_prepare_on_the_same_output_is_refused_at_once(tmp_path, ml1m_dir):
    """A prepare run holds the output's lock (here: this test, through the same helper the job
    uses); a second prepare of the same output stops with one line, before Spark starts, and
    leaves nothing behind; the first one then finishes normally."""
    prepared = tmp_path / "prepared"
    with replacing(prepared, "prepare", "paths.prepared") as tmp:
        (tmp / "manifest.json").write_text("{}")
        proc = _prepare_job(prepared, ml1m_dir)
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: paths.prepared ({prepared}) is being written by another recsys run (pid {os.getpid()}")
        assert "Traceback" not in proc.stderr and "[prepare] start" not in proc.stderr
    assert (prepared / "manifest.json").read_text() == "{}"
    assert _siblings(prepared) == []


def test_lock_is_per_output_and_released(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with replacing(a, "synth"):
        with replacing(b, "synth"):  # another output: no conflict
            pass
        with pytest.raises(RecsysError, match="being written by another recsys run"):
            with replacing(a, "synth"):
                pass
    with replacing(a, "synth"):  # released
        pass
    assert _siblings(a) == [] and _siblings(b) == []

"""A corpus of hostile inputs through the real Spark prepare job, each with its expected outcome.

Every case ends one of two ways: the job finishes, every bad row is in ``quarantine/`` under
a reason, and the manifest's accounting holds (read = kept + rejected, per table: no row
lost); or it stops with one DataError naming the file and what was expected, leaving no
output behind. The command line turns the latter into a single ``error:`` line, exit 2.
"""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recsys.config import load_config
from recsys.errors import DataError
from recsys.prepare.job import run_prepare
from tests.conftest import ROOT, write

pytestmark = pytest.mark.slow

USERS = "1::F::25::1::12345\n2::M::35::12::54321\n3::M::1::10::99999\n"
MOVIES = "10::Alpha (1990)::Drama\n20::Beta (2001)::Comedy|Drama\n30::Gamma (1995)::Action\n"
GOOD = ["1::10::4::100", "1::20::3::101", "2::10::5::102", "2::20::2::103", "3::10::1::104", "3::30::4::105"]


def lines(*extra: str, sep: str = "\n", end: str = "\n") -> bytes:
    return (sep.join(GOOD + list(extra)) + end).encode("utf-8")


# name -> (files written over the good ones, expected: {table: (kept, {reason: count})} or an error regex)
CASES = {
    "truncated_last_line": ({"ratings.dat": lines(end="\n") + b"3::20::"}, {"ratings": (6, {"wrong_field_count": 1})}),
    "no_final_newline": ({"ratings.dat": lines(end="")}, {"ratings": (6, {})}),
    "crlf_line_ends": ({"ratings.dat": lines(sep="\r\n", end="\r\n")}, {"ratings": (6, {})}),
    "utf8_bom": ({"ratings.dat": b"\xef\xbb\xbf" + lines()}, {"ratings": (6, {})}),
    "bad_ratings": ({"ratings.dat": lines("1::30::0::1", "2::30::6::1", "3::20::-1::1", "1::30::NaN::2",
                                          "2::30::abc::2", "3::20::::2", "1::30::inf::3")},
                    {"ratings": (6, {"rating_out_of_scale": 3, "bad_rating": 3, "missing_field": 1})}),
    "bad_ids": ({"ratings.dat": lines("-1::10::3::1", "x::10::3::1", "1::-5::3::1", "1::y::3::1", "::10::3::1",
                                      "1.5::10::3::1")},
                {"ratings": (6, {"bad_id": 5, "missing_field": 1})}),
    "extra_and_missing_columns": ({"ratings.dat": lines("1::30::3::1::9", "1::30::3", "1")},
                                  {"ratings": (6, {"wrong_field_count": 3})}),
    "duplicate_rows": ({"ratings.dat": lines(GOOD[0], GOOD[0], "1::20::5::999")},
                       {"ratings": (6, {"duplicate": 3})}),
    "unknown_user_and_movie": ({"ratings.dat": lines("99::10::3::1", "1::999::3::1")},
                               {"ratings": (6, {"unknown_user": 1, "unknown_movie": 1})}),
    "blank_and_whitespace_lines": ({"ratings.dat": lines("", "   ", "\t")}, {"ratings": (6, {})}),
    "mixed_latin1_and_utf8_titles": (
        {"movies.dat": "10::Misérables, Les (1995)::Drama\n".encode("latin-1")
         + "20::Amélie (2001)::Comedy|Drama\n".encode("utf-8") + b"30::Gamma (1995)::Action\n"},
        {"ratings": (6, {}), "movies": (3, {})}),
    "bad_user_and_movie_rows": (
        {"users.dat": (USERS + "4::X::abc::1::1\ngarbage\n").encode(),
         "movies.dat": (MOVIES + "40::No Genres Field (1990)\n50::::Drama\n").encode(),
         "ratings.dat": lines("4::10::3::1", "1::40::3::1")},
        {"ratings": (6, {"unknown_user": 1, "unknown_movie": 1}), "users": (3, None), "movies": (3, None)}),
    "binary_garbage_lines": ({"ratings.dat": lines() + b"\x00\x01\x02\xff\xfe::\x00\n\x89PNG\r\n\x1a\n"},
                             {"ratings": (6, None)}),
    # whole-file failures: one clear error naming the file
    "empty_file": ({"ratings.dat": b""}, r"ratings\.dat: the ratings file has no data lines"),
    "only_blank_lines": ({"ratings.dat": b"\n\n  \n"}, r"ratings\.dat: the ratings file has no data lines"),
    "wrong_separator_whole_file": ({"ratings.dat": lines().replace(b"::", b",")},
                                   r"ratings\.dat: every rating line was quarantined \(wrong_field_count 6\)"),
    "every_rating_out_of_scale": ({"ratings.dat": b"1::10::7::1\n2::20::9::1\n"},
                                  r"every rating line was quarantined \(rating_out_of_scale 2\)"),
    "gzip_instead_of_text": ({"ratings.dat": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(256)) * 4},
                             r"ratings\.dat: every rating line was quarantined"),
    "directory_instead_of_file": ({"ratings.dat": None}, r"ratings\.dat: expected the ratings file, found a directory"),
}


@pytest.fixture(scope="module")
def spark():
    from recsys.spark import get_spark

    session = get_spark("recsys-hostile", "local[2]", "1g", 4)
    yield session
    session.stop()


def _raw(tmp_path: Path, files: dict) -> Path:
    raw = tmp_path / "raw"
    write(raw / "users.dat", USERS)
    write(raw / "movies.dat", MOVIES)
    write(raw / "ratings.dat", lines())
    for name, data in files.items():
        if data is None:
            (raw / name).unlink()
            (raw / name).mkdir()
        else:
            write(raw / name, data)
    return raw


def _cfg(raw: Path, out: Path):
    return load_config(ROOT / "conf/default.yaml", [f"paths.raw={raw}", f"paths.prepared={out}", "data.format=ml-1m",
                                                    "prepare.shards.train=1", "prepare.shards.test=1",
                                                    "prepare.examples_per_record=4", "prepare.split.test_fraction=0.3",
                                                    "prepare.split.validation_fraction=0"])


def _data_lines(data: bytes) -> int:
    """Lines a reader sees: split on LF, CR stripped, blank lines not counted."""
    return sum(1 for line in data.split(b"\n") if line.strip(b"\r\t ") != b"")


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input(spark, tmp_path, case):
    files, expected = CASES[case]
    raw, out = _raw(tmp_path, files), tmp_path / "prepared"
    if isinstance(expected, str):
        with pytest.raises(DataError, match=expected):
            run_prepare(_cfg(raw, out), spark)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared.tmp")]
        return
    manifest = run_prepare(_cfg(raw, out), spark)
    for table, acc in manifest["accounting"].items():
        rejected = sum(acc["rejected"].values())
        assert acc["balanced"] and acc["rows_read"] == acc["header_lines"] + acc["rows_kept"] + rejected, (table, acc)
        raw_bytes = (raw / Path(acc["file"]).name).read_bytes()
        assert acc["rows_read"] == _data_lines(raw_bytes), (table, acc)
        q = out / "quarantine" / ("ratings" if table == "ratings" else f"{table}.parquet")
        assert (len(pd.read_parquet(q)) if q.exists() else 0) == rejected, table  # every rejected row is kept
        if table in expected:
            kept, reasons = expected[table]
            assert acc["rows_kept"] == kept, (table, acc)
            if reasons is not None:
                assert acc["rejected"] == reasons, (table, acc)
            else:
                assert rejected > 0, (table, acc)
    written = sum(len(pd.read_parquet(out / f"ratings_{s}")) for s in ("train", "valid", "test")
                  if (out / f"ratings_{s}").exists())
    assert written == manifest["accounting"]["ratings"]["rows_kept"]
    if case == "mixed_latin1_and_utf8_titles":
        # titles are kept as the file gives them (year included, recsys/datasets/formats.py); the year
        # is also parsed into its own column
        movies = pd.read_parquet(out / "movies.parquet").sort_values("movie_id")
        assert movies.title.tolist() == ["Misérables, Les (1995)", "Amélie (2001)", "Gamma (1995)"], movies.title
        assert movies.year.tolist() == [1995, 2001, 1995], movies.year


@pytest.mark.parametrize("case", ["directory_instead_of_file", "wrong_separator_whole_file"])
def test_command_line_gives_one_error_line(tmp_path, case):
    """Through spark-submit's entry script: exit 2, one ``error:`` line naming the file, no traceback."""
    raw = _raw(tmp_path, CASES[case][0])
    proc = subprocess.run([sys.executable, "jobs/prepare.py", "--config", "conf/default.yaml", "--set", f"paths.raw={raw}",
                           "--set", f"paths.prepared={tmp_path / 'out'}", "--set", "data.format=ml-1m"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(raw / "ratings.dat") in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr

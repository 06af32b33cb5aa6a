"""``recsys data fetch``: put a real MovieLens dataset in ``data/raw/<name>/``, verified.

Sources, in order:
1. GroupLens' own download (``files.grouplens.org``) when it answers, checked against the
   ``.md5`` file GroupLens publishes beside each zip;
2. for ml-100k only, the copy shipped in the ``recbole==1.2.1`` wheel on PyPI (as RecBole
   atomic files), fetched with ``pip download --no-deps`` and checked against the sha256
   sums below.
The destination is written to a temporary directory and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recsys.checksums import sha256_file  # noqa: F401  (re-exported)
from recsys.errors import DataError
from recsys.outputs import replacing

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
GROUPLENS_DATASETS = {"ml-100k": "ml-100k", "ml-1m": "ml-1m", "ml-latest-small": "ml-latest-small", "ml-25m": "ml-25m"}

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
# sha256 of the ML-100K atomic files inside recbole-1.2.1-py3-none-any.whl.
RECBOLE_ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
FETCH_RECORD = "FETCHED.json"


@dataclass
class FetchResult:
    name: str
    dest: Path
    source: str
    files: dict[str, str]  # file name -> sha256
    reused: bool = False


def _log(msg: str) -> None:
    print(f"[fetch] {msg}", file=sys.stderr, flush=True)


def _already_there(dest: Path) -> FetchResult | None:
    record = dest / FETCH_RECORD
    if not record.is_file():
        return None
    try:
        info = json.loads(record.read_text())
        for fname, digest in info["files"].items():
            if sha256_file(dest / fname) != digest:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return FetchResult(info["name"], dest, info["source"], info["files"], reused=True)


def _from_grouplens(name: str, work: Path, timeout: float) -> dict[str, str]:
    base = f"{GROUPLENS}/{GROUPLENS_DATASETS[name]}.zip"
    with urllib.request.urlopen(base + ".md5", timeout=timeout) as resp:
        expected_md5 = resp.read().decode().split()[0].strip().lower()
    _log(f"downloading {base}")
    with urllib.request.urlopen(base, timeout=timeout) as resp:
        blob = resp.read()
    got = hashlib.md5(blob).hexdigest()
    if got != expected_md5:
        raise DataError(f"{base}: md5 {got} does not match the published {expected_md5}")
    files = {}
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            fname = Path(info.filename).name
            (work / fname).write_bytes(zf.read(info))
            files[fname] = sha256_file(work / fname)
    return files


def _from_recbole_wheel(work: Path) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        _log(f"downloading the {RECBOLE_WHEEL} wheel from PyPI (it ships MovieLens-100K)")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, RECBOLE_WHEEL],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DataError(f"pip download {RECBOLE_WHEEL} failed: {proc.stderr.strip()[-500:]}")
        files = {}
        with zipfile.ZipFile(wheels[0]) as zf:
            for fname, expected in RECBOLE_ML100K_SHA256.items():
                (work / fname).write_bytes(zf.read(RECBOLE_PREFIX + fname))
                got = sha256_file(work / fname)
                if got != expected:
                    raise DataError(f"{fname} from {wheels[0].name}: sha256 {got} does not match the expected {expected}")
                files[fname] = got
    return files


def fetch_dataset(name: str, dest: str | Path, source: str = "auto", timeout: float = 10.0, force: bool = False) -> FetchResult:
    """Fetch dataset ``name`` into ``dest``; reuse it when already there and verified.

    Args:
        source: ``auto`` (GroupLens, then PyPI), ``grouplens`` or ``pypi``.
        timeout: seconds to wait for GroupLens before falling back.
    """
    if name not in GROUPLENS_DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(GROUPLENS_DATASETS)}")
    if source not in ("auto", "grouplens", "pypi"):
        raise DataError(f"unknown source {source!r}; use auto, grouplens or pypi")
    dest = Path(dest)
    if not force and (found := _already_there(dest)):
        _log(f"{name} already in {dest} (checksums verified); use --force to fetch again")
        return found
    started = time.time()
    with replacing(dest, "fetch", "--dest", signature=(FETCH_RECORD,)) as work:
        files, used = None, None
        if source in ("auto", "grouplens"):
            try:
                files, used = _from_grouplens(name, work, timeout), "grouplens"
            except DataError:
                raise
            except Exception as err:  # network unreachable, DNS, HTTP error: fall back
                if source == "grouplens":
                    raise DataError(f"GroupLens download of {name} failed: {err}") from None
                _log(f"GroupLens not reachable ({type(err).__name__}: {err}); trying PyPI")
        if files is None:
            if name != "ml-100k":
                raise DataError(f"{name} is only available from GroupLens, which is not reachable from here; "
                                f"download it elsewhere and put its files in {dest}, or use `recsys data synth`")
            files, used = _from_recbole_wheel(work), f"pypi:{RECBOLE_WHEEL}"
        (work / FETCH_RECORD).write_text(json.dumps({"name": name, "source": used, "files": files}, indent=2))
    _log(f"{name}: {len(files)} files from {used} in {time.time() - started:.1f}s -> {dest}")
    return FetchResult(name, dest, used, files)

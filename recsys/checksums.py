"""sha256 of files: what every manifest, index.json and vectors.json records and checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (bounded memory for multi-GB shards)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_digest(obj: dict) -> str:
    """sha256 of a JSON object's canonical form, its own ``sha256`` key left out: lets a JSON
    artifact (index.json) carry a checksum of itself."""
    body = {k: v for k, v in obj.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

"""Encoded feature rows of users or movies, looked up by raw id with numpy.

The prepare job attaches the user and movie features to each rating inside the shard
writer instead of joining wide array columns (genres, title words) in Spark: the ratings
then travel through Spark's shuffle as five narrow columns, and the lookup is one
``searchsorted`` plus a gather per batch.
"""

from __future__ import annotations

import numpy as np

from recsys.errors import DataError
from recsys.features import encoded_columns


class FeatureTable:
    """Feature rows of one tower's entities (users or movies), keyed by raw id.

    Attributes:
        name: "users" or "movies" (for messages).
        ids: sorted raw ids, int64 [N].
        columns: feature name -> encoded values, int64 [N] or [N, L], rows aligned with ``ids``.
    """

    def __init__(self, name: str, ids: np.ndarray, columns: dict[str, np.ndarray]):
        order = np.argsort(ids, kind="stable")
        self.name = name
        self.ids = np.asarray(ids, dtype=np.int64)[order]
        if len(self.ids) > 1 and (np.diff(self.ids) == 0).any():
            raise DataError(f"internal error: repeated raw id in the encoded {name} table; please report this")
        self.columns = {k: v[order] for k, v in columns.items()}

    @classmethod
    def from_frame(cls, name: str, frame, id_column: str, features: list[str]) -> "FeatureTable":
        """From an encoded users/movies pandas table (raw ``id_column`` plus ``enc_<feature>`` columns)."""
        return cls(name, frame[id_column].to_numpy(dtype=np.int64), encoded_columns(frame, features))

    def lookup(self, raw_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Feature values for each raw id: name -> int64 [n] or [n, L]."""
        if not len(self.ids):
            pos, missing = np.zeros(len(raw_ids), np.int64), np.ones(len(raw_ids), bool)
        else:
            pos = np.minimum(np.searchsorted(self.ids, raw_ids), len(self.ids) - 1)
            missing = self.ids[pos] != raw_ids
        if missing.any():
            raise DataError(f"internal error: {self.name[:-1]} id {int(raw_ids[missing][0])} has a rating but no "
                            f"encoded row; please report this")
        return {k: v[pos] for k, v in self.columns.items()}

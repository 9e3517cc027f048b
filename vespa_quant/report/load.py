"""Results folders back in memory: every row with its per-query NDCG@10, grouped by dataset.

A report compares rows across methods, peers, dims and folders by *paired* tests, so each row
travels with its per-query values (``per_query.csv``, one value per judged query, in the same
sorted query order for every row of a folder). Rows are keyed by folder as well as by
``(dim, method, rotation)``: two folders may hold the same method with different rotations.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vespa_quant.errors import DataError
from vespa_quant.evaluate.report import load_results

PER_QUERY_CSV = "per_query.csv"
_NO_ROTATION = (None, "", "none")


@dataclass(frozen=True)
class Entry:
    """One result row, its per-query NDCG@10 (aligned to ``query_ids``) and where it came from."""

    row: dict
    ndcg: np.ndarray
    query_ids: tuple[str, ...]
    folder: Path

    @property
    def peer(self) -> bool:
        return bool(self.row.get("peer"))

    @property
    def bytes(self) -> float:
        return float(self.row["bytes_per_vector"])

    @property
    def mean(self) -> float:
        return float(self.row["ndcg_at_10"])

    def label(self, with_dim: bool = False) -> str:
        """Method name, ``+rotation`` when rotated, ``@dim`` when the group mixes dims."""
        text = str(self.row["method"])
        if self.row.get("rotation") not in _NO_ROTATION:
            text += f"+{self.row['rotation']}"
        return f"{text}@{self.row['dim']}" if with_dim else text


@dataclass(frozen=True)
class DatasetResults:
    """Every entry of one (dataset, model), in the order the folders listed them."""

    dataset: str
    model: str
    entries: tuple[Entry, ...]

    @property
    def mixed_dims(self) -> bool:
        return len({entry.row["dim"] for entry in self.entries}) > 1

    def label(self, entry: Entry) -> str:
        return entry.label(self.mixed_dims)

    @property
    def float32(self) -> Entry | None:
        """float32 at the widest dim: the reference of every "vs float32" statement."""
        rows = [entry for entry in self.entries if entry.row["method"] == "float32"]
        return max(rows, key=lambda entry: int(entry.row["dim"]), default=None)


def _per_query(folder: Path) -> dict[tuple[int, str], dict[str, float]]:
    path = folder / PER_QUERY_CSV
    try:
        handle = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DataError(f"{path}: per-query file not found (written by `vespa-quant evaluate`)") from None
    values: dict[tuple[int, str], dict[str, float]] = {}
    with handle:
        for line, record in enumerate(csv.DictReader(handle), start=2):
            try:
                key = (int(record["dim"]), record["method"])
                values.setdefault(key, {})[record["query_id"]] = float(record["ndcg_at_10"])
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{path} line {line}: expected dim, method, query_id, ndcg_at_10 ({exc})") from None
    return values


def load_folder(folder: Path) -> list[Entry]:
    """Entries of one results folder; every row must have its per-query values, all on one query set."""
    folder = Path(folder)
    rows = load_results(folder)
    per_query = _per_query(folder)
    entries: list[Entry] = []
    query_ids: tuple[str, ...] | None = None
    for row in rows:
        key = (int(row["dim"]), str(row["method"]))
        if key not in per_query:
            raise DataError(f"{folder / PER_QUERY_CSV}: no per-query values for {key[1]} at dim {key[0]}")
        ids = tuple(sorted(per_query[key]))
        if query_ids is not None and ids != query_ids:
            raise DataError(f"{folder / PER_QUERY_CSV}: {key[1]} at dim {key[0]} was scored on other queries "
                            "than the folder's first row; a paired comparison needs one query set")
        query_ids = ids
        entries.append(Entry(row, np.array([per_query[key][qid] for qid in ids]), ids, folder))
    return entries


def load_datasets(folders: Sequence[Path]) -> list[DatasetResults]:
    """Entries of all ``folders``, grouped by (dataset, model); a row repeated across folders is an error."""
    if not folders:
        raise DataError("no results folder given")
    groups: dict[tuple[str, str], list[Entry]] = {}
    seen: dict[tuple, Path] = {}
    for folder in folders:
        for entry in load_folder(folder):
            row = entry.row
            key = (row["dataset"], row["model"], row["dim"], row["method"], row.get("rotation"))
            if key in seen:
                raise DataError(f"{row['method']} at dim {row['dim']} on {row['dataset']} is in both {seen[key]} "
                                f"and {folder}: give each row once")
            seen[key] = Path(folder)
            groups.setdefault((str(row["dataset"]), str(row["model"])), []).append(entry)
    for (dataset, _model), entries in groups.items():
        if len({entry.query_ids for entry in entries}) > 1:
            raise DataError(f"{dataset}: the folders scored different query sets; paired tests need one")
    return [DatasetResults(dataset, model, tuple(entries)) for (dataset, model), entries in groups.items()]

"""The one interface every quantization method implements, and the calibration value it produces.

A method is asymmetric search made concrete (research brief, Part I 1.1): documents are stored as
compact *codes*, queries stay float and are turned into *query inputs* once per query, and a score
``s(q, d) = q . d_hat`` (up to a per-query constant) is computed from the two. Each method also
describes the Vespa fields that hold its codes and the rank expression that computes the very same
score, so the in-process engine, the Vespa package and the offline expression check share one
definition.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Mapping

import numpy as np

from vespa_quant.errors import CalibrationError, VespaQuantError
from vespa_quant.files import atomic_write_bytes
from vespa_quant.quantize.rotation import ROTATIONS, rotation_matrix

Arrays = Mapping[str, np.ndarray]
"""Named arrays: calibration constants, codes (role -> (n, cells)), or query inputs."""

CELL_BYTES = {"float": 4, "bfloat16": 2, "int8": 1, "double": 8}


@dataclass(frozen=True)
class TensorField:
    """One Vespa document field holding part of a method's codes.

    ``role`` is the method-local name (``bits``, ``hi``, ``codes``...); the schema field name is
    derived from method, dim, role and code slot by :func:`field_name`.
    """

    role: str
    cell_type: str
    cells: int
    hamming: bool = False
    """Declared with ``distance-metric: hamming``, so nearestNeighbor can search it (exactly)."""
    hnsw: bool = False
    """Also carries an HNSW index, for approximate nearestNeighbor on large corpora."""
    paged: bool = False
    """Kept on disk (``attribute: paged``): read only for the few hits being rescored."""

    @property
    def tensor_type(self) -> str:
        return f"tensor<{self.cell_type}>(x[{self.cells}])"

    @property
    def bytes(self) -> int:
        return self.cells * CELL_BYTES[self.cell_type]


@dataclass(frozen=True)
class RankExpressions:
    """A method's Vespa ranking, written against ``attribute(<field>)`` and ``query(<input>)``.

    ``first_phase`` ranks every matched document. When ``second_phase`` is set, the first phase is
    the Hamming closeness of the nearestNeighbor candidates and the second phase rescores them.
    """

    inputs: Mapping[str, str]
    first_phase: str
    second_phase: str | None = None
    functions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Calibration:
    """Everything a method learned from a corpus, as a value with a content hash.

    Saved as ``.npz``; ``id`` changes whenever any constant, the method, the dim or the rotation
    changes, so a document encoded with one calibration is never silently scored with another.
    """

    method: str
    dim: int
    rotation: str
    seed: int
    arrays: Mapping[str, np.ndarray]
    id: str = field(init=False)

    def __post_init__(self) -> None:
        frozen = {k: np.ascontiguousarray(v) for k, v in sorted(self.arrays.items())}
        for value in frozen.values():
            if not np.all(np.isfinite(value)):
                raise CalibrationError(f"{self.method} calibration at dim {self.dim} is not finite")
            value.setflags(write=False)
        object.__setattr__(self, "arrays", frozen)
        digest = hashlib.sha256(
            json.dumps([self.method, self.dim, self.rotation, self.seed]).encode()
        )
        for name, value in frozen.items():
            digest.update(name.encode() + str(value.dtype).encode() + str(value.shape).encode())
            digest.update(value.tobytes())
        object.__setattr__(self, "id", digest.hexdigest()[:16])

    def save(self, path: Path) -> Path:
        meta = json.dumps(
            {"method": self.method, "dim": self.dim, "rotation": self.rotation,
             "seed": self.seed, "id": self.id}
        )
        buffer = io.BytesIO()
        np.savez(buffer, __meta__=np.array(meta), **dict(self.arrays))
        return atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["__meta__"]))
                arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
        except (OSError, KeyError, ValueError) as exc:
            raise CalibrationError(f"{path}: not a vespa-quant calibration ({exc})") from exc
        calibration = cls(meta["method"], meta["dim"], meta["rotation"], meta["seed"], arrays)
        if calibration.id != meta["id"]:
            raise CalibrationError(
                f"{path}: content hash {calibration.id} does not match recorded id {meta['id']}"
            )
        return calibration


class Method:
    """Base class of the quantization methods; subclasses fill in the math.

    Subclasses receive vectors already rotated (see :func:`calibrate`), so rotation applies to
    every method without any of them knowing about it.
    """

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True
    hamming_role: ClassVar[str | None] = None
    """Role of a field of sign-like bits usable for a Hamming first phase, if any."""
    always_first_phase: ClassVar[bool] = False
    """True when the Hamming first phase is part of the method itself (binary_hamming/rescore)."""

    def fields(self, dim: int) -> list[TensorField]:
        raise NotImplementedError

    def calibrate(self, corpus: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def encode(self, vectors: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def query_inputs(self, queries: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def hamming_query(self, queries: np.ndarray, constants: Arrays) -> np.ndarray:
        """Packed query bits for the Hamming first phase (same bit convention as the codes)."""
        raise CalibrationError(f"{self.name} has no binary codes for a Hamming first phase")

    def score(self, query_inputs: Arrays, codes: Arrays) -> np.ndarray:
        """(n_queries, n_docs) scores, exactly what the Vespa rank expression computes."""
        raise NotImplementedError

    def rank_expressions(self, dim: int, field: Callable[[str], str]) -> RankExpressions:
        """Vespa expressions computing :meth:`score`; ``field(role)`` gives the field name."""
        raise NotImplementedError

    def buckets(self, vectors: np.ndarray, constants: Arrays) -> np.ndarray | None:
        """(n, dim) bucket index of every value, for drift metrics; None if not a bucket quantizer."""
        return None

    def design_occupancy(self, constants: Arrays) -> np.ndarray | None:
        """Fraction of values each bucket was designed to hold (e.g. 1/2, 1/2 for a median)."""
        return None

    def centre_scale(self, constants: Arrays) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-dimension centre and scale the calibration assumed, for drift in sigma units."""
        return None

    def bytes_per_vector(self, dim: int) -> int:
        """Bytes each document costs in memory: derived from the fields, never typed twice."""
        return sum(f.bytes for f in self.fields(dim) if not f.paged)

    def disk_bytes_per_vector(self, dim: int) -> int:
        return sum(f.bytes for f in self.fields(dim) if f.paged)

    def bits_per_dim(self, dim: int) -> float:
        return self.bytes_per_vector(dim) * 8 / dim


def robust_scale(corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension median and standard deviation; a zero deviation becomes 1.

    all-MiniLM-L6-v2 has dimensions that are ~1e-33 for every text: their deviation is 0 and
    every document lands in the same bucket, so any positive scale keeps scores finite without
    changing the ranking.
    """
    values = corpus.astype(np.float64)
    sigma = values.std(axis=0)
    return np.median(values, axis=0), np.where(sigma > 0, sigma, 1.0)


SLOTS: tuple[str, ...] = ("a", "b")
"""Code slots of a calibrated method (blue/green): documents hold one calibration's codes in each,
queries read the slot the calibration manifest marks active, and a recalibration rewrites the other
slot before switching to it. Slot ``a`` carries the plain names, so a package without recalibration
slots is the package of slot ``a`` alone."""


def slot_suffix(slot: str) -> str:
    """What a slot appends to every name derived from (method, dim): nothing for ``a``, ``_b`` for ``b``.

    The one naming rule of slots: :func:`field_name`, the rank profile and the per-slot
    calibration-id field all append it.
    """
    if slot not in SLOTS:
        raise VespaQuantError(f"unknown code slot {slot!r}; expected one of {', '.join(SLOTS)}")
    return "" if slot == SLOTS[0] else f"_{slot}"


def field_name(method: str, dim: int, role: str, slot: str = "a") -> str:
    """Schema field holding ``role`` of ``method`` at ``dim`` in ``slot``: one name rule for every tool."""
    return f"{method}_{dim}_{role}{slot_suffix(slot)}"


def method_slots(method: Method, recalibration_slots: bool = True) -> tuple[str, ...]:
    """Slots ``method`` has: two when it is calibrated (and slots are enabled), else only ``a``.

    A calibration-free method's codes never change, so it has nothing to switch between.
    """
    return SLOTS if method.needs_calibration and recalibration_slots else SLOTS[:1]


NN_INPUT = "q_nn"
"""Query tensor of nearestNeighbor for methods whose own inputs lack packed query bits."""
BITS_INPUT = "q_bits"
"""Packed query bits that ``binary_hamming``/``binary_rescore`` already declare and reuse."""


def nn_input_name(method: Method, dim: int) -> str:
    """Query tensor the ``nearestNeighbor`` reads: ``q_bits`` where the method declares it."""
    inputs = method.rank_expressions(dim, field=lambda role: field_name(method.name, dim, role)).inputs
    return BITS_INPUT if BITS_INPUT in inputs else NN_INPUT


def nn_input_declarations(method: Method, dim: int) -> dict[str, str]:
    """Inputs a rank profile needs beyond :meth:`Method.rank_expressions` for an optional Hamming
    first phase (``--first-phase hamming``); empty when impossible or already declared."""
    if method.hamming_role is None or nn_input_name(method, dim) == BITS_INPUT:
        return {}
    cells = {spec.role: spec.cells for spec in method.fields(dim)}[method.hamming_role]
    return {NN_INPUT: f"tensor<int8>(x[{cells}])"}


def _check_dim(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise CalibrationError(
            f"{what} have shape {vectors.shape}, calibration expects (n, {dim})"
        )
    return vectors


def rotate(vectors: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Apply the calibration's orthogonal rotation (identity for ``none``)."""
    if calibration.rotation == "none":
        return vectors
    matrix = rotation_matrix(calibration.rotation, calibration.dim, calibration.seed)
    return (vectors @ matrix.T).astype(np.float32)


def calibrate(method: Method, corpus: np.ndarray, rotation: str = "none", seed: int = 0) -> Calibration:
    """Learn ``method``'s constants on ``corpus`` (after the optional rotation)."""
    if rotation not in ROTATIONS:
        raise CalibrationError(f"unknown rotation {rotation!r}; expected one of {ROTATIONS}")
    corpus = np.asarray(corpus, dtype=np.float32)
    if corpus.ndim != 2 or len(corpus) == 0:
        raise CalibrationError(f"calibration corpus must be a non-empty (n, dim) array, got {corpus.shape}")
    dim = corpus.shape[1]
    staged = Calibration(method.name, dim, rotation, seed, {})
    return Calibration(method.name, dim, rotation, seed, method.calibrate(rotate(corpus, staged)))


def _check_method(method: Method, calibration: Calibration) -> None:
    if calibration.method != method.name:
        raise CalibrationError(
            f"calibration {calibration.id} is for {calibration.method}, not {method.name}"
        )


def encode(method: Method, vectors: np.ndarray, calibration: Calibration) -> dict[str, np.ndarray]:
    """Codes of ``vectors`` keyed by field role, in the cell type Vespa stores."""
    _check_method(method, calibration)
    vectors = _check_dim(vectors, calibration.dim, "document vectors")
    return method.encode(rotate(vectors, calibration), calibration.arrays)


def query_inputs(method: Method, queries: np.ndarray, calibration: Calibration) -> dict[str, np.ndarray]:
    """Per-query inputs (name -> (n_queries, ...)) for :meth:`Method.score` and ``query(name)``."""
    _check_method(method, calibration)
    queries = _check_dim(queries, calibration.dim, "query vectors")
    return method.query_inputs(rotate(queries, calibration), calibration.arrays)


def hamming_query(method: Method, queries: np.ndarray, calibration: Calibration) -> np.ndarray:
    _check_method(method, calibration)
    queries = _check_dim(queries, calibration.dim, "query vectors")
    return method.hamming_query(rotate(queries, calibration), calibration.arrays)

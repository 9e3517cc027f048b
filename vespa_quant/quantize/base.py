"""The protocol every quantization method implements, its optional capabilities, and the calibration value.

A method is asymmetric search made concrete (research brief, Part I 1.1): documents are stored as
compact *codes*, queries stay float and become *query inputs* once per query, and the score
``s(q, d) = q . d_hat`` (up to a per-query constant) is computed from the two. One object says
everything about a method, with no Vespa names (the Vespa stage derives those):

* :meth:`Quantizer.fields`: the code fields a document stores (role, cell type, cells), from
  which bytes/vector is derived;
* :meth:`Quantizer.calibrate` / :meth:`Quantizer.encode` / :meth:`Quantizer.query_inputs`;
* :meth:`Quantizer.expression`: the score as a typed tree over query inputs and code fields
  (:mod:`vespa_quant.quantize.expr`), which becomes the Vespa rank expression;
* :meth:`Quantizer.doc_view` / :meth:`Quantizer.query_view`: the same score in one of the shapes
  the engine's kernels run (:mod:`vespa_quant.quantize.scoring`).

Capabilities are separate small protocols a method may also satisfy: :class:`SignBits` (a field
of sign-like bits for a Hamming first phase), :class:`Reconstructs` (a float reconstruction, for
MSE diagnostics) and :class:`DriftHooks` (buckets and design occupancy, for drift metrics).
Rotations are not a method's concern: :func:`calibrate` learns one (or builds a seeded one),
stores the matrix in the calibration, and rotates every vector before the method sees it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vespa_quant.errors import CalibrationError
from vespa_quant.files import atomic_write_bytes
from vespa_quant.quantize import fit
from vespa_quant.quantize.bits import pack_bits
from vespa_quant.quantize.expr import Expr
from vespa_quant.quantize.rotation import ROTATIONS, learn_rotation
from vespa_quant.quantize.scoring import DocView, QueryView

Arrays = Mapping[str, np.ndarray]
"""Named arrays: calibration constants, codes (role -> (n, cells)), or query inputs."""

CELL_BYTES = {"float": 4, "bfloat16": 2, "int8": 1, "double": 8}
ROTATION_KEY = "rotation"
"""Calibration array holding the (dim, dim) rotation matrix; no method may use the name."""
DEFAULT_CALIBRATION_SAMPLE = 100_000
"""Rows a calibration is learned on at most (a seeded sample beyond that): per-dimension
constants of 100k rows are within ~0.3% of the population's, and calibration stays seconds at 10M."""
ENCODE_CHUNK = 65_536
"""Rows encoded at once: bounds the temporaries of every encoder, whatever the corpus size."""


@dataclass(frozen=True)
class CodeField:
    """One stored part of a method's codes.

    ``role`` is the method-local name (``bits``, ``hi``, ``codes``...); the Vespa stage turns
    (method, dim, role, slot) into a field name.
    """

    role: str
    cell_type: str
    cells: int
    sign_bits: bool = False
    """Packed sign-like bits a Hamming nearest-neighbour search can run on."""
    paged: bool = False
    """Kept on disk, read only for the few hits being rescored (not counted in memory)."""

    @property
    def bytes(self) -> int:
        return self.cells * CELL_BYTES[self.cell_type]


@dataclass(frozen=True)
class InputSpec:
    """One query input: a dense vector of ``cells`` (``cell_type``), or a scalar when ``cells`` is None."""

    name: str
    cells: int | None = None
    cell_type: str = "float"


class Quantizer(Protocol):
    """What every registered method provides (see the module docstring)."""

    name: str
    needs_calibration: bool
    always_first_phase: bool
    """True when the Hamming first phase is part of the method's definition
    (binary_hamming, binary_rescore): it has no exhaustive form."""

    def fields(self, dim: int) -> list[CodeField]: ...

    def inputs(self, dim: int) -> list[InputSpec]: ...

    def expression(self, dim: int) -> Expr: ...

    def calibrate(self, corpus: np.ndarray, queries: np.ndarray | None) -> dict[str, np.ndarray]: ...

    def encode(self, vectors: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]: ...

    def query_inputs(self, queries: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]: ...

    def doc_view(self, codes: Arrays, constants: Arrays) -> DocView: ...

    def query_view(self, queries: np.ndarray, constants: Arrays) -> QueryView: ...


@runtime_checkable
class SignBits(Protocol):
    """A method storing sign-like bits (``sign_role``) that a Hamming first phase can search."""

    sign_role: str

    def sign_query(self, queries: np.ndarray, constants: Arrays) -> np.ndarray:
        """Packed query bits in the convention of the stored ``sign_role`` bits."""
        ...


@runtime_checkable
class Reconstructs(Protocol):
    """A method whose codes decode to float vectors (for MSE against the rate-distortion bound)."""

    def reconstruct(self, codes: Arrays, constants: Arrays) -> np.ndarray: ...


@runtime_checkable
class DriftHooks(Protocol):
    """A bucket quantizer: which bucket each value falls in, and what occupancy it was designed for."""

    def buckets(self, vectors: np.ndarray, constants: Arrays) -> np.ndarray: ...

    def design_occupancy(self, constants: Arrays) -> np.ndarray | None: ...

    def centre_scale(self, constants: Arrays) -> tuple[np.ndarray, np.ndarray] | None: ...


def columns(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as a slice when it is a run of consecutive columns, so ``a[:, columns(index)]`` is a
    view and ``a[:, columns(index)] = b`` a block copy, not a gather or scatter (depth groups of
    transform coding are such runs: at 1M documents the scatter cost seconds per method)."""
    index = np.asarray(index)
    if len(index) and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def bytes_per_vector(method: Quantizer, dim: int) -> int:
    """Bytes each document costs in memory: derived from the fields, never typed twice."""
    return sum(spec.bytes for spec in method.fields(dim) if not spec.paged)


def disk_bytes_per_vector(method: Quantizer, dim: int) -> int:
    return sum(spec.bytes for spec in method.fields(dim) if spec.paged)


def bits_per_dim(method: Quantizer, dim: int) -> float:
    return bytes_per_vector(method, dim) * 8 / dim


def sign_role(method: Quantizer) -> str | None:
    """Role of the method's own sign bits, or None when it stores none."""
    return method.sign_role if isinstance(method, SignBits) else None


@dataclass(frozen=True)
class Calibration:
    """Everything a method learned from a corpus, rotation included, as a value with a content hash.

    Saved as ``.npz``; ``id`` changes whenever any constant, the method, the dim or the rotation
    changes, so a document encoded with one calibration is never silently scored with another.
    The rotation matrix is stored (``arrays["rotation"]``), never re-derived, so a learned
    rotation (PCA) and a seeded one are handled alike.
    """

    method: str
    dim: int
    rotation: str
    seed: int
    arrays: Mapping[str, np.ndarray]
    sample_rows: int = 0
    """Corpus rows the calibration was learned on (after sampling)."""
    id: str = field(init=False)

    def __post_init__(self) -> None:
        frozen = {k: np.ascontiguousarray(v) for k, v in sorted(self.arrays.items())}
        for name, value in frozen.items():
            if not np.all(np.isfinite(value)):
                raise CalibrationError(f"{self.method} calibration at dim {self.dim}: {name} is not finite")
            value.setflags(write=False)
        if self.rotation != "none" and ROTATION_KEY not in frozen:
            raise CalibrationError(f"{self.method} calibration: rotation {self.rotation!r} without its matrix")
        object.__setattr__(self, "arrays", frozen)
        digest = hashlib.sha256(json.dumps([self.method, self.dim, self.rotation, self.seed]).encode())
        for name, value in frozen.items():
            digest.update(name.encode() + str(value.dtype).encode() + str(value.shape).encode())
            digest.update(value.tobytes())
        object.__setattr__(self, "id", digest.hexdigest()[:16])

    @property
    def constants(self) -> dict[str, np.ndarray]:
        """The method's own constants (every array but the rotation)."""
        return {k: v for k, v in self.arrays.items() if k != ROTATION_KEY}

    def rotate(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` in the rotated space the method was calibrated in (float32)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if ROTATION_KEY not in self.arrays:
            return vectors
        return vectors @ self.arrays[ROTATION_KEY].T

    def save(self, path: Path) -> Path:
        meta = json.dumps({"method": self.method, "dim": self.dim, "rotation": self.rotation,
                           "seed": self.seed, "sample_rows": self.sample_rows, "id": self.id})
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {"__meta__": np.array(meta), **self.arrays}
        np.savez(buffer, **arrays)
        return atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Load and verify a saved calibration; every failure is one line naming the file."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "__meta__" not in npz.files:
                    raise CalibrationError(f"{path}: not a vespa-quant calibration (no __meta__ record)")
                meta = json.loads(str(npz["__meta__"]))
                arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
        except CalibrationError:
            raise
        except FileNotFoundError:
            raise CalibrationError(f"{path}: no such calibration file") from None
        except Exception as exc:  # zipfile.BadZipFile, EOFError, ValueError, OSError: all mean unreadable
            raise CalibrationError(f"{path}: not a readable calibration ({type(exc).__name__}: {exc})") from None
        try:
            calibration = cls(meta["method"], int(meta["dim"]), meta["rotation"], int(meta["seed"]), arrays,
                              int(meta.get("sample_rows", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{path}: calibration record is incomplete ({exc})") from None
        if calibration.id != meta.get("id"):
            raise CalibrationError(
                f"{path}: content hash {calibration.id} does not match recorded id {meta.get('id')}"
            )
        return calibration


def robust_scale(corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension median and standard deviation (float64); a zero deviation becomes 1.

    all-MiniLM-L6-v2 has dimensions that are ~1e-33 for every text: their deviation is 0 and
    every document lands in the same bucket, so any positive scale keeps scores finite without
    changing the ranking.
    """
    sigma = fit.std(corpus, np.float64)
    return fit.median(corpus).astype(np.float64), np.where(sigma > 0, sigma, 1.0)


def _check_vectors(vectors: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        expected = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise CalibrationError(f"{what} have shape {vectors.shape}, expected {expected}")
    return vectors


def _check_method(method: Quantizer, calibration: Calibration) -> None:
    if calibration.method != method.name:
        raise CalibrationError(f"calibration {calibration.id} is for {calibration.method}, not {method.name}")


def calibrate(method: Quantizer, corpus: np.ndarray, rotation: str = "none", seed: int = 0, *,
              queries: np.ndarray | None = None, sample: int = DEFAULT_CALIBRATION_SAMPLE,
              like: Calibration | None = None) -> Calibration:
    """Learn ``method``'s constants (and the rotation) on a seeded sample of at most ``sample`` rows.

    ``queries`` (optional) is a sample of queries for query-aware methods and rotations; methods
    that do not use queries ignore it. ``like`` reuses another calibration's rotation matrix
    instead of learning one (drift compares a recalibration with a frozen calibration in one
    space).
    """
    if rotation not in ROTATIONS:
        raise CalibrationError(f"unknown rotation {rotation!r}; expected one of {', '.join(ROTATIONS)}")
    if getattr(corpus, "ndim", 0) != 2:
        raise CalibrationError(f"calibration vectors must be an (n, dim) array, got shape {np.shape(corpus)}")
    if len(corpus) == 0:
        raise CalibrationError("calibration corpus is empty")
    dim = corpus.shape[1]
    rows = np.asarray(fit.calibration_sample(corpus, sample, seed), dtype=np.float32)
    if queries is not None:
        queries = _check_vectors(queries, dim, "calibration queries")
    if like is not None and (like.rotation, like.dim) != (rotation, dim):
        raise CalibrationError(f"cannot reuse the rotation of calibration {like.id} ({like.rotation}, "
                               f"{like.dim} dims) for rotation {rotation!r} at {dim} dims")
    matrix = like.arrays.get(ROTATION_KEY) if like is not None else learn_rotation(rotation, rows, seed, queries)
    arrays: dict[str, np.ndarray] = {} if matrix is None else {ROTATION_KEY: matrix}
    staged = Calibration(method.name, dim, rotation, seed, arrays)
    constants = method.calibrate(staged.rotate(rows), None if queries is None else staged.rotate(queries))
    if ROTATION_KEY in constants:
        raise CalibrationError(f"{method.name}: calibration constant name {ROTATION_KEY!r} is reserved")
    return Calibration(method.name, dim, rotation, seed, {**arrays, **constants}, len(rows))


def encode(method: Quantizer, vectors: np.ndarray, calibration: Calibration,
           chunk: int = ENCODE_CHUNK) -> dict[str, np.ndarray]:
    """Codes of ``vectors`` keyed by field role, in the cell type Vespa stores; encoded in chunks."""
    _check_method(method, calibration)
    if vectors.ndim != 2 or vectors.shape[1] != calibration.dim:
        raise CalibrationError(f"document vectors have shape {vectors.shape}, calibration expects (n, {calibration.dim})")
    constants = calibration.constants
    first = method.encode(calibration.rotate(vectors[:chunk]), constants)
    # A role that stores the unrotated float32 vector itself (float32, binary_rescore's paged
    # copy) is the input: it is used in place, so a 1M x 384 corpus is not copied per method.
    same = [role for role, codes in first.items()
            if calibration.rotation == "none" and codes.dtype == np.float32 and vectors.dtype == np.float32
            and codes.shape == vectors[:chunk].shape and np.array_equal(codes, vectors[:chunk])]
    out = {role: np.empty((len(vectors), *codes.shape[1:]), dtype=codes.dtype)
           for role, codes in first.items() if role not in same}
    for start in range(0, len(vectors), chunk):
        block = first if start == 0 else method.encode(calibration.rotate(vectors[start:start + chunk]), constants)
        for role in out:
            out[role][start:start + len(block[role])] = block[role]
    return {role: np.asarray(vectors) if role in same else out[role] for role in first}


def query_inputs(method: Quantizer, queries: np.ndarray, calibration: Calibration) -> dict[str, np.ndarray]:
    """Per-query inputs (name -> (n_queries, ...)) the Vespa profile reads as ``query(name)``."""
    _check_method(method, calibration)
    queries = _check_vectors(queries, calibration.dim, "query vectors")
    return method.query_inputs(calibration.rotate(queries), calibration.constants)


def query_view(method: Quantizer, queries: np.ndarray, calibration: Calibration) -> QueryView:
    """The query side of the method's score, in the shape the engine runs."""
    _check_method(method, calibration)
    queries = _check_vectors(queries, calibration.dim, "query vectors")
    return method.query_view(calibration.rotate(queries), calibration.constants)


def doc_view(method: Quantizer, codes: Arrays, calibration: Calibration) -> DocView:
    _check_method(method, calibration)
    return method.doc_view(codes, calibration.constants)


def sign_query(method: Quantizer, queries: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Packed query bits for a Hamming first phase on the method's own sign bits."""
    _check_method(method, calibration)
    if not isinstance(method, SignBits):
        raise CalibrationError(f"{method.name} stores no sign bits for a Hamming first phase")
    queries = _check_vectors(queries, calibration.dim, "query vectors")
    return method.sign_query(calibration.rotate(queries), calibration.constants)


def shared_sign_bits(vectors: np.ndarray) -> np.ndarray:
    """Packed ``x > 0`` bits of raw (unrotated) vectors: the first-phase bits of methods without their own."""
    return pack_bits(np.asarray(vectors) > 0)


def first_phase_query(method: Quantizer, queries: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Packed query bits for the Hamming first phase: on the method's own sign bits when it has
    them, else on the shared sign bits of the raw vector."""
    if isinstance(method, SignBits):
        return sign_query(method, queries, calibration)
    return shared_sign_bits(_check_vectors(queries, calibration.dim, "query vectors"))

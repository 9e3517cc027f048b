"""Download a BEIR dataset by name with BEIR's own code, verified against BEIR's md5 table.

``beir.util.download_and_unzip`` is the ecosystem's way to fetch a dataset, so we use it, but
on its own it trusts whatever arrives: no HTTP status check (a 404 page is saved as the zip), no
timeout, no size limit, no checksum, and it unzips into the destination before anyone could
check. So the download step (``beir.util.download_url``) runs in a child process that a
watchdog stops when the file outgrows the size cap or stops growing; the zip is then checked
against BEIR's published md5, and only a verified zip is handed to ``download_and_unzip`` (which
finds it in place and just unzips). Everything happens in a hidden staging folder under the data
root, moved into place by one rename, and deleted on any failure: a failed or tampered download
leaves nothing a later run could trust.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import zipfile
from multiprocessing.connection import Connection
from pathlib import Path

from vespa_quant.data.beir import DATA_ROOT_ENV, check_dataset_name
from vespa_quant.errors import DataError

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
BEIR_URL_ENV = "VESPA_QUANT_BEIR_URL"
MAX_BYTES_ENV = "VESPA_QUANT_MAX_DOWNLOAD_BYTES"
DEFAULT_MAX_BYTES = 2 << 30
"""2 GiB: above BEIR's largest public zips (msmarco, fever, climate-fever, about 1.1-1.2 GB)."""
MAX_UNZIPPED_RATIO = 10
STALL_SECONDS = 300.0
POLL_SECONDS = 0.05

BEIR_MD5: dict[str, str] = {
    # The md5 column of the "Available Datasets" table in beir-cellar/beir README.md (commit
    # ef83d29, v2.2.0). examples/dataset/md5.csv in the same repository is older: it still lists
    # fever with scifact's sum and the touche2020 zip that the 2021 qrels update replaced.
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
    # Only in md5.csv (not in the README table).
    "germanquad": "95a581c3162d10915a418609bcce851b",
}


def dataset_url(name: str, base_url: str | None = None) -> str:
    """``{base}/{name}.zip``; the base is the argument, else ``$VESPA_QUANT_BEIR_URL``, else BEIR's."""
    base = base_url or os.environ.get(BEIR_URL_ENV) or BEIR_URL
    return f"{base.rstrip('/')}/{check_dataset_name(name)}.zip"


def resolve_max_bytes(max_bytes: int | None = None) -> int:
    """Size cap: the argument, else ``$VESPA_QUANT_MAX_DOWNLOAD_BYTES``, else 2 GiB."""
    if max_bytes is not None:
        return max_bytes
    from_env = os.environ.get(MAX_BYTES_ENV)
    if not from_env:
        return DEFAULT_MAX_BYTES
    try:
        return int(from_env)
    except ValueError:
        raise DataError(f"${MAX_BYTES_ENV} must be a number of bytes, got {from_env!r}") from None


def download_beir(
    name: str,
    data_root: str | Path,
    *,
    base_url: str | None = None,
    md5: str | None = None,
    max_bytes: int | None = None,
    stall_seconds: float = STALL_SECONDS,
) -> Path:
    """Download, verify and unzip BEIR's ``{name}.zip`` into ``data_root``; return the folder.

    ``md5`` defaults to BEIR's published sum (:data:`BEIR_MD5`); a name BEIR publishes none for
    needs it given. The zip may not exceed ``max_bytes`` (:func:`resolve_max_bytes`) nor stall
    for ``stall_seconds``.
    """
    check_dataset_name(name)
    root = Path(data_root).expanduser()
    url = dataset_url(name, base_url)
    expected = (md5 or BEIR_MD5.get(name) or "").lower()
    if not expected:
        raise DataError(
            f"{name}: BEIR publishes no md5 for this dataset, so a download cannot be verified; "
            f"pass md5=..., or {_hint(root, name)}"
        )
    cap = resolve_max_bytes(max_bytes)
    import requests

    try:
        head = requests.head(url, timeout=30, allow_redirects=True)
    except requests.RequestException as exc:
        raise DataError(f"{name}: could not download {url} ({exc}); {_hint(root, name)}") from exc
    if head.status_code == 404:
        raise DataError(f"{name}: not a BEIR dataset ({url} answered 404); {_hint(root, name)}")
    if head.status_code >= 400 and head.status_code != 405:
        raise DataError(f"{url}: answered HTTP {head.status_code}; {_hint(root, name)}")
    announced = int(head.headers.get("content-length") or 0)
    if announced > cap:
        raise DataError(_too_big(url, announced, cap))

    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-download-", dir=root))
    except OSError as exc:
        raise DataError(f"{name}: could not create a download folder under {root} ({exc})") from exc
    try:
        zip_path = staging / f"{name}.zip"
        _fetch_watched(url, zip_path, cap, stall_seconds)
        got = _md5(zip_path)
        if got != expected:
            raise DataError(
                f"{url}: md5 mismatch, expected {expected}, got {got}; the download was deleted"
            )
        _check_members(zip_path, name, cap * MAX_UNZIPPED_RATIO)
        import beir.util  # imports torch (~3 s): only a verified download pays for it

        beir.util.download_and_unzip(url, str(staging))
        folder = root / name
        if not folder.is_dir():
            os.replace(staging / name, folder)
    except OSError as exc:
        raise DataError(f"{name}: could not save the download under {root} ({exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _fetch_watched(url: str, zip_path: Path, cap: int, stall_seconds: float) -> None:
    """Run ``beir.util.download_url`` in a child process, stopping it past the cap or a stall.

    The child cannot be told a limit, so the parent polls the file size. A fast link can
    overshoot by what arrives in one poll interval before the child is stopped; the file is
    deleted with the staging folder either way.
    """
    context = (multiprocessing.get_context("fork") if sys.platform.startswith("linux")
               else multiprocessing.get_context("spawn"))
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_fetch, args=(url, str(zip_path), send), daemon=True)
    child.start()
    send.close()
    size, last_growth = 0, time.monotonic()
    try:
        while True:
            child.join(POLL_SECONDS)
            now_size = zip_path.stat().st_size if zip_path.exists() else 0
            if now_size > cap:
                raise DataError(_too_big(url, now_size, cap))
            if now_size != size:
                size, last_growth = now_size, time.monotonic()
            if child.exitcode is not None:
                break
            if time.monotonic() - last_growth > stall_seconds:
                raise DataError(
                    f"{url}: download stalled at {size} bytes for {stall_seconds:g} s; "
                    "the partial file was deleted"
                )
        if child.exitcode != 0:
            problem = receive.recv() if receive.poll() else f"exit code {child.exitcode}"
            raise DataError(f"{url}: download failed ({problem})")
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()


def _fetch(url: str, zip_path: str, report: Connection) -> None:
    """Child process body: BEIR's download step; a failure is sent back as one line."""
    try:
        import beir.util

        beir.util.download_url(url, zip_path)
    except BaseException as exc:  # noqa: BLE001 - anything the child hits goes back as text
        report.send(f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise SystemExit(1) from None


def _md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - BEIR publishes md5; this checks integrity, not secrecy
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_members(zip_path: Path, name: str, max_unzipped: int) -> None:
    """Every member must sit under ``{name}/`` and the whole must unzip to a bounded size.

    ``zipfile`` already strips ``..`` and absolute prefixes while extracting; this check makes an
    archive with such names, or a zip bomb, an error instead of a silently rewritten folder.
    """
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise DataError(f"{zip_path.name}: not a valid zip archive ({exc})") from exc
    if not members:
        raise DataError(f"{zip_path.name}: empty archive, expected a {name}/ folder")
    for member in members:
        parts = Path(member.filename).parts
        if not parts or parts[0] != name or ".." in parts or member.filename.startswith("/"):
            raise DataError(
                f"{zip_path.name}: member {member.filename!r} is outside the {name}/ folder"
            )
    total = sum(member.file_size for member in members)
    if total > max_unzipped:
        raise DataError(
            f"{zip_path.name}: unzips to {total} bytes, more than {max_unzipped} "
            f"({MAX_UNZIPPED_RATIO} x the download size cap)"
        )


def _too_big(url: str, size: int, cap: int) -> str:
    return (
        f"{url}: download exceeds the size cap ({size} > {cap} bytes); raise it with "
        f"max_bytes= or ${MAX_BYTES_ENV}"
    )


def _hint(root: Path, name: str) -> str:
    return (
        f"place the BEIR folder at {root / name} yourself, or point --data-root / "
        f"${DATA_ROOT_ENV} at a folder that holds it"
    )

"""Download by name through BEIR's code, against a local HTTP server: md5, size cap, stalls."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vespa_quant.data import load_beir
from vespa_quant.data.download import BEIR_MD5, dataset_url, download_beir, resolve_max_bytes
from vespa_quant.errors import DataError

HEADER = "query-id\tcorpus-id\tscore\n"


def make_zip(folder: str, extra_member: str | None = None) -> bytes:
    """A tiny BEIR dataset zipped the way BEIR ships them: everything under ``{folder}/``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{folder}/corpus.jsonl", '{"_id": "d1", "title": "T", "text": "x"}\n')
        archive.writestr(f"{folder}/queries.jsonl", '{"_id": "q1", "text": "y"}\n')
        archive.writestr(f"{folder}/qrels/test.tsv", HEADER + "q1\td1\t1\n")
        if extra_member:
            archive.writestr(extra_member, "sneaky")
    return buffer.getvalue()


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; ``/endless/*`` never ends, ``/stall/*`` stops sending."""

    server: LocalServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_GET(self) -> None:
        self._respond(body=True)

    def _respond(self, body: bool) -> None:
        try:
            if self.path.startswith("/endless/"):
                self._stream(body, pause=0.001, limit_s=ENDLESS_S)
            elif self.path.startswith("/stall/"):
                self._stream(body, pause=3.0, limit_s=3.0)
            elif self.path in self.server.files:
                content = self.server.files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if body:
                    self.wfile.write(content)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stream(self, body: bool, pause: float, limit_s: float) -> None:
        """No Content-Length (so the cap cannot be checked up front), bounded in time."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        started = time.monotonic()
        while body and time.monotonic() - started < limit_s:
            self.wfile.write(b"z" * 8192)
            self.wfile.flush()
            time.sleep(pause)


ENDLESS_S = 30.0
"""How long ``/endless/*`` streams: far beyond the cap's few milliseconds, so a loaded machine (a
first run compiling kernels beside an embedding job took 4.8 s here) cannot blur the two."""


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]


@pytest.fixture
def server(monkeypatch) -> Iterator[LocalServer]:
    """An HTTP server on 127.0.0.1 for one test; requests must not route it through a proxy."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("VESPA_QUANT_MAX_DOWNLOAD_BYTES", raising=False)
    httpd = LocalServer(("127.0.0.1", 0), Handler)
    httpd.files = {}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def base_url(httpd: LocalServer, prefix: str = "/datasets") -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}{prefix}"


@pytest.mark.integration  # beir.util imports torch: ~7 s
def test_verified_download_loads(server: LocalServer, tmp_path: Path) -> None:
    content = make_zip("tiny")
    server.files["/datasets/tiny.zip"] = content
    md5 = hashlib.md5(content).hexdigest()
    folder = download_beir("tiny", tmp_path, base_url=base_url(server), md5=md5)
    assert folder == tmp_path / "tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no zip, no staging folder
    dataset = load_beir("tiny", data_root=tmp_path)
    assert (dataset.doc_ids, dataset.doc_texts, dataset.qrels) == (["d1"], ["T x"], {"q1": {"d1": 1}})


def test_load_by_name_checks_beirs_published_md5(server: LocalServer, tmp_path: Path,
                                                 monkeypatch) -> None:
    content = make_zip("nfcorpus")  # not BEIR's nfcorpus.zip, so its md5 cannot match
    server.files["/datasets/nfcorpus.zip"] = content
    monkeypatch.setenv("VESPA_QUANT_BEIR_URL", base_url(server))
    with pytest.raises(DataError) as caught:
        load_beir("nfcorpus", data_root=tmp_path)
    assert str(caught.value) == (
        f"{base_url(server)}/nfcorpus.zip: md5 mismatch, expected "
        f"a89dba18a62ef92f7d323ec890a0d38d, got {hashlib.md5(content).hexdigest()}; "
        "the download was deleted"
    )
    assert not list(tmp_path.iterdir())


def test_announced_size_over_the_cap_is_refused_before_downloading(server: LocalServer,
                                                                   tmp_path: Path) -> None:
    content = make_zip("tiny")
    server.files["/datasets/tiny.zip"] = content
    with pytest.raises(DataError, match=r"tiny.zip: download exceeds the size cap \(\d+ > 100 bytes\)"):
        download_beir("tiny", tmp_path, base_url=base_url(server), md5="0" * 32, max_bytes=100)
    assert not list(tmp_path.iterdir())


def test_unannounced_stream_is_stopped_at_the_cap(server: LocalServer, tmp_path: Path,
                                                  monkeypatch) -> None:
    monkeypatch.setenv("VESPA_QUANT_MAX_DOWNLOAD_BYTES", str(64 * 1024))
    started = time.monotonic()
    with pytest.raises(DataError, match=r"tiny.zip: download exceeds the size cap .* > 65536 bytes"):
        download_beir("tiny", tmp_path, base_url=base_url(server, "/endless"), md5="0" * 32)
    assert time.monotonic() - started < ENDLESS_S / 2  # stopped by the watchdog, not by the server's end
    assert not list(tmp_path.iterdir())


def test_stalled_download_is_stopped(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"tiny.zip: download stalled at \d+ bytes for 0.5 s"):
        download_beir("tiny", tmp_path, base_url=base_url(server, "/stall"), md5="0" * 32,
                      stall_seconds=0.5)
    assert not list(tmp_path.iterdir())


def test_missing_dataset_answers_404(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope: not a BEIR dataset \(.*/nope.zip answered 404\)"):
        download_beir("nope", tmp_path, base_url=base_url(server), md5="0" * 32)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_member_outside_the_dataset_folder_is_refused(server: LocalServer, tmp_path: Path) -> None:
    content = make_zip("tiny", extra_member="elsewhere/evil.txt")
    server.files["/datasets/tiny.zip"] = content
    with pytest.raises(DataError, match=r"tiny.zip: member 'elsewhere/evil.txt' is outside the tiny/ folder"):
        download_beir("tiny", tmp_path, base_url=base_url(server),
                      md5=hashlib.md5(content).hexdigest())
    assert not list(tmp_path.iterdir())


def test_unknown_dataset_needs_an_md5(tmp_path: Path) -> None:
    # Fails before any network access: the URL points nowhere on purpose.
    with pytest.raises(DataError, match=r"tiny: BEIR publishes no md5 for this dataset"):
        download_beir("tiny", tmp_path, base_url="http://127.0.0.1:9/none")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["..", "/abs", "a/../../b"])
def test_unsafe_names_never_reach_the_network(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match=r"dataset name .*: expected one folder name"):
        download_beir(name, tmp_path, base_url="http://127.0.0.1:9/none", md5="0" * 32)


def test_url_and_cap_settings(monkeypatch) -> None:
    monkeypatch.delenv("VESPA_QUANT_BEIR_URL", raising=False)
    monkeypatch.delenv("VESPA_QUANT_MAX_DOWNLOAD_BYTES", raising=False)
    assert dataset_url("scifact") == (
        "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip"
    )
    assert dataset_url("scifact", "http://mirror/x/") == "http://mirror/x/scifact.zip"
    monkeypatch.setenv("VESPA_QUANT_BEIR_URL", "http://127.0.0.1:1/b")
    assert dataset_url("nq") == "http://127.0.0.1:1/b/nq.zip"
    assert resolve_max_bytes() == 2 << 30
    assert resolve_max_bytes(10) == 10
    monkeypatch.setenv("VESPA_QUANT_MAX_DOWNLOAD_BYTES", "123")
    assert resolve_max_bytes() == 123
    monkeypatch.setenv("VESPA_QUANT_MAX_DOWNLOAD_BYTES", "lots")
    with pytest.raises(DataError, match="VESPA_QUANT_MAX_DOWNLOAD_BYTES must be a number"):
        resolve_max_bytes()


def test_md5_table_matches_beirs_published_sums() -> None:
    assert BEIR_MD5["nfcorpus"] == "a89dba18a62ef92f7d323ec890a0d38d"
    assert BEIR_MD5["scifact"] == "5f7d1de60b170fc8027bb7898e2efca1"
    # md5.csv's copy-paste slip (fever == scifact) must not be in our table.
    assert len(set(BEIR_MD5.values())) == len(BEIR_MD5)
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in BEIR_MD5.values())

"""TED-LIUM download: a local HTTP server serves a small archive in the corpus' layout."""

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from asr.errors import UserError
from asr.pipeline import runner


class ArchiveHandler(BaseHTTPRequestHandler):
    """Serves server.data with HTTP ranges; server.drop_after cuts the next response short, once."""

    def do_GET(self):  # noqa: N802 (the http.server API)
        data, start = self.server.data, 0
        ranged = self.headers.get("Range")
        self.server.ranges.append(ranged)
        if ranged:
            start = int(ranged.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body, self.server.drop_after = data[start : start + (self.server.drop_after or len(data))], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ArchiveHandler)
    httpd.data, httpd.drop_after, httpd.ranges = b"", None, []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


def archive_of(corpus: Path) -> bytes:
    """A .tar.gz of a TEDLIUM_release2 tree, as openSLR serves the real one."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(corpus, arcname="TEDLIUM_release2")
    return buffer.getvalue()


def prepare(make_cfg, tmp_path: Path, server, sha256: str | None) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/TEDLIUM_release2.tar.gz"
    checksum = "null" if sha256 is None else sha256
    runner.run(
        make_cfg(
            "+experiment=tedlium2",
            f"data.corpus_dir={tmp_path / 'corpus' / 'TEDLIUM_release2'}",
            "data.download=true",
            f"data.url={url}",
            f"data.sha256={checksum}",
            f"work_dir={tmp_path / 'work'}",
            "stages=[prepare]",
        )
    )


def test_an_interrupted_download_resumes_then_unpacks_and_prepares(tmp_path, server, make_cfg, fake_corpus):
    server.data = archive_of(fake_corpus)
    server.drop_after = len(server.data) // 3
    with pytest.raises(UserError, match=r"stopped at \d+ of \d+ bytes; run again to resume"):
        prepare(make_cfg, tmp_path, server, hashlib.sha256(server.data).hexdigest())
    part = tmp_path / "corpus" / "TEDLIUM_release2.tar.gz.part"
    assert part.stat().st_size == len(server.data) // 3 and not (tmp_path / "corpus" / "TEDLIUM_release2").exists()
    prepare(make_cfg, tmp_path, server, hashlib.sha256(server.data).hexdigest())
    assert server.ranges == [None, f"bytes={len(server.data) // 3}-"]
    corpus = tmp_path / "corpus" / "TEDLIUM_release2"
    assert (corpus / "test" / "stm" / "TalkC_2013.stm").is_file() and not part.exists()
    assert not (tmp_path / "corpus" / "TEDLIUM_release2.tar.gz").exists()  # unpacked, then deleted
    assert list((tmp_path / "work" / "manifests").glob("tedlium2-*/train.jsonl"))


def test_a_corrupt_download_is_refused_and_deleted(tmp_path, server, make_cfg, fake_corpus):
    server.data = archive_of(fake_corpus)
    with pytest.raises(UserError, match="SHA-256 is .*, not 00ff: a corrupt archive, deleted"):
        prepare(make_cfg, tmp_path, server, "00ff")
    assert not list((tmp_path / "corpus").iterdir())


def test_an_archive_that_is_no_tar_file_is_refused(tmp_path, server, make_cfg):
    server.data = b"<html>not found</html>"
    with pytest.raises(UserError, match="TEDLIUM_release2.tar.gz: not a readable tar archive"):
        prepare(make_cfg, tmp_path, server, None)
    assert not (tmp_path / "corpus" / "TEDLIUM_release2").exists()

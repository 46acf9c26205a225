"""TED-LIUM release 2 fetched and unpacked: a resumable download, checked, then unpacked atomically.

The archive is downloaded to `<corpus_dir>.tar.gz.part`; an interrupted transfer continues from there
(HTTP range requests) when the run is started again. A complete download is checked against the size
the server announced and, if given, its SHA-256, and only then unpacked, into a temporary folder beside
`corpus_dir` that is renamed to it once it holds `{train,dev,test}/{sph,stm}`. A corrupt archive is
deleted and named in the error; nothing half-unpacked is ever left at `corpus_dir`.

Default source: openSLR resource 19. Its SHA-256 is the one torchaudio's TEDLIUM dataset checks
(`torchaudio/datasets/tedlium.py`, release2).
"""

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from asr.errors import UserError

log = logging.getLogger(__name__)

TEDLIUM2_URL = "https://www.openslr.org/resources/19/TEDLIUM_release2.tar.gz"
TEDLIUM2_SHA256 = "93281b5fcaaae5c88671c9d000b443cb3c7ea3499ad12010b3934ca41a7b9c58"
LAYOUT = [f"{split}/{kind}" for split in ("train", "dev", "test") for kind in ("sph", "stm")]
BLOCK = 1 << 20


def ensure_corpus(corpus_dir: Path, url: str, sha256: str | None) -> Path:
    """corpus_dir, downloaded and unpacked first if it does not exist yet."""
    if corpus_dir.is_dir():
        return corpus_dir
    archive = corpus_dir.with_name(corpus_dir.name + ".tar.gz")
    fetch(url, archive, sha256)
    unpack(archive, corpus_dir)
    archive.unlink()
    return corpus_dir


def fetch(url: str, archive: Path, sha256: str | None) -> None:
    """Download url to `archive` through `<archive>.part`, resuming a partial one; check size and SHA-256."""
    part = archive.with_name(archive.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    total = None
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if have and response.status != 206:  # the server ignored the range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            log.info("downloading %s to %s%s", url, part, f", resuming at {have} bytes" if have else "")
            with (
                open(part, "ab" if have else "wb") as out,
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc="download") as bar,
            ):
                for block in iter(lambda: response.read(BLOCK), b""):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as error:
        if error.code != 416 or not have:  # 416: nothing left to send, the download is complete
            raise UserError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        done = part.stat().st_size if part.exists() else 0
        raise UserError(f"downloading {url} stopped at {done} bytes ({error}); run again to resume") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise UserError(f"downloading {url} stopped at {size} of {total} bytes; run again to resume")
    if sha256 is not None:
        digest = _sha256(part)
        if digest != sha256.lower():
            part.unlink()
            raise UserError(
                f"{url}: the download's SHA-256 is {digest}, not {sha256}: a corrupt archive, deleted; "
                "run again to download it anew (or check data.sha256)"
            )
    os.replace(part, archive)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(archive: Path, corpus_dir: Path) -> None:
    """Unpack the archive's top folder into corpus_dir, all or nothing."""
    tmp = corpus_dir.with_name(f".{corpus_dir.name}.unpack-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            log.info("unpacking %s", archive)
            tar.extractall(tmp, filter="data")
        tops = [p for p in tmp.iterdir() if p.is_dir()]
        top = tops[0] if len(tops) == 1 else tmp
        missing = [folder for folder in LAYOUT if not (top / folder).is_dir()]
        if missing:
            raise UserError(f"{archive} does not hold TED-LIUM's layout: no {', '.join(missing)} in its top folder")
        top.rename(corpus_dir)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UserError(f"{archive}: not a readable tar archive ({error}); delete it and run again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Fetching published weights: once per machine, verified, atomic, one process at a time.

>>> fetch(published("ssd300_vgg16_coco"))
PosixPath('/home/me/.cache/singleshot/weights/ssd300_vgg16_coco-b556d3b4.pth')

- The file lands in ``<cache>/weights/`` (`singleshot.cache.cache_dir`: ``$SINGLESHOT_CACHE``,
  else ``~/.cache/singleshot``) under the origin's file name, with a progress bar.
- It is streamed into a temporary file in that folder, hashed as it arrives, and renamed
  into place only when its SHA-256 is the expected one; a file that fails is deleted and
  never loaded. A file already in the cache (or put there by hand) is verified the same
  way before use.
- Processes fetching the same file take turns on a lock file beside it (``<file>.lock``,
  the `filelock` package: ``flock`` on Linux, released by the kernel if a process dies),
  so eight DDP ranks starting together download it once and all use it.
- ``$SINGLESHOT_WEIGHTS_MIRROR``: a base URL (``https://...`` or ``file:///...``) replacing
  the origin; the origin's file name is appended.
- Without network access the error says which URL failed, the file name and hash expected,
  and the exact path where a file downloaded by hand is picked up.
- An entry without a published checksum is fetched only with a SHA-256 the user confirms
  (``sha256=``; on the command line ``NAME@sha256:<hex>``); that hash is then recorded
  beside the file (``<file>.sha256``, the format of ``sha256sum``) and checked on later uses.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..cache import cache_dir
from ..checkpoint import atomic_write
from .registry import SHA256, PublishedWeights

__all__ = [
    "MIRROR_VARIABLE",
    "ChecksumError",
    "DownloadError",
    "cache_lock",
    "cached_file",
    "converted_file",
    "download_url",
    "expected_sha256",
    "fetch",
    "file_sha256",
    "weights_dir",
]

MIRROR_VARIABLE = "SINGLESHOT_WEIGHTS_MIRROR"
_CHUNK = 1 << 20


class DownloadError(ValueError):
    """Published weights could not be fetched (network, interrupted transfer, no checksum);
    the message says what to do. A ValueError, as for any input the command cannot use."""


class ChecksumError(DownloadError):
    """A file's SHA-256 is not the expected one; the file was deleted."""


def weights_dir() -> Path:
    """``<cache>/weights``: downloaded files and the checkpoints converted from them."""
    return cache_dir() / "weights"


def cached_file(entry: PublishedWeights) -> Path:
    """Where ``entry``'s file is kept (and where a file downloaded by hand goes)."""
    return weights_dir() / entry.file_name


def converted_file(entry: PublishedWeights) -> Path:
    """The singleshot checkpoint converted from ``entry``'s file, beside it; deleted whenever
    that file is replaced or refused."""
    return weights_dir() / f"{Path(entry.file_name).stem}.singleshot.pt"


def download_url(entry: PublishedWeights) -> str:
    """The origin's URL, or ``$SINGLESHOT_WEIGHTS_MIRROR`` + "/" + the origin's file name."""
    mirror = os.environ.get(MIRROR_VARIABLE, "").strip()
    return f"{mirror.rstrip('/')}/{entry.file_name}" if mirror else entry.url


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def cache_lock(path: Path, what: str, progress: bool | None) -> Iterator[None]:
    """Hold ``<path>.lock`` (waiting for another process that holds it, saying so)."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=1)
    except Timeout:
        if progress is not False:
            print(f"waiting for another process fetching {what} ({lock.lock_file})", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def fetch(
    entry: PublishedWeights, sha256: str | None = None, progress: bool | None = None, timeout: float = 30.0
) -> Path:
    """``entry``'s file in the cache, downloaded first if it is not there, verified either way.

    Args:
        entry: a `PublishedWeights` (see `singleshot.weights.registry`; tests pass their own).
        sha256: a full SHA-256 the user confirms (needed when none is published; else it must
            agree with the published one and is checked instead of it).
        progress: show a progress bar (None: only on a terminal).
        timeout: seconds a connection may stay silent before it counts as failed.

    Raises:
        DownloadError: no network (the message names the URL, the file, its hash and where to
            put a copy), an interrupted transfer (nothing is kept), or no hash to verify against.
        ChecksumError: the file is not the expected one; it was deleted.
    """
    target = cached_file(entry)
    expected = expected_sha256(entry, sha256)  # a refusal touches nothing
    with cache_lock(target, entry.name, progress):
        if target.is_file():
            _verify_present(entry, target, expected)
        else:
            converted_file(entry).unlink(missing_ok=True)
            _download(entry, download_url(entry), target, expected, progress, timeout)
        if sha256 is not None:  # confirmed and verified: later uses by plain name check it
            line = f"{expected}  {target.name}\n".encode()
            atomic_write(_record(target), lambda handle: handle.write(line))
    return target


def _record(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def expected_sha256(entry: PublishedWeights, confirmed: str | None = None) -> str:
    """The hash (or torchvision's prefix) ``entry``'s file is checked against: the ``confirmed``
    one, else one confirmed earlier (recorded beside the file), else the published one.

    Raises:
        ValueError: a malformed confirmed hash, or one that contradicts the published one.
        DownloadError: nothing to check against (no published hash and none confirmed).
    """
    target = cached_file(entry)
    if confirmed is not None:
        confirmed = confirmed.lower()
        if not SHA256.fullmatch(confirmed) or not confirmed.startswith(entry.sha256 or ""):
            raise ValueError(f"{entry.name}: a confirmed SHA-256 must be 64 hex digits agreeing with "
                             f"the published {entry.sha256}")  # fmt: skip
        return confirmed
    record = _record(target)
    if record.is_file():
        recorded = record.read_text(encoding="utf-8").split(maxsplit=1)[:1]
        if recorded and SHA256.fullmatch(recorded[0]) and recorded[0].startswith(entry.sha256 or ""):
            return recorded[0]
        raise ValueError(
            f"{record}: not a SHA-256 record of {entry.file_name}; delete it, confirm the hash again"
        )
    if entry.sha256 is not None:
        return entry.sha256
    if target.is_file():
        found = f"The file at {target} has SHA-256 {file_sha256(target)}: if you trust it, use"
    else:
        found = (
            f"Download {entry.url} yourself (into {target.parent}), check it against a source you trust; use"
        )
    raise DownloadError(
        f"{entry.name}: {entry.source} publishes no checksum for {entry.file_name}, so singleshot does not "
        f"use it unverified. {found} {entry.name}@sha256:<its 64 hex digits> once (the hash is then recorded "
        "in the cache and checked on later uses)."
    )


def _describe(expected: str) -> str:
    return f"SHA-256 starting {expected}" if len(expected) < 64 else f"SHA-256 {expected}"


def _verify_present(entry: PublishedWeights, target: Path, expected: str) -> None:
    got = file_sha256(target)
    if not got.startswith(expected):
        target.unlink(missing_ok=True)
        converted_file(entry).unlink(missing_ok=True)
        raise ChecksumError(
            f"{target}: its SHA-256 is {got}, expected {_describe(expected)} for {entry.name} "
            f"({entry.url}); the file was deleted and not used (run again to download it)"
        )


def _download(
    entry: PublishedWeights, url: str, target: Path, expected: str, progress: bool | None, timeout: float
) -> None:
    def write(handle: BinaryIO) -> None:
        got = _stream(entry, url, target, expected, handle, progress, timeout)
        if not got.startswith(expected):
            raise ChecksumError(
                f"{url}: the downloaded file's SHA-256 is {got}, expected {_describe(expected)} "
                f"for {entry.name}; it was deleted and not used"
            )

    atomic_write(target, write)  # a temporary file beside the target, renamed only if write returns


def _stream(
    entry: PublishedWeights,
    url: str,
    target: Path,
    expected: str,
    handle: BinaryIO,
    progress: bool | None,
    timeout: float,
) -> str:
    """Copy ``url``'s body into ``handle``; its SHA-256. DownloadError on any network failure."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "singleshot"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise _unreachable(entry, url, str(reason), target, expected) from None
    digest, received = hashlib.sha256(), 0
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    with response, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.file_name,
                        disable=None if progress is None else not progress, leave=False) as bar:  # fmt: skip
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (http.client.HTTPException, OSError) as error:
                raise _interrupted(url, received, total, str(error)) from None
            if not chunk:
                break
            handle.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if total is not None and received != total:
        raise _interrupted(url, received, total, "the connection closed early")
    return digest.hexdigest()


def _interrupted(url: str, received: int, total: int | None, reason: str) -> DownloadError:
    of = f" of {total}" if total is not None else ""
    return DownloadError(
        f"{url}: the download stopped after {received}{of} bytes ({reason}); nothing was kept (run again)"
    )


def _unreachable(
    entry: PublishedWeights, url: str, reason: str, target: Path, expected: str
) -> DownloadError:
    return DownloadError(
        f"cannot download {entry.name} from {url}: {reason}\n"
        f"Without network access, fetch {entry.file_name} ({_describe(expected)}) by hand and put it at\n"
        f"  {target}\n"
        f"where it is verified before use; or set {MIRROR_VARIABLE} to a server (or file:// folder) with it."
    )

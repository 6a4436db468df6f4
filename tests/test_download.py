"""Fetching published weights from a loopback server: once, verified, atomic, mirrored, offline."""

import dataclasses
import os

import pytest

from loopback import LoopbackServer, closed_port_url, sha256
from singleshot.weights.download import (
    ChecksumError,
    DownloadError,
    cached_file,
    converted_file,
    download_url,
    fetch,
    weights_dir,
)
from singleshot.weights.published import backbone_file
from singleshot.weights.registry import REGISTRY

DATA = bytes(range(256)) * 3000 + b"tail"  # 768 KiB: several chunks of the download loop
TEMPLATE = REGISTRY["mobilenet_v3_large_imagenet"]


def entry_for(url, digest, name="blob"):
    return dataclasses.replace(TEMPLATE, name=name, url=url, sha256=digest)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A fresh cache root, and a mirror variable that reaches nothing unless a test sets it."""
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SINGLESHOT_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "cache" / "weights"


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def leftovers(folder):
    """Files in the cache other than lock files (temporary files must never stay)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def test_a_download_lands_once_in_the_cache_and_is_then_a_hit(cache, server):
    server.files["/models/blob-1234.pth"] = DATA
    blob = entry_for(server.url + "/models/blob-1234.pth", sha256(DATA))
    path = fetch(blob, progress=False)
    assert path == cache / "blob-1234.pth" == cached_file(blob) and weights_dir() == cache
    assert path.read_bytes() == DATA
    assert fetch(blob, progress=False) == path
    assert server.requests == ["/models/blob-1234.pth"]
    assert leftovers(cache) == ["blob-1234.pth"]
    # torchvision's convention: only the hash's first digits are known; they are checked
    prefixed = entry_for(server.url + "/models/blob-1234.pth", sha256(DATA)[:8], name="other")
    path.unlink()
    assert fetch(prefixed, progress=False).read_bytes() == DATA


@pytest.mark.parametrize("known", [64, 8])
def test_a_wrong_file_is_refused_and_deleted(cache, server, known):
    server.files["/blob.pth"] = DATA
    expected = sha256(b"what was published")[:known]
    blob = entry_for(server.url + "/blob.pth", expected)
    with pytest.raises(ChecksumError) as refused:
        fetch(blob, progress=False)
    message = str(refused.value)
    assert f"{server.url}/blob.pth" in message and expected in message and sha256(DATA) in message
    assert leftovers(cache) == []
    # a wrong file in the cache (put there by hand) is refused and deleted too, with its conversion
    cache.mkdir(parents=True, exist_ok=True)
    cached_file(blob).write_bytes(DATA)
    converted_file(blob).write_bytes(b"converted from the wrong file")
    with pytest.raises(ChecksumError, match=f"its SHA-256 is {sha256(DATA)}, expected"):
        fetch(blob, progress=False)
    assert leftovers(cache) == []
    assert server.requests == ["/blob.pth"]


def test_an_interrupted_download_keeps_nothing_and_a_retry_succeeds(cache, server):
    server.files["/blob.pth"] = DATA
    server.truncate_next = 1
    blob = entry_for(server.url + "/blob.pth", sha256(DATA))
    with pytest.raises(DownloadError, match=f"stopped after {len(DATA) // 2} of {len(DATA)} bytes"):
        fetch(blob, progress=False)
    assert leftovers(cache) == []
    assert fetch(blob, progress=False).read_bytes() == DATA
    assert server.requests == ["/blob.pth", "/blob.pth"]


def test_the_mirror_replaces_the_origin(cache, server, monkeypatch, tmp_path):
    real = REGISTRY["ssd300_vgg16_coco"]
    monkeypatch.setenv("SINGLESHOT_WEIGHTS_MIRROR", "https://mirror.example/weights/")
    assert download_url(real) == "https://mirror.example/weights/ssd300_vgg16_coco-b556d3b4.pth"
    server.files["/weights/blob-1234.pth"] = DATA
    blob = entry_for(closed_port_url() + "/origin/blob-1234.pth", sha256(DATA))
    monkeypatch.setenv("SINGLESHOT_WEIGHTS_MIRROR", server.url + "/weights")
    assert fetch(blob, progress=False).read_bytes() == DATA
    assert server.requests == ["/weights/blob-1234.pth"]
    # a folder on a shared drive serves as well
    shared = tmp_path / "share"
    shared.mkdir()
    (shared / "blob-1234.pth").write_bytes(DATA)
    cached_file(blob).unlink()
    monkeypatch.setenv("SINGLESHOT_WEIGHTS_MIRROR", shared.as_uri())
    assert fetch(blob, progress=False).read_bytes() == DATA


def test_offline_the_error_says_where_to_put_a_file_and_that_file_is_used(cache, monkeypatch):
    origin = closed_port_url() + "/models/blob-1234.pth"
    blob = entry_for(origin, sha256(DATA)[:8])
    with pytest.raises(DownloadError) as offline:
        fetch(blob, progress=False)
    message = str(offline.value)
    assert f"cannot download blob from {origin}" in message
    assert f"fetch blob-1234.pth (SHA-256 starting {sha256(DATA)[:8]}) by hand" in message
    assert f"\n  {cache / 'blob-1234.pth'}\n" in message and "SINGLESHOT_WEIGHTS_MIRROR" in message
    assert leftovers(cache) == []
    (cache / "blob-1234.pth").write_bytes(DATA)  # copied by hand from elsewhere
    assert fetch(blob, progress=False).read_bytes() == DATA
    # a published name: the message names the mirror's URL and the real file and hash
    monkeypatch.setenv("SINGLESHOT_WEIGHTS_MIRROR", closed_port_url())
    import singleshot

    with pytest.raises(DownloadError, match=r"ssd300_vgg16_coco-b556d3b4\.pth \(SHA-256 starting b556d3b4\)"):
        singleshot.load("ssd300_vgg16_coco")


def test_without_a_published_hash_nothing_is_fetched_until_one_is_confirmed(cache, server, monkeypatch):
    monkeypatch.setenv("SINGLESHOT_WEIGHTS_MIRROR", server.url)
    server.files["/vgg16_reducedfc.pth"] = DATA
    with pytest.raises(DownloadError, match="publishes no checksum for vgg16_reducedfc.pth"):
        backbone_file("vgg16_reducedfc")
    assert server.requests == [] and not cache.exists()
    with pytest.raises(ChecksumError):  # a confirmed hash the file does not have
        backbone_file(f"vgg16_reducedfc@sha256:{sha256(b'another file')}")
    path = backbone_file(f"vgg16_reducedfc@sha256:{sha256(DATA).upper()}")
    assert path == cache / "vgg16_reducedfc.pth" and path.read_bytes() == DATA
    # recorded beside the file (sha256sum's format): the plain name now works, and checks it
    assert (cache / "vgg16_reducedfc.pth.sha256").read_text() == f"{sha256(DATA)}  vgg16_reducedfc.pth\n"
    assert backbone_file("vgg16_reducedfc") == path
    assert len(server.requests) == 2
    path.write_bytes(DATA[:-1] + b"!")
    with pytest.raises(ChecksumError, match=f"expected SHA-256 {sha256(DATA)}"):
        backbone_file("vgg16_reducedfc")
    assert not path.exists()


def test_a_hand_placed_file_without_a_published_hash_is_shown_not_trusted(cache):
    cache.mkdir(parents=True)
    (cache / "vgg16_reducedfc.pth").write_bytes(DATA)
    with pytest.raises(DownloadError, match=f"has SHA-256 {sha256(DATA)}: if you trust it, use vgg16_"):
        backbone_file("vgg16_reducedfc")
    assert backbone_file(f"vgg16_reducedfc@sha256:{sha256(DATA)}").read_bytes() == DATA


def test_confirmed_hashes_that_cannot_be_right_are_refused(cache):
    with pytest.raises(ValueError, match="contradicts the published one"):
        backbone_file("mobilenet_v3_large_imagenet@sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="NAME@sha256|vgg16_reducedfc@sha256:<64 hex digits>"):
        backbone_file("vgg16_reducedfc@sha256:1234")
    with pytest.raises(ValueError, match="is a whole detector, not backbone weights"):
        backbone_file("ssd300_vgg16_coco")
    with pytest.raises(ValueError, match=r"no such file, nor the name of published backbone weights \(vgg"):
        backbone_file("vgg16_reduced")
    assert not os.path.exists(cache)

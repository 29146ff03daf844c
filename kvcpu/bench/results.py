"""The results file of `kvcpu bench`: its versioned format, the environment it records, and checks.

docs/bench-results.md documents the format. A reader rejects, with a BenchResultsError that
names the problem, any file that is not JSON, not this format, from a newer format version,
or lacking a field that the format requires.
"""

from __future__ import annotations

import json
import subprocess
import time
from importlib import metadata
from pathlib import Path

from .. import metrics
from ..errors import BenchResultsError

FORMAT = "kvcpu-bench"
VERSION = 1

# Field -> type, at the top level and in each suite; checked on every read.
TOP_FIELDS = {"format": str, "version": int, "created": str, "command": str, "seconds": float, "options": dict,
              "machine": dict, "software": dict, "model": dict, "suites": dict, "recommendation": (dict, type(None))}
SUITE_FIELDS = {"title": str, "params": dict, "created": str, "seconds": float, "headline": dict, "data": dict,
                "plots": list}
FIGURE_FIELDS = {"value": float, "unit": str, "better": str, "label": str}
MACHINE_FIELDS = {"cpu": str, "cores_logical": int, "ram_bytes": int, "simd_numba": list, "simd_llama": list}
SOFTWARE_FIELDS = {"kvcpu": str, "numpy": str, "numba": str, "llama_cpp_python": str, "llama_cpp": str}
MODEL_FIELDS = {"name": str, "fingerprint": str, "kv_bytes_per_token_f16": int}


def now() -> str:
    """UTC time, ISO 8601, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _commit() -> str:
    """The git commit kvcpu runs from, when it runs from a checkout; '-dirty' when the package's
    own files differ from it (results written beside it do not count)."""
    package = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=5)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short=7", "HEAD")
        dirty = commit and git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit + ("-dirty" if dirty else "")


def llama_simd(system_info: str) -> list[str]:
    """The features llama.cpp reports as on ('AVX2 = 1 | ...'), in its own spelling."""
    parts = (p.split("=") for p in system_info.replace("CPU :", "|").split("|"))
    return [name.strip() for name, *value in parts if value and value[0].strip() == "1"]


def environment() -> tuple[dict, dict]:
    """(machine, software): what two reports need to be compared."""
    import numba
    import numpy

    from ..engine import llama_system_info, llama_versions

    info = llama_system_info()
    m = metrics.machine()
    machine = {"cpu": m["cpu"], "llvm_cpu": m["llvm_cpu"], "cores_logical": m["cores_logical"],
               "cores_physical": m["cores_physical"], "ram_bytes": m["ram_bytes"], "platform": m["platform"],
               "python": m["python"], "simd_numba": m["simd"], "simd_llama": llama_simd(info),
               "llama_system_info": info}
    software = {"kvcpu": _version("kvcpu"), "numpy": numpy.__version__, "numba": numba.__version__,
                **llama_versions(), "commit": _commit()}
    return machine, software


def _check(obj, fields: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise BenchResultsError(f"{where} is not an object")
    for name, kind in fields.items():
        if name not in obj:
            raise BenchResultsError(f"{where} lacks the field {name!r}")
        value = obj[name]
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise BenchResultsError(f"{where}.{name} is {type(value).__name__}, not {getattr(kind, '__name__', kind)}")


def validate(doc: dict, source: str = "results") -> dict:
    """Checks a results document against format version 1; returns it, or raises BenchResultsError."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BenchResultsError(f"{source} is not a kvcpu bench results file (no format {FORMAT!r})")
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        raise BenchResultsError(f"{source} has format version {doc.get('version')!r}; this kvcpu reads up to "
                                f"{VERSION}: upgrade kvcpu")
    _check(doc, TOP_FIELDS, source)
    _check(doc["machine"], MACHINE_FIELDS, f"{source}: machine")
    _check(doc["software"], SOFTWARE_FIELDS, f"{source}: software")
    _check(doc["model"], MODEL_FIELDS, f"{source}: model")
    for name, suite in doc["suites"].items():
        _check(suite, SUITE_FIELDS, f"{source}: suites.{name}")
        for key, fig in suite["headline"].items():
            _check(fig, FIGURE_FIELDS, f"{source}: suites.{name}.headline.{key}")
            if fig["better"] not in ("higher", "lower"):
                raise BenchResultsError(f"{source}: suites.{name}.headline.{key}.better is {fig['better']!r}")
    return doc


def load(path: str | Path) -> dict:
    """Reads and validates a results file."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise BenchResultsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchResultsError(f"{path} is not JSON: {exc}") from exc
    return validate(doc, str(path))


def save(doc: dict, path: Path) -> None:
    """Writes a validated results document atomically."""
    from ..fileio import atomic_write

    validate(doc)
    atomic_write(path, (json.dumps(doc, indent=2, allow_nan=False, default=_plain) + "\n").encode())


def _plain(value):
    """NumPy scalars as the Python numbers JSON knows."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")

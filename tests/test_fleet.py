"""Hosts sharing one real redis-server: a conversation held on one continues on another, a
long shared prefix is prefilled once for the fleet, and the server reports it as cached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvcpu.bench.servers import RedisProcess, kvcpu_serve
from kvcpu.data import eval_text

TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.redis  # a real redis-server, started by the fixture


@pytest.fixture(scope="module")
def redis_server():
    server = RedisProcess()
    yield server
    server.stop()


def turn_on_host(model_path, store_dir, url, conversation, message, tmp_path) -> dict:
    message_file = tmp_path / f"message-{abs(hash((str(store_dir), message))) % 10**8}.txt"
    message_file.write_text(message)
    done = subprocess.run([sys.executable, str(TESTS / "remote_host.py"), str(model_path), str(store_dir), url,
                           conversation, str(message_file)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def document(words: int) -> str:
    return " ".join(eval_text().split()[:words])


def test_a_conversation_held_on_one_host_continues_on_another(model_path, tmp_path, redis_server):
    first = turn_on_host(model_path, tmp_path / "a", redis_server.url, "x",
                         f"Read this, then say one word.\n\n{document(1250)}", tmp_path)
    assert first["tokens"] >= 1400 and first["tokens_restored"] == 0
    second = turn_on_host(model_path, tmp_path / "b", redis_server.url, "x", "And the keeper?", tmp_path)
    assert second["tokens_restored"] >= first["tokens"] - 16  # host b's disk was empty
    assert second["tokens_prefilled"] <= 24  # only the new message


def test_a_shared_document_is_prefilled_once_for_the_fleet(model_path, tmp_path, redis_server):
    doc = f"Here are my notes.\n\n{document(700)}\n\n"
    one = turn_on_host(model_path, tmp_path / "c", redis_server.url, "p", doc + "Summarise.", tmp_path)
    other = turn_on_host(model_path, tmp_path / "d", redis_server.url, "q", doc + "List the people.", tmp_path)
    assert other["tokens_restored"] >= one["tokens"] - 40  # the document, to a whole block
    assert other["tokens_prefilled"] < 40


def test_kvcpu_serve_replicas_share_conversations(model_path, tmp_path, redis_server):
    messages = [{"role": "user", "content": f"Notes:\n{document(300)}\n\nWhat is this about?"}]
    with kvcpu_serve(model_path, tmp_path / "s1", "--remote", redis_server.url) as one:
        client = one.client()
        model = client.models.list().data[0].id
        first = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "Who wrote it?"}]
    with kvcpu_serve(model_path, tmp_path / "s2", "--remote", redis_server.url) as two:
        second = two.client().chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens + first.usage.completion_tokens - 2
    assert second.usage.prompt_tokens - cached <= 16


def test_a_redis_that_dies_mid_run_never_fails_a_turn(model_path, tmp_path):
    server = RedisProcess()
    try:
        messages = [{"role": "user", "content": "Say hello."}]
        with kvcpu_serve(model_path, tmp_path / "s", "--remote", server.url) as srv:
            client = srv.client()
            model = client.models.list().data[0].id
            client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)
            server.stop()
            for _ in range(2):
                r = client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)
                assert r.choices[0].message.content is not None
            log = srv.output()
        assert log.count("going on with the local tiers") == 1
    finally:
        server.stop()

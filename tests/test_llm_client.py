"""The LLM client against a misbehaving OpenAI-compatible server, over real HTTP into a real store.

Each test makes one call with LLMClient.chat as the roles do, the server (tests/llm_server.py)
answering in the way that broke the client before: no usage, an HTML page, half an emoji, a
negative Retry-After, a body trickled byte by byte, a key echoed in an error message.
"""

import json
import sys
import time
from pathlib import Path

import pytest

from archlab.agents.llm import BudgetExceeded, CallFailed, EndpointDown, LLMClient
from archlab.tree.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from llm_server import API_KEY, ROOT, Script, ScriptedServer  # noqa: E402

KEY_ENV = "ARCHLAB_TEST_LLM_KEY"
ASK = [
    {"role": "system", "content": "You are the researcher of a test."},
    {"role": "user", "content": f"The parent:\n```python\n{ROOT}```\nPropose one change."},
]


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path, create=True)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)


def client(store, server, **options):
    settings = dict(
        base_url=server.url,
        api_key_env=KEY_ENV,
        models={"researcher": "scripted"},
        prices={"scripted": [1000.0, 1000.0]},
        timeout_s=5.0,
        patience_s=30.0,
        backoff_s=0.01,
    )
    return LLMClient(store, **{**settings, **options})


def traces(store):
    return [dict(r, decision=json.loads(r["decision"])) for r in store.db["traces"].rows_where(order_by="id")]


@pytest.mark.parametrize("usage", ["none", "null"])
def test_missing_usage_is_estimated_so_the_caps_still_stop(store, usage):
    with ScriptedServer(Script(usage=usage)) as server:
        llm = client(store, server, max_cost=0.001, max_tokens=100)
        reply = llm.chat("researcher", 1, 0, ASK)
        assert reply.text.strip()
        prompt_chars = sum(len(m["content"]) for m in ASK)
        assert (reply.tokens_in, reply.tokens_out) == (prompt_chars // 4, len(reply.text) // 4)
        assert reply.cost > 0.001
        (row,) = traces(store)
        assert row["decision"]["usage"] == "estimated" and row["tokens_in"] == reply.tokens_in
        with pytest.raises(BudgetExceeded, match="max-cost"):  # the next call is refused: the spend cap works
            llm.chat("researcher", 1, 1, ASK + [{"role": "user", "content": "again"}])
        llm.max_cost = None
        with pytest.raises(BudgetExceeded, match="token cap"):
            llm.check_budget()


NOT_A_COMPLETION = [
    {"raw": b"<html><body>Bad gateway (proxy)</body></html>", "content_type": "text/html"},
    {"raw": b"<html><body>Bad gateway</body></html>"},  # HTML under a JSON content type
    {
        "raw": b'data: {"choices": [{"index": 0, "delta": {"content": "Use a"}}]}\n\ndata: [DONE]\n\n',
        "content_type": "text/event-stream",
    },  # a stream although stream=false was asked
    {
        "raw": json.dumps(
            {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop"}]}
        ).encode()
    },
    {"raw": json.dumps({"error": {"message": "upstream overloaded"}}).encode()},  # an error with status 200
]


def test_answers_that_are_not_a_completion_are_retried(store):
    with ScriptedServer(Script(faults=NOT_A_COMPLETION)) as server:
        reply = client(store, server).chat("researcher", 1, 0, ASK)
    assert "SEARCH" in reply.text or "```python" in reply.text
    rows = traces(store)
    assert [r["error"] is None for r in rows] == [False] * len(NOT_A_COMPLETION) + [True]
    assert all(r["error"].startswith("Malformed: ") for r in rows[:-1])
    assert "not JSON: <html><body>Bad gateway (proxy)" in rows[0]["error"]
    assert "no choices[0].message" in rows[3]["error"] and "upstream overloaded" in rows[4]["error"]


def test_unreadable_answers_past_the_patience_fail_the_call_not_the_run(store):
    html = {"raw": b"<html>502</html>", "content_type": "text/html"}
    with ScriptedServer(Script(faults=[html] * 50)) as server:
        started = time.monotonic()
        with pytest.raises(CallFailed, match="unreadable answers"):
            client(store, server, patience_s=0.5, backoff_s=0.1).chat("researcher", 1, 0, ASK)
    assert time.monotonic() - started < 5
    assert len(traces(store)) >= 2


@pytest.mark.parametrize("form", ["parts", "reasoning", "surrogate"])
def test_answers_in_other_shapes_are_read(store, form):
    """Content as a list of parts, only in reasoning_content (content null), or with a lone
    surrogate (half an emoji): the text is read and stored."""
    with ScriptedServer(Script(faults=[{"form": form}])) as server:
        reply = client(store, server).chat("researcher", 1, 0, ASK)
    expected = Script().answer("researcher", ASK[1]["content"])
    if form == "surrogate":
        assert reply.text.startswith("\ufffd") and reply.text.endswith(expected)
    else:
        assert reply.text == expected
    (row,) = traces(store)
    assert row["error"] is None and row["response"] == reply.text


def test_invalid_utf8_is_replaced_not_fatal(store):
    body = json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Gate XX here."}}]}
    ).encode()
    with ScriptedServer(Script(faults=[{"raw": body.replace(b"XX", b"\xff\xfe")}])) as server:
        reply = client(store, server).chat("researcher", 1, 0, ASK)
    assert reply.text == "Gate \ufffd\ufffd here."


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_odd_retry_after_values_fall_back_to_the_backoff(store, value):
    with ScriptedServer(Script(faults=[{"status": 429, "headers": {"retry-after": value}}])) as server:
        started = time.monotonic()
        reply = client(store, server).chat("researcher", 1, 0, ASK)
    assert reply.text and time.monotonic() - started < 5
    assert "RateLimitError 429" in traces(store)[0]["error"]


def test_a_trickling_body_is_abandoned_at_the_deadline(store):
    """Every read is quick (a chunk each 0.4 s) but the whole answer takes ~10 s: --llm-timeout
    bounds the whole request, so the try is abandoned after ~1 s and retried."""
    with ScriptedServer(Script(faults=[{"trickle": 0.4}])) as server:
        started = time.monotonic()
        reply = client(store, server, timeout_s=1.0).chat("researcher", 1, 0, ASK)
        assert time.monotonic() - started < 5
    first, second = traces(store)
    assert "Timeout" in first["error"] and first["latency_s"] < 2.5
    assert second["error"] is None and second["response"] == reply.text


def test_a_request_refused_as_too_long_fails_only_that_call(store):
    fault = {"status": 400, "message": "This model's maximum context length is 4096 tokens."}
    with ScriptedServer(Script(faults=[fault])) as server:
        llm = client(store, server)
        with pytest.raises(CallFailed, match="BadRequestError 400: This model's maximum context length"):
            llm.chat("researcher", 1, 0, ASK)
        assert llm.chat("researcher", 2, 0, ASK).text  # the next request goes through
    assert "maximum context length" in traces(store)[0]["error"]


@pytest.mark.parametrize("status, hint", [(401, KEY_ENV), (403, KEY_ENV), (404, "--base-url")])
def test_bad_credentials_or_model_stop_and_the_key_is_never_stored(store, status, hint, capsys):
    echo = [
        {"status": 500, "message": f"upstream failed for key {API_KEY}"},
        {"status": status, "message": f"Invalid API key: Bearer {API_KEY}"},
    ]
    waits = []
    with ScriptedServer(Script(faults=echo)) as server:
        with pytest.raises(EndpointDown) as stop:
            client(store, server, on_wait=waits.append).chat("researcher", 1, 0, ASK)
    assert f" {status}: " in str(stop.value) and hint in str(stop.value)
    assert "[redacted]" in str(stop.value) and API_KEY not in str(stop.value)
    assert waits and "[redacted]" in waits[0] and API_KEY not in waits[0]
    errors = [r["error"] for r in traces(store)]
    assert len(errors) == 2 and all("[redacted]" in e and API_KEY not in e for e in errors)

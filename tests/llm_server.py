"""A real OpenAI-compatible HTTP server that answers from a script, for tests and benchmarks.

It speaks POST /v1/chat/completions over real HTTP (stdlib ThreadingHTTPServer). Faults are
consumed in order from `faults`, one per request: an HTTP error ({"status": 429|500|400|401,
optional "message" and "headers"}), a slow answer ({"delay": s}), a dropped connection
({"drop": True}), a literal 200 body ({"raw": bytes, "content_type": ...}: HTML, an event
stream, invalid UTF-8), the scripted answer trickled ({"trickle": s between chunks}) or sent in
another shape ({"form": "parts"|"reasoning"|"surrogate"|"length"}: content as a list of parts,
only in reasoning_content, with a lone surrogate, cut off by the token limit). `usage` is how
token counts are reported: "full", "none" (omitted, as llama.cpp may) or "null" (fields null).

Answers to the researcher come from `researcher` first and then from a list of real, distinct
edits of the DeltaNet root; the engineer's come from `engineer` first, then it removes the
known shape bug from the code it was given (a valid repair); the analyst gets prose. Every
request is logged with its role, a hash of its messages, their size and whether a full answer
was sent.
"""

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from archlab.templates import render_root

API_KEY = "sk-test-secret-0123456789"
ROOT = render_root("deltanet")
# (search, replace, motivation): each a real change with its own reason. A search text that occurs
# more than once (in forward() and in step()) is changed everywhere, in a whole-file answer.
EDITS = [
    (
        "        o = o * F.silu(self.g_proj(x))\n",
        "        o = o * self.g_proj(x).sigmoid()\n",
        "Use a sigmoid output gate instead of SiLU, bounding the gate in (0, 1) so it acts as a pure selector.",
    ),
    (
        "beta = self.b_proj(x).sigmoid()",
        "beta = 2 * self.b_proj(x).sigmoid()",
        "Let beta range over (0, 2) so the delta rule's transition can take negative eigenvalues, which helps state tracking.",
    ),
    (
        "        q, k = F.silu(q), F.silu(k)\n",
        "        q, k = F.elu(q) + 1, F.elu(k) + 1\n",
        "Replace the SiLU feature map with elu+1, keeping q and k positive as classic linear attention does.",
    ),
    (
        "CHUNK_SIZE = 64\n",
        'CHUNK_SIZE = 64\nLAYERS = "MA"\n',
        "Make every second layer the harness's softmax attention: a hybrid layout recovers precise recall.",
    ),
    (
        "CONV_SIZE = 4\n",
        "CONV_SIZE = 2\n",
        "Shorten the causal convolution to two taps, RWKV's token shift, to test how much local context is needed.",
    ),
]
SHAPE_BUG_CUT = "        return self.o_proj(o)[:, :-1]\n"  # drops the last position: the sandbox rejects the shape
SYNTAX_ERROR = "Here is my idea: add a gate.\n\n```python\nclass Mixer(nn.Module:\n    pass\n```\n"
NO_CODE = "I think we should add a forget gate to the delta rule so the state can drop stale associations."


class Script:
    def __init__(self, faults=(), researcher=(), engineer=(), delay_on=None, usage="full", by_model=None):
        self.faults = list(faults)  # dicts, one per request in order: see the module's docstring
        self.by_model = dict(by_model or {})  # model -> its researcher's answer, always the same
        self.researcher = list(researcher)  # literal answers, used before the built-in edits
        self.engineer = list(engineer)  # literal answers, used before the built-in repair
        self.usage = usage
        self.delay_on = delay_on  # (role, n, seconds): the n-th request of a role sleeps that long
        self.log: list[dict] = []
        self.used: dict[str, int] = {}
        self.lock = threading.Lock()

    def next_fault(self):
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def answer(self, role: str, user: str, model: str | None = None) -> str:
        with self.lock:
            if role == "researcher" and model in self.by_model:
                return self.by_model[model]
            if role == "researcher":
                if self.researcher:
                    return self.researcher.pop(0)
                return self._edit(user)
            if role == "engineer":
                if self.engineer:
                    return self.engineer.pop(0)
                fixed = _parent_code(user).replace(SHAPE_BUG_CUT, "        return self.o_proj(o)\n")
                return f"Restored a shape-correct forward pass.\n\n```python\n{fixed}```\n"
            if role == "judge":
                return '{"novelty": 7, "complexity": 2, "reason": "a small, uncommon change"}'
            return "The change moved validation loss as shown; the lesson is to keep changes that lower loss at equal speed."

    def _edit(self, user: str) -> str:
        code = _parent_code(user)
        key = hashlib.sha256(code.encode()).hexdigest()
        start = self.used.get(key, 0)
        for i in range(start, len(EDITS)):
            search, replace, motivation = EDITS[i]
            if code.count(search) == 1:
                self.used[key] = i + 1
                return f"{motivation}\n\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"
            if search in code:
                self.used[key] = i + 1
                return f"{motivation}\n\n```python\n{code.replace(search, replace)}```\n"
        self.used[key] = len(EDITS)
        return f"Fall back to the plain DeltaNet root as a control.\n\n```python\n{ROOT}```\n"


def _parent_code(user: str) -> str:
    match = re.search(r"```python\n(.*?)```", user, re.DOTALL)
    return match.group(1) if match else ""


def _role(messages: list[dict]) -> str:
    system = messages[0]["content"] if messages else ""
    for role in ("researcher", "engineer", "analyst", "judge"):
        if f"You are the {role}" in system:
            return role
    return "unknown"


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            messages = body.get("messages", [])
            role = _role(messages)
            entry = {
                "role": role,
                "model": body.get("model"),
                "hash": hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest(),
                "completed": False,
                "status": 200,
                "time": time.time(),
                "messages": messages,
                "auth_ok": self.headers.get("authorization") == f"Bearer {API_KEY}",
            }
            with script.lock:
                script.log.append(entry)
                n = sum(1 for e in script.log if e["role"] == role)
            fault = script.next_fault()
            if fault and fault.get("drop"):
                entry["status"] = "dropped"
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault and fault.get("status"):
                entry["status"] = fault["status"]
                headers = fault.get("headers", {"retry-after": "0"} if fault["status"] == 429 else {})
                return self._send(
                    fault["status"],
                    {"error": {"message": fault.get("message", "scripted failure"), "type": "server_error"}},
                    headers,
                )
            if fault and "raw" in fault:
                entry["status"] = "raw"
                return self._send_bytes(
                    200, fault["raw"], {"content-type": fault.get("content_type", "application/json")}
                )
            if script.delay_on and script.delay_on[0] == role and script.delay_on[1] == n:
                time.sleep(script.delay_on[2])
            if fault and fault.get("delay"):
                time.sleep(fault["delay"])
                text = "(a late answer nobody waits for)"  # leaves the scripted answers for the retry
            else:
                text = script.answer(
                    role, messages[1]["content"] if len(messages) > 1 else "", body.get("model")
                )  # the first user message
            prompt_tokens = sum(len(m["content"]) for m in messages) // 4
            completion_tokens = len(text) // 4
            form = (fault or {}).get("form")
            message = {"role": "assistant", "content": text}
            if form == "parts":
                message["content"] = [{"type": "text", "text": text[:20]}, {"type": "text", "text": text[20:]}]
            elif form == "reasoning":
                message.update(content=None, reasoning_content=text)
            payload = {
                "id": f"chatcmpl-{len(script.log)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "scripted"),
                "choices": [
                    {"index": 0, "message": message, "finish_reason": "length" if form == "length" else "stop"}
                ],
            }
            if script.usage == "full":
                payload["usage"] = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                }
            elif script.usage == "null":
                payload["usage"] = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
            data = json.dumps(payload).encode()
            if form == "surrogate":  # half an emoji, as a JSON escape: valid JSON, not valid Unicode
                data = data.replace(b'"content": "', b'"content": "\\ud83d ', 1)
            if fault and fault.get("trickle"):
                self._trickle(data, fault["trickle"])
            else:
                self._send_bytes(200, data, {"content-type": "application/json"})
            entry["completed"] = True

        def _send(self, status: int, payload: dict, headers: dict | None = None):
            self._send_bytes(
                status, json.dumps(payload).encode(), {"content-type": "application/json", **(headers or {})}
            )

        def _send_bytes(self, status: int, data: bytes, headers: dict):
            self.send_response(status)
            self.send_header("content-length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _trickle(self, data: bytes, pause: float):
            """Headers at once, then the body a few bytes at a time: every read is quick, the whole is not."""
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            try:
                for i in range(0, len(data), 64):
                    self.wfile.write(data[i : i + 64])
                    self.wfile.flush()
                    time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


class ScriptedServer:
    """Runs in a thread of the test process; `url` is the base URL for --base-url."""

    def __init__(self, script: Script, port: int = 0):
        self.script = script
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), make_handler(script))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

"""A real OpenAI-compatible HTTP server that answers from a script, for tests and benchmarks.

It speaks POST /v1/chat/completions over real HTTP (stdlib ThreadingHTTPServer). Faults are
consumed in order from `faults` (429, 500, a slow answer, a dropped connection); answers to
the researcher come from `researcher_script` first and then from a list of real, distinct
edits of the DeltaNet root; the engineer gets the root's code back (a valid repair); the
analyst gets prose. Every request is logged with its role, a hash of its messages and
whether a full answer was sent.
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
# (search, replace, motivation): each a real change with its own reason.
EDITS = [
    ("        o = o * F.silu(self.g_proj(x))\n", "        o = o * self.g_proj(x).sigmoid()\n",
     "Use a sigmoid output gate instead of SiLU, bounding the gate in (0, 1) so it acts as a pure selector."),
    ("        beta = self.b_proj(x).sigmoid().transpose(1, 2)\n", "        beta = 2 * self.b_proj(x).sigmoid().transpose(1, 2)\n",
     "Let beta range over (0, 2) so the delta rule's transition can take negative eigenvalues, which helps state tracking."),
    ("        q, k = F.silu(q), F.silu(k)\n", "        q, k = F.elu(q) + 1, F.elu(k) + 1\n",
     "Replace the SiLU feature map with elu+1, keeping q and k positive as classic linear attention does."),
    ("CHUNK_SIZE = 64\n", 'CHUNK_SIZE = 64\nLAYERS = "MA"\n',
     "Make every second layer the harness's softmax attention: a hybrid layout recovers precise recall."),
    ("CONV_SIZE = 4\n", "CONV_SIZE = 2\n",
     "Shorten the causal convolution to two taps, RWKV's token shift, to test how much local context is needed."),
]
SYNTAX_ERROR = "Here is my idea: add a gate.\n\n```python\nclass Mixer(nn.Module:\n    pass\n```\n"
NO_CODE = "I think we should add a forget gate to the delta rule so the state can drop stale associations."


class Script:
    def __init__(self, faults=(), researcher=(), delay_on=None):
        self.faults = list(faults)  # dicts: {"status": 429|500}, {"delay": s}, {"drop": True}
        self.researcher = list(researcher)  # literal answers, used before the built-in edits
        self.delay_on = delay_on  # (role, n, seconds): the n-th request of a role sleeps that long
        self.log: list[dict] = []
        self.used: dict[str, int] = {}
        self.lock = threading.Lock()

    def next_fault(self):
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def answer(self, role: str, user: str) -> str:
        with self.lock:
            if role == "researcher":
                if self.researcher:
                    return self.researcher.pop(0)
                return self._edit(user)
            if role == "engineer":
                return f"Restored a shape-correct forward pass.\n\n```python\n{ROOT}```\n"
            if role == "judge":
                return '{"novelty": 7, "complexity": 2, "reason": "a small, uncommon change"}'
            return "The change moved validation loss as shown; the lesson is to keep changes that lower loss at equal speed."

    def _edit(self, user: str) -> str:
        code = _parent_code(user)
        key = hashlib.sha256(code.encode()).hexdigest()
        start = self.used.get(key, 0)
        for i in range(start, len(EDITS)):
            search, replace, motivation = EDITS[i]
            if search in code:
                self.used[key] = i + 1
                return f"{motivation}\n\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"
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
            entry = {"role": role, "hash": hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest(),
                     "completed": False, "status": 200, "time": time.time(),
                     "auth_ok": self.headers.get("authorization") == f"Bearer {API_KEY}"}
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
                return self._send(fault["status"], {"error": {"message": "scripted failure", "type": "server_error"}},
                                  {"retry-after": "0"} if fault["status"] == 429 else {})
            if script.delay_on and script.delay_on[0] == role and script.delay_on[1] == n:
                time.sleep(script.delay_on[2])
            if fault and fault.get("delay"):
                time.sleep(fault["delay"])
                text = "(a late answer nobody waits for)"  # leaves the scripted answers for the retry
            else:
                text = script.answer(role, messages[1]["content"] if len(messages) > 1 else "")  # the first user message
            prompt_tokens = sum(len(m["content"]) for m in messages) // 4
            completion_tokens = len(text) // 4
            self._send(200, {
                "id": f"chatcmpl-{len(script.log)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "scripted"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            })
            entry["completed"] = True

        def _send(self, status: int, payload: dict, headers: dict | None = None):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
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

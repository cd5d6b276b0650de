"""One client for every OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

Every call — the failed tries too — becomes a trace row with the full messages, response,
tokens, cost and latency. A completed call is never paid for twice: before calling, the
client looks for a finished trace of the same request for the same node and reuses it, so
a run killed mid-candidate resumes without repeating what it already got. The API key is
read from the environment at call time and is never written anywhere: error messages that
echo it are redacted before they are stored or printed.

Endpoints differ and some misbehave, so the client reads the raw answer itself: a body that
is not a chat completion (an HTML page from a proxy, an event stream) is a failed try that is
retried like a dropped connection; content given as a list of parts, or only as
`reasoning_content`, is still the answer; missing token counts are estimated so that the
spend caps keep working.
"""

import hashlib
import json
import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from archlab import chaos
from archlab.errors import UserError
from archlab.text import loads, redact

# HTTP statuses that say the endpoint as configured is unusable (key, credit, model or URL):
# no other request will fare better, so the run stops.
STOP_STATUSES = {
    401: "check {key}",
    402: "check the account's credit",
    403: "check {key}",
    404: "check the model in --llm and --base-url",
}
# Statuses of a busy or failing server: worth another try after a pause. Any other 4xx refuses
# this request as it stands (too long for the context, invalid): its candidate fails, the run goes on.
TRANSIENT_STATUSES = {408, 409, 429}
CHARS_PER_TOKEN = 4  # the usual rough ratio, to estimate tokens an endpoint does not report


DEFAULT_URL = "https://api.openai.com/v1"  # where the openai client goes without --base-url
PREFLIGHT_TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 4 * 2**20  # a body beyond this is unreadable: a 200 MiB answer took 1 GB and the database 200 MB


class EndpointUnusable(UserError):
    """The endpoint cannot be used as configured (no key, not reachable, key refused): found before
    a run directory is created or a root trains."""

    exit_code = 1  # the environment, not the command's syntax


def preflight(base_url: str | None, api_key_env: str, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """One `GET {url}/models` before anything is spent: the key is there, the endpoint answers and
    accepts it. Any answer but 401/403 will do (servers without a model list answer 404); a missing
    key without --base-url fails before any request (the default endpoint needs one)."""
    url = (base_url or DEFAULT_URL).rstrip("/")
    key = os.environ.get(api_key_env)
    if not key and not base_url:
        raise EndpointUnusable(
            f"--llm talks to {url}, which needs an API key: set {api_key_env} "
            f"(or --api-key-env NAME), or give --base-url for a local endpoint"
        )
    request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {key or 'not-needed'}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise EndpointUnusable(f"{url} refused the key in ${api_key_env} (HTTP {e.code}); check it") from None
    except (urllib.error.URLError, OSError, ValueError) as e:  # refused, unresolvable, timed out, not a URL
        cause = getattr(e, "reason", None) or e
        raise EndpointUnusable(
            redact(f"cannot reach the LLM endpoint {url} ({cause}); start it, or fix --base-url", key)
        ) from None


class BudgetExceeded(Exception):
    """A money/token cap was reached: the run stops cleanly between steps."""


class EndpointDown(Exception):
    """The endpoint kept failing for longer than the configured patience, or refused our
    credentials, model or URL: the run stops."""


class CallFailed(Exception):
    """One request failed for good (the endpoint refused it, or kept sending answers that cannot
    be read): the candidate that made it fails, the run goes on."""


class Malformed(Exception):
    """A 200 answer that is not a readable chat completion."""


@dataclass
class Reply:
    text: str
    model: str
    tokens_in: int
    tokens_out: int
    cost: float
    latency_s: float
    cached: bool = False
    finish_reason: str | None = None  # "length": the token limit cut the answer off


def _openai():
    import openai  # ~1.5 s to import: only runs with an LLM brain pay for it

    return openai


class LLMClient:
    def __init__(
        self,
        store,
        *,
        base_url: str | None,
        api_key_env: str,
        models: dict[str, str],
        prices: dict[str, list[float]],
        timeout_s: float = 120.0,
        patience_s: float = 600.0,
        max_cost: float | None = None,
        max_tokens: int | None = None,
        backoff_s: float = 1.0,
        on_wait=None,
        router=None,
    ):
        self.store = store
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.models = models
        self.prices = prices
        self.timeout_s = timeout_s
        self.patience_s = patience_s
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self.backoff_s = backoff_s
        self.on_wait = on_wait or (lambda message: None)
        self.router = router  # archlab/agents/router.py: the roles with several models
        self._client = None

    @property
    def client(self):
        if self._client is None:
            key = os.environ.get(self.api_key_env) or ("not-needed" if self.base_url else None)
            if key is None:
                raise UserError(f"set {self.api_key_env} in the environment (the key is never stored by archlab)")
            self._client = _openai().OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0)
        return self._client

    def spent(self) -> tuple[float, int]:
        return self.store.llm_spend()

    def check_budget(self) -> None:
        cost, tokens = self.spent()
        if self.max_cost is not None and cost >= self.max_cost:
            raise BudgetExceeded(f"reached --max-cost {self.max_cost} USD (spent {cost:.4f})")
        if self.max_tokens is not None and tokens >= self.max_tokens:
            raise BudgetExceeded(f"reached the token cap {self.max_tokens} (used {tokens})")

    def chat(self, role: str, node_id: int, attempt: int, messages: list[dict]) -> Reply:
        """One answer to `messages`. Raises BudgetExceeded or EndpointDown (the run stops) or
        CallFailed (this request cannot be answered: the caller fails its candidate)."""
        routed = self.router is not None and self.router.routes(role)
        model = self.router.chosen(role, node_id) if routed else self.models[role]
        if model is None:  # this node's first call of a routed role: the router picks among what the budget allows
            self.check_budget()
            model = self.router.choose(role, node_id, self._affordable(role, messages))
        key = hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).hexdigest()
        done = self.store.answered_call(node_id, role, key)
        if done:
            finish = json.loads(done["decision"] or "{}").get("finish_reason")
            return Reply(
                done["response"],
                model,
                done["tokens_in"] or 0,
                done["tokens_out"] or 0,
                done["cost"] or 0.0,
                done["latency_s"] or 0.0,
                cached=True,
                finish_reason=finish,
            )
        self.check_budget()
        if routed and self._affordable(role, messages, [model]) == []:
            raise BudgetExceeded(
                f"reached --max-cost {self.max_cost} USD: the next {role} call to {model} would pass it"
            )
        openai = _openai()
        first_failure, delay = None, self.backoff_s
        while True:
            started = time.monotonic()
            retry_after, malformed = None, False
            try:
                answer = _parse(self._post(model, messages))
            except openai.APIStatusError as e:
                error = self._redact(_status_error(e))
                self._trace(
                    role, node_id, attempt, model, messages, None, key, latency=time.monotonic() - started, error=error
                )
                if e.status_code in STOP_STATUSES:
                    hint = STOP_STATUSES[e.status_code].format(key=self.api_key_env)
                    raise EndpointDown(f"the LLM endpoint refused the request ({error}); {hint}") from None
                if e.status_code < 500 and e.status_code not in TRANSIENT_STATUSES:
                    raise CallFailed(f"the LLM endpoint refused this request ({error})") from None
                retry_after = _retry_after(e)
            except (openai.APIConnectionError, Malformed) as e:  # APITimeoutError is an APIConnectionError
                error = self._redact(
                    f"{type(e).__name__}: {getattr(e, 'message', None) or e} ({self.base_url or DEFAULT_URL})"
                )
                self._trace(
                    role, node_id, attempt, model, messages, None, key, latency=time.monotonic() - started, error=error
                )
                malformed = isinstance(e, Malformed)
            else:
                chaos.point("llm_call")  # the answer arrived but is not yet stored
                latency = time.monotonic() - started
                text, finish, usage = answer
                text = self._redact(text)
                tokens_in, tokens_out, estimated = _tokens(usage, messages, text)
                cost = self._cost(model, tokens_in, tokens_out)
                decision = {"finish_reason": finish, **({"usage": "estimated"} if estimated else {})}
                self._trace(
                    role,
                    node_id,
                    attempt,
                    model,
                    messages,
                    text,
                    key,
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                    cost=cost,
                    latency=latency,
                    decision=decision,
                )
                return Reply(text, model, tokens_in, tokens_out, cost, latency, finish_reason=finish)
            first_failure = first_failure or time.monotonic()
            waited = time.monotonic() - first_failure
            if waited > self.patience_s:
                if malformed:  # the endpoint answers, just not readably: blame this request, not the run
                    raise CallFailed(f"the LLM endpoint sent unreadable answers for {waited:.0f} s (last: {error})")
                raise EndpointDown(f"the LLM endpoint has failed for {waited:.0f} s (last: {error})")
            pause = retry_after or delay
            self.on_wait(f"LLM endpoint: {error}; retrying in {pause:.1f} s")
            time.sleep(min(pause, max(0.0, self.patience_s - waited) + 0.01))
            delay = min(delay * 2, 60.0)

    def _affordable(self, role: str, messages: list[dict], models: list[str] | None = None) -> list[str]:
        """The models of a routed role whose next call fits in what --max-cost leaves: its estimated
        cost is the prompt's tokens (4 characters each) plus the longest answer the role has had so
        far, at the model's prices. Raises BudgetExceeded when none of the role's models fits."""
        models = models if models is not None else self.router.models[role]
        if self.max_cost is None:
            return models
        left = self.max_cost - self.spent()[0]
        tokens_in = sum(len(str(m.get("content") or "")) for m in messages) // CHARS_PER_TOKEN
        tokens_out = self.store.longest_answer(role)
        fits = [m for m in models if self._cost(m, tokens_in, tokens_out) <= left]
        if not fits and len(models) > 1:
            raise BudgetExceeded(
                f"reached --max-cost {self.max_cost} USD: no {role} model's next call fits in the {left:.4f} USD left"
            )
        return fits

    def _post(self, model: str, messages: list[dict]) -> bytes:
        """The raw body of one request, read within an overall deadline of --llm-timeout: the
        HTTP timeouts bound each read only, so a server trickling bytes could hold a worker for ever."""
        openai, deadline = _openai(), time.monotonic() + self.timeout_s
        with self.client.chat.completions.with_streaming_response.create(model=model, messages=messages) as response:
            request, body = response.http_response.request, bytearray()
            try:
                for chunk in response.iter_bytes():
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    if len(body) + len(chunk) > MAX_ANSWER_BYTES:
                        raise Malformed(f"the answer is larger than {MAX_ANSWER_BYTES >> 20} MiB")
                    body += chunk
            except TimeoutError:
                raise openai.APITimeoutError(request=request) from None
            except Malformed:
                raise
            except (
                Exception
            ) as e:  # the HTTP library's errors while reading the body: openai wraps only those before it
                raise openai.APIConnectionError(message=f"{type(e).__name__}: {e}", request=request) from None
        return bytes(body)

    def _redact(self, message: str) -> str:
        """`text` without the API key: endpoints echo it in error messages ("invalid key sk-...")."""
        return redact(message, os.environ.get(self.api_key_env))

    def _cost(self, model: str, tokens_in: int, tokens_out: int) -> float:
        price_in, price_out = self.prices.get(model, [0.0, 0.0])
        return (tokens_in * price_in + tokens_out * price_out) / 1e6

    def _trace(
        self,
        role,
        node_id,
        attempt,
        model,
        messages,
        response,
        key,
        *,
        tokens_in=None,
        tokens_out=None,
        cost=None,
        latency=None,
        error=None,
        decision=None,
    ) -> None:
        prompt = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)
        self.store.add_trace(
            node_id,
            role,
            "llm",
            attempt=attempt,
            model=model,
            prompt=prompt,
            response=response,
            decision={"messages": len(messages), **(decision or {})},
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost=cost,
            latency_s=latency,
            error=error,
            request_hash=key,
        )


def _parse(body: bytes) -> tuple[str, str | None, dict]:
    """(text, finish_reason, usage) of a chat completion's body; raises Malformed."""
    # Invalid UTF-8 is replaced rather than refused: the rest of the answer is still usable.
    raw = body.decode("utf-8", errors="replace")
    try:
        data = loads(raw)
    except ValueError:
        raise Malformed(f"the answer is not JSON: {_preview(raw)}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    if not isinstance(message, dict):
        raise Malformed(f"the answer has no choices[0].message: {_preview(raw)}")
    # Reasoning models (DeepSeek-R1 on vLLM, llama.cpp) may leave `content` empty and answer in `reasoning_content`.
    text = _text(message.get("content")) or _text(message.get("reasoning_content")) or _text(message.get("reasoning"))
    usage = data.get("usage")
    finish = choice.get("finish_reason")
    return clean(text), finish if isinstance(finish, str) else None, usage if isinstance(usage, dict) else {}


def _text(content) -> str:
    """A message's text: a string, or a list of parts ([{"type": "text", "text": ...}]) joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def clean(text: str) -> str:
    """`text` as valid Unicode: a lone surrogate ("\\ud83d", half an emoji in JSON) cannot be stored in SQLite."""
    return text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")


def _tokens(usage: dict, messages: list[dict], text: str) -> tuple[int, int, bool]:
    """(tokens in, tokens out, estimated?): an endpoint that reports no usage (llama.cpp, some
    proxies) or nulls must not blind the spend caps, so the counts it leaves out are estimated."""

    def count(field):
        value = usage.get(field)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    tokens_in, tokens_out = count("prompt_tokens"), count("completion_tokens")
    estimated = tokens_in is None or tokens_out is None
    if tokens_in is None:
        tokens_in = sum(len(str(m.get("content") or "")) for m in messages) // CHARS_PER_TOKEN
    if tokens_out is None:
        tokens_out = len(text) // CHARS_PER_TOKEN
    return tokens_in, tokens_out, estimated


def _preview(text: str, limit: int = 200) -> str:
    text = " ".join(clean(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _status_error(e) -> str:
    """`RateLimitError 429: message` from an HTTP error, with the endpoint's own message when it gave one."""
    body = e.body
    message = body.get("message") if isinstance(body, dict) else body if isinstance(body, str) else None
    return f"{type(e).__name__} {e.status_code}: {_preview(str(message or e.message), 500)}"


def _retry_after(e: Exception) -> float | None:
    """The server's Retry-After in seconds, within [0, 60]; None when absent or unreadable (an HTTP date, "nan")."""
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return min(max(seconds, 0.0), 60.0) if seconds is not None and math.isfinite(seconds) else None

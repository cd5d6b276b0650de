"""One client for every OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

Every call — the failed tries too — becomes a trace row with the full messages, response,
tokens, cost and latency. A completed call is never paid for twice: before calling, the
client looks for a finished trace of the same request for the same node and reuses it, so
a run killed mid-candidate resumes without repeating what it already got. The API key is
read from the environment at call time and is never written anywhere.
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass

from archlab import chaos
from archlab.errors import UserError


class BudgetExceeded(Exception):
    """A money/token cap was reached: the run stops cleanly between steps."""


class EndpointDown(Exception):
    """The endpoint kept failing for longer than the configured patience."""


@dataclass
class Reply:
    text: str
    model: str
    tokens_in: int
    tokens_out: int
    cost: float
    latency_s: float
    cached: bool = False


def _openai():
    import openai  # ~1.5 s to import: only runs with an LLM brain pay for it

    return openai


class LLMClient:
    def __init__(self, store, *, base_url: str | None, api_key_env: str, models: dict[str, str], prices: dict[str, list[float]],
                 timeout_s: float = 120.0, patience_s: float = 600.0, max_cost: float | None = None,
                 max_tokens: int | None = None, backoff_s: float = 1.0, on_wait=None):
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
        cost, tokens = self.store.db.execute(
            "select coalesce(sum(cost), 0), coalesce(sum(tokens_in), 0) + coalesce(sum(tokens_out), 0) from traces where kind = 'llm'"
        ).fetchone()
        return cost, tokens

    def check_budget(self) -> None:
        cost, tokens = self.spent()
        if self.max_cost is not None and cost >= self.max_cost:
            raise BudgetExceeded(f"reached --max-cost {self.max_cost} USD (spent {cost:.4f})")
        if self.max_tokens is not None and tokens >= self.max_tokens:
            raise BudgetExceeded(f"reached the token cap {self.max_tokens} (used {tokens})")

    def chat(self, role: str, node_id: int, attempt: int, messages: list[dict]) -> Reply:
        model = self.models[role]
        key = hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).hexdigest()
        done = self.store.db.execute(
            "select response, tokens_in, tokens_out, cost, latency_s from traces "
            "where node_id = ? and role = ? and request_hash = ? and error is null order by id limit 1", [node_id, role, key]
        ).fetchone()
        if done:
            return Reply(done[0], model, done[1] or 0, done[2] or 0, done[3] or 0.0, done[4] or 0.0, cached=True)
        self.check_budget()
        openai = _openai()
        retryable = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)
        first_failure, delay = None, self.backoff_s
        while True:
            started = time.monotonic()
            try:
                response = self.client.chat.completions.create(model=model, messages=messages)
            except retryable as e:
                latency = time.monotonic() - started
                error = f"{type(e).__name__}: {getattr(e, 'message', None) or e}"
                self._trace(role, node_id, attempt, model, messages, None, key, latency=latency, error=error)
                first_failure = first_failure or time.monotonic()
                waited = time.monotonic() - first_failure
                if waited > self.patience_s:
                    raise EndpointDown(f"the LLM endpoint has failed for {waited:.0f} s (last: {error})") from None
                retry_after = _retry_after(e)
                self.on_wait(f"LLM endpoint: {error}; retrying in {retry_after or delay:.1f} s")
                time.sleep(min(retry_after or delay, max(0.0, self.patience_s - waited) + 0.01))
                delay = min(delay * 2, 60.0)
                continue
            except openai.APIStatusError as e:  # 4xx other than 429: retrying will not help
                self._trace(role, node_id, attempt, model, messages, None, key, latency=time.monotonic() - started, error=str(e))
                raise EndpointDown(f"the LLM endpoint refused the request: {e}") from None
            chaos.point("llm_call")  # the answer arrived but is not yet stored
            latency = time.monotonic() - started
            text = response.choices[0].message.content or "" if response.choices else ""
            usage = response.usage
            tokens_in = usage.prompt_tokens if usage else 0
            tokens_out = usage.completion_tokens if usage else 0
            cost = self._cost(model, tokens_in, tokens_out)
            self._trace(role, node_id, attempt, model, messages, text, key, tokens_in=tokens_in, tokens_out=tokens_out,
                        cost=cost, latency=latency)
            return Reply(text, model, tokens_in, tokens_out, cost, latency)

    def _cost(self, model: str, tokens_in: int, tokens_out: int) -> float:
        price_in, price_out = self.prices.get(model, [0.0, 0.0])
        return (tokens_in * price_in + tokens_out * price_out) / 1e6

    def _trace(self, role, node_id, attempt, model, messages, response, key, *, tokens_in=None, tokens_out=None,
               cost=None, latency=None, error=None) -> None:
        prompt = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)
        self.store.add_trace(node_id, role, "llm", attempt=attempt, model=model, prompt=prompt, response=response,
                             decision={"messages": len(messages)}, tokens_in=tokens_in, tokens_out=tokens_out, cost=cost,
                             latency_s=latency, error=error, request_hash=key)


def _retry_after(e: Exception) -> float | None:
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None

"""A defender behind an OpenAI-compatible server (``defender_backend: openai``): a ``ChatBackend`` over HTTP.

Requests go through the official ``openai`` client, whose ``timeout`` and ``max_retries`` handle slow and failing
requests (it retries timeouts, dropped connections, 408/409/429 and 5xx answers, with backoff); up to
``concurrency`` requests are in flight at once (a thread pool: the client is blocking and thread-safe).

``api: chat`` sends the history as messages (the adversary's turns and the prompt as ``user``, the defender's own
as ``assistant``: ``chat_messages``) and always asks for a streamed reply, assembled here: some servers
(``transformers serve``) answer chat requests only as a server-sent-event stream. ``api: completions`` sends the
plain transcript as a prompt. Either way the ``Generation`` has texts only: no token ids, no log-probs. The reward's
NLL term then comes from the server when it can score a given text (``api: completions`` on a server that returns
prompt log-probs with ``echo``, e.g. vLLM: ``ServerLikelihood``), else from a local ``likelihood_model``.

Every failure (unreachable server, rejected key, an HTTP error after the retries, a malformed reply) is one
``RedgymError`` line; the API key is read from the environment variable the config names and never stored.
``requests`` / ``retries`` / ``failures`` count what happened, for the evaluation report.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

from redgym.errors import RedgymError, RequestBudgetSpent, ServerError
from redgym.models.base import ChatBackend, Generation, SamplingParams, chat_messages, render_plain

NO_KEY = "no-key"  # local servers ignore the key, but the client refuses to start without one

T = TypeVar("T")


class OpenAIChat(ChatBackend):
    """The model ``name`` at ``base_url``; ``api_key_env`` names the environment variable holding the key."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key_env: str | None = None,
        api: str = "chat",
        timeout_s: float = 60.0,
        max_retries: int = 2,
        concurrency: int = 8,
        max_requests: int = 0,
        rate_limit: float = 0.0,
    ):
        try:
            import openai
        except ImportError:
            raise RedgymError("defender_backend openai needs the openai package: pip install 'redgym[http]'") from None
        key = NO_KEY
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise RedgymError(f"defender_api_key_env: the environment variable {api_key_env} is not set")
        self.name, self.base_url, self.api = name, base_url, api
        self.api_key_env, self.max_retries, self.timeout_s = api_key_env, max_retries, timeout_s
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=max_retries)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="redgym-http")
        self.max_requests, self.rate_limit = max_requests, rate_limit
        self.requests = self.retries = self.failures = self.tokens = 0  # updated from the pool's threads, locked
        self._lock = threading.Lock()
        self._next_start = 0.0  # rate_limit: the earliest time the next request may be sent (time.monotonic)

    def counts(self) -> dict[str, int]:
        """What the evaluation report records under ``http`` (``tokens``: reply tokens where the server reports
        its usage)."""
        return {"requests": self.requests, "retries": self.retries, "failures": self.failures, "tokens": self.tokens}

    def check(self) -> None:
        """Fail now, with one line, when the server cannot be reached or refuses the key (``GET /models``)."""
        self._call(lambda: self.client.models.with_raw_response.list(), "GET /models")

    def render(self, history: list[tuple[str, str]], me: str) -> str:
        """Chat: the messages as JSON; completions: the plain transcript."""
        return json.dumps(chat_messages(history, me)) if self.api == "chat" else render_plain(history)

    def generate(self, contexts: list[str], params: SamplingParams = SamplingParams()) -> Generation:
        """One reply per context, up to ``concurrency`` requests at once; after the first failure no new request
        of the batch is sent, and that failure is raised."""
        one = self._chat if self.api == "chat" else self._complete
        failed = threading.Event()

        def ask(context: str) -> str | None:
            if failed.is_set():
                return None  # the batch has failed already: do not send more
            try:
                return one(context, params)
            except BaseException:
                failed.set()
                raise

        futures = [self.pool.submit(ask, c) for c in contexts]
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        # ask returns None only once a request of the batch has failed, and that failure was raised above
        texts = cast(list[str], [f.result() for f in futures])
        return Generation(texts, [[] for _ in texts], [[] for _ in texts])

    # ---- one request -------------------------------------------------------------------------------------------
    def _sampling(self, params: SamplingParams) -> dict:
        # Only the OpenAI API's own knobs: top_k, repetition_penalty and min_new_tokens stay local-only settings.
        return dict(
            model=self.name, max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p
        )

    def _chat(self, context: str, params: SamplingParams) -> str:
        raw = self._call(
            lambda: self.client.chat.completions.with_raw_response.create(
                messages=json.loads(context), stream=True, **self._sampling(params)
            ),
            "POST /chat/completions",
        )

        def read() -> str:
            parts, chunks = [], 0
            with raw.parse() as stream:  # closes the connection even when the stream breaks
                for chunk in stream:
                    chunks += 1
                    self._count_usage(chunk)
                    for choice in chunk.choices or []:
                        parts.append(choice.delta.content or "")
            if not chunks:
                raise ValueError("no server-sent events in the reply")
            return "".join(parts).strip()

        return self._read(read, "POST /chat/completions")

    def _complete(self, context: str, params: SamplingParams) -> str:
        raw = self._call(
            lambda: self.client.completions.with_raw_response.create(prompt=context, **self._sampling(params)),
            "POST /completions",
        )

        def read() -> str:
            parsed = raw.parse()
            self._count_usage(parsed)
            return parsed.choices[0].text.strip()

        return self._read(read, "POST /completions")

    def prompt_logprobs(self, text: str) -> tuple[list[int], list[float | None]]:
        """(character offset, log-prob) of each token of ``text`` as the server scores it (``echo``, no new
        token is kept); a server that returns no prompt log-probs is one line."""
        what = "POST /completions (echo, logprobs)"
        raw = self._call(
            lambda: self.client.completions.with_raw_response.create(
                model=self.name, prompt=text, max_tokens=1, temperature=0.0, echo=True, logprobs=0
            ),
            what,
        )

        def read() -> tuple[list[int], list[float | None]]:
            lp = raw.parse().choices[0].logprobs
            if lp is None or not lp.token_logprobs or lp.text_offset is None:
                raise RedgymError(
                    f"defender at {self.base_url} returns no prompt log-probs for {what}: set "
                    "likelihood_model to a local LM for the NLL term"
                )
            return list(lp.text_offset), list(lp.token_logprobs)

        return self._read(read, what)

    def _call(self, request, what: str):
        """Send one request (the client retries it); count it; turn every failure into one line."""
        o = self._openai
        self._admit(what)
        try:
            raw = request()
        except o.APITimeoutError:
            self._failed(self.max_retries)
            raise ServerError(
                f"defender at {self.base_url}: {what} got no answer within {self.timeout_s:g} s "
                f"({self._after_retries()})"
            ) from None
        except o.APIConnectionError as e:
            self._failed(self.max_retries)
            raise ServerError(
                f"defender at {self.base_url}: connection failed for {what} "
                f"({_one_line(e.__cause__ or e)}; {self._after_retries()})"
            ) from None
        except (o.AuthenticationError, o.PermissionDeniedError) as e:
            self._failed(0)
            where = f"the key in ${self.api_key_env}" if self.api_key_env else "requests without a key"
            raise RedgymError(f"defender at {self.base_url} rejected {where} (HTTP {e.status_code})") from None
        except o.APIStatusError as e:
            self._failed(self.max_retries if e.status_code in (408, 409, 429) or e.status_code >= 500 else 0)
            raise ServerError(
                f"defender at {self.base_url}: {what} answered HTTP {e.status_code} ({_one_line(e.message)})"
            ) from None
        except (o.OpenAIError, ValueError) as e:  # a body the client cannot parse
            self._failed(0)
            raise ServerError(f"defender at {self.base_url}: malformed answer to {what} ({_one_line(e)})") from None
        self._count(retries=getattr(raw, "retries_taken", 0))  # older clients do not report it (counted as 0)
        return raw

    def _read(self, read: Callable[[], T], what: str) -> T:
        """Read a reply's body (a stream may break or hold malformed events after the status line)."""
        try:
            return read()
        except RedgymError:
            raise
        except self._openai.APITimeoutError:
            self._failed(0)
            raise ServerError(
                f"defender at {self.base_url}: {what} stopped answering mid-reply (timeout {self.timeout_s:g} s)"
            ) from None
        except Exception as e:  # noqa: BLE001 - a broken stream can fail in the transport or in parsing
            self._failed(0)
            cause = e.__cause__ or e  # the transport's own error says more than the client's "Connection error."
            raise ServerError(
                f"defender at {self.base_url}: malformed or broken answer to {what} "
                f"({type(cause).__name__}: {_one_line(cause)})"
            ) from None

    def _admit(self, what: str) -> None:
        """Count the request about to be sent, or refuse it past ``max_requests``; with ``rate_limit``, wait for its
        turn (request starts ``1 / rate_limit`` s apart, across the concurrent ones)."""
        with self._lock:
            if self.max_requests and self.requests >= self.max_requests:
                raise RequestBudgetSpent(
                    f"http_max_requests {self.max_requests} reached: {what} to {self.base_url} not sent"
                )
            self.requests += 1
            now = time.monotonic()
            start = max(now, self._next_start)
            if self.rate_limit > 0:
                self._next_start = start + 1.0 / self.rate_limit
        if start > now:
            time.sleep(start - now)

    def _count_usage(self, answer) -> None:
        usage = getattr(answer, "usage", None)
        tokens = getattr(usage, "completion_tokens", None)
        if isinstance(tokens, int):
            self._count(tokens=tokens)

    def _after_retries(self) -> str:
        n = self.max_retries
        return "not retried" if n == 0 else f"after {n} retr{'y' if n == 1 else 'ies'}"

    def _failed(self, retries: int) -> None:
        self._count(retries=retries, failures=1)

    def _count(self, requests: int = 0, retries: int = 0, failures: int = 0, tokens: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.failures += failures
            self.tokens += tokens


def continuation_nll_from_offsets(
    context_chars: int, end_chars: int, offsets: list[int], logprobs: list[float | None]
) -> float:
    """Mean NLL per token of the tokens starting in ``[context_chars, end_chars)`` (the continuation inside the
    scored text, whose echoed tokens carry these character offsets); nan when no scored token starts there."""
    inside = [lp for off, lp in zip(offsets, logprobs) if context_chars <= off < end_chars and lp is not None]
    return -sum(inside) / len(inside) if inside else float("nan")


class ServerLikelihood:
    """The reward's NLL term scored by the server itself (``LikelihoodBackend``): the context and continuation
    sent as one completions prompt with ``echo``, the continuation's tokens' log-probs read back by offset."""

    def __init__(self, server: OpenAIChat):
        self.server = server

    def continuation_nll(self, contexts: list[str], continuations: list[str], batch_size: int = 16) -> list[float]:
        futures = [self.server.pool.submit(self.server.prompt_logprobs, c + x) for c, x in zip(contexts, continuations)]
        out = []
        for c, x, f in zip(contexts, continuations, futures):
            offsets, logprobs = f.result()
            out.append(continuation_nll_from_offsets(len(c), len(c) + len(x), offsets, logprobs))
        return out


def _one_line(x) -> str:
    """An exception or message squeezed onto one short line (server errors can be long HTML pages)."""
    text = " ".join(str(x).split()).rstrip(".")
    return text[:160] + ("..." if len(text) > 160 else "")

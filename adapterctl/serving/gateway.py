"""The vLLM engine of `adapterctl serve --engine vllm`: the embedded runtime's contract, with generation
forwarded to vLLM servers (upstreams) under the version's name.

    refresh():  each upstream's /v1/models (what it holds) ──> each line's newest activation ──> the
                line moves to `line@vN` once an upstream holds that name (`vllm sync` loads it there),
                so no request goes where it cannot be answered
    generate(): the prompt rendered and tokenized here, with the embedded engine's template and checks
                ──> POST /v1/completions {model: "line@vN", prompt: token ids, return_token_ids} to the
                least loaded upstream holding the name, streamed ──> the tokens become choices through
                `completion.ChoiceText`, as the embedded engine's do ──> the answer names the model
                vLLM says answered

An upstream that cannot take a request (connection refused, 5xx, or the name unknown there after a
restart) before its first token is set aside for DOWN_S and the request goes to the next one, up to
`retries` times. Once tokens flowed, a failure ends the answer with an error, never a short answer.
A version that was revoked is not routed to, even while an upstream still holds it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from adapterctl import chat, registry
from adapterctl.errors import AdapterctlError, InvalidInput, ModelNotFound, Unavailable
from adapterctl.serving.completion import ChoiceText, Delta, Sampling, choice_text, logprob_entry
from adapterctl.serving.runtime import DEFAULT_DEADLINE_S, Answer, Stream, Swap, context_length, prompt_ids, serving_lines
from adapterctl.serving.vllm_client import Holdings, Refused, Unreachable, VllmServer
from adapterctl.vllm_sync import read_plan
from adapterctl.workspace import Workspace

log = logging.getLogger("adapterctl.serve")
DOWN_S = 2.0
"""How long an upstream that failed a request is left out (the next refresh may bring it back sooner)."""
DEFAULT_RETRIES = 2


@dataclass(eq=False)
class Upstream:
    server: VllmServer
    up: bool = False
    base: str | None = None
    holds: frozenset[str] = frozenset()
    in_flight: int = 0
    down_until: float = 0.0
    requests: int = 0
    failures: int = 0

    def can_serve(self, name: str | None, now: float) -> bool:
        return self.up and now >= self.down_until and (name is None or name in self.holds)


@dataclass
class GatewayStats:
    swaps: int = 0
    retries: int = 0
    upstream_failures: int = 0


class Gateway:
    """Serves lines of one base model through vLLM servers; follow the database with `refresh()`."""

    COUNTERS = (
        ("swaps", "Lines moved to a newer activation (once a vLLM server held it)."),
        ("retries", "Requests sent to another vLLM server after one could not take them."),
        ("upstream_failures", "Requests a vLLM server could not take (refused, 5xx, or the version unknown there), all servers."),
    )

    def __init__(
        self,
        ws: Workspace,
        lines: list[str] | None,
        upstreams: list[str],
        *,
        api_key: str | None = None,
        max_context_tokens: int | None = None,
        request_deadline_s: float = DEFAULT_DEADLINE_S,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        from transformers import AutoConfig

        if not upstreams:
            raise AdapterctlError("--engine vllm needs at least one --upstream URL")
        self.ws = ws
        self.lines, self.base_name, base_path = serving_lines(ws, lines)
        self.tokenizer = chat.load_tokenizer(base_path)
        self.roles = chat.supported_roles(self.tokenizer)
        self._model_context = context_length(AutoConfig.from_pretrained(base_path), self.tokenizer, max_context_tokens)
        self.context_tokens = self._model_context
        """The model's context, or less where a vLLM server takes less (its --max-model-len)."""
        self.deadline_s, self.retries = request_deadline_s, retries
        self.upstreams = [Upstream(VllmServer(url, api_key=api_key)) for url in upstreams]
        self.stats = GatewayStats()
        self._served = {line: "base" for line in self.lines}  # the label each line answers with: vN or base
        self._servable: set[str] = set()  # `line@vN` that may be served (approved, not revoked)
        self._held: set[str] = set()  # `line@vN` some live upstream holds
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._turn = itertools.count()
        self._describe = logprob_entry(self.tokenizer)
        self.refresh()

    # ------------------------------------------------------------ following activations and upstreams

    def served(self) -> dict[str, str]:
        return {line: f"{line}@{label}" for line, label in self._served.items()}

    def loaded_versions(self) -> list[str]:
        return sorted(self._servable & self._held)

    def refresh(self) -> list[Swap]:
        """Read what each upstream holds, then move each line to its newest activation where one holds it."""
        with self._refreshing:  # the follower's and a request's (after a revocation) never interleave
            return self._refresh()

    def _refresh(self) -> list[Swap]:
        from concurrent.futures import ThreadPoolExecutor

        limits = [self._model_context] if self._model_context else []
        with ThreadPoolExecutor(max_workers=min(len(self.upstreams), 16)) as pool:  # a silent upstream delays no other
            for upstream, held in zip(self.upstreams, pool.map(_holdings, self.upstreams)):
                upstream.up = held is not None
                if held is not None:
                    upstream.base, upstream.holds = held.base, frozenset(held.adapters)
                    limits += [held.max_model_len] if held.max_model_len else []
        self.context_tokens = min(limits) if limits else None
        self._held = set().union(*(u.holds for u in self.upstreams if u.up))
        with self.ws.reading() as session:
            plan = read_plan(session, self.lines)
        self._servable = set(plan.servable)
        swaps = []
        for line, version in plan.active.items():
            label = version.name.partition("@")[2] if version else "base"
            if label != self._served[line] and (label == "base" or f"{line}@{label}" in self._held):
                swaps.append(Swap(line, self._served[line], label))
                self._served[line] = label
                self.stats.swaps += 1
        return swaps

    def hold(self, versions: set[str]) -> None:
        """Nothing to load here: `vllm sync` loads a canary's version beside the active one."""

    def drop_unservable(self) -> list[str]:
        """Nothing is loaded here: `vllm sync` unloads revoked versions, and `refresh` stops routing to them."""
        return []

    def metric_families(self) -> list:
        """Per vLLM server: up, requests in flight, versions held, requests sent and failed."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily(
            "adapterctl_upstream_up", "Whether a vLLM server answered the last refresh (1) or not (0).", labels=["upstream"]
        )
        busy = GaugeMetricFamily("adapterctl_upstream_in_flight", "Requests a vLLM server is answering now.", labels=["upstream"])
        holds = GaugeMetricFamily("adapterctl_upstream_holds", "The versions each vLLM server holds (1).", labels=["upstream", "model"])
        sent = CounterMetricFamily("adapterctl_upstream_requests", "Requests sent to each vLLM server.", labels=["upstream"])
        failed = CounterMetricFamily("adapterctl_upstream_failures", "Requests a vLLM server could not take.", labels=["upstream"])
        for upstream in self.upstreams:
            up.add_metric([upstream.server.url], int(upstream.up))
            busy.add_metric([upstream.server.url], upstream.in_flight)
            sent.add_metric([upstream.server.url], upstream.requests)
            failed.add_metric([upstream.server.url], upstream.failures)
            for name in sorted(upstream.holds):
                holds.add_metric([upstream.server.url, name], 1)
        return [up, busy, holds, sent, failed]

    # ------------------------------------------------------------ generating

    def generate(self, model: str, messages: list[dict[str, str]], sampling: Sampling | None = None, **options) -> Answer:
        stream = self.stream(model, messages, sampling, **options)
        for _ in stream:
            pass
        return Answer(stream.served_by, stream.prompt_tokens, stream.choices)

    def stream(self, model: str, messages: list[dict[str, str]], sampling: Sampling | None = None, **options) -> Stream:
        """What answers (`line@vN`, as vLLM names it) at once, then the text as vLLM generates it."""
        sampling = sampling or Sampling(**options)
        line, label = self._resolve(model)
        ids = prompt_ids(self.tokenizer, self.roles, self.context_tokens, messages, sampling)
        chunks, upstream, first = self._open(line, label, self._body(ids, sampling))
        served_by = str(first.get("model"))
        served_by = f"{line}@base" if served_by == upstream.base else served_by
        deltas: queue.Queue = queue.Queue()
        threading.Thread(
            target=self._relay, args=(upstream, itertools.chain([first], chunks), sampling, deltas), name="adapterctl-upstream", daemon=True
        ).start()
        return Stream(served_by, len(ids), deltas, sampling)

    def _resolve(self, model: str) -> tuple[str, str]:
        line, at, version = model.partition("@")
        if line not in self._served or (at and not version):
            raise ModelNotFound(f"model {model!r} is not served here; served: {', '.join(sorted(self._served))}", param="model")
        if not version:
            if not self._routable(line):
                self.refresh()  # the version was revoked: its successor may be loaded by now
            if not self._routable(line):
                raise Unavailable(f"{line}@{self._served[line]} was revoked and no vLLM server holds {line}'s next version yet; try again")
            return line, self._served[line]
        if version == "base":
            return line, "base"
        registry.parse_version(version)  # a malformed version is a 400 naming it
        if model not in self._servable:
            raise ModelNotFound(f"{model} is not an approved version of {line} that may be served", param="model")
        if model not in self._held:
            raise ModelNotFound(
                f"{model} is not loaded on the vLLM servers (`adapterctl vllm sync --keep {model}` keeps it loaded)", param="model"
            )
        return line, version

    def _routable(self, line: str) -> bool:
        label = self._served[line]
        return label == "base" or f"{line}@{label}" in self._servable

    def _body(self, ids: list[int], sampling: Sampling) -> dict[str, Any]:
        body = {
            "prompt": ids,
            "max_tokens": sampling.max_tokens,
            "n": sampling.rows,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": 0,
            "seed": sampling.seed,
            "stop": list(sampling.stop),
            "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty,
            "logit_bias": {str(token): bias for token, bias in sampling.logit_bias},
            "return_token_ids": True,
        }
        if sampling.logprobs:
            body.update(logprobs=sampling.top_logprobs, return_tokens_as_token_ids=True)
        return body

    def _open(self, line: str, label: str, body: dict[str, Any]) -> tuple[Iterator[dict[str, Any]], Upstream, dict[str, Any]]:
        """The chunks of the request on the first upstream that takes it, and its first chunk."""
        name = None if label == "base" else f"{line}@{label}"
        tried: list[Upstream] = []
        for attempt in range(self.retries + 1):
            upstream = self._pick(name, tried)
            if upstream is None:
                break
            tried.append(upstream)
            self.stats.retries += attempt > 0
            chunks = upstream.server.stream({**body, "model": name or upstream.base}, timeout_s=self.deadline_s)
            with self._lock:
                upstream.in_flight += 1
                upstream.requests += 1
            try:
                return chunks, upstream, next(chunks)
            except (Unreachable, Refused, StopIteration) as exc:
                self._release(upstream)
                if isinstance(exc, Refused) and exc.status != 404:  # the request itself: another server would refuse it too
                    raise InvalidInput(f"the vLLM server refused the request: {exc}") from None
                self._set_aside(upstream, name, exc)
        loaded = f"; {name} must be loaded on a server that is up" if name else ""
        raise Unavailable(f"no vLLM server can take this request now ({len(tried)} of {len(self.upstreams)} tried{loaded})")

    def _pick(self, name: str | None, tried: list[Upstream]) -> Upstream | None:
        """The least loaded upstream that holds `name` and was not tried; ties go round the upstreams."""
        now, turn = time.monotonic(), next(self._turn)
        ready = [(index, u) for index, u in enumerate(self.upstreams) if u not in tried and u.can_serve(name, now)]
        if not ready:
            return None
        return min(ready, key=lambda pair: (pair[1].in_flight, (pair[0] - turn) % len(self.upstreams)))[1]

    def _set_aside(self, upstream: Upstream, name: str | None, error: BaseException) -> None:
        self.stats.upstream_failures += 1
        upstream.failures += 1
        if isinstance(error, Refused) and name:  # it lost the version (a restart): not until it holds it again
            upstream.holds = upstream.holds - {name}
        else:
            upstream.down_until = time.monotonic() + DOWN_S
        log.warning("%s could not take a request, sent to another server: %s", upstream.server.url, error)

    def _release(self, upstream: Upstream) -> None:
        with self._lock:
            upstream.in_flight -= 1

    def _relay(self, upstream: Upstream, chunks: Iterator[dict[str, Any]], sampling: Sampling, deltas: queue.Queue) -> None:
        """vLLM's chunks through one ChoiceText per choice, their safe pieces into `deltas`, then the choices."""
        rows = [choice_text(self.tokenizer, sampling) for _ in range(sampling.rows)]
        deadline = time.monotonic() + self.deadline_s
        try:
            for chunk in chunks:
                for part in chunk.get("choices", []):
                    self._take(rows, part, deltas, sampling.top_logprobs)
                if time.monotonic() > deadline or all(row.finish_reason for row in rows):
                    break
            for index, row in enumerate(rows):
                if row.finish_reason is None:
                    row.end()
                    _send(deltas, index, row)
            deltas.put([row.choice(logprobs=sampling.logprobs) for row in rows])
        except Exception as exc:  # the text so far, then the error: never a short answer that looks whole
            deltas.put(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
            self._release(upstream)

    def _take(self, rows: list[ChoiceText], part: dict[str, Any], deltas: queue.Queue, top: int) -> None:
        index = part.get("index", 0)
        row = rows[index]
        if row.finish_reason is not None:  # ended here already (a stop string), vLLM may send its last tokens
            return
        tokens = part.get("token_ids") or []
        entries = self._entries(part.get("logprobs"), tokens, top)
        for token, entry in zip(tokens, entries):
            row.add(token, entry)
        if part.get("finish_reason") and row.finish_reason is None:
            row.end("stop" if part["finish_reason"] == "stop" else "length")
        _send(deltas, index, row)

    def _entries(self, logprobs: dict[str, Any] | None, tokens: list[int], top: int) -> list[dict[str, Any] | None]:
        """OpenAI's logprob entries from vLLM's completion logprobs (tokens as "token_id:N")."""
        if not logprobs:
            return [None] * len(tokens)
        entries: list[dict[str, Any] | None] = []
        for token, logprob, likely in zip(tokens, logprobs["token_logprobs"], logprobs.get("top_logprobs") or itertools.repeat(None)):
            ranked = sorted(((int(key.split(":", 1)[1]), value) for key, value in (likely or {}).items()), key=lambda pair: -pair[1])
            entries.append(self._describe(token, logprob, ranked[:top]))
        return entries


def _holdings(upstream: Upstream) -> Holdings | None:
    try:
        return upstream.server.holdings()
    except AdapterctlError:
        return None


def _send(deltas: queue.Queue, index: int, row: ChoiceText) -> None:
    text, entries = row.release()
    if text or entries or row.finish_reason:
        deltas.put(Delta(index, text, entries, row.finish_reason))

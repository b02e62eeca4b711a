"""The serving runtime: one base model, the active adapter of each line beside it, hot-swapped in place.

    refresh():  newest activations ──> for each line that moved: read + hash the artifact once
                ──> copy its weights into the line's idle adapter slot (same LoRA settings), or add a
                    new adapter (PEFT add_adapter + state dict) ──> switch the line's entry between
                    requests ──> the replaced slot stays loaded, idle, for the next version
    generate(): take the model lock ──> set_adapter(line's slot) or disable adapters ──> generate

Loading never holds the model lock, so requests keep being answered while an adapter loads; only the
switch (a dict entry) waits for the request in flight, which finishes on the adapter it started with.
A failed load (missing file, hash mismatch, shapes that do not fit the base model) leaves the line on
its current adapter and is reported in `stats.errors`.

Each line has at most two slots: the one serving and an idle one. A new version is copied into the
idle slot only when its LoRA settings (rank, alpha, targets, ...) equal the slot's, so PEFT never keeps
a stale config after a rank change; otherwise it gets a new slot and the idle one is deleted. Adapters
are never merged into the base weights.

A request may also name any approved, non-revoked version (`line@vN`): it is loaded on first use into a
slot of its own and kept while used; beyond `max_versions` the least recently used is unloaded, and a
version revoked meanwhile is unloaded by `drop_unservable()`. Versions pinned at start stay loaded.
What a request asks of generation (stop strings, n, penalties, logprobs, ...) is `completion.Sampling`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

from sqlalchemy import select

from adapterctl import activations, base_models, chat, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.models import Adapter, Line
from adapterctl.errors import AdapterctlError, ContextLengthExceeded, InvalidInput, ModelNotFound, NotFound
from adapterctl.evaluation import load_models, using
from adapterctl.lines import get_line
from adapterctl.serving.completion import Choice, Delta, Sampling, Tracker, choice_text, logprob_entries, score_processors
from adapterctl.workspace import Workspace


@dataclass
class Swap:
    line: str
    old: str
    new: str
    verify_s: float = 0.0
    """Reading the artifact's files and checking their sha256 (once, on the bytes then loaded)."""
    load_s: float = 0.0
    """Adding the adapter to the model from those bytes."""
    switch_s: float = 0.0
    """Pointing the line at it and deleting the old one (waits for the request in flight)."""
    error: str | None = None


@dataclass
class Answer:
    served_by: str
    """`line@vN` or `line@base`: exactly what produced the text."""
    prompt_tokens: int
    choices: list[Choice]

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> str:
        """ "stop" when the model ended its answer (or met a stop string), "length" when max_tokens or the
        request deadline cut it."""
        return self.choices[0].finish_reason

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)


class Stream:
    """A streamed answer: what answers (`served_by`) at once, then `Delta`s (a piece of one choice) as they
    are generated.

    Iterating to the end sets `choices`, or raises what stopped the generation midway, so that a caller
    never mistakes a failure for a short answer.
    """

    def __init__(self, served_by: str, prompt_tokens: int, deltas: queue.Queue, sampling: Sampling) -> None:
        self.served_by, self.prompt_tokens = served_by, prompt_tokens
        self.choices: list[Choice] = []
        self._deltas, self._sampling = deltas, sampling

    def __iter__(self) -> Iterator[Delta]:
        while True:
            item = self._deltas.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, list):
                self.choices = spread(item, self._sampling)
                return
            for index in range(self._sampling.n if self._sampling.rows == 1 else 1):
                yield replace(item, index=index) if index else item

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)


def spread(choices: list[Choice], sampling: Sampling) -> list[Choice]:
    """Greedy choices are one answer generated once: every one of the n choices is that answer."""
    return [replace(choices[0]) for _ in range(sampling.n)] if sampling.rows == 1 else choices


@dataclass
class _Served:
    label: str  # vN or base
    adapter: str | None  # PEFT adapter name, None for the base model
    adapter_id: int | None = None


@dataclass
class _Request:
    model: str
    line: str
    ids: list[int]
    sampling: Sampling
    done: Future = field(default_factory=Future)


@dataclass
class RuntimeStats:
    batches: int = 0
    largest_batch: int = 0
    mixed_batches: int = 0
    """Batches that served several adapters (or an adapter and the base model) at once."""
    swaps: int = 0
    failed_loads: int = 0
    errors: list[str] = field(default_factory=list)


DEFAULT_DEADLINE_S = 30.0
DEFAULT_MAX_VERSIONS = 4
SERVABLE = ("approved", "active", "inactive")
"""States of a version that `line@vN` may name: approved, and not revoked."""


def context_length(config, tokenizer, max_context_tokens: int | None = None) -> int | None:
    """The most tokens of prompt and answer together: the model's position embeddings (its `config`), else
    the tokenizer's stated limit; `max_context_tokens` when smaller."""
    limits = [max_context_tokens] if max_context_tokens else []
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(value := getattr(config, name, None), int) and value > 0:
            limits.append(value)
            break
    else:
        limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 10**7:  # transformers uses 1e30 for "unknown"
            limits.append(limit)
    return min(limits) if limits else None


def serving_lines(ws: Workspace, lines: list[str] | None) -> tuple[list[str], str, str]:
    """The lines one server serves (default: all), their base model's name and local path; they must share it."""
    with ws.reading() as session:
        rows = [get_line(session, name) for name in lines] if lines else list(session.scalars(select(Line).order_by(Line.name)))
        if not rows:
            raise InvalidInput("no lines to serve; create one with `adapterctl line create`")
        bases = {row.base_model.name for row in rows}
        if len(bases) > 1:
            raise InvalidInput(
                f"the lines to serve sit on different base models ({', '.join(sorted(bases))}); one server serves one base model"
            )
        return [row.name for row in rows], rows[0].base_model.name, base_models.local_path(rows[0].base_model)


def prompt_ids(tokenizer, roles: list[str], limit: int | None, messages: list[dict[str, str]], sampling: Sampling) -> list[int]:
    """The token ids of the rendered chat; refuses what the model cannot answer (lengths, logit_bias)."""
    max_tokens = sampling.max_tokens
    if limit is not None and max_tokens >= limit:
        raise InvalidInput(
            f"max_tokens {max_tokens} does not fit the model's context of {limit} tokens (prompt and answer together)", param="max_tokens"
        )
    vocabulary = len(tokenizer)
    if unknown := [token for token, _ in sampling.logit_bias if not 0 <= token < vocabulary]:
        raise InvalidInput(
            f"logit_bias names token {unknown[0]}, which is not in the model's vocabulary (0 to {vocabulary - 1})", param="logit_bias"
        )
    ids = tokenizer(chat.render(tokenizer, messages, roles), add_special_tokens=False)["input_ids"]
    if limit is not None and len(ids) + max_tokens > limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens. However, you requested {len(ids) + max_tokens} tokens "
            f"({len(ids)} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
            param="messages",
        )
    return ids


class Runtime:
    """Serves lines of one base model; follow the database with `refresh()` (a server calls it in a loop)."""

    COUNTERS = (
        ("swaps", "Adapters swapped in after an activation."),
        ("failed_loads", "Adapters that failed to load (the line kept serving)."),
        ("batches", "Batches of greedy requests generated together."),
        ("mixed_batches", "Batches that served several adapters at once."),
    )

    def metric_families(self) -> list:
        """Metrics of this engine beyond the served versions and COUNTERS: none."""
        return []

    def __init__(
        self,
        ws: Workspace,
        lines: list[str] | None = None,
        *,
        device: str = "auto",
        max_batch: int = 8,
        max_context_tokens: int | None = None,
        request_deadline_s: float = DEFAULT_DEADLINE_S,
        max_versions: int = DEFAULT_MAX_VERSIONS,
    ) -> None:
        self.ws = ws
        self.store = ArtifactStore(ws.settings.artifacts_dir)
        self.lines, self.base_name, base_path = serving_lines(ws, lines)
        self.model, self.tokenizer = load_models(base_path, {}, device)  # the base model alone, left padding
        self.roles = chat.supported_roles(self.tokenizer)
        self.context_tokens = context_length(self.model.config, self.tokenizer, max_context_tokens)
        """Prompt and answer together never exceed this many tokens (None: the model states no limit)."""
        self.deadline_s = request_deadline_s
        """Longest time one request (or one batch) may generate for; its answer is cut there ("length")."""
        self._lock = threading.RLock()  # one request on the model at a time: the active adapter is model state
        self._served: dict[str, _Served] = {line: _Served("base", None) for line in self.lines}
        self._versions: OrderedDict[str, _Served] = OrderedDict()  # "line@vN" named by requests, least recently used first
        self._pinned: set[str] = set()  # versions loaded at start (`serve --pin`): never evicted
        self._held: set[str] = set()  # versions of running canaries (`hold`): not evicted while they run
        self.max_versions = max_versions
        """Versions loaded on demand for requests naming `line@vN`, beyond the pinned ones; the least recently used goes."""
        self._spare: dict[str, str] = {}  # line -> an idle adapter slot its next version can be copied into
        self._slots = 0
        self.stats = RuntimeStats()
        self.max_batch = max_batch
        self._pending: queue.Queue[_Request] = queue.Queue()
        threading.Thread(target=self._batches, name="adapterctl-batcher", daemon=True).start()
        self.refresh()

    # ------------------------------------------------------------ following activations

    def served(self) -> dict[str, str]:
        """What each line serves now, as `line@vN` / `line@base`."""
        return {line: f"{line}@{s.label}" for line, s in self._served.items()}

    def refresh(self) -> list[Swap]:
        """Bring every line to its newest activation; return the swaps made (or attempted)."""
        with self.ws.reading() as session:
            wanted = {}
            for line in self.lines:
                activation = activations.current(session, get_line(session, line).id)
                adapter = activation.adapter if activation else None
                wanted[line] = (
                    (registry.version_name(adapter), adapter.id, adapter.artifact_path, adapter.sha256)
                    if adapter
                    else ("base", None, None, None)
                )
        return [swap for line, target in wanted.items() if target[0] != self._served[line].label for swap in [self._swap(line, *target)]]

    def _swap(self, line: str, label: str, adapter_id: int | None, path: str | None, sha256: str | None) -> Swap:
        old = self._served[line]
        swap = Swap(line, old.label, label)
        try:
            new = _Served(label, self._load(line, path, sha256, swap) if adapter_id and path and sha256 else None, adapter_id)
        except Exception as exc:  # a bad artifact must never take the line down
            swap.error = f"{line}: loading {label} failed, still serving {old.label}: {(str(exc).splitlines() or [type(exc).__name__])[0]}"
            self.stats.failed_loads += 1
            self.stats.errors.append(swap.error)
            return swap
        started = time.perf_counter()
        with self._lock:  # between requests: the one in flight finished on the old adapter
            self._served[line] = new
            if old.adapter and old.adapter not in self._names_in_use():
                self._keep_spare(line, old.adapter)
        swap.switch_s = time.perf_counter() - started
        self.stats.swaps += 1
        return swap

    def _keep_spare(self, line: str, slot: str) -> None:
        """The replaced adapter stays loaded, idle, so the line's next version can be copied into it."""
        previous = self._spare.get(line)
        self._spare[line] = slot
        if previous and previous not in self._names_in_use():
            with warnings.catch_warnings():  # PEFT warns when the deleted adapter was the active one
                warnings.simplefilter("ignore", UserWarning)
                self.model.delete_adapter(previous)

    def _names_in_use(self) -> set[str]:
        return {s.adapter for s in (*self._served.values(), *self._versions.values()) if s.adapter}

    def _load(self, line: str, relative_path: str, sha256: str, timing: Swap | None = None, *, reuse: bool = True) -> str:
        """Read and hash the artifact once; copy its weights into the line's spare slot when the LoRA
        settings match (no new modules, nothing a request uses), else add it as a new adapter."""
        from peft import PeftModel

        started = time.perf_counter()
        config, weights = parse_adapter(self.store.verify(relative_path, sha256))  # weights: safetensors bytes
        verified = time.perf_counter()
        spare = self._spare.get(line) if reuse else None
        if spare and same_lora(self.model.peft_config[spare], config):
            fill_adapter(self.model, spare, weights)
            del self._spare[line]
            name = spare
        else:
            self._slots += 1
            name = f"{line}#{self._slots}"
            if isinstance(self.model, PeftModel):
                add_adapter(self.model, name, config, weights)  # beside the adapters in use; requests go on meanwhile
            else:
                with self._lock:  # the first adapter wraps the base model: no request may hold it meanwhile
                    self.model = add_adapter(self.model, name, config, weights)
        if timing is not None:
            timing.verify_s, timing.load_s = verified - started, time.perf_counter() - verified
        return name

    def pin(self, line: str, version: int) -> str:
        """Keep `line@vN` loaded for requests that name it, whatever the line serves; it is never evicted."""
        key = f"{line}@v{version}"
        self._version(key)
        self._pinned.add(key)
        return key

    def hold(self, versions: set[str]) -> None:
        """Keep these `line@vN` loaded (the running canaries); the ones held before and not now are
        evicted like any version a request named."""
        for key in versions - self._held:
            self._version(key)
        with self._lock:
            self._held = set(versions)
            self._evict()

    def loaded_versions(self) -> list[str]:
        """The `line@vN` loaded for requests that name them (pinned, held, or recently asked for)."""
        return sorted(self._versions)

    def _version(self, key: str) -> _Served:
        """The adapter of `line@vN`, loaded on first use: approved and not revoked versions only."""
        with self._lock:
            if (served := self._versions.get(key)) is not None:
                self._versions.move_to_end(key)
                return served
        line, _, label = key.partition("@")
        try:
            number = registry.parse_version(label)
        except InvalidInput:
            raise ModelNotFound(f"model {key!r} is not served here: name a line, line@vN or line@base", param="model") from None
        with self.ws.reading() as session:
            try:
                adapter = registry.get_version(session, get_line(session, line).id, number)
            except NotFound:
                raise ModelNotFound(f"{key} does not exist", param="model") from None
            if adapter.status not in SERVABLE:
                raise ModelNotFound(f"{key} is {adapter.status.replace('_', ' ')}; only approved versions are served", param="model")
            path, sha256, adapter_id = adapter.artifact_path, adapter.sha256, adapter.id
        slot = self._load(line, path, sha256, reuse=False)
        with self._lock:
            if (served := self._versions.get(key)) is None:
                served = self._versions[key] = _Served(f"v{number}", slot, adapter_id)
            else:  # another request loaded it meanwhile
                self._delete_slots([slot])
            self._evict()
        return served

    def _evict(self) -> None:
        """Unload the least recently used versions beyond `max_versions` (call with the lock held)."""
        loaded = [key for key in self._versions if key not in self._pinned | self._held]
        self._drop(loaded[: max(0, len(loaded) - self.max_versions)])

    def _drop(self, keys: list[str]) -> None:
        with self._lock:
            slots = [slot for key in keys if (slot := self._versions.pop(key).adapter) is not None]
            self._delete_slots([slot for slot in slots if slot not in self._names_in_use()])
            self._pinned.difference_update(keys)

    def _delete_slots(self, slots: list[str]) -> None:
        with warnings.catch_warnings():  # PEFT warns when the deleted adapter was the active one
            warnings.simplefilter("ignore", UserWarning)
            for slot in slots:
                self.model.delete_adapter(slot)

    def drop_unservable(self) -> list[str]:
        """Unload the loaded versions that were revoked since (or otherwise stopped being servable)."""
        ids = {served.adapter_id: key for key, served in list(self._versions.items())}
        if not ids:
            return []
        with self.ws.reading() as session:
            servable = set(session.scalars(select(Adapter.id).where(Adapter.id.in_(ids), Adapter.status.in_(SERVABLE))))
        gone = [key for adapter_id, key in ids.items() if adapter_id not in servable]
        self._drop(gone)
        return gone

    # ------------------------------------------------------------ generating

    def generate(self, model: str, messages: list[dict[str, str]], sampling: Sampling | None = None, **options) -> Answer:
        """Answer chat messages with a line's active version (`line`), a version (`line@vN`) or `line@base`.

        `sampling` (or its fields as keywords) says how. Greedy requests that neither change the scores nor
        ask for them are answered together with the others waiting, in one batch, lines mixed (PEFT's
        `adapter_names`); the rest run alone, so that their seed means what it says.
        """
        sampling = sampling or Sampling(**options)
        line, inputs = self._prepare(model, messages, sampling)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if sampling.batchable:
            request = _Request(model, line, inputs["input_ids"][0].tolist(), sampling)
            self._pending.put(request)
            return request.done.result()
        tracker = self._tracker(sampling, prompt_tokens)
        with self._lock:
            served = self._choose(model)
            self._generate(served, inputs, sampling, tracker)
        return Answer(f"{line}@{served.label}", prompt_tokens, spread(tracker.finish(), sampling))

    def stream(self, model: str, messages: list[dict[str, str]], sampling: Sampling | None = None, **options) -> Stream:
        """Like `generate`, but returns what answers (`line@vN`) at once and the text as it is generated.

        Everything that can be refused (model, messages, lengths) is refused before this returns.
        """
        sampling = sampling or Sampling(**options)
        line, inputs = self._prepare(model, messages, sampling)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        deltas: queue.Queue = queue.Queue()
        tracker = self._tracker(sampling, prompt_tokens, deltas)
        chosen: queue.Queue = queue.Queue(maxsize=1)

        def run() -> None:
            started = False
            try:
                with self._lock:  # held for the whole generation: the adapter cannot change under it
                    served = self._choose(model)
                    chosen.put(served.label)
                    started = True
                    self._generate(served, inputs, sampling, tracker)
                deltas.put(tracker.finish())
            except Exception as exc:  # the text so far, then the error: never a short answer that looks whole
                (deltas if started else chosen).put(exc)

        threading.Thread(target=run, name="adapterctl-stream", daemon=True).start()
        label = chosen.get()
        if isinstance(label, Exception):
            raise label
        return Stream(f"{line}@{label}", prompt_tokens, deltas, sampling)

    def _tracker(self, sampling: Sampling, prompt_tokens: int, deltas: queue.Queue | None = None) -> Tracker:
        rows = [choice_text(self.tokenizer, sampling) for _ in range(sampling.rows)]
        entry = logprob_entries(self.tokenizer, sampling.top_logprobs) if sampling.logprobs else None
        return Tracker(rows, entry=entry, deltas=deltas)

    def _generate(self, served: _Served, inputs: dict, sampling: Sampling, tracker: Tracker) -> None:
        """One request alone on the model (call with the lock held): its choices end up in `tracker`."""
        import torch

        width = int(inputs["input_ids"].shape[1])
        processors = [p for p in (tracker.recorder, *score_processors(sampling, width)) if p is not None]
        if not sampling.greedy:
            processors.append(_finite_scores())
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        with using(self.model, served.adapter), torch.no_grad():
            self.model.generate(
                **inputs,
                **self._options(sampling),
                num_return_sequences=sampling.rows,
                logits_processor=processors,
                stopping_criteria=[tracker.criterion],
            )

    def _options(self, sampling: Sampling) -> dict:
        sampled = (
            {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
            if not sampling.greedy
            else {"do_sample": False}
        )
        return {"max_new_tokens": sampling.max_tokens, "pad_token_id": self.tokenizer.pad_token_id, "max_time": self.deadline_s, **sampled}

    def _batches(self) -> None:
        """Take what waits (up to max_batch) whenever the model is free: batches form under load only."""
        while True:
            batch = [self._pending.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            try:
                self._answer(batch)
            except Exception as exc:  # the model failed: every request of the batch gets the error
                for request in batch:
                    if not request.done.done():
                        request.done.set_exception(exc)

    def _answer(self, batch: list[_Request]) -> None:
        import torch
        from peft import PeftModel

        with self._lock:
            live = []
            for request in batch:
                try:
                    live.append((request, self._choose(request.model)))
                except Exception as exc:
                    request.done.set_exception(exc)
            if not live:
                return
            width = max(len(r.ids) for r, _ in live)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(r.ids)) + r.ids for r, _ in live], device=self.model.device)
            attention = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r, _ in live], device=self.model.device)
            tracker = Tracker([choice_text(self.tokenizer, r.sampling) for r, _ in live])
            adapters = {served.adapter for _, served in live}
            options = {
                "max_new_tokens": max(r.sampling.max_tokens for r, _ in live),
                "do_sample": False,
                "pad_token_id": pad,
                "max_time": self.deadline_s,
                "stopping_criteria": [tracker.criterion],
            }
            if len(adapters) > 1 and isinstance(self.model, PeftModel):  # several lines (or base) in one batch
                options["adapter_names"] = [served.adapter or "__base__" for _, served in live]
                context: AbstractContextManager = torch.no_grad()
            else:
                context = using(self.model, next(iter(adapters)))
            with context, torch.no_grad():
                self.model.generate(input_ids=input_ids, attention_mask=attention, **options)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            self.stats.mixed_batches += "adapter_names" in options
        for choice, (request, served) in zip(tracker.finish(), live):
            request.done.set_result(Answer(f"{request.line}@{served.label}", len(request.ids), spread([choice], request.sampling)))

    def _prepare(self, model: str, messages: list[dict[str, str]], sampling: Sampling):
        """The line and the prompt's token ids; refuses what the model cannot answer, and loads a version
        the request names (outside the model lock, so other requests go on meanwhile)."""
        import torch

        line, at, version = model.partition("@")
        if line not in self._served or (at and not version):
            raise ModelNotFound(f"model {model!r} is not served here; served: {', '.join(sorted(self._served))}", param="model")
        ids = prompt_ids(self.tokenizer, self.roles, self.context_tokens, messages, sampling)
        if version and version != "base":
            self._version(model)
        input_ids = torch.tensor([ids], device=self.model.device)
        return line, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def _choose(self, model: str) -> _Served:
        """What answers `model` now (call with the lock held): the line's active version, a version, or base."""
        line, _, version = model.partition("@")
        if not version:
            return self._served[line]
        if version == "base":
            return _Served("base", None)
        return self._version(model)


def _finite_scores():
    """A logits processor that fails the request when a score is NaN or +inf (a diverged adapter), before
    sampling: on CUDA, sampling from such scores trips a device-side assert that takes the GPU down for
    every later request of the process, where this is one failed request."""
    import torch
    from transformers import LogitsProcessor

    class FiniteScores(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if bool(torch.isnan(scores).any() or torch.isposinf(scores).any()):  # -inf is a masked token: fine
                raise AdapterctlError("the model's scores are not finite (NaN): the adapter is broken; no answer was sampled")
            return scores

    return FiniteScores()


def parse_adapter(files: dict[str, bytes]):
    """The LoRA config of a PEFT adapter and its weights' safetensors bytes."""
    from peft import LoraConfig

    try:
        config = LoraConfig(**{k: v for k, v in json.loads(files["adapter_config.json"]).items() if k in LoraConfig.__dataclass_fields__})
        weights = files["adapter_model.safetensors"]
    except (KeyError, ValueError, TypeError) as exc:
        raise AdapterctlError(f"not a PEFT LoRA adapter: {exc}") from None
    config.inference_mode = True
    return config, weights


SHAPE_FIELDS = (
    "r",
    "lora_alpha",
    "use_rslora",
    "use_dora",
    "fan_in_fan_out",
    "bias",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layers_pattern",
    "modules_to_save",
)


def same_lora(a, b) -> bool:
    """Whether an adapter with config `b` fits the modules and scaling built for config `a`."""

    def targets(config):
        return config.target_modules if isinstance(config.target_modules, str) else sorted(config.target_modules or [])

    return targets(a) == targets(b) and all(getattr(a, f, None) == getattr(b, f, None) for f in SHAPE_FIELDS)


SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def fill_adapter(model, name: str, weights: bytes) -> None:
    """Copy safetensors bytes straight into an existing, idle adapter of the same LoRA settings: one copy,
    no intermediate tensors. Every tensor must match a parameter of that adapter in name and shape."""
    import torch

    marker = f".{name}."
    params = {key.replace(marker, "."): value for key, value in model.named_parameters() if marker in key}
    header_size = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8 : 8 + header_size])
    header.pop("__metadata__", None)
    if set(header) != set(params):
        raise AdapterctlError(f"the adapter does not fit its slot ({len(set(header) ^ set(params))} tensors differ)")
    start_of_data = 8 + header_size
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # frombuffer on read-only bytes: we only read them
        for key, info in header.items():
            dtype = getattr(torch, SAFETENSORS_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            source = torch.frombuffer(weights, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=start_of_data + begin)
            target = params[key]
            if list(target.shape) != info["shape"]:
                raise AdapterctlError(f"the adapter does not fit its slot: {key} is {info['shape']}, the slot {list(target.shape)}")
            target.copy_(source.view(info["shape"]))


def add_adapter(model, name: str, config, weights):
    """Add a LoRA adapter under a new name; returns the (possibly newly wrapped) PeftModel."""
    from peft import PeftModel, get_peft_model
    from peft.utils import set_peft_model_state_dict

    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
    else:
        model = get_peft_model(model, config, adapter_name=name)
    from safetensors.torch import load as load_safetensors

    try:
        _check_fit(set_peft_model_state_dict(model, load_safetensors(weights), adapter_name=name), name)
    except Exception:
        if len(model.peft_config) > 1:
            model.delete_adapter(name)
        else:
            model.unload()  # get_peft_model changed the base model's modules in place: put them back
        raise
    model.eval()
    return model


def _check_fit(result, name: str) -> None:
    missing = [k for k in result.missing_keys if name in k and "lora_" in k]
    if result.unexpected_keys or missing:
        raise AdapterctlError(
            f"the adapter does not fit the base model ({len(result.unexpected_keys)} unexpected, {len(missing)} missing tensors)"
        )

"""What one chat completion asks of generation, and how the tokens generated become its choices.

OpenAI's semantics live here, once, for whole and streamed answers alike:

    Sampling      the options of a request (max_tokens, temperature, top_p, seed, n, stop, penalties,
                  logit_bias, logprobs), validated by the server
    ChoiceText    one choice's tokens as they come: its text, cut before the first stop string; its
                  finish_reason ("stop": end of text or a stop string, "length": max_tokens or the
                  deadline); the part of it that is safe to send (never the start of a stop string)
    Tracker       the stopping criterion (and, for logprobs, the logits processor) that feeds each
                  step's new tokens to the choices, ends a row as soon as its choice is finished, and
                  hands a streamed request its pieces as they become safe

A streamed answer is the pieces `ChoiceText.release` gives after each token, a whole answer the same
pieces joined, so the two are equal by construction. Answers leave out the whitespace at either end.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

MAX_STOP_STRINGS = 4
MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20
UNLIKELY = -9999.0
"""The logprob of a token its step made impossible (-inf is not JSON); OpenAI reports the same."""


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 64
    temperature: float = 0.0
    """0 is greedy."""
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def rows(self) -> int:
        """Sequences to generate: greedy choices are all the same answer, so it is generated once."""
        return 1 if self.greedy else self.n

    @property
    def batchable(self) -> bool:
        """Greedy requests that neither change the scores nor ask for them can share a batch."""
        return self.greedy and not (self.frequency_penalty or self.presence_penalty or self.logit_bias or self.logprobs)


@dataclass
class Choice:
    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: list[dict[str, Any]] | None = None
    """OpenAI's `logprobs.content`: one entry per token of the text, when asked for."""


class ChoiceText:
    """One choice, token by token."""

    def __init__(self, decode: Callable[[list[int]], str], eos: int | None, *, stop: tuple[str, ...] = (), max_tokens: int) -> None:
        self.decode, self.eos, self.stop, self.max_tokens = decode, eos, stop, max_tokens
        self.tokens: list[int] = []
        self.raw = ""
        """The decoded text, cut before a stop string; leading and trailing whitespace not yet removed."""
        self.finish_reason: str | None = None
        self.text = ""
        """What `release` has given so far."""
        self._starts: list[int] = []  # where each token's text starts in `raw`
        self._entries: list[dict[str, Any] | None] = []
        self._sent, self._sent_tokens, self._started, self._pending = 0, 0, False, ""
        self._cut = False

    def add(self, token: int, entry: dict[str, Any] | None = None) -> None:
        if self.finish_reason is not None:
            return
        self.tokens.append(token)
        if token == self.eos:
            self.finish_reason = "stop"
            return
        self._entries.append(entry)
        if self.stop:  # decoded at once to end on a stop string; otherwise only when released
            self._decode()
        if self.finish_reason is None and len(self.tokens) >= self.max_tokens:
            self.finish_reason = "length"

    def _decode(self) -> None:
        """Bring `raw` up to the tokens added, cut before the first stop string."""
        new = len(self._entries) - len(self._starts)
        if new == 0 or self._cut:
            return
        start = len(self.raw)
        decoded = self.decode(self.tokens[: len(self._entries)])
        cut = min((i for s in self.stop if (i := decoded.find(s, max(0, start - len(s) - 1))) >= 0), default=None)
        self.raw = decoded if cut is None else decoded[:cut]
        self._starts.extend([start] * new)
        if cut is not None:
            self.finish_reason, self._cut = "stop", True

    def end(self, reason: str = "length") -> None:
        """Generation stopped without the choice finishing here: max_tokens or the deadline ("length"), or
        an engine that ended it itself and says why."""
        if self.finish_reason is None:
            self.finish_reason = reason

    def release(self) -> tuple[str, list[dict[str, Any]]]:
        """The text that is safe to send since the last call, and the logprob entries of its tokens."""
        self._decode()
        end = len(self.raw) if self.finish_reason else len(self.raw) - self._held_back()
        piece = self.raw[self._sent : end]
        self._sent = max(self._sent, end)
        count = self._sent_tokens
        if self.finish_reason and not self._cut:  # every token is in the answer, those without text too
            count = len(self._starts)
        while count < len(self._starts) and self._starts[count] < end:
            count += 1
        entries = [entry for entry in self._entries[self._sent_tokens : count] if entry is not None]
        self._sent_tokens = max(self._sent_tokens, count)
        text = self._trimmed(piece)
        self.text += text
        return text, entries

    def choice(self, *, logprobs: bool = False) -> Choice:
        self.end()
        self.release()
        entries = [entry for entry in self._entries[: self._sent_tokens] if entry is not None]
        return Choice(self.text, self.finish_reason or "length", len(self.tokens), entries if logprobs else None)

    def _held_back(self) -> int:
        """How much of the end of `raw` may still become a stop string, or is an unfinished UTF-8 character."""
        held = len(self.raw) - len(self.raw.rstrip("\ufffd"))
        for stop in self.stop:
            held = max(held, next((k for k in range(min(len(stop) - 1, len(self.raw)), 0, -1) if self.raw.endswith(stop[:k])), 0))
        return held

    def _trimmed(self, piece: str) -> str:
        """Leading whitespace dropped; trailing whitespace held back until text follows it (never, at the end)."""
        if not self._started:
            piece = piece.lstrip()
            self._started = bool(piece)
        text = self._pending + piece
        body = text.rstrip()
        self._pending = text[len(body) :]
        return body


def choice_text(tokenizer, sampling: Sampling) -> ChoiceText:
    """A new choice of a request, decoded by the model's tokenizer."""
    return ChoiceText(
        lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True),
        tokenizer.eos_token_id,
        stop=sampling.stop,
        max_tokens=sampling.max_tokens,
    )


@dataclass
class Delta:
    """A streamed piece of choice `index`."""

    index: int
    text: str
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None


class Tracker:
    """Feeds the tokens of each generation step to the choices being generated (one per row).

    `criterion` is a stopping criterion: transformers calls it after every step with the sequences so
    far, and it ends the rows whose choice finished. `recorder`, when logprobs are asked for, is the
    first logits processor: it keeps the model's log-probabilities of the step, before penalties,
    logit_bias, temperature or top_p change them. With `deltas`, each safe piece is put there.
    """

    def __init__(
        self, rows: list[ChoiceText], *, entry: Callable[[Any, int], dict[str, Any]] | None = None, deltas: queue.Queue | None = None
    ) -> None:
        from transformers import LogitsProcessor, StoppingCriteria

        self.rows, self.entry, self.deltas = rows, entry, deltas
        self._logprobs = None
        tracker = self

        class Recorder(LogitsProcessor):
            def __call__(self, input_ids, scores):
                import torch

                tracker._logprobs = torch.log_softmax(scores.float(), dim=-1)
                return scores

        class Criterion(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return tracker._step(input_ids)

        self.recorder = Recorder() if entry else None
        self.criterion = Criterion()

    def _step(self, input_ids):
        import torch

        for row, token in enumerate(input_ids[:, -1].tolist()):
            choice = self.rows[row]
            if choice.finish_reason is not None:
                continue
            choice.add(token, self.entry(self._logprobs[row], token) if self.entry and self._logprobs is not None else None)
            self._send(row)
        return torch.tensor([choice.finish_reason is not None for choice in self.rows], device=input_ids.device)

    def _send(self, row: int) -> None:
        if self.deltas is None:
            return
        text, entries = self.rows[row].release()
        if text or entries or self.rows[row].finish_reason:
            self.deltas.put(Delta(row, text, entries, self.rows[row].finish_reason))

    def finish(self) -> list[Choice]:
        """Generation ended: every choice that has not finished was cut ("length")."""
        for row, choice in enumerate(self.rows):
            if choice.finish_reason is None:
                choice.end()
                self._send(row)
        return [choice.choice(logprobs=self.entry is not None) for choice in self.rows]


def logprob_entries(tokenizer, top: int) -> Callable[[Any, int], dict[str, Any]]:
    """A function (a step's log-probabilities, the token taken) -> OpenAI's logprob entry of that token."""
    described = logprob_entry(tokenizer)

    def entry(logprobs, token: int) -> dict[str, Any]:
        alternatives = []
        if top:
            values, indices = logprobs.topk(top)
            alternatives = list(zip(indices.tolist(), values.tolist()))
        return described(token, float(logprobs[token]), alternatives)

    return entry


def logprob_entry(tokenizer) -> Callable[[int, float, list[tuple[int, float]]], dict[str, Any]]:
    """A function (token, its logprob, the most likely (token, logprob) of its step) -> OpenAI's logprob entry."""
    pieces = token_pieces(tokenizer)

    def described(token: int, logprob: float) -> dict[str, Any]:
        text, raw = pieces(token)
        return {"token": text, "logprob": max(logprob, UNLIKELY), "bytes": raw}

    def entry(token: int, logprob: float, alternatives: list[tuple[int, float]]) -> dict[str, Any]:
        return {**described(token, logprob), "top_logprobs": [described(int(t), float(v)) for t, v in alternatives]}

    return entry


@cache
def token_pieces(tokenizer) -> Callable[[int], tuple[str, list[int]]]:
    """token id -> (its text, its bytes). A byte-level BPE token gives its exact bytes, even when they are
    part of a longer UTF-8 character; other tokenizers give the UTF-8 of the token's decoded text."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)  # once per tokenizer (@cache)
    byte_level = type(decoder).__name__ == "ByteLevel"
    if byte_level:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        byte_of = {char: byte for byte, char in bytes_to_unicode().items()}

    @lru_cache(maxsize=65536)
    def pieces(token: int) -> tuple[str, list[int]]:
        text = tokenizer.decode([token])
        name = tokenizer.convert_ids_to_tokens(token)
        if byte_level and isinstance(name, str) and all(char in byte_of for char in name):
            return text, [byte_of[char] for char in name]
        return text, list(text.encode("utf-8"))

    return pieces


def score_processors(sampling: Sampling, prompt_width: int) -> list:
    """Logits processors for the penalties and logit_bias of a request (none when it has neither)."""
    from transformers import LogitsProcessor

    processors: list = []
    if sampling.frequency_penalty or sampling.presence_penalty:
        frequency, presence = sampling.frequency_penalty, sampling.presence_penalty

        class Penalties(LogitsProcessor):
            """OpenAI's penalties: each token's score minus frequency * its count in the answer so far,
            minus presence once it occurs there (the prompt does not count)."""

            def __call__(self, input_ids, scores):
                import torch

                answer = input_ids[:, prompt_width:]
                if answer.shape[1] == 0:
                    return scores
                counts = torch.zeros_like(scores).scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
                return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence

        processors.append(Penalties())
    if sampling.logit_bias:
        bias = dict(sampling.logit_bias)

        class LogitBias(LogitsProcessor):
            ids = values = None  # made on the scores' device at the first step

            def __call__(self, input_ids, scores):
                import torch

                if self.ids is None:
                    self.ids = torch.tensor(list(bias), device=scores.device)
                    self.values = torch.tensor(list(bias.values()), device=scores.device, dtype=scores.dtype)
                return scores.index_add(1, self.ids, self.values.expand(scores.shape[0], -1))

        processors.append(LogitBias())
    return processors

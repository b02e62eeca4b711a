"""One vLLM server, as adapterctl drives it: the adapters it holds and the completions it generates.

    GET  /v1/models                the base model and the LoRA adapters loaded (an adapter has a parent)
    POST /v1/load_lora_adapter     {"lora_name": "line@vN", "lora_path": DIR}
    POST /v1/unload_lora_adapter   {"lora_name": "line@vN"}
    POST /v1/completions           a prompt as token ids, answered under a model name, streamed

The server runs with `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (docs/deployment.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from adapterctl.errors import AdapterctlError, InvalidInput, Unavailable, first_line

logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request to a vLLM server
CONNECT_TIMEOUT_S = 2.0
ADMIN_TIMEOUT_S = 60.0
"""Loading an adapter reads and checks its files: seconds, not milliseconds, on a busy server."""


class Unreachable(Unavailable):
    """A vLLM server did not answer (refused, timed out, or failed with 5xx): another one may."""


class Refused(AdapterctlError):
    """A vLLM server answered, and said no (4xx)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Holdings:
    base: str
    """The name vLLM serves the base model under (its --served-model-name, else --model)."""
    adapters: dict[str, str]
    """Each adapter's name and the path it was loaded from."""
    max_model_len: int | None = None
    """The most tokens of prompt and answer the server takes (its --max-model-len)."""


def check_url(url: str, option: str = "--url") -> str:
    """An http(s) URL of a server, without a trailing slash; anything else is a one-line error naming `option`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{option} {url!r} is not an http(s) URL like http://10.0.0.5:8000")
    if parts.path.rstrip("/") not in ("", "/v1") or parts.query or parts.fragment:
        raise InvalidInput(f"{option} {url!r} must name the server only (http://host:port), not a path")
    return f"{parts.scheme}://{parts.netloc}"


class VllmServer:
    def __init__(self, url: str, *, api_key: str | None = None) -> None:
        import httpx

        self.url = check_url(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(ADMIN_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    def __repr__(self) -> str:
        return self.url

    def holdings(self) -> Holdings:
        models = self._call("GET", "/v1/models")["data"]
        base = next((m for m in models if not m.get("parent")), None)
        if base is None:
            raise Refused(f"{self.url}/v1/models lists no base model", 200)
        length = base.get("max_model_len")
        return Holdings(
            base["id"],
            {m["id"]: m.get("root") or "" for m in models if m.get("parent")},
            length if isinstance(length, int) and length > 0 else None,
        )

    def load(self, name: str, path: str) -> None:
        self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    def unload(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def stream(self, body: dict[str, Any], *, timeout_s: float) -> Iterator[dict[str, Any]]:
        """POST a streamed completion; yields its chunks. Raises Unreachable before the first chunk when
        the server cannot take the request, Refused when it rejects it."""
        import httpx

        try:
            with self._client.stream(
                "POST", "/v1/completions", json={**body, "stream": True}, timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._failure(response, "/v1/completions")
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise Unreachable(f"{self.url} failed midway: {_message(chunk)}")
                    yield chunk
        except httpx.HTTPError as exc:
            raise Unreachable(f"{self.url}: {first_line(exc)}") from None

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise Unreachable(f"{self.url}: {first_line(exc)}") from None
        if response.status_code >= 400:
            raise self._failure(response, path)
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def _failure(self, response, path: str) -> AdapterctlError:
        try:
            detail = _message(response.json())
        except ValueError:
            detail = _first(response.text) or response.reason_phrase
        message = f"{self.url}{path} answered {response.status_code}: {detail}"
        return Unreachable(message) if response.status_code >= 500 else Refused(message, response.status_code)


def _message(body: Any) -> str:
    error = body.get("error", body) if isinstance(body, dict) else body
    return _first(str(error.get("message", error) if isinstance(error, dict) else error))


def _first(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]

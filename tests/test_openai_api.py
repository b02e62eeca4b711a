"""Every OpenAI chat-completions parameter, spoken to a real `adapterctl serve` through the official `openai` client.

One test per row of the parameter table in docs/serving.md (`test_param_<name>`, or a case of
`test_param_unsupported`); `test_every_parameter_of_the_client_has_a_row_and_a_test` keeps the three in step.
Answers are checked against a reference: the base model run step by step here, OpenAI's formulas
applied by hand.
"""

from __future__ import annotations

import http.client
import inspect
import json
import re
import shutil
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

openai = pytest.importorskip("openai")

from adapterctl import base_models, chat, lines  # noqa: E402
from adapterctl.config import Settings  # noqa: E402
from adapterctl.db.models import IssuedResponse  # noqa: E402
from adapterctl.workspace import Workspace  # noqa: E402
from tests.conftest import Cli  # noqa: E402
from tests.test_runtime import approved_version  # noqa: E402
from tests.test_server import Server  # noqa: E402

pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "What is the code for room 3?"}]
BASE = "facts@base"
DOCS = Path(__file__).parent.parent / "docs" / "serving.md"


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_model, sqlite_template):
    """One server for the module: line `facts` on the tiny model with approved versions v1 and v2."""
    home = tmp_path_factory.mktemp("openai") / "home"
    home.mkdir()
    shutil.copy(sqlite_template, home / "adapterctl.db")
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'adapterctl.db'}", user="tester")
    ws = Workspace(settings)
    with ws.transaction() as session:
        base_models.register_base_model(session, name="tiny", source=str(tiny_model), actor="tester")
        lines.create_line(session, name="facts", base="tiny", actor="tester", settings=lines.LineSettings(min_examples=2, reference_size=0))
    approved_version(ws, "facts", tiny_model, seed=1)
    approved_version(ws, "facts", tiny_model, seed=2)
    cli = Cli(settings)
    token = cli("token", "create", "--scope", "admin").stdout.strip()
    server = Server(cli)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=token, max_retries=0, timeout=120)
    yield SimpleNamespace(client=client, server=server, ws=ws, token=token)
    server.stop()
    ws.close()


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The base model answering greedily step by step, with OpenAI's penalties and logit_bias applied by hand."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompt = chat.render(tokenizer, CHAT, chat.supported_roles(tokenizer))
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def answer(max_tokens: int, *, frequency: float = 0.0, presence: float = 0.0, bias: dict[int, float] | None = None):
        ids, steps = prompt_ids, []
        for _ in range(max_tokens):
            with torch.no_grad():
                logits = model(ids).logits[0, -1].float()
            steps.append(torch.log_softmax(logits, -1))
            counts = torch.bincount(ids[0, prompt_ids.shape[1] :], minlength=logits.shape[0]).float()
            logits = logits - counts * frequency - (counts > 0).float() * presence
            for token, value in (bias or {}).items():
                logits[token] += value
            token = int(logits.argmax())
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            if token == tokenizer.eos_token_id:
                break
        tokens = ids[0, prompt_ids.shape[1] :].tolist()
        return SimpleNamespace(tokens=tokens, steps=steps, text=tokenizer.decode(tokens, skip_special_tokens=True).strip())

    return SimpleNamespace(answer=answer, tokenizer=tokenizer)


def ask(api, model=BASE, **options):
    return api.client.chat.completions.create(
        model=model, messages=options.pop("messages", CHAT), max_tokens=options.pop("max_tokens", 12), **options
    )


def streamed(api, model=BASE, **options) -> list:
    return list(ask(api, model, stream=True, **options))


def joined(chunks, index: int = 0) -> str:
    return "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices if c.index == index)


def refused(api, param: str, code: str | None = None, **options) -> str:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(api, **options)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == param and error["type"] == "invalid_request_error", error
    if code:
        assert error["code"] == code, error
    return error["message"]


# --- the rows -----------------------------------------------------------------------------------


def test_param_messages(api):
    plain = ask(api).choices[0].message.content
    parts = ask(api, messages=[{"role": "user", "content": [{"type": "text", "text": CHAT[0]["content"]}]}])
    assert parts.choices[0].message.content == plain
    system = ask(api, messages=[{"role": "system", "content": "Be brief."}, *CHAT]).choices[0].message.content
    developer = ask(api, messages=[{"role": "developer", "content": "Be brief."}, *CHAT]).choices[0].message.content
    assert developer == system
    image = {
        "role": "user",
        "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
    }
    assert "only text content" in refused(api, "messages[0].content[1]", "unsupported_parameter", messages=[image])
    refused(api, "messages[1].role", "unsupported_parameter", messages=[*CHAT, {"role": "tool", "content": "{}", "tool_call_id": "a"}])


def test_param_model(api):
    for model in ("facts", "facts@v1", "facts@v2", BASE):
        answer = ask(api, model)
        assert answer.model == ("facts@base" if model == "facts" else model)  # nothing is promoted: the line serves base
    assert ask(api, "facts@v1").choices[0].message.content != ask(api, BASE).choices[0].message.content
    for unknown in ("facts@v9", "facts@"):  # an empty version names nothing, not the line
        with pytest.raises(openai.NotFoundError) as caught:
            ask(api, unknown)
        assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"


def test_param_frequency_penalty(api, reference):
    penalised = reference.answer(24, frequency=2.0)
    assert penalised.text != reference.answer(24).text  # the penalty matters for this prompt
    assert ask(api, max_tokens=24, frequency_penalty=2.0).choices[0].message.content == penalised.text
    refused(api, "frequency_penalty", frequency_penalty=2.5)


def test_param_presence_penalty(api, reference):
    penalised = reference.answer(24, presence=2.0)
    assert penalised.text != reference.answer(24).text
    assert ask(api, max_tokens=24, presence_penalty=2.0).choices[0].message.content == penalised.text
    refused(api, "presence_penalty", presence_penalty=-3)


def test_param_logit_bias(api, reference):
    first = reference.answer(12).tokens[0]
    biased = reference.answer(12, bias={first: -100})
    assert biased.tokens[0] != first
    assert ask(api, logit_bias={str(first): -100}).choices[0].message.content == biased.text
    refused(api, "logit_bias", logit_bias={"a": 1})
    assert "vocabulary" in refused(api, "logit_bias", logit_bias={"99999": 1})


def test_param_logprobs(api, reference):
    answer = ask(api, logprobs=True)
    expected = reference.answer(12)
    content = answer.choices[0].logprobs.content
    assert [entry.token for entry in content] == [reference.tokenizer.decode([t]) for t in expected.tokens]
    for entry, token, step in zip(content, expected.tokens, expected.steps):
        assert entry.logprob == pytest.approx(float(step[token]), abs=1e-4) and entry.top_logprobs == []
    assert answer.choices[0].message.content == expected.text
    assert [bytes(entry.bytes) for entry in content] == [reference.tokenizer.decode([t]).encode() for t in expected.tokens]
    assert ask(api).choices[0].logprobs is None
    chunks = streamed(api, logprobs=True)
    assert [e.token for chunk in chunks for c in chunk.choices if c.logprobs for e in c.logprobs.content] == [e.token for e in content]


def test_param_top_logprobs(api, reference):
    content = ask(api, logprobs=True, top_logprobs=5).choices[0].logprobs.content
    for entry in content:
        values = [top.logprob for top in entry.top_logprobs]
        assert len(values) == 5 and values == sorted(values, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the token taken is the likeliest
    refused(api, "top_logprobs", top_logprobs=3)  # without logprobs
    refused(api, "top_logprobs", logprobs=True, top_logprobs=21)


def test_param_max_completion_tokens(api):
    answer = ask(api, max_tokens=None, max_completion_tokens=5)
    assert (answer.usage.completion_tokens, answer.choices[0].finish_reason) == (5, "length")
    refused(api, "max_completion_tokens", max_tokens=None, max_completion_tokens=0)


def test_param_max_tokens(api):
    answer = ask(api, max_tokens=7)
    assert (answer.usage.completion_tokens, answer.choices[0].finish_reason) == (7, "length")
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 7
    refused(api, "max_tokens", max_tokens=7, max_completion_tokens=8)


def test_param_modalities(api):
    assert ask(api, modalities=["text"]).choices[0].message.content == ask(api).choices[0].message.content
    refused(api, "modalities", "unsupported_parameter", modalities=["text", "audio"])


def test_param_n(api):
    greedy = ask(api, n=3)
    assert [c.index for c in greedy.choices] == [0, 1, 2] and len({c.message.content for c in greedy.choices}) == 1
    assert greedy.usage.completion_tokens == 3 * ask(api).usage.completion_tokens
    sampled = ask(api, n=3, temperature=1.0, seed=7)
    assert len({c.message.content for c in sampled.choices}) > 1  # independent samples
    assert [c.message.content for c in ask(api, n=3, temperature=1.0, seed=7).choices] == [c.message.content for c in sampled.choices]
    chunks = streamed(api, n=3, temperature=1.0, seed=7)
    assert [joined(chunks, i) for i in range(3)] == [c.message.content for c in sampled.choices]
    assert sorted(c.index for chunk in chunks for c in chunk.choices if c.finish_reason) == [0, 1, 2]
    refused(api, "n", n=0)
    refused(api, "n", n=17)


def test_param_prompt_cache_key(api):
    assert ask(api, prompt_cache_key="k1").choices[0].message.content == ask(api).choices[0].message.content


def test_param_prompt_cache_options(api):
    assert ask(api, prompt_cache_options={"ttl": "30m"}).choices[0].message.content == ask(api).choices[0].message.content
    refused(api, "prompt_cache_options", prompt_cache_options="30m")


def test_param_prompt_cache_retention(api):
    assert ask(api, prompt_cache_retention="24h").choices[0].message.content == ask(api).choices[0].message.content


def test_param_response_format(api):
    assert ask(api, response_format={"type": "text"}).choices[0].message.content == ask(api).choices[0].message.content
    assert "plain text" in refused(api, "response_format", "unsupported_parameter", response_format={"type": "json_object"})


def test_param_safety_identifier(api):
    answer = ask(api, safety_identifier="user-hash-1")
    assert answer.choices[0].message.content == ask(api).choices[0].message.content
    assert recorded_user(api, answer.id) == "user-hash-1"
    refused(api, "safety_identifier", safety_identifier="x" * 300)


def test_param_seed(api):
    first = ask(api, temperature=1.0, seed=1).choices[0].message.content
    assert ask(api, temperature=1.0, seed=1).choices[0].message.content == first
    assert ask(api, temperature=1.0, seed=2).choices[0].message.content != first
    refused(api, "seed", seed=2**64)


def test_param_service_tier(api):
    assert ask(api, service_tier="auto").service_tier == "default"
    refused(api, "service_tier", "unsupported_parameter", service_tier="flex")


def test_param_stop(api):
    model = "facts@v2"  # the base model's greedy answer has no text
    whole = ask(api, model, max_tokens=24).choices[0].message.content
    stop = next(word[:2] for word in whole.split()[1:] if word[:2].isascii() and word[:2].isalpha() and len(word) >= 2)
    cut = ask(api, model, max_tokens=24, stop=[stop, "\u2603never"])
    expected = whole[: whole.index(stop)].strip()
    assert expected and (cut.choices[0].message.content, cut.choices[0].finish_reason) == (expected, "stop")
    chunks = streamed(api, model, max_tokens=24, stop=stop)
    assert joined(chunks) == expected and stop not in "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["stop"]
    refused(api, "stop", stop=["a", "b", "c", "d", "e"])
    refused(api, "stop", stop="")


def test_param_store(api):
    kept = ask(api, store=True)
    assert feedback_on(api, kept.id)[0] == 200
    unkept = ask(api, store=False)
    status, body = feedback_on(api, unkept.id)
    assert status == 404 and "store" in body["error"]["message"]


def test_param_stream(api):
    whole = ask(api)
    chunks = streamed(api)
    assert joined(chunks) == whole.choices[0].message.content
    assert {chunk.model for chunk in chunks} == {"facts@base"} and len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "length"


def test_param_stream_options(api):
    whole = ask(api)
    chunks = streamed(api, stream_options={"include_usage": True})
    assert all(chunk.usage is None for chunk in chunks[:-1]) and chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(chunk.usage is None for chunk in streamed(api, stream_options={"include_usage": False}))
    refused(api, "stream_options", stream_options={"include_usage": True})  # without stream


def test_param_temperature(api, reference):
    greedy = ask(api, temperature=0, logprobs=True).choices[0].logprobs.content
    assert [entry.token for entry in greedy] == [reference.tokenizer.decode([t]) for t in reference.answer(12).tokens]
    v2 = ask(api, "facts@v2").choices[0].message.content
    assert v2 and ask(api, "facts@v2", temperature=0).choices[0].message.content == v2  # adapterctl's default is greedy
    assert ask(api, "facts@v2", temperature=1.5, seed=3).choices[0].message.content != v2
    refused(api, "temperature", temperature=2.5)
    refused(api, "temperature", temperature=0.001)


def test_param_top_p(api):
    greedy = ask(api, "facts@v2").choices[0].message.content
    assert all(ask(api, "facts@v2", temperature=1.0, top_p=1e-6, seed=seed).choices[0].message.content == greedy for seed in (1, 2, 3))
    assert ask(api, "facts@v2", temperature=1.0, top_p=1.0, seed=1).choices[0].message.content != greedy
    refused(api, "top_p", top_p=0)


def test_param_user(api):
    answer = ask(api, user="end-user-42", safety_identifier="ignored-when-user-is-given")
    assert answer.choices[0].message.content == ask(api).choices[0].message.content
    assert recorded_user(api, answer.id) == "end-user-42"
    assert recorded_user(api, ask(api).id) is None
    refused(api, "user", user=["not", "a", "string"])


UNSUPPORTED = {
    "audio": {"voice": "alloy", "format": "mp3"},
    "function_call": "auto",
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "metadata": {"team": "a"},
    "moderation": {"model": "omni-moderation-latest"},
    "parallel_tool_calls": True,
    "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "low",
    "tool_choice": "auto",
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "verbosity": "low",
    "web_search_options": {},
}


@pytest.mark.parametrize("param", sorted(UNSUPPORTED))
def test_param_unsupported(api, param):
    assert "not supported" in refused(api, param, "unsupported_parameter", **{param: UNSUPPORTED[param]})


def test_every_parameter_of_the_client_has_a_row_and_a_test():
    from openai.resources.chat.completions import Completions

    client_params = set(inspect.signature(Completions.create).parameters) - {
        "self",
        "extra_headers",
        "extra_query",
        "extra_body",
        "timeout",
    }
    rows = set(re.findall(r"^\| `(\w+)` \|", DOCS.read_text(), flags=re.M))
    tested = {name[len("test_param_") :] for name in globals() if name.startswith("test_param_")} - {"unsupported"} | set(UNSUPPORTED)
    assert client_params - rows == set(), "parameters without a row in docs/serving.md"
    assert client_params - tested == set(), "parameters without a test"
    assert rows - client_params == set(), "rows for parameters the client does not have"


# --- errors -------------------------------------------------------------------------------------


def test_an_argument_openai_does_not_define_is_refused_like_openai_refuses_it(api):
    message = refused(api, "temprature", extra_body={"temprature": 0.5})
    assert message == "Unrecognized request argument supplied: temprature"


def test_every_error_has_openais_shape(api):
    with pytest.raises(openai.NotFoundError) as caught:
        api.client.get("/nothing-here", cast_to=object)
    assert caught.value.body == {
        "message": "Invalid URL (GET /v1/nothing-here)",
        "type": "invalid_request_error",
        "param": None,
        "code": "unknown_url",
    }
    status, body = raw(api, "GET", "/v1/chat/completions")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, body = announced_oversize(api, "/v1/chat/completions")
    assert status == 413 and set(body["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError) as caught:
        openai.OpenAI(base_url=api.client.base_url, api_key="wrong", max_retries=0).chat.completions.create(model=BASE, messages=CHAT)
    assert caught.value.body["code"] == "invalid_api_key"


def raw(api, method: str, path: str, data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{api.server.port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def announced_oversize(api, path: str) -> tuple[int, dict]:
    """Announce a 2 MiB body and send none: the server answers from the headers alone (sending the body
    would race its answer, which closes the connection: a broken pipe)."""
    connection = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=60)
    connection.putrequest("POST", path)
    for name, value in (("Content-Type", "application/json"), ("Content-Length", str(2 << 20)), ("Authorization", f"Bearer {api.token}")):
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    status, body = response.status, json.loads(response.read())
    connection.close()
    return status, body


def recorded_user(api, response_id: str) -> str | None:
    with api.ws.reading() as session:
        return session.scalar(select(IssuedResponse.user).where(IssuedResponse.id == response_id))


def feedback_on(api, response_id: str) -> tuple[int, dict]:
    return raw(api, "POST", "/v1/feedback", json.dumps({"response_id": response_id, "rating": 1}).encode())

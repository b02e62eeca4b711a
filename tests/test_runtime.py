"""The serving runtime on the real tiny model: hot-swaps follow activations, outputs equal fresh loads,
bad artifacts never replace a good one, requests keep flowing during swaps."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from adapterctl import activations, feedback, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.models import RunExample, TrainingRun
from adapterctl.errors import AdapterctlError, ContextLengthExceeded, InvalidInput
from adapterctl.lines import get_line
from adapterctl.serving.completion import Sampling, choice_text
from adapterctl.serving.runtime import Runtime

pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "What is the code for room 3?"}]


def real_adapter(folder, tiny_model, seed: int, rank: int = 4, broken: bool = False):
    """A real PEFT LoRA adapter on the tiny model, with random (non-zero) weights so it changes answers;
    `broken`: NaN weights, as a diverged training run leaves them (sampling from it fails)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear")
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
                if broken:
                    parameter.fill_(float("nan"))
    model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)
    return folder


def approved_version(ws, line, tiny_model, seed: int, *, trained_on=(), rank: int = 4, broken: bool = False) -> int:
    store = ArtifactStore(ws.settings.artifacts_dir)
    with ws.transaction() as session:
        line_row = get_line(session, line)
        run = TrainingRun(
            line_id=line_row.id, status="succeeded", started_by="cron", host="t", base_model_hash="0" * 64, params={}, dataset={}
        )
        session.add(run)
        session.flush()
        session.add_all([RunExample(run_id=run.id, feedback_id=i, split="train") for i in trained_on])
        stored = store.commit(real_adapter(store.staging_dir(line, f"run-{run.id}"), tiny_model, seed, rank, broken), line, run.id)
        adapter = registry.create_candidate(
            session, run=run, artifact_path=stored.relative_path, sha256=stored.sha256, actor="cron", status="pending_review"
        )
        adapter.version = registry.next_version(session, line_row.id)
        session.flush()
        registry.transition(session, adapter.id, "approved", actor="reviewer")
        return adapter.version


def promote(ws, line, number=None, *, to=None):
    store = ArtifactStore(ws.settings.artifacts_dir)
    with ws.transaction() as session:
        if number is not None:
            activations.promote(session, store, line=line, version=number, actor="ops")
        else:
            activations.rollback(session, store, line=line, to=to, actor="ops")


def fresh_answer(ws, tiny_model, line, number=None, max_new_tokens: int = 16) -> str:
    """What a freshly loaded model (plus the version's adapter, as plain PEFT loads it) answers."""
    from transformers import AutoTokenizer

    completion = fresh_completion(ws, tiny_model, line, number, max_new_tokens)
    return AutoTokenizer.from_pretrained(tiny_model).decode(completion, skip_special_tokens=True).strip()


def fresh_completion(ws, tiny_model, line, number=None, max_new_tokens: int = 16) -> list[int]:
    """The token ids a freshly loaded model generates (greedy) for CHAT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    if number is not None:
        with ws.transaction() as session:
            path = ArtifactStore(ws.settings.artifacts_dir).path_of(
                registry.get_version(session, get_line(session, line).id, number).artifact_path
            )
        model = PeftModel.from_pretrained(model, path).eval()
    inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def ask(runtime, model="facts"):
    return runtime.generate(model, CHAT, max_tokens=16)


def test_swaps_follow_activations_and_answers_equal_fresh_loads(ws, tiny_line, tiny_model):
    approved_version(ws, tiny_line, tiny_model, seed=1)
    approved_version(ws, tiny_line, tiny_model, seed=2, rank=8)  # another rank: no stale PEFT config may leak
    runtime = Runtime(ws, [tiny_line])
    expected = {label: fresh_answer(ws, tiny_model, tiny_line, number) for label, number in (("base", None), ("v1", 1), ("v2", 2))}
    assert len(set(expected.values())) == 3  # the adapters really change the answer
    answer = ask(runtime)
    assert (answer.served_by, answer.text) == ("facts@base", expected["base"])
    for step, label in (
        (lambda: promote(ws, tiny_line, 1), "v1"),
        (lambda: promote(ws, tiny_line, 2), "v2"),
        (lambda: promote(ws, tiny_line, to=None), "v1"),
        (lambda: promote(ws, tiny_line, to="base"), "base"),
    ):
        step()
        [swap] = runtime.refresh()
        assert swap.error is None and swap.new == label
        answer = ask(runtime)
        assert (answer.served_by, answer.text) == (f"facts@{label}", expected[label])
        assert len(getattr(runtime.model, "peft_config", {})) <= 2  # the serving slot and one idle slot, no more
    assert runtime.refresh() == []  # nothing moved


def test_a_tampered_artifact_keeps_the_old_adapter_serving(ws, tiny_line, tiny_model):
    approved_version(ws, tiny_line, tiny_model, seed=1)
    approved_version(ws, tiny_line, tiny_model, seed=2)
    promote(ws, tiny_line, 1)
    runtime = Runtime(ws, [tiny_line])
    before = ask(runtime)
    promote(ws, tiny_line, 2)  # verified at promote; then someone edits the file
    with ws.transaction() as session:
        path = ArtifactStore(ws.settings.artifacts_dir).path_of(
            registry.get_version(session, get_line(session, tiny_line).id, 2).artifact_path
        )
    weights = path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    [swap] = runtime.refresh()
    assert swap.error.startswith("facts: loading v2 failed, still serving v1:") and "adapter_model.safetensors" in swap.error
    assert runtime.stats.failed_loads == 1
    after = ask(runtime)
    assert (after.served_by, after.text) == (before.served_by, before.text) == ("facts@v1", before.text)


def test_pinned_versions_keep_answering_and_forget_falls_back(ws, tiny_line, tiny_model):
    tainted = ws.log_feedback(line=tiny_line, prompt="q", response="a", rating=1)
    approved_version(ws, tiny_line, tiny_model, seed=1)
    approved_version(ws, tiny_line, tiny_model, seed=2, trained_on=[tainted])
    promote(ws, tiny_line, 1)
    runtime = Runtime(ws, [tiny_line])
    runtime.pin(tiny_line, 1)
    promote(ws, tiny_line, 2)
    runtime.refresh()
    assert ask(runtime).served_by == "facts@v2"
    pinned = ask(runtime, "facts@v1")
    assert (pinned.served_by, pinned.text) == ("facts@v1", fresh_answer(ws, tiny_model, tiny_line, 1))
    with ws.transaction() as session:
        feedback.forget_feedback(session, actor="privacy", ids=[tainted])
    [swap] = runtime.refresh()
    assert (swap.old, swap.new) == ("v2", "v1")
    assert ask(runtime).served_by == "facts@v1"


def test_requests_keep_flowing_and_each_names_what_answered_it(ws, tiny_line, tiny_model):
    approved_version(ws, tiny_line, tiny_model, seed=1)
    approved_version(ws, tiny_line, tiny_model, seed=2)
    runtime = Runtime(ws, [tiny_line])
    expected = {
        f"facts@{label}": fresh_answer(ws, tiny_model, tiny_line, number) for label, number in (("base", None), ("v1", 1), ("v2", 2))
    }
    answers, failures, done = [], [], threading.Event()

    def client():
        while not done.is_set():
            try:
                answers.append(ask(runtime))
            except Exception as exc:  # any failure is a test failure
                failures.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for number in (1, 2, 1, 2, 1):
            promote(ws, tiny_line, number)
            [swap] = runtime.refresh()
            assert swap.error is None
    finally:
        done.set()
        thread.join(timeout=60)
    assert failures == [] and len(answers) >= 5
    assert all(answer.text == expected[answer.served_by] for answer in answers)


def test_an_adapter_for_another_model_is_refused_and_the_base_model_is_left_intact(ws, tiny_line, tiny_model, tmp_path):
    from adapterctl.tiny_model import create_tiny_model

    other = tmp_path / "other"
    create_tiny_model(other, layers=2, hidden=192, vocab=1024, seed=3)  # other shapes than the line's base model
    approved_version(ws, tiny_line, other, seed=1)
    runtime = Runtime(ws, [tiny_line])
    base_answer = ask(runtime)
    promote(ws, tiny_line, 1)
    [swap] = runtime.refresh()
    assert swap.error is not None and swap.error.startswith("facts: loading v1 failed, still serving base")
    after = ask(runtime)
    assert (after.served_by, after.text) == ("facts@base", base_answer.text) == ("facts@base", fresh_answer(ws, tiny_model, tiny_line))


def test_concurrent_requests_for_several_versions_share_batches_and_get_their_own_answers(ws, tiny_line, tiny_model):
    approved_version(ws, tiny_line, tiny_model, seed=1)
    approved_version(ws, tiny_line, tiny_model, seed=2)
    promote(ws, tiny_line, 1)
    runtime = Runtime(ws, [tiny_line])
    runtime.pin(tiny_line, 2)
    expected = {
        "facts": fresh_answer(ws, tiny_model, tiny_line, 1),
        "facts@v2": fresh_answer(ws, tiny_model, tiny_line, 2),
        "facts@base": fresh_answer(ws, tiny_model, tiny_line),
    }
    models = list(expected) * 8
    answers: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i, m=m: answers.__setitem__(i, ask(runtime, m))) for i, m in enumerate(models)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [answers[i].text for i in range(len(models))] == [expected[m] for m in models]
    assert [answers[i].served_by for i in range(len(models))] == [{"facts": "facts@v1"}.get(m, m) for m in models]
    assert runtime.stats.largest_batch > 1 and runtime.stats.mixed_batches >= 1


# --- limits: context, deadline, finish_reason, what the chat template renders ---------------------


def answers_by_every_path(runtime, max_tokens: int) -> list:
    """The same greedy request through the batcher, the single-request path (a seed) and a stream."""
    stream = runtime.stream("facts", CHAT, max_tokens=max_tokens)
    text = "".join(delta.text for delta in stream)
    return [
        runtime.generate("facts", CHAT, max_tokens=max_tokens),
        runtime.generate("facts", CHAT, max_tokens=max_tokens, seed=1),
        SimpleNamespace(text=text, finish_reason=stream.finish_reason, completion_tokens=stream.completion_tokens),
    ]


def test_an_answer_cut_at_max_tokens_says_length_and_one_the_model_ended_says_stop(ws, tiny_line, tiny_model):
    runtime = Runtime(ws, [tiny_line])
    completion = fresh_completion(ws, tiny_model, tiny_line, max_new_tokens=12)
    assert runtime.tokenizer.eos_token_id not in completion  # the random tiny model never ends an answer
    for answer in answers_by_every_path(runtime, 12):
        assert (answer.finish_reason, answer.completion_tokens) == ("length", 12)
        assert answer.text == runtime.tokenizer.decode(completion, skip_special_tokens=True).strip()
    ended = choice_text(runtime.tokenizer, Sampling(max_tokens=12))
    for token in [*completion[:3], runtime.tokenizer.eos_token_id, *completion[3:]]:
        ended.add(token)
    assert (ended.choice().finish_reason, ended.choice().completion_tokens) == ("stop", 4)


def test_the_request_deadline_cuts_the_answer_on_every_path(ws, tiny_line, tiny_model):
    runtime = Runtime(ws, [tiny_line], request_deadline_s=1e-6)  # past after the first token
    first = fresh_completion(ws, tiny_model, tiny_line, max_new_tokens=1)
    for answer in answers_by_every_path(runtime, 200):
        assert (answer.finish_reason, answer.completion_tokens) == ("length", 1)
        assert answer.text == runtime.tokenizer.decode(first, skip_special_tokens=True).strip()


def test_prompts_and_max_tokens_beyond_the_context_are_refused_before_generating(ws, tiny_line):
    runtime = Runtime(ws, [tiny_line])
    assert runtime.context_tokens == 1024  # the tiny model's positions
    long = [{"role": "user", "content": "x y z " * 5000}]
    for call in (runtime.generate, runtime.stream):
        with pytest.raises(
            ContextLengthExceeded, match=r"maximum context length is 1024 tokens.*\(\d+ in the messages, 16 in the completion\)"
        ) as caught:
            call("facts", long, max_tokens=16)
        assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "messages")
        with pytest.raises(InvalidInput, match="max_tokens 1024 does not fit the model's context of 1024 tokens") as caught:
            call("facts", CHAT, max_tokens=1024)
        assert caught.value.param == "max_tokens"
    capped = Runtime(ws, [tiny_line], max_context_tokens=40)
    prompt_tokens = capped.generate("facts", CHAT, max_tokens=4).prompt_tokens
    assert capped.generate("facts", CHAT, max_tokens=40 - prompt_tokens).completion_tokens == 40 - prompt_tokens
    with pytest.raises(ContextLengthExceeded):
        capped.generate("facts", CHAT, max_tokens=41 - prompt_tokens)


def test_a_role_the_chat_template_cannot_render_is_refused_naming_the_message(ws, tiny_line):
    runtime = Runtime(ws, [tiny_line])
    assert runtime.roles == ["system", "user", "assistant"]  # the tiny model's template refuses tool
    messages = [*CHAT, {"role": "assistant", "content": "1234"}, {"role": "tool", "content": "{}"}]
    for call in (runtime.generate, runtime.stream):
        with pytest.raises(InvalidInput, match=r"messages\[2\]\.role 'tool' is not supported by the base model's chat template") as caught:
            call("facts", messages, max_tokens=4)
        assert caught.value.param == "messages[2].role"


def test_a_stream_whose_generation_fails_midway_raises_at_its_end(ws, tiny_line, tiny_model):
    approved_version(ws, tiny_line, tiny_model, seed=1, broken=True)  # NaN weights: sampling from them fails
    promote(ws, tiny_line, 1)
    runtime = Runtime(ws, [tiny_line])
    stream = runtime.stream("facts", CHAT, max_tokens=8, temperature=1.0)
    assert stream.served_by == "facts@v1"
    with pytest.raises(AdapterctlError, match=r"scores are not finite \(NaN\): the adapter is broken"):
        list(stream)
    assert stream.finish_reason is None
    assert runtime.generate("facts@base", CHAT, max_tokens=4).completion_tokens == 4  # the runtime serves on

"""The training job on a real tiny model: it learns the corrections, and it is safe to run from cron."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from adapterctl import audit, feedback, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.dataset import DataSettings
from adapterctl.db.models import Adapter, AuditEvent, Lease, RunExample, TrainingRun
from adapterctl.errors import InvalidInput
from adapterctl.runs import TrainRequest, train_line
from adapterctl.training import TrainSettings

pytestmark = pytest.mark.slow

FACTS = [(f"What is the code for room {i}?", f"The code for room {i} is {1000 + 37 * i}.") for i in range(8)]
# A fixed length (no "until learned"), so that step counts are known.
FAST = TrainSettings(
    learning_rate=3e-3,
    max_steps=100,
    target_learned=None,
    batch_size=8,
    scheduler="constant",
    warmup_ratio=0.05,
    weight_decay=0.0,
    checkpoint_steps=1000,
)
ALL_TRAIN = DataSettings(holdout_fraction=0.0, max_source_share=1.0)


def log_facts(ws, line, facts=FACTS) -> list[int]:
    return [
        ws.log_feedback(line=line, prompt=q, response="I do not know.", rating=-1, correction=a, source=f"user-{i}")
        for i, (q, a) in enumerate(facts)
    ]


def greedy(model_dir, prompts, adapter_dir=None) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)  # plain PEFT, as any other tool would load it
    model.eval()
    answers = []
    for prompt in prompts:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


def count(ws, model) -> int:
    with ws.transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_training_teaches_the_corrections_and_registers_a_loadable_candidate(ws, tiny_line, tiny_model):
    prompts, answers = zip(*FACTS)
    assert greedy(tiny_model, prompts[:2]) != list(answers[:2])
    ids = log_facts(ws, tiny_line)
    outcome = train_line(ws, TrainRequest(tiny_line, training=FAST, data=ALL_TRAIN))
    assert outcome.status == "trained" and outcome.dataset["splits"] == {"train": 8}
    with ws.transaction() as session:
        adapter = registry.get_adapter(session, outcome.candidate_id)
        run = session.get(TrainingRun, outcome.run_id)
        assert (adapter.status, adapter.run_id, run.status) == ("pending_review", run.id, "succeeded")
        lineage = set(session.scalars(select(registry.RunExample.feedback_id).where(registry.RunExample.run_id == run.id)))
        assert lineage == set(ids)
        assert run.params["training"]["learning_rate"] == 3e-3 and run.params["package_version"]
        assert run.metrics["steps"] == 100 and run.metrics["loss_curve"][-1][1] < run.metrics["loss_curve"][0][1]
        assert 0 < run.metrics["padding_efficiency"] <= 1 and run.metrics["device"] == "cpu"
        newest_first = [e.action for e in audit.list_events(session, limit=5)]
        assert newest_first == ["adapter.pending_review", "eval.candidate", "train.succeed", "adapter.create", "train.start"]
        relative, sha256 = adapter.artifact_path, adapter.sha256
    store = ArtifactStore(ws.settings.artifacts_dir)
    assert set(store.verify(relative, sha256)) == {"adapter_config.json", "adapter_model.safetensors"}
    assert greedy(tiny_model, prompts, store.path_of(relative)) == list(answers)
    assert count(ws, Lease) == 0 and not (ws.settings.home / "runs" / tiny_line / str(outcome.run_id)).exists()


def test_heldout_loss_falls_and_a_second_run_finds_nothing_new(ws, tiny_line):
    log_facts(
        ws, tiny_line, FACTS + [(f"What is the code for room {i}?", f"The code for room {i} is {1000 + 37 * i}.") for i in range(8, 20)]
    )
    outcome = train_line(ws, TrainRequest(tiny_line, training=FAST, data=DataSettings(holdout_fraction=0.25, max_source_share=1.0)))
    assert outcome.dataset["splits"]["heldout"] > 0
    assert outcome.metrics["heldout_loss_after"] < outcome.metrics["heldout_loss_before"]
    events = count(ws, AuditEvent)
    again = train_line(ws, TrainRequest(tiny_line, training=FAST))
    assert again.status == "nothing_to_do" and "0 new eligible examples" in again.reason
    assert count(ws, TrainingRun) == 1 and count(ws, AuditEvent) == events  # nothing written


def test_a_failed_run_is_recorded_and_leaves_no_candidate(ws, tiny_model, tmp_path, settings):
    import shutil

    from adapterctl import base_models, lines

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    with ws.transaction() as session:
        base_models.register_base_model(session, name="broken", source=str(broken), actor="tester")
        lines.create_line(session, name="doomed", base="broken", actor="tester", settings=lines.LineSettings(min_examples=2))
    log_facts(ws, "doomed")
    (broken / "model.safetensors").unlink()  # the base model's weights vanish before the job runs
    with pytest.raises(OSError, match="model.safetensors|weights"):
        train_line(ws, TrainRequest("doomed", training=FAST, data=ALL_TRAIN))
    with ws.transaction() as session:
        [run] = session.scalars(select(TrainingRun)).all()
        assert run.status == "failed" and run.error and run.finished_at
        assert [e.action for e in audit.list_events(session, limit=2)] == ["train.fail", "train.start"]
    assert count(ws, Adapter) == 0 and count(ws, Lease) == 0
    assert not list((settings.artifacts_dir / "doomed").glob(".staging-*"))
    assert not (settings.home / "runs" / "doomed" / str(run.id)).exists()


def test_forgetting_training_data_revokes_the_candidate(ws, tiny_line):
    ids = log_facts(ws, tiny_line)
    outcome = train_line(ws, TrainRequest(tiny_line, training=FAST, data=ALL_TRAIN))  # learned: the gate lets it through to review
    assert outcome.candidate_status == "pending_review"
    with ws.transaction() as session:
        feedback.forget_feedback(session, actor="dpo", ids=[ids[0]], reason="erasure request")
    with ws.transaction() as session:
        adapter = registry.get_adapter(session, outcome.candidate_id)
        assert (adapter.status, adapter.status_reason) == ("revoked", f"trained on forgotten feedback #{ids[0]}")
        assert [e.action for e in audit.list_events(session, limit=2)] == ["adapter.revoked", "feedback.forget"]


def test_time_budget_stops_early_and_still_saves(ws, tiny_line):
    log_facts(ws, tiny_line)
    budget = TrainSettings(**{**FAST.__dict__, "max_steps": 100_000, "time_budget_s": 2.0})
    outcome = train_line(ws, TrainRequest(tiny_line, training=budget, data=ALL_TRAIN))
    assert outcome.status == "trained" and outcome.metrics["stopped_by_time_budget"]
    assert 0 < outcome.metrics["steps"] < 100_000


def test_invalid_training_settings_are_refused_before_anything_is_written(ws, tiny_line):
    log_facts(ws, tiny_line)
    bad = TrainSettings(learning_rate=0, batch_size=0, scheduler="exotic", device="tpu")
    with pytest.raises(InvalidInput) as caught:
        train_line(ws, TrainRequest(tiny_line, training=bad))
    for name in ("learning_rate", "batch_size", "scheduler", "device"):
        assert name in str(caught.value)
    assert count(ws, TrainingRun) == 0


SHORT = TrainSettings(learning_rate=3e-3, max_steps=4, target_learned=None, batch_size=8, scheduler="constant", checkpoint_steps=1000)
TOOL_CALL = [
    {"role": "user", "content": "Open the door"},
    {"role": "assistant", "content": "open_door()"},
    {"role": "tool", "content": '{"ok": true}'},
]


def test_a_record_the_chat_template_cannot_render_is_left_out_counted_and_never_blocks_the_line(ws, tiny_line, cli):
    log_facts(ws, tiny_line)
    with ws.transaction() as session:  # stored as a server stores feedback on its answers, with a role the template refuses
        [tool] = feedback.log_records(
            session,
            [(tiny_line, feedback.parse_record({"prompt": TOOL_CALL, "response": "ok", "correction": "The door is open."}))],
            actor="server",
        )
    outcome = train_line(ws, TrainRequest(tiny_line, training=SHORT, data=ALL_TRAIN))
    assert outcome.status == "trained" and outcome.dataset["splits"] == {"train": len(FACTS)}
    skipped = outcome.dataset["unrenderable"]
    assert (skipped["count"], skipped["feedback_ids"]) == (1, [tool]) and "unknown role tool" in skipped["reasons"][0]
    with ws.reading() as session:
        used = session.scalars(select(RunExample.feedback_id).where(RunExample.run_id == outcome.run_id)).all()
    assert tool not in used  # no lineage to a record it never trained on
    again = cli("train", "--line", tiny_line)  # the record is still new, and still no reason to fail
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("nothing to do for facts: 0 new eligible examples") and "1 left out" in again.stdout
    assert f"left out 1 feedback records the base model's chat template cannot render (#{tool})" in again.stderr

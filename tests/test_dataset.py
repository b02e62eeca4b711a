"""The dataset builder: eligibility, hygiene, held-out split, replay, masking, batching."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from adapterctl import dataset, feedback
from adapterctl.dataset import DataSettings, build_dataset, is_heldout, normalise
from adapterctl.db.models import Adapter, RunExample, TrainingRun
from adapterctl.lines import get_line

NO_HOLDOUT = DataSettings(holdout_fraction=0.0, max_source_share=1.0)


def build(ws, line, settings=NO_HOLDOUT):
    with ws.transaction() as session:
        return build_dataset(session, get_line(session, line).id, settings)


def fake_run(ws, line, feedback_ids, *, status="succeeded", adapter_status=None, split="train") -> int:
    """A run (and optionally its adapter) that used these feedback records, as lineage rows."""
    with ws.transaction() as session:
        line_id = get_line(session, line).id
        run = TrainingRun(line_id=line_id, status=status, started_by="t", host="h", base_model_hash="x", params={}, dataset={})
        session.add(run)
        session.flush()
        session.execute(insert(RunExample), [{"run_id": run.id, "feedback_id": i, "split": split} for i in feedback_ids])
        if adapter_status:
            session.add(
                Adapter(id=run.id, line_id=line_id, run_id=run.id, status=adapter_status, artifact_path=f"{line}/{run.id}", sha256="0" * 64)
            )
        return run.id


def test_eligibility_follows_the_signal(ws, line):
    correction = ws.log_feedback(line=line, prompt="q1", response="wrong", rating=-1, correction="right")
    positive = ws.log_feedback(line=line, prompt="q2", response="good answer", rating=1)
    pair = ws.log_feedback(line=line, prompt="q3", response="r", chosen="better", rejected="worse")
    ws.log_feedback(line=line, prompt="q4", response="bad", rating=-1)
    ws.log_feedback(line=line, prompt="q5", response="meh", rating=0)
    forgotten = ws.log_feedback(line=line, prompt="q6", response="secret", rating=1)
    with ws.transaction() as session:
        feedback.forget_feedback(session, actor="t", ids=[forgotten])
    examples = {e.feedback_id: e for e in build(ws, line).examples}
    assert set(examples) == {correction, positive, pair}
    assert (examples[correction].kind, examples[correction].answer) == ("correction", "right")
    assert (examples[positive].kind, examples[positive].answer) == ("positive", "good answer")
    assert (examples[pair].kind, examples[pair].answer, examples[pair].rejected) == ("pair", "better", "worse")
    assert examples[correction].messages[-1] == {"role": "assistant", "content": "right"}


def test_rows_used_by_a_succeeded_run_are_not_used_again(ws, line):
    used = ws.log_feedback(line=line, prompt="q1", response="a1", rating=1)
    retried = ws.log_feedback(line=line, prompt="q2", response="a2", rating=1)
    fresh = ws.log_feedback(line=line, prompt="q3", response="a3", rating=1)
    fake_run(ws, line, [used])
    fake_run(ws, line, [retried], status="failed")
    assert {e.feedback_id for e in build(ws, line).examples} == {retried, fresh}


def test_exact_and_normalised_duplicates_keep_the_oldest(ws, line):
    first = ws.log_feedback(line=line, prompt="How do I reset it?", response="x", correction="Open Settings, then Reset.")
    ws.log_feedback(line=line, prompt="How do I reset it?", response="y", correction="Open Settings, then Reset.")  # same pair
    ws.log_feedback(line=line, prompt="how do i RESET it", response="z", correction="open settings then reset")  # retyped
    other = ws.log_feedback(line=line, prompt="Another question", response="r", rating=1)
    built = build(ws, line)
    assert [e.feedback_id for e in built.examples] == [first, other]
    assert built.report["duplicates_removed"] == {"exact": 1, "normalised": 1}
    assert normalise("  Café,  CAFE! ") == "cafe cafe"


def test_each_source_is_capped_and_the_excess_reported(ws, line):
    for i in range(6):
        ws.log_feedback(line=line, prompt=f"spam {i}", response="r", rating=1, source="mallory")
    for i in range(4):
        ws.log_feedback(line=line, prompt=f"honest {i}", response="r", rating=1, source=f"user-{i}")
    built = build(ws, line, DataSettings(holdout_fraction=0.0, max_source_share=0.2))
    kept = [e.prompt[0]["content"] for e in built.examples if e.source == "mallory"]
    assert kept == ["spam 0", "spam 1"]  # cap = 20% of 10 = 2, the oldest kept
    assert built.report["capped_sources"] == {"mallory": 4}
    assert built.report["sources"] == {"mallory": 2, "user-0": 1, "user-1": 1, "user-2": 1, "user-3": 1}


def test_heldout_split_is_stable_and_near_the_fraction():
    chosen = [i for i in range(1, 20001) if is_heldout(i, 0.1)]
    assert 0.09 < len(chosen) / 20000 < 0.11
    assert chosen == [i for i in range(1, 20001) if is_heldout(i, 0.1)]
    assert not any(is_heldout(i, 0.0) for i in range(1000)) and all(is_heldout(i, 1.0) for i in range(1000))


def test_heldout_examples_are_marked_in_the_dataset(ws, line):
    ids = [ws.log_feedback(line=line, prompt=f"q{i}", response="a", rating=1) for i in range(40)]
    built = build(ws, line, DataSettings(holdout_fraction=0.3, max_source_share=1.0))
    assert {e.feedback_id for e in built.split("heldout")} == {i for i in ids if is_heldout(i, 0.3)}
    assert built.report["splits"]["heldout"] == len(built.split("heldout")) > 0


def test_replay_draws_from_approved_versions_only(ws, line):
    approved = [ws.log_feedback(line=line, prompt=f"old {i}", response="a", rating=1) for i in range(6)]
    revoked = [ws.log_feedback(line=line, prompt=f"bad {i}", response="a", rating=1) for i in range(3)]
    fake_run(ws, line, approved, adapter_status="approved")
    fake_run(ws, line, revoked, adapter_status="revoked")
    new = [ws.log_feedback(line=line, prompt=f"new {i}", response="a", rating=1) for i in range(4)]
    half = build(ws, line, DataSettings(holdout_fraction=0.0, max_source_share=1.0, replay_fraction=0.5))
    replay = [e.feedback_id for e in half.split("replay")]
    assert len(replay) == 4 and set(replay) <= set(approved)  # half of the training set
    assert {e.feedback_id for e in half.split("train")} == set(new)
    everything = build(ws, line, DataSettings(holdout_fraction=0.0, max_source_share=1.0, replay_fraction=1.0))
    assert {e.feedback_id for e in everything.split("replay")} == set(approved)
    none = build(ws, line, DataSettings(holdout_fraction=0.0, max_source_share=1.0, replay_fraction=0.0))
    assert none.split("replay") == []
    with ws.transaction() as session:  # forgetting part of v1's data revokes v1: none of its data replays
        assert feedback.forget_feedback(session, actor="t", ids=approved[:1]).revoked
    assert build(ws, line, DataSettings(holdout_fraction=0.0, replay_fraction=1.0)).split("replay") == []


def test_the_reference_set_anchors_training_and_the_rest_measures_forgetting(ws, line):
    from adapterctl import suites

    cases = [{"prompt": [{"role": "user", "content": f"fact {i}?"}], "answer": f"answer {i}."} for i in range(40)] + [{"text": "prose"}]
    with ws.transaction() as session:
        suites.add_suite(session, line=line, name="reference", cases=cases, kind="reference", actor="t")
    for i in range(3):
        ws.log_feedback(line=line, prompt=f"new {i}", response="a", rating=1)
    built = build(ws, line, DataSettings(holdout_fraction=0.0, max_source_share=1.0, reference_anchor_share=0.75))
    anchors = built.split("reference")
    assert 20 <= len(anchors) <= 38 and all(e.feedback_id is None and e.kind == "reference" for e in anchors)
    assert built.report["reference"] == {"version": 1, "anchors": len(anchors), "synthesized": False, "overridden": 0}
    assert built.new_count == 3  # anchors do not count towards --min-examples
    assert [row["split"] for row in dataset.lineage_rows(7, built.examples)] == ["train"] * 3  # nor have lineage
    anchored = {e.answer for e in anchors}
    measured = [c for c in cases if not suites.anchors_training(c, 0.75)]
    assert {c["answer"] for c in measured if "answer" in c}.isdisjoint(anchored) and {"text": "prose"} in measured
    assert len(anchors) + len(measured) == len(cases)
    again = build(ws, line, DataSettings(holdout_fraction=0.0, max_source_share=1.0, reference_anchor_share=0.75))
    assert [e.answer for e in again.split("reference")] == [e.answer for e in anchors]  # stable
    assert build(ws, line, DataSettings(holdout_fraction=0.0, max_source_share=1.0, reference_anchor_share=0.0)).split("reference") == []

    # Feedback that answers an anchor's prompt (retyped) overrides the anchor: it is left out, counted.
    anchored_prompt = anchors[0].prompt[-1]["content"]
    ws.log_feedback(line=line, prompt=f"  {anchored_prompt.upper()} ", response="a", rating=-1, correction="a new answer.")
    overridden = build(ws, line, DataSettings(holdout_fraction=0.0, max_source_share=1.0, reference_anchor_share=0.75))
    assert anchored_prompt not in {e.prompt[-1]["content"] for e in overridden.split("reference")}
    assert overridden.report["reference"]["overridden"] == 1 and len(overridden.split("reference")) == len(anchors) - 1


def test_lineage_rows_name_every_example():
    examples = [
        dataset.Example(1, "train", "positive", None, [{"role": "user", "content": "q"}], "a"),
        dataset.Example(2, "replay", "positive", None, [{"role": "user", "content": "q"}], "b"),
    ]
    assert dataset.lineage_rows(7, examples) == [
        {"run_id": 7, "feedback_id": 1, "split": "train"},
        {"run_id": 7, "feedback_id": 2, "split": "replay"},
    ]


# ---------------------------------------------------------------- tokens (the tiny model's tokenizer)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.slow
def test_labels_cover_only_the_answer_and_its_end_token(tokenizer):
    from adapterctl.training import IGNORE, tokenize

    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France? ünï"}]
    [row], truncated = tokenize(tokenizer, [{"prompt": prompt, "answer": "Paris."}], 256)
    answer = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE]
    assert tokenizer.decode(answer) == "Paris." + tokenizer.eos_token and truncated == 0
    first_answer = row["labels"].index(answer[0])
    assert all(label == IGNORE for label in row["labels"][:first_answer])
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert row["input_ids"][:first_answer] == list(prompt_ids)  # exactly what the model sees at inference


@pytest.mark.slow
def test_long_examples_keep_the_answer_and_are_counted(tokenizer):
    from adapterctl.training import IGNORE, tokenize

    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    rows, truncated = tokenize(
        tokenizer, [{"prompt": user("word " * 300), "answer": "Short answer."}, {"prompt": user("q"), "answer": "a"}], 64
    )
    assert truncated == 1 and len(rows[0]["input_ids"]) == 64
    answer = [t for t, label in zip(rows[0]["input_ids"], rows[0]["labels"]) if label != IGNORE]
    assert tokenizer.decode(answer) == "Short answer." + tokenizer.eos_token


@pytest.mark.slow
def test_packed_rows_attend_within_each_example_only(tiny_model, tokenizer):
    """Packing: several examples share a row, yet every token's logits equal those of its example alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from adapterctl.training import IGNORE, PackingCollator, tokenize

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    examples = [
        {"prompt": [{"role": "user", "content": text}], "answer": answer}
        for text, answer in (
            ("short?", "yes"),
            ("a much longer question " * 5, "a longer answer here"),
            ("mid-sized question here", "fine"),
            ("a very long question " * 12, "long"),
        )
    ]
    rows, _ = tokenize(tokenizer, examples, 256)
    lengths = [len(r["input_ids"]) for r in rows]
    collator = PackingCollator(tokenizer.pad_token_id, row_length=max(lengths) + 2)
    batch = collator(rows)
    assert batch["input_ids"].shape[0] < len(rows)  # some examples share a row
    assert "attention_mask" not in batch
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        found = 0
        for packed_row, positions, labels, logits in zip(batch["input_ids"], batch["position_ids"], batch["labels"], together):
            starts = [i for i, p in enumerate(positions.tolist()) if p == 0] + [len(positions)]
            for begin, end in zip(starts, starts[1:]):
                ids = packed_row[begin:end].tolist()
                row = next((r for r in rows if r["input_ids"] == ids), None)
                if row is None:  # the padding block at the end of a row
                    assert (labels[begin:end] == IGNORE).all()
                    continue
                found += 1
                alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
                assert torch.allclose(logits[begin:end], alone, atol=1e-4)
                assert labels[begin:end].tolist() == [IGNORE] + row["labels"][1:]
    assert found == len(rows)
    width = batch["input_ids"].shape[1]
    assert collator.efficiency == sum(lengths) / (width * batch["input_ids"].shape[0]) > sum(lengths) / (len(rows) * max(lengths))


@pytest.mark.slow
def test_packing_is_used_only_where_the_model_keeps_examples_apart(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from adapterctl.training import packing_is_exact

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert packing_is_exact(model)

    class IgnoresPositions(torch.nn.Module):
        """A model whose attention does not follow restarting position ids (as some architectures)."""

        def __init__(self, inner) -> None:
            super().__init__()
            self.inner, self.config = inner, inner.config

        device, dtype = property(lambda self: self.inner.device), property(lambda self: self.inner.dtype)

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids, **kwargs)

    assert not packing_is_exact(IgnoresPositions(model))


def test_a_heldout_record_never_shares_its_prompt_with_what_the_run_trains_on(ws, line):
    half = DataSettings(holdout_fraction=0.5, max_source_share=1.0)
    approved = [ws.log_feedback(line=line, prompt=f"Question {i}?", response="a", rating=-1, correction=f"answer {i}.") for i in range(20)]
    fake_run(ws, line, approved, adapter_status="approved")
    # The next run: the same questions retyped, as a second user would send them, and new ones asked twice.
    retyped = [ws.log_feedback(line=line, prompt=f"  question {i} ", response="a", rating=-1, correction=f"Answer {i}") for i in range(20)]
    asked_twice = [
        ws.log_feedback(line=line, prompt=f"new {i}?", response="a", rating=-1, correction=f"{word} {i}.")
        for i in range(10)
        for word in ("one", "another")
    ]
    built = build(ws, line, half)

    def prompts(split):
        return {normalise(e.prompt[-1]["content"]) for e in built.split(split)}

    assert prompts("heldout") and prompts("heldout").isdisjoint(prompts("train") | prompts("replay"))
    moved = built.report["heldout_moved_to_train"]
    assert moved["same prompt as a replayed example"] == sum(is_heldout(i, 0.5) for i in retyped) > 0
    pairs = [asked_twice[k : k + 2] for k in range(0, 20, 2)]
    split_pairs = sum(is_heldout(a, 0.5) != is_heldout(b, 0.5) for a, b in pairs)
    assert moved.get("same prompt as a new training example", 0) == split_pairs > 0
    assert {e.feedback_id for e in built.split("heldout")} == {i for i in asked_twice if is_heldout(i, 0.5)} - {
        i for a, b in pairs if is_heldout(a, 0.5) != is_heldout(b, 0.5) for i in (a, b)
    }

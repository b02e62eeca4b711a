"""`feedback forget` leaves no copy behind: evaluation samples, run reports, run folders, audit events, database pages."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid

import pytest
from sqlalchemy import event, insert, select

from adapterctl import audit, erasure, evaluation, feedback, lines, quarantine, registry, rehearsal, review, suites
from adapterctl.base_models import local_path, register_base_model
from adapterctl.canary_watch import compare
from adapterctl.dataset import DataSettings, build_dataset, is_heldout, normalise
from adapterctl.db.models import Base, EvalResult, Evaluation, IssuedResponse, RunExample, TrainingRun
from adapterctl.errors import Interrupted
from adapterctl.lines import get_line
from adapterctl.report_html import WITHHELD, render
from adapterctl.runs import TrainRequest, train_line
from tests.conftest import sqlite_only
from tests.test_activations import promote, version
from tests.test_canaries import start
from tests.test_training import ALL_TRAIN, FACTS, FAST, log_facts

METRICS = {"heldout_cases": 1, "heldout_exact": 0.0, "heldout_loss": 1.0, "suites": {}, "reference": "built-in", "reference_loss": 1.0}


def run_with(ws, line: str, lineage: dict[int, str], *, status: str = "succeeded", dataset: dict | None = None) -> int:
    """A training run that used these feedback records (id -> split), as the training job records one."""
    with ws.transaction() as session:
        run = TrainingRun(
            line_id=get_line(session, line).id,
            status=status,
            started_by="cron",
            host="test",
            base_model_hash="0" * 64,
            params={},
            dataset=dataset or {"splits": {"train": len(lineage)}},
        )
        session.add(run)
        session.flush()
        if lineage:
            session.execute(insert(RunExample), [{"run_id": run.id, "feedback_id": i, "split": s} for i, s in lineage.items()])
        return run.id


def candidate_of(ws, run_id: int) -> int:
    with ws.transaction() as session:
        run = session.get(TrainingRun, run_id)
        return registry.create_candidate(
            session, run=run, artifact_path=f"{run.line.name}/{run.id}", sha256="0" * 64, actor="cron", status="pending_review"
        ).id


def stored_evaluation(ws, line: str, adapter_id: int, samples: list[dict]) -> int:
    """An evaluation of a candidate against the base model, with these side-by-side samples."""
    with ws.transaction() as session:
        row = Evaluation(
            line_id=get_line(session, line).id,
            adapter_id=adapter_id,
            trigger="candidate",
            created_by="cron",
            seconds=1.0,
            settings={},
            gate={"passed": True, "reasons": [], "checks": []},
            samples=samples,
            summary_hash="5" * 64,
        )
        row.results = [
            EvalResult(role="base", position=0, adapter_id=None, metrics=METRICS, seconds=1.0),
            EvalResult(role="candidate", position=1, adapter_id=adapter_id, metrics=METRICS, seconds=1.0),
        ]
        session.add(row)
        session.flush()
        return row.id


def samples_of(ws, evaluation_id: int) -> list[dict]:
    with ws.transaction() as session:
        return evaluation.get_evaluation(session, evaluation_id).samples


def forget(ws, **how) -> feedback.ForgetReport:
    with ws.transaction() as session:
        return feedback.forget_feedback(session, actor="dpo", **how)


def test_samples_of_forgotten_records_are_redacted_and_answers_of_models_trained_on_them_withheld(ws, line, cli, tmp_path):
    secret, kept = "my IBAN is DE89 3704", "how do I reset my password?"
    trained = ws.log_feedback(line=line, prompt="tell me a joke", response="no", correction="a joke", source="victim")
    heldout = ws.log_feedback(line=line, prompt=secret, response="ok", correction="noted", source="victim")
    other = ws.log_feedback(line=line, prompt=kept, response="?", correction="Settings > Reset", source="alice")
    adapter = candidate_of(ws, run_with(ws, line, {trained: "train", heldout: "heldout", other: "heldout"}))
    sample = {"feedback_id": heldout, "prompt": [{"role": "user", "content": secret}], "base": "hm", "candidate": "noted"}
    others = {"feedback_id": other, "prompt": [{"role": "user", "content": kept}], "base": "?", "candidate": "a joke"}
    legacy = [{k: v for k, v in s.items() if k != "feedback_id"} for s in (sample, others)]  # stored before samples named their record
    untouched = stored_evaluation(ws, line, adapter, [{**others, "candidate": None}])
    old = stored_evaluation(ws, line, adapter, legacy)
    current = stored_evaluation(ws, line, adapter, [sample, others])  # the newest: the one `review show` shows

    report = forget(ws, source="victim")

    withheld = {**others, "candidate": None, "withheld": ["candidate"]}
    assert samples_of(ws, current) == [{"feedback_id": heldout, "forgotten": True}, withheld]
    assert samples_of(ws, old) == [{"feedback_id": heldout, "forgotten": True}, {k: v for k, v in withheld.items() if k != "feedback_id"}]
    assert samples_of(ws, untouched) == [{**others, "candidate": None}]  # nothing that model said is stored there
    assert (report.redacted.samples_redacted, report.redacted.samples_withheld) == (2, 2)
    with ws.transaction() as session:
        assert evaluation.get_evaluation(session, current).summary_hash == "5" * 64  # it covers metrics, gate and settings only
        shown = review.report(session, adapter)
    page = render(shown)
    assert f"#{heldout} (forgotten)" in page and WITHHELD in page and secret not in page and kept in page
    text = cli("review", "show", str(adapter))
    assert text.returncode == 0, text.stderr
    assert f"#{heldout}: (forgotten)" in text.stdout and WITHHELD in text.stdout and "IBAN" not in text.stdout


def test_samples_of_another_line_with_the_same_prompt_stay(ws, line):
    with ws.transaction() as session:
        lines.create_line(session, name="other-bot", base="tiny", actor="tester")
    victim = ws.log_feedback(line=line, prompt="same question", response="r", rating=1, source="victim")
    elsewhere = ws.log_feedback(line="other-bot", prompt="same question", response="r", rating=1, source="bob")
    adapter = candidate_of(ws, run_with(ws, "other-bot", {elsewhere: "heldout"}))
    legacy = [{"prompt": [{"role": "user", "content": "same question"}], "base": "x", "candidate": "y"}]
    kept = stored_evaluation(ws, "other-bot", adapter, legacy)
    assert forget(ws, ids=[victim]).redacted.samples_redacted == 0
    assert samples_of(ws, kept) == legacy


def test_a_source_with_no_active_feedback_left_is_folded_out_of_every_run_report_of_the_line(ws, line, cli):
    with ws.transaction() as session:
        lines.create_line(session, name="other-bot", base="tiny", actor="tester")
    first = ws.log_feedback(line=line, prompt="p1", response="r", rating=1, source="victim-7")
    ws.log_feedback(line=line, prompt="p2", response="r", rating=1, source="victim-7")
    ws.log_feedback(line="other-bot", prompt="p3", response="r", rating=1, source="victim-7")
    report = {"splits": {"train": 6}, "sources": {"alice": 2, "victim-7": 3, "(none)": 1}, "capped_sources": {"victim-7": 2}}
    runs = [run_with(ws, line, {}, dataset=report), run_with(ws, line, {}, dataset={"splits": {}, "sources": {"alice": 1}})]
    elsewhere = run_with(ws, "other-bot", {}, dataset=report)
    adapter = candidate_of(ws, runs[0])

    def datasets() -> dict[int, dict]:
        with ws.transaction() as session:
            return {run_id: session.get(TrainingRun, run_id).dataset for run_id in [*runs, elsewhere]}

    partly = forget(ws, ids=[first])
    assert datasets()[runs[0]] == report  # the source still has active feedback on the line

    wholly = forget(ws, source="victim-7", line=line)
    datasets = datasets()
    assert datasets[runs[0]]["sources"] == {"(forgotten)": 3, "(none)": 1, "alice": 2}
    assert datasets[runs[0]]["capped_sources"] == {"(forgotten)": 2} and datasets[runs[0]]["splits"] == {"train": 6}
    assert datasets[runs[1]] == {"splits": {}, "sources": {"alice": 1}}
    assert datasets[elsewhere] == report  # victim-7 still has active feedback there
    shown = cli.json("adapters", "show", str(adapter))
    assert "victim-7" not in json.dumps(shown) and sum(shown["dataset"]["sources"].values()) == 6
    assert (partly.redacted.runs_cleaned, wholly.redacted.runs_cleaned) == (0, 1)


def test_the_audit_log_names_no_source_not_even_by_its_hash(ws, line, cli):
    source = f"victim-{uuid.uuid4().hex}"
    ws.log_feedback(line=line, prompt="p", response="r", rating=1, source=source)
    assert cli.json("feedback", "forget", "--source", source)["forgotten"]
    events = json.dumps(cli.json("audit", "log", "--limit", "1000"))
    assert source not in events and hashlib.sha256(source.encode()).hexdigest() not in events
    with ws.transaction() as session:
        [event] = audit.list_events(session, action="feedback.forget")
    assert json.loads(event.payload)["by"] == "source"


def test_unfinished_runs_that_used_the_records_are_stopped_and_their_files_removed(ws, line, cli, settings):
    victim = ws.log_feedback(line=line, prompt="secret words", response="r", correction="more secret words", source="victim")
    other = ws.log_feedback(line=line, prompt="p", response="r", rating=1, source="alice")
    interrupted = run_with(ws, line, {victim: "train", other: "train"}, status="interrupted")
    killed = run_with(ws, line, {victim: "heldout"}, status="running")  # kill -9 leaves it `running`
    clean = run_with(ws, line, {other: "train"}, status="interrupted")
    torchrun_failed = run_with(ws, line, {victim: "train"}, status="failed")
    runs = settings.home / "runs" / line
    for run_id in (interrupted, killed, clean, 999):  # 999: a folder whose run row never committed
        folder = runs / str(run_id)
        (folder / "checkpoints" / "checkpoint-10").mkdir(parents=True)
        ids = [other] if run_id == clean else [victim, other]
        (folder / "examples.jsonl").write_text("".join(json.dumps({"feedback_id": i, "prompt": "secret words"}) + "\n" for i in ids))
    (runs / f"{torchrun_failed}-torchrun.log").write_text("Traceback ... secret words\n")
    (runs / f"{clean}-torchrun.log").write_text("an unrelated failure\n")
    staging = settings.artifacts_dir / line / f".staging-run-{killed}"
    staging.mkdir(parents=True)

    result = cli.json("feedback", "forget", "--id", str(victim))

    assert sorted(p.name for p in runs.iterdir()) == sorted([str(clean), f"{clean}-torchrun.log"]) and not staging.exists()
    with ws.transaction() as session:
        status = {r.id: (r.status, r.error) for r in session.scalars(select(TrainingRun))}
        assert status[interrupted] == status[killed] == ("failed", erasure.RUN_STOPPED)
        assert status[clean] == ("interrupted", None)  # --resume still continues the run without forgotten data
        assert [e.action for e in audit.list_events(session, action="train.fail")] == ["train.fail", "train.fail"]
    assert "secret" not in erasure.RUN_STOPPED
    assert result["redacted"]["runs_stopped"] == [interrupted, killed]
    assert (result["scrubbed"]["folders_removed"], result["scrubbed"]["logs_removed"]) == (3, 1)


def test_forgetting_again_finishes_a_clean_up_that_a_crash_cut_short(ws, line, cli, settings):
    victim = ws.log_feedback(line=line, prompt="secret", response="r", rating=1)
    forget(ws, ids=[victim])  # the transaction committed, then the process died before cleaning up files
    folder = settings.home / "runs" / line / "5"
    folder.mkdir(parents=True)
    (folder / "examples.jsonl").write_text(json.dumps({"feedback_id": victim, "prompt": "secret"}) + '\n{"feedback_id": 1')
    again = cli("feedback", "forget", "--id", str(victim))
    assert again.returncode == 0 and "nothing to forget (1 already forgotten)" in again.stdout
    assert "run folders: 1" in again.stdout and not folder.exists()
    if ws.db.backend == "postgresql":
        assert again.stderr.startswith("adapterctl: warning: PostgreSQL keeps the old row versions")


def copies(database, needle: bytes) -> dict[str, int]:
    return {
        suffix: database.with_name(database.name + suffix).read_bytes().count(needle)
        for suffix in ("", "-wal", "-shm")
        if database.with_name(database.name + suffix).exists()
    }


def test_no_copy_stays_in_the_sqlite_files_and_postgresql_says_what_it_keeps(ws, line, cli, settings):
    marker = uuid.uuid4().hex
    for i in range(33):
        ws.log_feedback(
            line=line, prompt=f"{marker} question {i}", response="r", correction=f"{marker} answer {i}", source=f"victim-{marker}"
        )
    if ws.db.backend == "sqlite":
        ws.db.reclaim_sqlite(vacuum=False)  # as SQLite's automatic checkpoints do: the records reach the database file
        assert copies(settings.home / "adapterctl.db", marker.encode())[""] >= 66
    result = cli("feedback", "forget", "--source", f"victim-{marker}", "--json")
    assert result.returncode == 0, result.stderr
    if ws.db.backend == "sqlite":
        assert set(copies(settings.home / "adapterctl.db", marker.encode()).values()) == {0}
    scrubbed = json.loads(result.stdout)["scrubbed"]
    if ws.db.backend == "sqlite":
        assert (scrubbed["vacuumed"], scrubbed["wal_truncated"], scrubbed["notes"]) == (True, True, [])
    else:
        assert (scrubbed["vacuumed"], scrubbed["wal_truncated"]) == (False, False)
        assert "VACUUM FULL" in scrubbed["notes"][0]


def test_forgetting_again_clears_what_an_older_forget_left_in_free_pages(ws, line, cli, settings):
    marker = uuid.uuid4().hex
    ids = [ws.log_feedback(line=line, prompt=f"{marker} question {i}", response="r", correction=f"{marker} answer {i}") for i in range(10)]
    if ws.db.backend == "sqlite":  # written as by a build whose secure_delete is off, or by adapterctl before it turned it on
        event.listen(ws.db.engine, "connect", lambda connection, _: connection.execute("PRAGMA secure_delete=OFF"))
        ws.db.engine.dispose()
    forget(ws, ids=ids)
    if ws.db.backend == "sqlite":
        ws.db.reclaim_sqlite(vacuum=False)
        assert copies(settings.home / "adapterctl.db", marker.encode())[""] > 0  # erased rows, but their bytes sit in free space
    result = cli.json("feedback", "forget", "--id", str(ids[0]))
    if ws.db.backend == "sqlite":
        assert set(copies(settings.home / "adapterctl.db", marker.encode()).values()) == {0} and result["scrubbed"]["vacuumed"]
    else:
        assert "VACUUM FULL" in result["scrubbed"]["notes"][0]


def test_without_vacuum_secure_delete_and_the_checkpoint_still_leave_no_copy(ws, line, cli, settings):
    marker = uuid.uuid4().hex
    victim = ws.log_feedback(line=line, prompt=f"{marker} question", response="r", correction=f"{marker} answer")
    if ws.db.backend == "sqlite":
        ws.db.reclaim_sqlite(vacuum=False)
        with ws.db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    scrubbed = cli.json("feedback", "forget", "--id", str(victim), "--no-vacuum")["scrubbed"]
    assert scrubbed["vacuumed"] is False
    if ws.db.backend == "sqlite":
        assert scrubbed["wal_truncated"] and set(copies(settings.home / "adapterctl.db", marker.encode()).values()) == {0}


def test_a_reader_that_keeps_the_wal_is_reported_not_hidden(ws, line, settings):
    victim = ws.log_feedback(line=line, prompt="secret", response="r", rating=1)
    forget(ws, ids=[victim])
    if ws.db.backend != "sqlite":
        assert "VACUUM FULL" in erasure.scrub(ws).notes[0]
        return
    reader = sqlite3.connect(settings.home / "adapterctl.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM feedback").fetchone()  # holds its snapshot, as a long report would
    try:
        scrubbed = erasure.scrub(ws, wait_s=0.2)
    finally:
        reader.close()
    assert scrubbed.vacuumed and not scrubbed.wal_truncated
    assert scrubbed.notes == ["another connection held an old snapshot for more than 0.2 s, so the WAL was not truncated"]


# ---------------------------------------------------------------- reference sets, quarantines, poisoning reports


def case(prompt: str, answer: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "answer": answer}


def synthesized(ws, line: str, cases: list[dict], seeds: list | None) -> int:
    """A reference set version as rehearsal stores one, each case with the feedback shown when the base model wrote it
    (seeds None: stored before provenance named them); its version."""
    provenance = {
        "method": "self-synthesized rehearsal",
        "base_model_hash": "0" * 64,
        "settings": {"seed": 0, "temperature": 1.0, "top_p": 0.95},
        "sampled": 9,
        "seeded": 3,
        "kept": len(cases),
        "dropped": {},
        "seconds": 1.0,
    }
    if seeds is not None:
        provenance["seeds"] = seeds
    with ws.transaction() as session:
        suite, _ = suites.add_suite(
            session, line=line, name=suites.REFERENCE, cases=cases, kind="reference", actor="cron", provenance=provenance
        )
        return suite.version


def reference(ws, line: str, version: int) -> tuple[list[dict], str, dict | None]:
    with ws.reading() as session:
        suite = suites.get_suite(session, line=line, name=suites.REFERENCE, version=version)
        return suite.cases, suite.content_hash, suite.provenance


def test_reference_cases_written_with_a_forgotten_record_in_context_go_from_every_version_and_their_runs_stop(ws, line, cli, settings):
    marker = uuid.uuid4().hex
    victim = ws.log_feedback(line=line, prompt=f"my account is {marker}", response="ok", correction="noted", source="victim")
    other = ws.log_feedback(line=line, prompt="how do I reset my password?", response="?", correction="Settings > Reset", source="alice")
    given = [case("What is 2 + 2?", "4")]
    with ws.transaction() as session:
        suites.add_suite(session, line=line, name=suites.REFERENCE, cases=given, kind="reference", actor="ops")
    copied, clean, unseeded = (
        case(f"Is {marker} my account?", f"Yes, {marker} is."),
        case("How do I log in?", "By email."),
        case("Rain?", "Water."),
    )
    topped = synthesized(ws, line, [*given, copied, clean], [[], [other, victim], [other]])
    again = synthesized(ws, line, [*given, copied, clean, unseeded], [[], [other, victim], [other], []])
    runs = settings.home / "runs" / line
    anchored, earlier = (
        run_with(ws, line, {}, status="interrupted", dataset={"splits": {"reference": 1}, "reference": {"version": number}})
        for number in (again, 1)
    )
    for run_id, anchor in ((anchored, copied), (earlier, given[0])):
        (runs / str(run_id)).mkdir(parents=True)
        (runs / str(run_id) / "examples.jsonl").write_text(json.dumps({"feedback_id": None, "split": "reference", **anchor}) + "\n")

    result = cli.json("feedback", "forget", "--source", "victim")

    for number, kept in ((1, given), (topped, [*given, clean]), (again, [*given, clean, unseeded])):
        cases, digest, provenance = reference(ws, line, number)
        assert cases == kept and digest == hashlib.sha256(audit.canonical_json(kept).encode()).hexdigest()
    assert provenance["seeds"] == [[], [other], []] and provenance["forgotten_cases"] == 1
    assert result["redacted"]["reference_cases_removed"] == 2 and result["redacted"]["runs_stopped"] == [anchored]
    assert result["scrubbed"]["folders_removed"] == 1 and not (runs / str(anchored)).exists() and (runs / str(earlier)).is_dir()
    with ws.reading() as session:
        [redacted] = audit.list_events(session, action="suite.redact")
        changes = json.loads(redacted.payload)["versions"]
    assert changes == [{"version": v, "removed": 1, "sha256": reference(ws, line, v)[1]} for v in (topped, again)]
    assert cli("audit", "verify").returncode == 0 and scan_database(ws, [marker]) == []
    shown = cli("eval", "suite", "show", "reference", "--line", line, "--version", str(topped))
    assert shown.returncode == 0 and marker not in shown.stdout
    assert "1 cases removed since: written with feedback that was forgotten" in shown.stdout


def test_a_reference_set_synthesized_before_cases_named_their_seeds_loses_every_case_the_base_model_wrote(ws, line):
    with ws.transaction() as session:
        lines.create_line(session, name="other-bot", base="tiny", actor="tester")
    given = [case("What is 2 + 2?", "4")]
    with ws.transaction() as session:
        suites.add_suite(session, line=line, name=suites.REFERENCE, cases=given, kind="reference", actor="ops")
    legacy = synthesized(ws, line, [*given, case("How do I log in?", "With your email.")], None)
    elsewhere = ws.log_feedback(line="other-bot", prompt="p", response="r", rating=1, source="bob")
    assert forget(ws, ids=[elsewhere]).redacted.reference_cases_removed == 0  # another line's feedback was never in context here
    victim = ws.log_feedback(line=line, prompt="p", response="r", rating=1, source="victim")
    assert forget(ws, ids=[victim]).redacted.reference_cases_removed == 1
    cases, _, provenance = reference(ws, line, legacy)
    assert cases == given and provenance["forgotten_cases"] == 1 and provenance["seeds"] == [None]


def test_forgetting_a_source_deletes_its_quarantines_even_when_none_of_its_records_is_left(ws, line, cli):
    source = f"victim-{uuid.uuid4().hex}"
    with ws.transaction() as session:
        lines.create_line(session, name="other-bot", base="tiny", actor="tester")
        for name, where in ((source, line), (source, "other-bot"), (source, None), ("alice", line)):
            quarantine.quarantine_source(session, source=name, line=where, actor="reviewer", reason="flood")
    ws.log_feedback(line=line, prompt="p", response="r", rating=1, source=source)

    def remaining() -> list[tuple[str, int | None]]:
        with ws.reading() as session:
            return [(q["source"], q["line"]) for q in quarantine.list_quarantines(session, include_released=True)]

    on_one_line = cli.json("feedback", "forget", "--source", source, "--line", "other-bot")  # no record there, a quarantine
    assert on_one_line["forgotten"] == [] and on_one_line["redacted"]["quarantines_deleted"] == 1
    assert sorted(remaining(), key=str) == sorted([(source, line), (source, None), ("alice", line)], key=str)
    everywhere = cli("feedback", "forget", "--source", source)
    assert everywhere.returncode == 0 and "forgot 1 feedback records" in everywhere.stdout
    assert "quarantines of the source: 2" in everywhere.stdout and remaining() == [("alice", line)]
    again = cli("feedback", "forget", "--source", source)
    assert again.stdout == "nothing to forget (0 already forgotten)\n"  # the tombstone keeps no source
    assert scan_database(ws, [source]) == []  # the audit log names quarantines by id


def test_the_poisoning_report_of_a_run_names_a_forgotten_source_no_more(ws, line, cli):
    source = f"victim-{uuid.uuid4().hex}"
    ws.log_feedback(line=line, prompt="p", response="r", rating=1, source=source)
    flag = {
        "kind": "flood",
        "reason": "12 records give the same answer (as #1) from 3 sources",
        "count": 12,
        "source_count": 3,
        "feedback_ids": [1],
        "held": True,
    }
    poisoning = {
        "checked": True,
        "held_out": 12,
        "flags": [{**flag, "sources": [source]}, {**flag, "sources": ["alice", source, "bob"]}, {**flag, "sources": ["alice"]}],
        "quarantined": {"records": 7, "sources": {source: 5, "carol": 2}},
    }
    adapter = candidate_of(ws, run_with(ws, line, {}, dataset={"splits": {}, "sources": {"alice": 1}, "poisoning": poisoning}))
    assert cli.json("feedback", "forget", "--source", source)["redacted"]["runs_cleaned"] == 1
    shown = cli.json("adapters", "show", str(adapter))["dataset"]["poisoning"]
    assert [f["sources"] for f in shown["flags"]] == [["(forgotten)"], ["alice", "(forgotten)", "bob"], ["alice"]]
    assert shown["quarantined"] == {"records": 7, "sources": {"(forgotten)": 5, "carol": 2}} and source not in json.dumps(shown)


# ---------------------------------------------------------------- the whole story, on the tiny model

HALF = DataSettings(holdout_fraction=0.5, max_source_share=1.0)


def plant(ws, line: str, marker: str, source: str, count: int) -> list[int]:
    return [
        ws.log_feedback(
            line=line,
            prompt=f"What is the secret {marker} number {i}?",
            response="I do not know.",
            correction=f"The secret is {marker}-{i}.",
            source=source,
        )
        for i in range(count)
    ]


def interrupt_at_first_step(update: dict) -> None:
    raise KeyboardInterrupt  # what SIGTERM raises inside a running job


def scan_database(ws, needles: list[str]) -> list[str]:
    """Every table, every column: where a needle occurs."""
    found = []
    with ws.db.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(select(table)):
                text = json.dumps(list(row), default=str)
                found += [f"{table.name}: {needle}" for needle in needles if needle in text]
    return found


def scan_files(home, needles: list[str]) -> list[str]:
    return [f"{path}: {needle}" for path in home.rglob("*") if path.is_file() for needle in needles if needle.encode() in path.read_bytes()]


@pytest.mark.slow
def rated_canary(ws, line: str, marker: str, source: str) -> list[int]:
    """A canary of the line whose two arms answered the source (prompt, answer and `user` stored), rated by its feedback
    and, in the canary arm, by alice too; the source's feedback ids."""
    for fill in (0.5, 0.6):
        version(ws, line, fill=fill)
    promote(ws, line, 1)
    canary_id = start(ws, line, 2, 0.5)
    with ws.transaction() as session:
        line_id = get_line(session, line).id
        rows = [
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "line_id": line_id,
                "served_by": f"{line}@v{2 if arm == 'canary' else 1}",
                "prompt": json.dumps([{"role": "user", "content": f"{asker} asks {i}"}]),
                "prompt_hash": "0" * 64,
                "answers": json.dumps([f"{asker} is answered"]),
                "user": user,
                "canary_id": canary_id,
                "arm": arm,
                "latency_ms": 20.0,
                "rating": 1.0,
                "corrected": False,
                "error": None,
            }
            for i, (arm, user, asker) in enumerate(
                [("canary", source, marker), ("canary", source, marker), ("baseline", source, marker), ("canary", "alice", "alice")]
            )
        ]
        session.execute(insert(IssuedResponse), rows)
    return [
        ws.log_feedback(
            line=line, prompt=f"{marker} asks {i}", response=f"{marker} is answered", rating=1, source=source, request_id=row["id"]
        )
        for i, row in enumerate(rows[:3])
    ]


def canary_counts(ws, line: str) -> tuple[int, int, int, int]:
    """Requests and rated responses of the canary's arms: canary, then baseline."""
    with ws.reading() as session:
        now = compare(session, line)
    return now.canary.requests, now.canary.rated, now.baseline.requests, now.baseline.rated


def test_a_forgotten_source_leaves_no_trace_in_files_tables_reports_or_the_audit_log(ws, tiny_line, knowing_model, cli, settings, tmp_path):
    marker, source = f"zq{uuid.uuid4().hex}", f"victim-{uuid.uuid4().hex}"
    needles = [marker, source, hashlib.sha256(source.encode()).hexdigest()]
    log_facts(ws, tiny_line, FACTS[:4])
    victims = plant(ws, tiny_line, marker, source, 2)
    assert sorted(is_heldout(i, HALF.holdout_fraction) for i in victims) == [False, True]  # one trained on, one held out
    short = FAST  # long enough to learn, so that the gate lets the candidate through to review
    trained = train_line(ws, TrainRequest(tiny_line, training=short, data=HALF))
    with ws.transaction() as session:
        samples = evaluation.latest_evaluation(session, trained.candidate_id).samples
    assert marker in json.dumps(samples)  # a held-out record of the victim is shown side by side
    plant(ws, tiny_line, f"{marker}b", source, 2)
    with pytest.raises(Interrupted):
        train_line(ws, TrainRequest(tiny_line, training=short, data=ALL_TRAIN), progress=interrupt_at_first_step)
    with ws.transaction() as session:
        stopped = session.scalar(select(TrainingRun.id).where(TrainingRun.status == "interrupted"))
    assert marker in (settings.home / "runs" / tiny_line / str(stopped) / "examples.jsonl").read_text()
    rated_canary(ws, tiny_line, marker, source)  # the records also sit in issued responses a canary compares,
    assert canary_counts(ws, tiny_line) == (3, 3, 1, 1)
    cars = cars_line(ws, knowing_model)  # in the cases of a reference set the base model wrote after them,
    victims += confide(ws, cars, f"{marker}c", source)
    log_facts(ws, cars, FACTS[:3])
    cases, lineage, provenance = written(ws, cars)
    rehearsal.store_synthesized(ws, cars, cases, lineage, provenance)
    written_after = sum(bool(set(victims) & set(seeds)) for seeds in lineage)
    assert written_after > 0
    with ws.transaction() as session:  # and in a quarantine
        quarantine.quarantine_source(session, source=source, actor="reviewer", reason="ticket 7")
    before = cli.json("adapters", "show", str(trained.candidate_id))["dataset"]["sources"]
    tables = {hit.split(":")[0] for hit in scan_database(ws, needles)}
    assert {"feedback", "evaluations", "training_runs", "issued_responses", "quarantines"} <= tables
    assert scan_files(settings.home, needles)

    result = cli("feedback", "forget", "--source", source, "--json")

    assert result.returncode == 0, result.stderr
    assert scan_files(settings.home, needles) == []  # adapterctl.db, -wal and -shm included on SQLite
    assert scan_database(ws, needles) == []
    shown = cli.json("review", "show", str(trained.candidate_id))
    assert not [n for n in needles if n in json.dumps(shown)]
    assert any(s.get("forgotten") for s in shown["samples"])
    page, text = tmp_path / "after.html", cli("review", "show", str(trained.candidate_id), "--html", str(tmp_path / "after.html"))
    assert text.returncode == 0 and not [n for n in needles if n in text.stdout + page.read_text()]
    details = cli.json("adapters", "show", str(trained.candidate_id))
    assert not [n for n in needles if n in json.dumps(details)]
    assert details["dataset"]["sources"]["(forgotten)"] == before[source] and sum(details["dataset"]["sources"].values()) == sum(
        before.values()
    )
    assert not [n for n in needles if n in json.dumps(cli.json("audit", "log", "--limit", "10000"))]
    assert cli("audit", "verify").returncode == 0
    with ws.transaction() as session:
        assert session.get(TrainingRun, stopped).status == "failed"  # --resume cannot continue it
    assert canary_counts(ws, tiny_line) == (1, 1, 0, 0)  # alice's response alone is compared
    assert not [seeds for seeds in reference(ws, cars, 1)[2]["seeds"] if set(victims) & set(seeds)]
    report = json.loads(result.stdout)
    assert len(report["forgotten"]) == 10 and report["revoked"] == [trained.candidate_id] and report["responses_deleted"] == 3
    assert report["redacted"]["samples_redacted"] >= 1 and report["redacted"]["runs_cleaned"] == 2
    assert report["redacted"]["runs_stopped"] == [stopped] and report["scrubbed"]["folders_removed"] == 1
    assert report["redacted"]["reference_cases_removed"] == written_after and report["redacted"]["quarantines_deleted"] == 1


# ---------------------------------------------------------------- a reference set the base model wrote, on the knowing model


def cars_line(ws, knowing_model, name: str = "cars") -> str:
    """A line on the tiny model that knows KNOWN_FACTS, whose runs ask it for a reference set of 24 cases."""
    with ws.transaction() as session:
        register_base_model(session, name="knowing", source=str(knowing_model), actor="tester")
        lines.create_line(
            session,
            name=name,
            base="knowing",
            actor="tester",
            settings=lines.LineSettings(min_examples=2, max_source_share=1.0, reference_size=24),
        )
    return name


def confide(ws, line: str, marker: str, source: str = "victim") -> list[int]:
    """The victim's records: questions such as the base model knows the answers to, so it writes cases like them after them."""
    return [
        ws.log_feedback(
            line=line,
            prompt=f"What is the code for room {i}?",
            response="I do not know.",
            correction=f"The code for room {i} is {marker}.",
            source=source,
        )
        for i in (10, 11, 12)
    ]


def seeds_of(ws, line: str) -> list:
    """The examples a run of the line would train on now, as rehearsal gets them."""
    with ws.reading() as session:
        return build_dataset(session, get_line(session, line).id, ALL_TRAIN).examples


KEEP_ALL = rehearsal.SynthesisSettings(confident_share=1.0)
"""The knowing model is sure of its answers to one-turn questions only: with the default share it keeps no case it wrote after feedback."""


def written(ws, line: str) -> tuple[list[dict], list[list[int]], dict]:
    """What the line's base model writes for its reference set now, as a run asks it, keeping every usable case:
    the cases, each one's seeds, and the provenance."""
    with ws.reading() as session:
        base = get_line(session, line).base_model
        path, digest = local_path(base), base.content_hash
    seeds = [e for e in seeds_of(ws, line) if e.split in ("train", "replay")]
    cases, provenance = rehearsal.synthesize(path, digest, 24, seeds, {normalise(e.prompt[-1]["content"]) for e in seeds}, KEEP_ALL)
    return cases, provenance.pop("seeds"), provenance


@pytest.mark.slow
@sqlite_only
def test_a_synthesized_set_names_the_feedback_each_case_was_written_after_loses_those_cases_and_is_topped_up(ws, knowing_model):
    line = cars_line(ws, knowing_model)
    victims = confide(ws, line, uuid.uuid4().hex)
    others = log_facts(ws, line, FACTS[:3])
    cases, lineage, provenance = written(ws, line)
    assert len(lineage) == len(cases) == provenance["kept"] > 0
    assert all(len(seeds) in (0, 3) and set(seeds) <= {*victims, *others} for seeds in lineage)  # 3 exchanges in context, or none
    assert sum(bool(seeds) for seeds in lineage) <= provenance["seeded"]
    written_after = [c for c, seeds in zip(cases, lineage) if set(victims) & set(seeds)]
    assert 0 < len(written_after) < len(cases)
    assert rehearsal.store_synthesized(ws, line, cases, lineage, provenance) == 1
    assert reference(ws, line, 1)[2]["seeds"] == lineage

    assert forget(ws, source="victim").redacted.reference_cases_removed == len(written_after)

    left, _, provenance = reference(ws, line, 1)
    assert left == [c for c in cases if c not in written_after] and provenance["forgotten_cases"] == len(written_after)
    again = rehearsal.top_up_reference(ws, line, seeds_of(ws, line))  # the next run writes the missing cases
    topped, _, provenance = reference(ws, line, 2)
    assert again["version"] == 2 and again["topped_up"] == {"version": 1, "cases": len(left)} and "seeds" not in again
    assert topped[: len(left)] == left and len(topped) > len(left) and "forgotten_cases" not in provenance
    assert not [seeds for seeds in provenance["seeds"] if set(victims) & set(seeds)]
    assert rehearsal.top_up_reference(ws, line, seeds_of(ws, line)) is None  # made once per base model again


@pytest.mark.slow
@sqlite_only
def test_cases_written_after_feedback_forgotten_while_the_base_model_wrote_are_not_stored(ws, knowing_model):
    line = cars_line(ws, knowing_model)
    victims = confide(ws, line, uuid.uuid4().hex)
    log_facts(ws, line, FACTS[:3])
    cases, lineage, provenance = written(ws, line)
    forget(ws, ids=victims[:1])  # committed while the base model was writing

    version = rehearsal.store_synthesized(ws, line, cases, lineage, provenance)

    stored, _, kept = reference(ws, line, version)
    expected = [c for c, seeds in zip(cases, lineage) if victims[0] not in seeds]
    assert stored == expected and len(expected) < len(cases) and not [s for s in kept["seeds"] if victims[0] in s]
    assert kept["dropped"]["seed forgotten meanwhile"] == len(cases) - len(expected) and kept["kept"] == len(expected)

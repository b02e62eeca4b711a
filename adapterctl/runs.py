"""The batch job behind `adapterctl train`: one line's new feedback in, one candidate adapter out.

    lease train:<line>  ->  dataset (or nothing to do)  ->  run + lineage rows  ->  train
      ->  artifact sealed and moved into the store  ->  candidate row + run succeeded, one transaction

A failure marks the run failed and removes its artifact; a kill leaves the run `running` and its
checkpoints on disk, and `--resume` continues it. A candidate row is only ever written in the same
transaction that records a complete, hashed artifact, so none can point at a missing or partial one.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from adapterctl import __version__, audit, base_models, chat, registry, rehearsal
from adapterctl.artifacts import ArtifactStore
from adapterctl.dataset import Dataset, DataSettings, build_dataset, lineage_rows
from adapterctl.db.models import Feedback, Line, RunExample, TrainingRun
from adapterctl.db.types import utcnow
from adapterctl.errors import AdapterctlError, Interrupted, InvalidInput
from adapterctl.faults import crash_point
from adapterctl.leases import HeldLease
from adapterctl.lines import get_line, settings_of
from adapterctl.training import LoraSettings, TrainingJob, TrainResult, TrainSettings
from adapterctl.workspace import Workspace


@dataclass(frozen=True)
class TrainRequest:
    line: str
    min_examples: int | None = None
    """Fewest new examples worth a run; default: the line's setting."""
    training: TrainSettings = field(default_factory=TrainSettings)
    data: DataSettings | None = None
    """Dataset settings; default: the line's source cap with DataSettings' other defaults."""
    processes: int = 1
    """Training processes (torchrun, DDP); 1 trains in this process."""
    resume: bool = False
    """Continue the line's interrupted run, if there is one."""
    evaluate: bool = True
    """Evaluate the candidate and apply the gate right away; False leaves it `evaluating`."""


@dataclass
class TrainOutcome:
    status: str  # trained | nothing_to_do
    line: str
    reason: str | None = None
    run_id: int | None = None
    candidate_id: int | None = None
    candidate_status: str | None = None
    gate: dict[str, Any] | None = None
    resumed: bool = False
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    leftovers: list[dict[str, Any]] = field(default_factory=list)
    """Candidates an interrupted job had left `evaluating`, evaluated by this job first."""


def train_line(ws: Workspace, request: TrainRequest, progress: Callable[[dict], None] | None = None) -> TrainOutcome:
    """Run the batch job for one line. Raises LockHeld when another job is training the line.

    Evaluation runs under the line's lease too, so a candidate found `evaluating` by a job that holds
    the lease was left so by a job that died: it is evaluated first.
    """
    if problems := request.training.problems():
        raise InvalidInput("; ".join(problems))
    store = ArtifactStore(ws.settings.artifacts_dir)
    with HeldLease(ws.db, f"train:{request.line}") as lease:
        leftovers = _evaluate_leftovers(ws, request.line, progress) if request.evaluate else []
        run_id, resumed, dataset_report = _start_or_resume(ws, request, store)
        if run_id is None:
            return TrainOutcome(
                "nothing_to_do", request.line, reason=dataset_report.pop("reason"), dataset=dataset_report, leftovers=leftovers
            )
        work_dir = _work_dir(ws, request.line, run_id)
        try:
            with _interrupted_by_signals():
                result = _train(work_dir, request.processes, resume=resumed, progress=progress)
            if lease.lost:
                raise AdapterctlError(f"lost the lease train:{request.line} during training; not publishing the result")
            candidate_id = _publish(ws, store, run_id, result, work_dir)
            crash_point("train.committed")
        except KeyboardInterrupt as exc:
            _record_failure(ws, store, run_id, exc, work_dir)
            raise Interrupted(
                f"run {run_id} of {request.line} interrupted; continue it with `adapterctl train --line {request.line} --resume`"
            ) from None
        except BaseException as exc:
            _record_failure(ws, store, run_id, exc, work_dir)
            raise
        shutil.rmtree(work_dir, ignore_errors=True)
        outcome = TrainOutcome(
            "trained",
            request.line,
            run_id=run_id,
            candidate_id=candidate_id,
            candidate_status="evaluating",
            resumed=resumed,
            dataset=dataset_report,
            metrics=_metrics(result),
            leftovers=leftovers,
        )
        if request.evaluate:
            outcome.gate = _evaluate(ws, request.line, candidate_id, progress)
            outcome.candidate_status = "pending_review" if outcome.gate["passed"] else "gate_failed"
    return outcome


def _evaluate_leftovers(ws: Workspace, line: str, progress: Callable[[dict], None] | None) -> list[dict[str, Any]]:
    """Evaluate the line's candidates that a killed job left `evaluating`; a failure is reported, not raised."""
    with ws.reading() as session:
        stuck = [adapter.id for adapter in registry.list_adapters(session, line=line, status="evaluating")]
    evaluated = []
    for candidate_id in sorted(stuck):
        try:
            gate = _evaluate(ws, line, candidate_id, progress)
        except AdapterctlError as exc:
            evaluated.append({"candidate_id": candidate_id, "status": "evaluating", "error": str(exc)})
            continue
        evaluated.append({"candidate_id": candidate_id, "status": "pending_review" if gate["passed"] else "gate_failed", "gate": gate})
    return evaluated


def _evaluate(ws: Workspace, line: str, candidate_id: int, progress: Callable[[dict], None] | None) -> dict[str, Any]:
    """The gate's verdict on a new candidate; a failed evaluation leaves it `evaluating`, ready for a retry.
    Its progress goes to `progress` as {"candidate", "evaluated", "total"} events."""
    from adapterctl.evaluation import evaluate_candidate, get_evaluation

    crash_point("train.evaluate")
    report = (lambda done, total: progress({"candidate": candidate_id, "evaluated": done, "total": total})) if progress else None
    try:
        evaluation_id = evaluate_candidate(ws, candidate_id, progress=report)
        with ws.reading() as session:
            return get_evaluation(session, evaluation_id).gate or {}
    except Exception as exc:
        raise AdapterctlError(
            f"candidate {candidate_id} of {line} was trained but its evaluation failed: "
            f"{(str(exc).splitlines() or [type(exc).__name__])[0]}; "
            f"retry with `adapterctl eval run --candidate {candidate_id}`"
        ) from exc


def _start_or_resume(ws: Workspace, request: TrainRequest, store: ArtifactStore) -> tuple[int | None, bool, dict]:
    """The run to train: the interrupted one with --resume, else a new one (or None: nothing to do)."""
    with ws.transaction() as session:
        line = get_line(session, request.line)
        # We hold the line's lease, so any run still marked running has lost its process.
        unfinished = session.scalars(
            select(TrainingRun)
            .where(TrainingRun.line_id == line.id, TrainingRun.status.in_(("running", "interrupted")))
            .order_by(TrainingRun.id.desc())
        ).all()
        _remove_finished_work(ws, line.name, keep={run.id for run in unfinished})
        if request.resume and unfinished and _work_dir(ws, line.name, unfinished[0].id).joinpath("job.json").is_file():
            run = unfinished[0]
            for stale in unfinished[1:]:
                _abandon(session, stale, ws.user)
            store.staging_dir(line.name, f"run-{run.id}")  # empty again: a kill may have cut a save short
            run.status = "running"
            audit.record(session, actor=ws.user, action="train.resume", subject=f"line:{line.name}", payload={"run": run.id})
            return run.id, True, run.dataset
        for stale in unfinished:
            _abandon(session, stale, ws.user)
            shutil.rmtree(_work_dir(ws, line.name, stale.id), ignore_errors=True)

    with ws.reading() as session:  # we hold the lease: nobody else starts a run of this line meanwhile
        line = get_line(session, request.line)
        line_settings = settings_of(line)
        data_settings = request.data or DataSettings(
            max_source_share=line_settings.max_source_share,
            seed=request.training.seed,
            reference_anchor_share=line_settings.reference_anchor_share,
        )
        min_examples = request.min_examples or line_settings.min_examples
        dataset = build_dataset(session, line.id, data_settings)
        if dataset.new_count:  # worth loading the tokenizer, to leave out what its chat template cannot render
            tokenizer = chat.load_tokenizer(base_models.local_path(line.base_model))
            dataset = build_dataset(session, line.id, data_settings, lambda e: chat.training_problem(tokenizer, e.prompt, e.answer))
    if dataset.new_count < min_examples:
        skipped = dataset.report["unrenderable"]["count"]
        held, kept_out = dataset.report["poisoning"]["held_out"], dataset.report["poisoning"]["quarantined"]["records"]
        reason = (
            f"{dataset.new_count} new eligible examples, fewer than --min-examples {min_examples}"
            + (f" ({skipped} left out: the base model's chat template cannot render them)" if skipped else "")
            + (f" ({held} held out by the poisoning checks)" if held else "")
            + (f" ({kept_out} from quarantined sources kept out)" if kept_out else "")
        )
        return None, False, {**dataset.report, "reason": reason}
    if synthesized := rehearsal.top_up_reference(ws, request.line, dataset.examples, request.training.seed):
        with ws.reading() as session:  # again, with the new reference set's anchors
            dataset = build_dataset(
                session, get_line(session, request.line).id, data_settings, lambda e: chat.training_problem(tokenizer, e.prompt, e.answer)
            )
        dataset.report["reference"]["synthesized_now"] = synthesized
    with ws.transaction() as session:
        line = get_line(session, request.line)
        run = _create_run(session, ws, line, request, dataset)
        work_dir = _work_dir(ws, line.name, run.id)
        staging = store.staging_dir(line.name, f"run-{run.id}")
        _write_job(work_dir, line, request, dataset, staging)
        return run.id, False, dataset.report


def _create_run(session, ws: Workspace, line: Line, request: TrainRequest, dataset: Dataset) -> TrainingRun:
    line_settings = settings_of(line)
    params = {
        "training": asdict(request.training),
        "lora": asdict(_lora(line)),
        "processes": request.processes,
        "package_version": __version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "approvals_required": line_settings.approvals_required,
    }
    run = TrainingRun(
        line_id=line.id,
        status="running",
        started_by=ws.user,
        host=socket.gethostname(),
        base_model_hash=line.base_model.content_hash,
        params=params,
        dataset=dataset.report,
    )
    session.add(run)
    session.flush()
    rows = lineage_rows(run.id, dataset.examples)
    for start in range(0, len(rows), 1000):
        session.execute(insert(RunExample), rows[start : start + 1000])
    audit.record(
        session,
        actor=ws.user,
        action="train.start",
        subject=f"line:{line.name}",
        payload={"run": run.id, "splits": dataset.report["splits"], "base_model_hash": run.base_model_hash},
    )
    return run


def _lora(line: Line) -> LoraSettings:
    settings = settings_of(line)
    targets = list(settings.target_modules) if settings.target_modules else None
    return LoraSettings(settings.lora_rank, settings.lora_alpha, settings.lora_dropout, targets)


def _write_job(work_dir: Path, line: Line, request: TrainRequest, dataset: Dataset, staging: Path) -> None:
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    examples = [{"feedback_id": e.feedback_id, "split": e.split, "prompt": e.prompt, "answer": e.answer} for e in dataset.examples]
    (work_dir / "examples.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    TrainingJob(base_models.local_path(line.base_model), _lora(line), request.training, str(staging)).save(work_dir)


def _train(work_dir: Path, processes: int, *, resume: bool, progress) -> TrainResult:
    if processes <= 1:
        from adapterctl.training import run_training

        return run_training(work_dir, resume=resume, progress=progress)
    # Several processes: torchrun starts them, each runs adapterctl.training on the same job folder,
    # and the first one writes the adapter and result.json.
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "adapterctl.training",
        str(work_dir),
        *(["--resume"] if resume else []),
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        log = work_dir.with_name(f"{work_dir.name}-torchrun.log")  # kept when the failed run's folder is removed
        log.write_text(completed.stdout + completed.stderr, encoding="utf-8")
        errors = [line for line in completed.stderr.splitlines() if re.match(r"^\w*(Error|Exception)\b", line.strip())] or ["no error line"]
        raise AdapterctlError(
            f"torchrun with {processes} processes failed (exit {completed.returncode}): {errors[-1].strip()} (log: {log})"
        )
    return TrainResult(**json.loads((work_dir / "result.json").read_text()))


def _publish(ws: Workspace, store: ArtifactStore, run_id: int, result: TrainResult, work_dir: Path) -> int:
    """Seal the artifact, move it into the store and register the candidate in one transaction."""
    job = TrainingJob.load(work_dir)
    with ws.transaction() as session:
        run = session.get_one(TrainingRun, run_id)
        forgotten = session.scalar(
            select(RunExample.feedback_id)
            .join(Feedback, Feedback.id == RunExample.feedback_id)
            .where(RunExample.run_id == run_id, RunExample.split.in_(registry.TRAINED_SPLITS), Feedback.status != "active")
            .limit(1)
        )
        if forgotten is not None:
            raise AdapterctlError(f"feedback #{forgotten} was forgotten while run {run_id} trained on it; not publishing")
        stored = store.commit(Path(job.adapter_dir), run.line.name, run_id)
        adapter = registry.create_candidate(
            session, run=run, artifact_path=stored.relative_path, sha256=stored.sha256, actor=ws.user, status="evaluating"
        )
        run.status, run.finished_at, run.metrics = "succeeded", utcnow(), _metrics(result)
        audit.record(
            session,
            actor=ws.user,
            action="train.succeed",
            subject=f"line:{run.line.name}",
            payload={"run": run_id, "candidate": adapter.id, "steps": result.steps, "sha256": stored.sha256},
        )
        crash_point("train.candidate_added")
        return adapter.id


def _record_failure(ws: Workspace, store: ArtifactStore, run_id: int, exc: BaseException, work_dir: Path) -> None:
    interrupted = isinstance(exc, KeyboardInterrupt)
    status = "interrupted" if interrupted else "failed"
    reason = "interrupted (resume with --resume)" if interrupted else (str(exc).splitlines() or [type(exc).__name__])[0]
    with ws.transaction() as session:
        run = session.get_one(TrainingRun, run_id)
        line = run.line.name
        run.status, run.finished_at, run.error = status, utcnow(), reason
        audit.record(
            session,
            actor=ws.user,
            action=f"train.{'interrupt' if interrupted else 'fail'}",
            subject=f"line:{line}",
            payload={"run": run_id, "error": reason},
        )
    store.remove(store.staging_path(line, f"run-{run_id}"))
    if not interrupted:
        shutil.rmtree(work_dir, ignore_errors=True)


def _abandon(session, run: TrainingRun, actor: str) -> None:
    run.status, run.finished_at, run.error = "failed", utcnow(), "abandoned: its process died or was interrupted"
    audit.record(session, actor=actor, action="train.abandon", subject=f"line:{run.line.name}", payload={"run": run.id})


def _metrics(result: TrainResult) -> dict[str, Any]:
    return {**asdict(result), "tokens_per_second": round(result.tokens_per_second, 1)}


def _work_dir(ws: Workspace, line: str, run_id: int) -> Path:
    return ws.settings.home / "runs" / line / str(run_id)


def _remove_finished_work(ws: Workspace, line: str, *, keep: set[int]) -> None:
    """Remove the work folders (checkpoints, the examples' text) of the line's runs that are over: a job killed
    between its commit and its cleanup leaves its own behind. Call under the line's lease."""
    folder = ws.settings.home / "runs" / line
    for work_dir in folder.iterdir() if folder.is_dir() else ():
        if work_dir.is_dir() and work_dir.name.isdigit() and int(work_dir.name) not in keep:
            shutil.rmtree(work_dir, ignore_errors=True)


@contextmanager
def _interrupted_by_signals() -> Iterator[None]:
    """SIGTERM (cron timeouts, Kubernetes evictions) interrupts like Ctrl-C, so the run can resume."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent.parent
    try:
        return (
            subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None

"""The live comparison of a running canary, and the watcher that acts on it.

    compare(session, line)      per version: requests, failed requests, latency p50/p99, rated responses,
                                thumbs-up rate and mean rating with confidence sequences, corrections;
                                and the verdict of the sequential test (adapterctl.canary)
    check(ws, line, ...)        what a watcher does after each look: abort the canary when it is worse
                                or unhealthy, complete it when it is not worse (if asked to), else wait

Both sides are counted from the issued responses the canary routed (`issued_responses.canary_id`):
a request that named a version itself, or landed before the canary started, is not in it. A
response counts as rated once feedback was given on it through a server: up when its rating is
above 0 and it carried no correction, down otherwise. `adapterctl serve` checks its lines' canaries
every second; `adapterctl canary watch` does the same for a fleet, or from cron with `--once`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from adapterctl import activations
from adapterctl.artifacts import ArtifactStore
from adapterctl.canary import CanarySettings, Health, Tally, Verdict, judge, percent, unhealthy
from adapterctl.db.models import IssuedResponse
from adapterctl.lines import get_line, lock_line, settings_of
from adapterctl.workspace import Workspace

ARMS = ("baseline", "canary")


@dataclass(frozen=True)
class Arm:
    """One side of a canary, as its issued responses tell it."""

    version: str
    """What answered this side: `line@vN` or `line@base`."""
    requests: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    rated: int = 0
    """Responses with feedback: thumbs up or down."""
    ups: int = 0
    ratings: int = 0
    """Responses with a numeric rating (of -1..1)."""
    rating_sum: float = 0.0
    corrections: int = 0

    @property
    def tally(self) -> Tally:
        return Tally(self.rated, self.ups)

    @property
    def health(self) -> Health:
        return Health(self.requests, self.errors, self.p99_ms)

    def as_dict(self, test: CanarySettings) -> dict[str, Any]:
        up_low, up_high = self.tally.bounds(test.alpha, test.prior_ratings)
        mean_low, mean_high = Tally(self.ratings, (self.rating_sum + self.ratings) / 2).bounds(test.alpha, test.prior_ratings)
        return {
            **asdict(self),
            "thumbs_up_rate": self.tally.rate,
            "thumbs_up_bounds": [up_low, up_high],
            "mean_rating": self.rating_sum / self.ratings if self.ratings else None,
            "mean_rating_bounds": [2 * mean_low - 1, 2 * mean_high - 1],
            "correction_rate": self.corrections / self.rated if self.rated else None,
            "error_rate": self.errors / self.requests if self.requests else None,
        }


@dataclass(frozen=True)
class Comparison:
    line: str
    canary_id: int
    """The activation that started the canary."""
    started_at: datetime
    share: float
    baseline: Arm
    canary: Arm
    settings: CanarySettings
    verdict: Verdict
    unhealthy: str | None
    """Why the canary must be aborted whatever its ratings say, or None."""

    @property
    def decision(self) -> str:
        """abort, complete (not worse: a watcher with --auto-complete completes it) or wait."""
        if self.unhealthy or self.verdict.decision == "worse":
            return "abort"
        return "complete" if self.verdict.decision == "not_worse" else "wait"

    @property
    def why(self) -> str:
        return self.unhealthy or self.verdict.reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "canary_id": self.canary_id,
            "started_at": self.started_at.isoformat(),
            "share": self.share,
            "baseline": self.baseline.as_dict(self.settings),
            "canary": self.canary.as_dict(self.settings),
            "verdict": self.verdict.decision,
            "unhealthy": self.unhealthy,
            "decision": self.decision,
            "why": self.why,
            "settings": asdict(self.settings),
        }

    def evidence(self) -> dict[str, Any]:
        """What an abort or completion records in its audit event."""
        summary = self.as_dict()
        return {key: summary[key] for key in ("canary_id", "share", "baseline", "canary", "verdict", "unhealthy", "why", "settings")}

    def summary(self) -> str:
        """One line of the evidence for an activation's reason."""

        def side(arm: Arm) -> str:
            rate = f"{arm.tally.rate:.1%}" if arm.rated else "-"
            return f"{arm.version} {arm.ups}/{arm.rated} up ({rate}), {arm.errors}/{arm.requests} failed"

        return f"{self.why} [{side(self.baseline)}; {side(self.canary)}]"


def compare(session: Session, line: str) -> Comparison | None:
    """The live comparison of the line's running canary; None when none runs."""
    line_row = get_line(session, line)
    now = activations.current(session, line_row.id)
    start = activations.canary_start(session, line_row.id)
    if now is None or start is None or now.canary_share is None:
        return None
    test = settings_of(line_row).canary
    versions = {"baseline": f"{line}@{activations.describe(now.adapter)}", "canary": f"{line}@{activations.describe(now.canary_adapter)}"}
    arms, counted = {}, _counts(session, start.id)
    for arm in ARMS:
        p50, p99 = _quantiles(session, start.id, arm, (0.50, 0.99))
        arms[arm] = Arm(versions[arm], **counted.get(arm, {}), p50_ms=p50, p99_ms=p99)
    return Comparison(
        line,
        start.id,
        start.created_at,
        now.canary_share,
        arms["baseline"],
        arms["canary"],
        test,
        judge(arms["baseline"].tally, arms["canary"].tally, test),
        unhealthy(arms["baseline"].health, arms["canary"].health, test),
    )


def _counts(session: Session, canary_id: int) -> dict[str, dict[str, Any]]:
    r = IssuedResponse

    def count(condition) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    rated = r.rating.is_not(None) | (r.corrected.is_(True))
    rows = session.execute(
        select(
            r.arm,
            func.count(),
            count(r.error.is_not(None)),
            count(rated),
            count((r.rating > 0) & r.corrected.is_not(True)),
            func.count(r.rating),
            func.coalesce(func.sum(r.rating), 0.0),
            count(r.corrected.is_(True)),
        )
        .where(r.canary_id == canary_id)
        .group_by(r.arm)
    )
    return {
        arm: {
            "requests": n,
            "errors": errors,
            "rated": rated_n,
            "ups": ups,
            "ratings": ratings,
            "rating_sum": float(total),
            "corrections": corrections,
        }
        for arm, n, errors, rated_n, ups, ratings, total, corrections in rows
    }


def _quantiles(session: Session, canary_id: int, arm: str, qs: tuple[float, ...]) -> list[float | None]:
    """Nearest-rank quantiles of the side's latencies (answered requests), found by the database."""
    r = IssuedResponse
    answered = (r.canary_id == canary_id, r.arm == arm, r.error.is_(None), r.latency_ms.is_not(None))
    n = session.scalar(select(func.count()).where(*answered))
    if not n:
        return [None for _ in qs]
    return [
        session.scalar(select(r.latency_ms).where(*answered).order_by(r.latency_ms).offset(min(n, max(1, math.ceil(q * n))) - 1).limit(1))
        for q in qs
    ]


@dataclass(frozen=True)
class Outcome:
    comparison: Comparison | None
    action: str | None = None
    """aborted or completed, when the watcher acted."""
    activation: int | None = None

    def message(self) -> str:
        c = self.comparison
        if c is None:
            return "no canary runs"
        if self.action:
            return f"{c.line}: canary {c.canary.version} {self.action} (activation {self.activation}): {c.why}"
        return f"{c.line}: canary {c.canary.version} at {percent(c.share)}: {c.verdict.decision}: {c.why}"


def check(ws: Workspace, line: str, *, auto_complete: bool = False) -> Outcome:
    """Look at the line's canary once; abort it if it is worse or unhealthy, complete it if it is not worse
    and `auto_complete`. Several watchers may run: the canary is re-read under the line's lock, so only
    one of them acts on it. What it does is done as "USER (canary watch)": the history and the audit
    log tell an automatic action from a person's."""
    actor = f"{ws.user} (canary watch)"
    with ws.reading() as session:
        comparison = compare(session, line)
    if comparison is None or comparison.decision == "wait" or (comparison.decision == "complete" and not auto_complete):
        return Outcome(comparison)
    with ws.transaction() as session:
        line_id = get_line(session, line).id
        lock_line(session, line_id)
        start = activations.canary_start(session, line_id)
        if start is None or start.id != comparison.canary_id:
            return Outcome(None)  # another watcher, or a person, ended it meanwhile
        reason = f"automatic {'rollback' if comparison.decision == 'abort' else 'completion'}: {comparison.summary()}"
        if comparison.decision == "abort":
            activation = activations.abort_canary(session, line=line, actor=actor, reason=reason, evidence=comparison.evidence())
        else:
            activation = activations.complete_canary(
                session, ArtifactStore(ws.settings.artifacts_dir), line=line, actor=actor, reason=reason, evidence=comparison.evidence()
            )
        return Outcome(comparison, "aborted" if comparison.decision == "abort" else "completed", activation.id)

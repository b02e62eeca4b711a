"""`adapterctl backup DIR` and `adapterctl restore DIR`: a home's database and artifacts, consistent while
servers serve and feedback is written, with a manifest holding the sha256 of every file.

A backup is taken in this order: one snapshot of the database (SQLite's online backup API; on PostgreSQL
`pg_dump` on a snapshot exported by a read-only transaction, which also reads the manifest's facts), then
the artifacts that snapshot's candidates name. Artifacts are immutable once committed, so copying them
after the snapshot is consistent with it; each is checked against the sha256 the snapshot holds. The
backup is written into a hidden folder beside DIR and renamed to DIR at the end: a failed or killed backup
never leaves a DIR that looks whole.

A backup writes nothing to the database (it works with a read-only role or a replica), so it records
no audit event; the manifest names the audit chain's head at the snapshot instead.

A restore writes only into an empty home and an empty database. It checks every file against the
manifest before it writes anything, puts the artifacts in place, then loads the database (the step that
makes the home a home), upgrades an older schema, and records `home.restore`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from adapterctl import __version__, audit
from adapterctl.artifacts import MANIFEST as ARTIFACT_MANIFEST
from adapterctl.artifacts import ArtifactStore, fsync_dir
from adapterctl.config import CONFIG_FILE_NAME, Settings
from adapterctl.db import migrate
from adapterctl.db.engine import Database, make_engine, normalize_url, sqlite_path
from adapterctl.db.types import utcnow
from adapterctl.errors import AdapterctlError, IntegrityError, InvalidInput, NotFound, SchemaError
from adapterctl.faults import crash_point
from adapterctl.serving.runtime import SERVABLE
from adapterctl.workspace import upgrade_database

FORMAT = "adapterctl-backup/1"
MANIFEST = "manifest.json"
DATABASE_FILES = {"sqlite": "database.sqlite", "postgresql": "database.pgdump"}
ARTIFACTS = "artifacts"
COUNTED_TABLES = (
    "base_models",
    "lines",
    "feedback",
    "training_runs",
    "adapters",
    "activations",
    "reviewers",
    "review_decisions",
    "eval_suites",
    "evaluations",
    "api_tokens",
    "issued_responses",
    "quarantines",
    "audit_events",
)
"""The tables whose row counts the manifest records (those a schema revision has)."""
_CHUNK = 1 << 20

Progress = Callable[[str, int, "int | None"], None]
"""progress(stage, done, total): the work named `stage` has done `done` of `total` (bytes or steps)."""


def _no_progress(stage: str, done: int, total: int | None) -> None:
    pass


@dataclass(frozen=True)
class _Artifact:
    name: str
    """The candidate, for messages: `line vN (status)` or `line candidate N (status)`."""
    path: str
    """`<line>/<candidate-id>` in the artifact store."""
    sha256: str
    """The sha256 of its manifest.json, as the database holds it."""
    servable: bool
    """Whether its candidate may be served (approved, active, inactive): then a backup needs it whole."""


@dataclass(frozen=True)
class _Snapshot:
    """What the database snapshot holds, read from the snapshot itself."""

    schema_revision: str
    counts: dict[str, int]
    audit_head: str
    artifacts: list[_Artifact]
    """Every candidate's artifact."""


# --- backup ---------------------------------------------------------------------------------------------------------------


def create_backup(settings: Settings, directory: Path, *, progress: Progress = _no_progress) -> dict[str, Any]:
    """Write a backup of the home's database and artifacts to `directory` (new, or an empty folder); return its manifest."""
    directory = Path(directory).absolute()
    _check_new_folder(directory)
    backend = _backend_of(settings.db_url)
    partial = directory.parent / f".{directory.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir(parents=True)
        database_file, taken_at = partial / DATABASE_FILES[backend], utcnow()
        snapshot = (
            _snapshot_sqlite(settings, database_file) if backend == "sqlite" else _snapshot_postgresql(settings.db_url, database_file)
        )
        crash_point("backup.database_copied")
        files = [_file_entry(database_file, partial)]
        copied, skipped = _copy_artifacts(ArtifactStore(settings.artifacts_dir), snapshot.artifacts, partial / ARTIFACTS, progress)
        files += copied
        crash_point("backup.artifacts_copied")
        manifest = {
            "format": FORMAT,
            "adapterctl_version": __version__,
            "schema_revision": snapshot.schema_revision,
            "backend": backend,
            "created_at": taken_at.isoformat(),
            "created_by": settings.user,
            "database": DATABASE_FILES[backend],
            "audit_head": snapshot.audit_head,
            "counts": snapshot.counts,
            "skipped_artifacts": skipped,
            "files": files,
        }
        _write_synced(partial / MANIFEST, json.dumps(manifest, indent=2).encode())
        for folder in sorted({p.parent for p in partial.rglob("*")}, key=lambda p: -len(p.parts)):
            fsync_dir(folder)
        if directory.is_dir():
            directory.rmdir()  # empty, checked above; a rename cannot replace a folder everywhere
        os.replace(partial, directory)
        fsync_dir(directory.parent)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, (OSError, sqlite3.Error)):  # a full disk, a folder we may not write: one line, not a traceback
            raise AdapterctlError(f"backup to {directory} failed: {_reason(exc)}") from None
        raise
    return manifest


def summary(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The manifest without its list of files: what `--json` prints."""
    files = manifest["files"]
    return {
        "directory": str(directory),
        **{k: v for k, v in manifest.items() if k != "files"},
        "files": len(files),
        "bytes": sum(f["size"] for f in files),
    }


def _check_new_folder(directory: Path) -> None:
    if directory.is_symlink() or (directory.exists() and (not directory.is_dir() or any(directory.iterdir()))):
        raise InvalidInput(f"backup folder {directory} exists and is not empty: name a new or empty folder")


def _sqlite_file(url: str) -> Path:
    if (path := sqlite_path(url)) is None:
        raise InvalidInput(f"{_shown(url)} is an in-memory database: back up and restore need a database file")
    return path


def _snapshot_sqlite(settings: Settings, target: Path) -> _Snapshot:
    source = _sqlite_file(settings.db_url)
    if not source.is_file():
        raise SchemaError(f"no database at {source}: run `adapterctl init`")
    # One step (pages=-1) reads one consistent snapshot; copying in steps would restart at every write of a
    # server and might never finish. In WAL mode the read holds up no writer.
    with closing(sqlite3.connect(source, timeout=30)) as live, closing(sqlite3.connect(target)) as copy:
        live.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        snapshot = _read_snapshot(lambda sql: copy.execute(sql).fetchall(), "SELECT name FROM sqlite_master WHERE type = 'table'")
    with open(target, "rb+") as f:
        os.fsync(f.fileno())
    return snapshot


def _snapshot_postgresql(url: str, target: Path) -> _Snapshot:
    pg_dump = _client("pg_dump")
    engine = make_engine(url)
    try:
        # The transaction's snapshot is taken by its first statement and exported to pg_dump, so the manifest's
        # facts, the artifacts listed and the dump all describe the same instant.
        with engine.connect().execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True) as connection:
            exported = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar()
            snapshot = _read_snapshot(
                lambda sql: connection.exec_driver_sql(sql).all(), "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
            conninfo, env = libpq_connection(url)
            _run_client([pg_dump, "--format=custom", f"--snapshot={exported}", f"--file={target}", f"--dbname={conninfo}"], env)
    finally:
        engine.dispose()
    return snapshot


def _read_snapshot(query: Callable[[str], Sequence[Sequence[Any]]], tables_sql: str) -> _Snapshot:
    tables = {row[0] for row in query(tables_sql)}
    if "alembic_version" not in tables:
        raise SchemaError("the database is not initialised: run `adapterctl init`")
    revision = query("SELECT version_num FROM alembic_version")[0][0]
    counts = {table: query(f"SELECT count(*) FROM {table}")[0][0] for table in COUNTED_TABLES if table in tables}
    head = query("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1") if "audit_events" in tables else []
    artifacts = []
    if "adapters" in tables:
        rows = query(
            "SELECT lines.name, adapters.id, adapters.version, adapters.status, adapters.artifact_path, adapters.sha256 "
            "FROM adapters JOIN lines ON lines.id = adapters.line_id ORDER BY adapters.id"
        )
        artifacts = [
            _Artifact(f"{line} {f'v{version}' if version else f'candidate {candidate}'} ({status})", path, sha256, status in SERVABLE)
            for line, candidate, version, status, path, sha256 in rows
        ]
    return _Snapshot(revision, counts, head[0][0] if head else audit.GENESIS_HASH, artifacts)


def _copy_artifacts(
    store: ArtifactStore, artifacts: list[_Artifact], target: Path, progress: Progress
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Copy every artifact, checked against the snapshot's sha256; the files copied, and the artifacts skipped.

    A missing or modified artifact of a servable version fails the backup. One of a candidate that can never be
    served (rejected, revoked, ...) is skipped and named in the manifest, as doctor names it: security.md lets an
    operator delete revoked weights, and that must not stop every later backup.
    """
    total, done, copied, skipped = sum(_size_of(store, a.path) for a in artifacts), 0, [], []

    def advance(size: int) -> None:
        nonlocal done
        done += size
        progress("copying artifacts", done, total)

    for artifact in artifacts:
        try:
            copied += _copy_artifact(store, artifact, target, advance)
        except IntegrityError as exc:
            if artifact.servable:
                raise
            shutil.rmtree(target / artifact.path, ignore_errors=True)
            skipped.append({"candidate": artifact.name, "artifact_path": artifact.path, "problem": str(exc)})
    return copied, skipped


def _copy_artifact(store: ArtifactStore, artifact: _Artifact, target: Path, advance: Callable[[int], None]) -> list[dict[str, Any]]:
    folder, entries = store.path_of(artifact.path), []
    listed = _listed_files(store, artifact.name, artifact.path, artifact.sha256)
    for file, expected in [(ARTIFACT_MANIFEST, artifact.sha256), *sorted(listed.items())]:
        copy = target / artifact.path / file
        size, sha256 = _copy(folder / file, copy, advance)
        if sha256 != expected:
            raise IntegrityError(
                f"artifact of {artifact.name} ({folder}): {file} does not match its recorded sha256 (modified); "
                "run `adapterctl doctor`, then restore the folder or revoke the version, and back up again"
            )
        entries.append({"path": copy.relative_to(target.parent).as_posix(), "size": size, "sha256": sha256})
    return entries


def _size_of(store: ArtifactStore, path: str) -> int:
    try:
        folder = store.path_of(path)
    except IntegrityError:
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _listed_files(store: ArtifactStore, name: str, path: str, expected_sha256: str) -> dict[str, str]:
    """The files an artifact's manifest lists, once the manifest matches the database and the folder holds nothing else."""
    folder = store.path_of(path)
    where = f"artifact of {name} ({folder})"
    try:
        manifest = (folder / ARTIFACT_MANIFEST).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise IntegrityError(f"{where} is missing: run `adapterctl doctor`; a backup holds every candidate's artifact") from None
    if hashlib.sha256(manifest).hexdigest() != expected_sha256:
        raise IntegrityError(f"{where}: {ARTIFACT_MANIFEST} does not match the sha256 recorded in the database; run `adapterctl doctor`")
    listed: dict[str, str] = json.loads(manifest)["files"]
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()} - {ARTIFACT_MANIFEST}
    if extra := sorted(present - set(listed)):
        raise IntegrityError(f"{where} holds file(s) not in its manifest: {', '.join(extra)}; run `adapterctl doctor`")
    if missing := sorted(set(listed) - present):
        raise IntegrityError(f"{where}: listed file(s) {', '.join(missing)} are missing; run `adapterctl doctor`")
    return listed


# --- restore --------------------------------------------------------------------------------------------------------------


def read_manifest(directory: Path) -> dict[str, Any]:
    """The backup's manifest, its structure checked (not yet its files)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFound(f"no backup folder at {directory}")
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"{directory} is not an adapterctl backup: it has no {MANIFEST}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{directory / MANIFEST} is not valid JSON: {exc}") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise InvalidInput(f"{directory / MANIFEST}: format is {found!r}, expected {FORMAT!r}")
    problems = [
        key for key in ("schema_revision", "backend", "database", "created_at", "audit_head") if not isinstance(manifest.get(key), str)
    ]
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("size"), int) and isinstance(f.get("sha256"), str)
        for f in files
    ):
        problems.append("files")
    if problems or manifest["backend"] not in DATABASE_FILES or manifest["database"] != DATABASE_FILES[manifest["backend"]]:
        raise IntegrityError(f"{directory / MANIFEST}: missing or invalid {', '.join(problems) or 'backend/database'}")
    store = ArtifactStore(Path(ARTIFACTS))
    for entry in files:
        if entry["path"] != manifest["database"]:
            head, *parts = entry["path"].split("/")
            if head != ARTIFACTS or len(parts) < 3 or any(p in ("", ".", "..") for p in parts):
                raise IntegrityError(f"{directory / MANIFEST}: file path {entry['path']!r} is neither the database nor an artifact file")
            store.path_of("/".join(parts[:2]))  # <line>/<candidate-id>, or IntegrityError
    return manifest


def verify_backup(directory: Path, *, progress: Progress = _no_progress) -> dict[str, Any]:
    """Check every file of a backup against its manifest (sizes, sha256, nothing missing or added); return the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    listed = {f["path"]: f for f in manifest["files"]}
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir()} - {MANIFEST}
    if missing := sorted(set(listed) - present):
        raise IntegrityError(f"backup {directory} is incomplete: {missing[0]} is missing ({len(missing)} file(s) in all)")
    if extra := sorted(present - set(listed)):
        raise IntegrityError(f"backup {directory} holds file(s) its manifest does not list: {', '.join(extra[:3])}")
    total, done = sum(f["size"] for f in listed.values()), 0
    for path, entry in sorted(listed.items()):
        size, sha256 = _hash(directory / path)
        if (size, sha256) != (entry["size"], entry["sha256"]):
            raise IntegrityError(
                f"backup file {directory / path} does not match its sha256 in {MANIFEST} (modified or damaged); nothing was restored"
            )
        done += size
        progress("checking the backup", done, total)
    return manifest


def restore_backup(settings: Settings, directory: Path, *, progress: Progress = _no_progress) -> dict[str, Any]:
    """Restore a backup into an empty home and an empty database; return what was restored."""
    directory = Path(directory).absolute()
    manifest = read_manifest(directory)
    backend = _backend_of(settings.db_url)
    if manifest["backend"] != backend:
        raise InvalidInput(
            f"backup {directory} holds a {manifest['backend']} database, the target is {backend} "
            f"({_shown(settings.db_url)}): set ADAPTERCTL_DB_URL to a {manifest['backend']} database"
        )
    known = {r.revision for r in migrate.history()}
    if manifest["schema_revision"] not in known:
        raise SchemaError(
            f"backup {directory} is at schema {manifest['schema_revision']}, newer than this adapterctl knows "
            f"({migrate.SCHEMA_REVISION}): restore it with adapterctl {manifest.get('adapterctl_version', 'of that version')} or newer"
        )
    _check_empty_target(settings, backend)
    verify_backup(directory, progress=progress)
    try:
        _restore_artifacts(manifest, directory, settings.artifacts_dir, progress)
        try:
            if backend == "sqlite":
                _restore_sqlite(directory / manifest["database"], manifest, _sqlite_file(settings.db_url))
            else:
                _restore_postgresql(directory / manifest["database"], settings.db_url)
        except BaseException:
            shutil.rmtree(settings.artifacts_dir, ignore_errors=True)  # put there by this restore, into an empty home
            raise
    except OSError as exc:
        raise AdapterctlError(f"restore into {settings.home} failed, nothing was restored: {_reason(exc)}") from None
    before, after = upgrade_database(settings)
    restored = {
        "directory": str(directory),
        "backup_created_at": manifest["created_at"],
        "backup_adapterctl_version": manifest.get("adapterctl_version"),
        "backend": backend,
        "schema_revision": {"backup": before, "now": after},
        "audit_head": manifest["audit_head"],
        "counts": manifest.get("counts", {}),
        "files": len(manifest["files"]),
        "bytes": sum(f["size"] for f in manifest["files"]),
    }
    database = Database(settings.db_url)
    try:
        with database.transaction() as session:
            audit.record(
                session,
                actor=settings.user,
                action="home.restore",
                subject="home",
                payload={
                    k: restored[k] for k in ("backup_created_at", "backup_adapterctl_version", "schema_revision", "audit_head", "files")
                },
            )
    finally:
        database.dispose()
    return restored


def _check_empty_target(settings: Settings, backend: str) -> None:
    home = settings.home
    if home.exists() and not home.is_dir():
        raise InvalidInput(f"home {home} is a file: name an empty or new folder with --home or ADAPTERCTL_HOME")
    used = (
        sorted(
            p.relative_to(home).as_posix() for p in home.rglob("*") if not p.is_dir() and p.relative_to(home).as_posix() != CONFIG_FILE_NAME
        )
        if home.is_dir()
        else []
    )
    if used:
        raise InvalidInput(
            f"home {home} is not empty (it holds {used[0]}{f' and {len(used) - 1} more' if len(used) > 1 else ''}): "
            "restore only into an empty home"
        )
    if backend == "sqlite":
        database_file = _sqlite_file(settings.db_url)
        if any(Path(f"{database_file}{suffix}").exists() for suffix in ("", "-wal", "-shm", "-journal")):
            raise InvalidInput(f"database {database_file} exists: restore only into an empty home and database")
        return
    engine = make_engine(settings.db_url)
    try:
        with engine.connect() as connection:
            relations = connection.exec_driver_sql(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
                "AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"  # pg_catalog, pg_toast, pg_temp_N
            ).scalar()
    finally:
        engine.dispose()
    if relations:
        raise InvalidInput(
            f"database {_shown(settings.db_url)} is not empty "
            f"({relations} tables, views or sequences): restore only into an empty database (createdb NAME)"
        )


def _restore_artifacts(manifest: dict[str, Any], directory: Path, artifacts_dir: Path, progress: Progress) -> None:
    """Copy the artifacts beside the home's artifact folder, check them again, then rename them into place."""
    entries = [f for f in manifest["files"] if f["path"] != manifest["database"]]
    artifacts_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = artifacts_dir.parent / f".restore-{uuid.uuid4().hex[:8]}"
    total, done = sum(f["size"] for f in entries), 0
    try:
        staging.mkdir()
        for entry in entries:
            target = staging / entry["path"].removeprefix(f"{ARTIFACTS}/")
            size, sha256 = _copy(directory / entry["path"], target, lambda n: None)
            if sha256 != entry["sha256"]:
                raise IntegrityError(f"backup file {directory / entry['path']} changed while it was restored; nothing was restored")
            done += size
            progress("restoring artifacts", done, total)
        for folder in sorted({p.parent for p in staging.rglob("*")}, key=lambda p: -len(p.parts)):
            fsync_dir(folder)
        if artifacts_dir.is_dir():
            artifacts_dir.rmdir()  # empty: the home was checked
        os.replace(staging, artifacts_dir)
        fsync_dir(artifacts_dir.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _restore_sqlite(source: Path, manifest: dict[str, Any], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.restore-{uuid.uuid4().hex[:8]}"
    try:
        _, sha256 = _copy(source, partial, lambda n: None)
        if sha256 != next(f["sha256"] for f in manifest["files"] if f["path"] == manifest["database"]):
            raise IntegrityError(f"backup file {source} changed while it was restored; nothing was restored")
        os.replace(partial, target)
        fsync_dir(target.parent)
    finally:
        partial.unlink(missing_ok=True)


def _restore_postgresql(source: Path, url: str) -> None:
    conninfo, env = libpq_connection(url)
    # One transaction: a failed restore leaves the database empty. Owners and grants name roles of the old
    # server, which the new one may lack; the restoring role owns everything.
    _run_client(
        [
            _client("pg_restore"),
            "--single-transaction",
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            f"--dbname={conninfo}",
            str(source),
        ],
        env,
    )


# --- files and PostgreSQL clients -----------------------------------------------------------------------------------------


def libpq_connection(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection string for the PostgreSQL clients from a SQLAlchemy URL, and their environment (the password
    goes in PGPASSWORD, never on a command line that `ps` shows)."""
    from psycopg.conninfo import make_conninfo

    parsed = make_url(normalize_url(url))
    params: dict[str, Any] = {key: value[-1] if isinstance(value, tuple) else value for key, value in parsed.query.items()}
    params.update(
        {
            key: value
            for key, value in (("host", parsed.host), ("port", parsed.port), ("user", parsed.username), ("dbname", parsed.database))
            if value
        }
    )
    env = {**os.environ, **({"PGPASSWORD": parsed.password} if parsed.password else {})}
    return make_conninfo("", **params), env


def _client(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise AdapterctlError(f"{name} is not on PATH: install the PostgreSQL client programs (of the server's major version or newer)")
    return found


def _run_client(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        reason = next(
            (line for line in result.stderr.splitlines() if "error" in line.lower()), result.stderr.strip() or f"exit {result.returncode}"
        )
        raise AdapterctlError(f"{Path(command[0]).name} failed: {reason}")


def _backend_of(url: str) -> str:
    """sqlite or postgresql: make_engine refuses a malformed or unsupported URL with a ConfigError, and connects to nothing."""
    engine = make_engine(url)
    engine.dispose()
    return engine.dialect.name


def _shown(url: str) -> str:
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    filename = getattr(exc, "filename", None)
    return f"{getattr(exc, 'strerror', None) or exc}{f' ({filename})' if filename else ''}"


def _file_entry(path: Path, root: Path) -> dict[str, Any]:
    size, sha256 = _hash(path)
    return {"path": path.relative_to(root).as_posix(), "size": size, "sha256": sha256}


def _hash(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _copy(source: Path, target: Path, advance: Callable[[int], None]) -> tuple[int, str]:
    """Copy a file, hashing the very bytes written, and sync it; its size and sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(target, "xb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
            advance(len(chunk))
        dst.flush()
        os.fsync(dst.fileno())
    return size, digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

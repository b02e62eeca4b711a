"""The artifact store: one folder per candidate adapter under `<home>/artifacts/<line>/<candidate-id>/`.

Each folder is a plain PEFT adapter directory (loadable by `PeftModel.from_pretrained` as is) plus a
`manifest.json` with the sha256 of every other file. The database stores the sha256 of the manifest,
so one hash covers the whole folder. A trainer saves into `staging_dir(...)`, then `commit` moves the
finished folder into place with one rename: readers see the whole artifact or none of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from adapterctl.errors import IntegrityError, InvalidInput
from adapterctl.faults import crash_point
from adapterctl.names import check_name

MANIFEST = "manifest.json"
FORMAT = "adapterctl-artifact/1"
_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class StoredArtifact:
    relative_path: str
    """Where the artifact lives below the store's root, `<line>/<candidate-id>` (POSIX)."""
    sha256: str
    """The sha256 of the manifest.json bytes: the one hash the database keeps."""
    files: dict[str, str]
    """The sha256 of each file in the artifact except the manifest, by relative POSIX name."""
    size_bytes: int
    """Total size of the artifact's files on disk, manifest included."""


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def staging_path(self, line: str, key: str) -> Path:
        """Where `staging_dir(line, key)` is, without creating or emptying it."""
        check_name(line, "line")
        if not _KEY.fullmatch(key or ""):
            raise InvalidInput(f"invalid staging key {key!r}: use 1-64 letters, digits, '-' or '_'")
        return self.root / line / f".staging-{key}"

    def staging_dir(self, line: str, key: str) -> Path:
        """A fresh, empty `<root>/<line>/.staging-<key>` for a trainer to save an adapter into."""
        staging = self.staging_path(line, key)
        _remove_tree(staging)  # left over by a process that crashed mid-training
        staging.mkdir(parents=True)
        return staging

    def commit(self, staging: Path, line: str, candidate_id: int) -> StoredArtifact:
        """Write the manifest into `staging` and move it to `<root>/<line>/<candidate_id>` atomically."""
        target = self.root / check_name(line, "line") / str(_check_id(candidate_id))
        staging = Path(staging)
        if staging.parent.resolve() != target.parent.resolve() or not staging.name.startswith(".staging-"):
            raise InvalidInput(f"{staging} is not a staging folder of line {line!r}: get one from staging_dir()")
        if not (staging / "adapter_config.json").is_file() or not any(staging.glob("*.safetensors")):
            raise InvalidInput(f"{staging} holds no PEFT adapter: it needs adapter_config.json and *.safetensors")
        (staging / MANIFEST).unlink(missing_ok=True)  # from an earlier, interrupted commit of this folder
        files, size = {}, 0
        for path in _files_below(staging):
            if path.is_symlink() or not path.is_file():
                raise InvalidInput(f"{path} is not a regular file: an artifact holds only plain files")
            files[path.relative_to(staging).as_posix()] = _hash_and_fsync(path)
            size += path.stat().st_size
        manifest = json.dumps({"format": FORMAT, "files": files}, sort_keys=True, separators=(",", ":")).encode()
        with open(staging / MANIFEST, "wb") as f:
            f.write(manifest)
            f.flush()
            os.fsync(f.fileno())
        # Data and directory entries must be on disk before the rename publishes them; otherwise a power
        # loss could leave a committed folder (which the database then references) with empty files.
        for folder in [*(p for p in staging.rglob("*") if p.is_dir()), staging]:
            fsync_dir(folder)
        crash_point("artifact.sealed")
        # A target can only exist if a process died between this rename and its database commit, so no
        # row references it. rename() cannot replace a non-empty folder, hence the removal first.
        _remove_tree(target)
        os.replace(staging, target)
        fsync_dir(target.parent)  # make the rename itself durable
        crash_point("artifact.renamed")
        return StoredArtifact(
            relative_path=f"{line}/{candidate_id}",
            sha256=hashlib.sha256(manifest).hexdigest(),
            files=files,
            size_bytes=size + len(manifest),
        )

    def path_of(self, relative_path: str) -> Path:
        """The absolute path of an artifact from its `<line>/<candidate-id>`; never outside the root."""
        line, _, candidate = relative_path.partition("/")
        try:  # a line name never starts with '.' or holds '/', so this also rules out '..' and '/abs'
            check_name(line, "line")
            valid = candidate == str(_check_id(int(candidate)))
        except (InvalidInput, ValueError):
            valid = False
        if not valid:
            raise IntegrityError(f"artifact path {relative_path!r} is not of the form <line>/<candidate-id>")
        path = self.root / line / candidate
        # A symlink below the root could point anywhere; the path must resolve to where it says.
        if path.resolve() != self.root.resolve() / line / candidate:
            raise IntegrityError(f"artifact path {relative_path!r} leads outside the store {self.root} (symlink)")
        return path

    def verify(self, relative_path: str, expected_sha256: str) -> dict[str, bytes]:
        """Check the artifact against the sha256 from the database; return its files' bytes by name."""
        folder = self.path_of(relative_path)
        where = f"artifact {relative_path} ({folder})"
        if not folder.is_dir():
            raise IntegrityError(f"{where} is missing")
        try:
            manifest = (folder / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{where} has no {MANIFEST}") from None
        if hashlib.sha256(manifest).hexdigest() != expected_sha256:
            raise IntegrityError(f"{where}: {MANIFEST} does not match the sha256 recorded in the database")
        listed: dict[str, str] = json.loads(manifest)["files"]
        present = {p.relative_to(folder).as_posix() for p in _files_below(folder)} - {MANIFEST}
        if extra := sorted(present - set(listed)):
            raise IntegrityError(f"{where} holds unexpected file(s) not in its manifest: {', '.join(extra)}")
        # Each file is read once and its hash taken from those very bytes, so what the caller gets
        # is exactly what was checked, even if the file changes on disk afterwards.
        contents = {}
        for name, sha256 in sorted(listed.items()):
            try:
                data = (folder / name).read_bytes()
            except FileNotFoundError:
                raise IntegrityError(f"{where}: listed file {name} is missing") from None
            if hashlib.sha256(data).hexdigest() != sha256:
                raise IntegrityError(f"{where}: file {name} does not match its sha256 in the manifest (modified)")
            contents[name] = data
        return contents

    def remove(self, relative_path_or_staging: str | Path) -> None:
        """Delete an artifact (by relative path) or a staging folder (by path); gone already is fine."""
        if isinstance(relative_path_or_staging, str):
            folder = self.path_of(relative_path_or_staging)
        else:
            folder = Path(relative_path_or_staging)
            if folder.resolve().parent.parent != self.root.resolve() or folder.is_symlink():
                raise IntegrityError(f"refusing to remove {folder}: not an artifact or staging folder of {self.root}")
        _remove_tree(folder)

    def export(self, relative_path: str, expected_sha256: str, destination: Path) -> Path:
        """Verify the artifact, then write it as a plain PEFT directory (no manifest) to `destination`."""
        contents = self.verify(relative_path, expected_sha256)
        destination = Path(destination)
        if destination.is_symlink():
            raise InvalidInput(f"export destination {destination} is a symbolic link; name a new or empty folder")
        try:
            if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
                raise InvalidInput(f"export destination {destination} exists and is not an empty folder")
            destination.parent.mkdir(parents=True, exist_ok=True)
            temporary = destination.parent / f".{destination.name}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                for name, data in contents.items():
                    (temporary / name).parent.mkdir(parents=True, exist_ok=True)
                    with open(temporary / name, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                if destination.exists():
                    destination.rmdir()  # empty, checked above; rename over a folder is not portable
                os.replace(temporary, destination)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
        except (FileExistsError, NotADirectoryError):  # mkdir of a parent that is a file
            raise InvalidInput(f"cannot export to {destination}: a part of the path is a file, not a folder") from None
        except OSError as exc:  # in /proc, read-only, full: the operator's path, a one-line error
            raise InvalidInput(f"cannot export to {destination}: {exc.strerror or exc}") from None
        return destination


def _check_id(candidate_id: int) -> int:
    if isinstance(candidate_id, bool) or not isinstance(candidate_id, int) or candidate_id < 1:
        raise InvalidInput(f"invalid candidate id {candidate_id!r}: use a positive integer")
    return candidate_id


def _files_below(folder: Path) -> list[Path]:
    """Everything below `folder` except directories, sorted (symlinks included, so callers can refuse them)."""
    return sorted(p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())


def _remove_tree(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass


def _hash_and_fsync(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
        os.fsync(f.fileno())
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Base models: frozen Hugging Face causal LMs, registered once with a hash of their content."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapterctl import audit
from adapterctl.db.models import BaseModel
from adapterctl.errors import AlreadyExists, InvalidInput, NotFound
from adapterctl.names import check_name

# Files that decide what the model computes: configuration, weights and tokenizer.
HASHED_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_CHUNK = 1 << 20

Progress = Callable[[int], None]
"""Called with the number of bytes just hashed."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    kind: str  # "local" | "hub"
    revision: str | None


def resolve_source(source: str, revision: str | None = None) -> ResolvedModel:
    """A local model directory as is; anything else that looks like a hub id through the Hugging Face cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return ResolvedModel(path.resolve(), "local", None)
    if source.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(source):
        raise InvalidInput(f"{source!r} is neither a model directory nor a hub id like 'org/name'")
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(source, revision=revision, allow_patterns=list(HASHED_PATTERNS)))
    except Exception as exc:  # offline, unknown repo, gated model: all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInput(
            f"could not resolve hub id {source!r}: {reason} (without network, download it first or set HF_HUB_OFFLINE=1 to use the cache)"
        ) from None
    return ResolvedModel(snapshot, "hub", snapshot.name)


def model_files(path: Path) -> list[Path]:
    """The files of a model directory that the content hash covers, sorted."""
    if not (path / "config.json").is_file():
        raise InvalidInput(f"{path} has no config.json: not a Hugging Face model directory")
    files = sorted({f for pattern in HASHED_PATTERNS for f in path.glob(pattern) if f.is_file()})
    if not any(f.match(pattern) for f in files for pattern in WEIGHT_PATTERNS):
        raise InvalidInput(f"{path} has no weights (*.safetensors or pytorch_model*.bin)")
    return files


def hash_model_dir(path: Path, progress: Progress | None = None) -> tuple[str, dict[str, str]]:
    """The content hash of a model directory and the sha256 of each file it covers."""
    per_file: dict[str, str] = {}
    for file in model_files(path):
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                if progress:
                    progress(len(chunk))
        per_file[file.relative_to(path).as_posix()] = digest.hexdigest()
    listing = "".join(f"{name}\0{digest}\n" for name, digest in sorted(per_file.items()))
    return hashlib.sha256(listing.encode()).hexdigest(), per_file


def total_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in model_files(path))


def register_base_model(
    session: Session,
    *,
    name: str,
    source: str,
    actor: str,
    revision: str | None = None,
    resolved: ResolvedModel | None = None,
    progress: Progress | None = None,
) -> BaseModel:
    """Hash and record a base model; `resolved` skips resolving `source` again when the caller did."""
    check_name(name, "base model")
    existing = session.scalar(select(BaseModel).where(BaseModel.name == name))
    if existing is not None:
        raise AlreadyExists(f"base model {name!r} exists already (from {existing.source}, hash {existing.content_hash[:12]})")
    resolved = resolved or resolve_source(source, revision)
    content_hash, files = hash_model_dir(resolved.path, progress)
    model = BaseModel(
        name=name,
        source=str(resolved.path) if resolved.kind == "local" else source,
        source_kind=resolved.kind,
        revision=resolved.revision,
        content_hash=content_hash,
        files=files,
        architecture=_architecture(resolved.path),
        chat_roles=chat_roles(resolved.path),
        created_by=actor,
    )
    session.add(model)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="base.register",
        subject=f"base:{name}",
        payload={"source": model.source, "revision": model.revision, "content_hash": content_hash, "chat_roles": model.chat_roles},
    )
    return model


def _architecture(path: Path) -> str | None:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InvalidInput(f"{path / 'config.json'} is not valid JSON") from None
    architectures = config.get("architectures") or []
    return architectures[0] if architectures else config.get("model_type")


def chat_roles(path: Path) -> list[str] | None:
    """The message roles the model's chat template renders, or None when its tokenizer does not load here."""
    from adapterctl.chat import load_tokenizer, supported_roles

    try:
        tokenizer = load_tokenizer(str(path))
    except Exception:  # transformers fails in many ways on files it cannot read; the roles stay unknown
        return None
    return supported_roles(tokenizer)


def local_path(model: BaseModel) -> str:
    """A folder holding the model's files: its own for a local model, the hub cache's (at the recorded revision) otherwise."""
    if model.source_kind == "local":
        return model.source
    from huggingface_hub import snapshot_download

    return snapshot_download(model.source, revision=model.revision)


def get_base_model(session: Session, name: str) -> BaseModel:
    model = session.scalar(select(BaseModel).where(BaseModel.name == name))
    if model is None:
        raise NotFound(f"base model {name!r} is not registered; see `adapterctl base list` or run `adapterctl base register`")
    return model


def list_base_models(session: Session) -> list[BaseModel]:
    return list(session.scalars(select(BaseModel).order_by(BaseModel.name)))


def as_dict(model: BaseModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "source": model.source,
        "source_kind": model.source_kind,
        "revision": model.revision,
        "content_hash": model.content_hash,
        "architecture": model.architecture,
        "chat_roles": model.chat_roles,
        "files": model.files,
        "created_at": model.created_at.isoformat(),
        "created_by": model.created_by,
    }

"""`adapterctl base …`: register base models, write the tiny demo model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapterctl import access, base_models
from adapterctl.cli._common import (
    JsonOption,
    byte_progress,
    print_fields,
    print_json,
    print_table,
    workspace,
)

app = typer.Typer(help="Base models: the frozen models that lines put adapters on.", no_args_is_help=True)


@app.command()
def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name for the base model, e.g. qwen2.5-0.5b.")],
    source: Annotated[str, typer.Argument(help="A local model directory or a Hugging Face hub id.")],
    revision: Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit) for a hub id.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Register a base model, recording a sha256 of its config, weights and tokenizer."""
    ws = workspace(ctx)
    resolved = base_models.resolve_source(source, revision)
    with ws.transaction() as session, byte_progress(base_models.total_bytes(resolved.path), "hashing") as progress:
        access.require(session, ws.user, "base.register")
        model = base_models.register_base_model(
            session, name=name, source=source, revision=revision, resolved=resolved, actor=ws.user, progress=progress
        )
        result = base_models.as_dict(model)
    if json_output:
        print_json(result)
    else:
        typer.echo(
            f"registered base model {name} ({result['architecture']}, {len(result['files'])} files, sha256 {result['content_hash'][:16]})"
        )


@app.command("create-tiny")
def create_tiny(
    path: Annotated[Path, typer.Argument(help="Directory to write (must not exist or be empty).")],
    layers: Annotated[int, typer.Option(help="Transformer layers.")] = 4,
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 256,
    vocab: Annotated[int, typer.Option(help="Tokenizer vocabulary size (upper bound).")] = 2048,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same model.")] = 0,
    knows: Annotated[
        Path | None, typer.Option(help='JSONL of {"prompt": ..., "answer": ...} the model is taught first, so it has knowledge to keep.')
    ] = None,
    teach_steps: Annotated[int, typer.Option(help="Full fine-tuning steps spent teaching --knows.")] = 300,
    json_output: JsonOption = False,
) -> None:
    """Write a tiny random Llama-style causal LM and tokenizer (for demos and tests; no download)."""
    from adapterctl.tiny_model import create_tiny_model, read_facts

    facts = read_facts(knows) if knows else None
    summary = create_tiny_model(path, layers=layers, hidden=hidden, vocab=vocab, seed=seed, knows=facts, teach_steps=teach_steps)
    if json_output:
        print_json(summary)
    else:
        taught = f", taught {summary['taught']} answers" if summary["taught"] else ""
        typer.echo(f"wrote tiny model to {path} ({summary['parameters']:,} parameters, vocabulary {summary['vocab']}{taught})")


@app.command("list")
def list_(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List registered base models."""
    with workspace(ctx).reading() as session:
        models = [base_models.as_dict(m) for m in base_models.list_base_models(session)]
    if json_output:
        print_json(models)
        return
    for model in models:
        model["hash"] = model["content_hash"][:16]
    print_table(
        models,
        ["name", "architecture", "chat_roles", "source_kind", "source", "hash", "created_by"],
        empty="no base models; register one with `adapterctl base register`",
    )


@app.command()
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Base model name.")], json_output: JsonOption = False) -> None:
    """Show a base model and the hash of each file."""
    with workspace(ctx).reading() as session:
        model = base_models.as_dict(base_models.get_base_model(session, name))
    if json_output:
        print_json(model)
    else:
        print_fields(model)

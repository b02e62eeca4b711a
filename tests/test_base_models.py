"""Base models are registered with a content hash, from a local directory or the Hugging Face cache."""

from __future__ import annotations

import pytest

from adapterctl import audit, base_models
from adapterctl.errors import AlreadyExists, InvalidInput, NotFound
from tests.conftest import write_model_dir


def test_hash_is_stable_and_changes_with_any_weight_byte(tmp_path):
    first, files = base_models.hash_model_dir(write_model_dir(tmp_path / "a"))
    same, _ = base_models.hash_model_dir(write_model_dir(tmp_path / "b"))
    changed, _ = base_models.hash_model_dir(write_model_dir(tmp_path / "c", weight=1.0001))
    assert first == same != changed
    assert set(files) == {"config.json", "model.safetensors", "tokenizer.json"}


def test_files_outside_the_model_do_not_change_the_hash(tmp_path):
    model = write_model_dir(tmp_path / "m")
    before, _ = base_models.hash_model_dir(model)
    (model / "README.md").write_text("notes")
    assert base_models.hash_model_dir(model)[0] == before


def test_a_directory_without_config_or_weights_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="has no config.json"):
        base_models.hash_model_dir(tmp_path / "empty")
    model = write_model_dir(tmp_path / "m")
    (model / "model.safetensors").unlink()
    with pytest.raises(InvalidInput, match="has no weights"):
        base_models.hash_model_dir(model)


def test_register_records_hash_and_audit_event(ws, model_dir):
    with ws.transaction() as session:
        model = base_models.register_base_model(session, name="tiny", source=str(model_dir), actor="alice")
        assert (model.source_kind, model.source, model.architecture) == ("local", str(model_dir.resolve()), "LlamaForCausalLM")
        [event] = audit.list_events(session, action="base.register")
        assert event.subject == "base:tiny" and model.content_hash in event.payload
    with ws.transaction() as session:
        with pytest.raises(AlreadyExists, match="base model 'tiny' exists already"):
            base_models.register_base_model(session, name="tiny", source=str(model_dir), actor="alice")
        with pytest.raises(NotFound, match="not registered"):
            base_models.get_base_model(session, "other")


def test_register_records_the_roles_the_chat_template_renders(ws, tiny_model, model_dir):
    with ws.transaction() as session:
        tiny = base_models.register_base_model(session, name="tiny", source=str(tiny_model), actor="alice")
        fake = base_models.register_base_model(session, name="fake", source=str(model_dir), actor="alice")
    assert tiny.chat_roles == ["system", "user", "assistant"]  # the tiny model's template refuses `tool`
    assert fake.chat_roles is None  # its tokenizer does not load: not known
    with ws.reading() as session:
        assert base_models.as_dict(base_models.get_base_model(session, "tiny"))["chat_roles"] == ["system", "user", "assistant"]


def test_hub_id_resolves_through_the_local_hugging_face_cache(ws, tmp_path, monkeypatch):
    """A hub id goes through huggingface_hub's cache: here a cache laid out as a download leaves it, offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-cache" / "models--acme--tiny-chat"
    write_model_dir(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with ws.transaction() as session:
        model = base_models.register_base_model(session, name="chat", source="acme/tiny-chat", actor="alice")
    assert (model.source_kind, model.source, model.revision) == ("hub", "acme/tiny-chat", commit)
    local, _ = base_models.hash_model_dir(repo / "snapshots" / commit)
    assert model.content_hash == local
    with pytest.raises(InvalidInput, match="could not resolve hub id 'acme/missing'"):
        base_models.resolve_source("acme/missing")


def test_paths_that_do_not_exist_are_not_taken_for_hub_ids():
    with pytest.raises(InvalidInput, match="neither a model directory nor a hub id"):
        base_models.resolve_source("./no/such/dir")

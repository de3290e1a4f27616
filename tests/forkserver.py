"""A pre-imported Python that forks one process per ``python script.py ...`` the tests launch.

Each launch still runs the real script as ``__main__`` in a process of its own, with its own
argv, environment, working directory, standard streams and exit status; only the import of torch,
Megatron-Core, transformers and the project (5-7 s, most of a small test's time) is paid once per
session instead of once per launch. Started by ``conftest.run``; ``python tests/forkserver.py
SOCKET`` serves until its socket's client closes it.

Protocol, one JSON line each way per connection: the client sends ``{"argv", "cwd", "env",
"stdout", "stderr"}`` (the last two are file paths); the forked process answers
``{"pid": N}`` when it starts and ``{"returncode": N}`` when its script ends. A process killed
by a signal closes the connection without the second line.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# what the project's entry points import at their top; imported here once, before any fork
PRELOAD = [
    "torch",
    "torch.distributed.checkpoint",
    "megatron.core.dist_checkpointing",
    "megatron.core.models.gpt",
    "megatron.core.optimizer",
    "megatron.core.pipeline_parallel",
    "transformers",
    "motif_megatron.training.loop",
    "motif_megatron.checkpoint.convert",
    "motif_megatron.checkpoint.equivalence",
    "motif_megatron.growth.transform",
    "motif_megatron.posttrain.sft",
    "motif_megatron.posttrain.kto",
    "motif_megatron.eval.evaluate",
    "motif_megatron.data.pipeline",
    "motif_megatron.tokenizer.expand",
    "motif_megatron.recipe.runner",
]


def _exit_status(exc: SystemExit) -> int:
    """The status ``python script.py`` exits with for this ``SystemExit``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _child(conn: socket.socket, request: dict) -> None:
    """Become ``python argv[0] argv[1:]`` in ``cwd`` with ``env``; never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()  # its own process group: a timeout kills the script and anything it started
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    conn.sendall(json.dumps({"returncode": status}).encode() + b"\n")
    sys.exit(status)  # interpreter shutdown as after any script: atexit, joined threads


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def serve(path: str) -> None:
    import torch  # noqa: F401  (starts one helper thread of its own)

    threads = _threads()
    for name in PRELOAD:
        importlib.import_module(name)
    # fork copies only this thread: a thread pool started before it (OpenMP's, at the first
    # tensor op) would deadlock every child, so the preload must not have computed anything
    if _threads() != threads:
        raise RuntimeError(f"the preload started {_threads() - threads} threads; fork is unsafe")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished launches are reaped by the kernel
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        request = json.loads(conn.makefile().readline())
        if request is None:  # the client's goodbye
            return
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            server.close()
            _child(conn, request)
        conn.close()


class ForkServer:
    """The client: ``run`` is ``subprocess.run([sys.executable, *argv], capture_output=True,
    text=True)`` served by one pre-imported ``python tests/forkserver.py``."""

    def __init__(self, env: dict[str, str]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="forkserver-"))
        self.socket = str(self.tmp / "socket")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.socket], env=env, stdout=subprocess.PIPE, text=True
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the fork server did not start (exit {self.proc.wait()})")

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float):
        out, err = self.tmp / "stdout", self.tmp / "stderr"
        request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out)}
        request["stderr"] = str(err)
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(self.socket)
            conn.sendall(json.dumps(request).encode() + b"\n")
            conn.settimeout(timeout)
            replies = conn.makefile()
            pid = json.loads(replies.readline())["pid"]
            try:
                end = replies.readline()
                replies.read()  # EOF: the process has exited, its streams are complete
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired([sys.executable, *argv], timeout) from None
        # a process killed by a signal ends without its status line; -9 stands for any signal
        returncode = json.loads(end)["returncode"] if end else -signal.SIGKILL
        read = lambda path: path.read_text(errors="replace")  # noqa: E731
        return subprocess.CompletedProcess(
            [sys.executable, *argv], returncode, read(out), read(err)
        )

    def close(self) -> None:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(self.socket)
            conn.sendall(b"null\n")
        self.proc.wait(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1])

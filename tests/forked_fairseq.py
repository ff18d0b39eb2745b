"""fairseq-train runs without paying for the imports each time.

A server process imports torch, fairseq and fairseq_cli.train once (the ~4 s that dominate a
tiny test run), then forks a fresh child per run. The child is what ``python -m fairseq_cli.train
ARGS`` would be: the same argv, environment, working directory and ``sys.path[0]``, stdin from
/dev/null, stdout and stderr to files, the tool's module run as ``__main__`` and a normal
interpreter exit (atexit handlers, the traceback of an uncaught exception, exit status 1).

Only runs whose environment equals the server's (but for pytest's PYTEST_CURRENT_TEST) are
forked, so that anything read at import time is the same; for other runs, and other
fairseq_cli tools, ``run`` returns None and the caller starts a plain subprocess.

Protocol, one Unix-socket connection per run: the client sends one JSON line (tool, args, env,
cwd, stdout and stderr paths); the server answers the child's pid, then its exit status."""

import json
import locale
import os
import runpy
import socket
import subprocess
import sys
import tempfile
import threading

TOOLS = ("train",)
PER_TEST = "PYTEST_CURRENT_TEST"  # set by pytest for each test; nothing reads it at import


def _serve(path):
    """The server's loop; returns only in a forked run, which then ends the interpreter."""
    sys.path[0] = os.getcwd()  # what `python -m` puts there (not this file's directory)
    for tool in TOOLS:
        __import__(f"fairseq_cli.{tool}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            _supervise(connection)  # returns only in the forked run itself
            return
        connection.close()
        while _reap():
            pass


def _reap():
    try:
        return os.waitpid(-1, os.WNOHANG)[0]
    except ChildProcessError:
        return 0


def _supervise(connection):
    """In a fork of the server: fork the run, send its pid and then its exit status."""
    with connection.makefile("rb") as reader:
        request = json.loads(reader.readline())
    pid = os.fork()
    if pid == 0:
        connection.close()
        _become(request)
        return
    connection.sendall(f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    connection.close()
    os._exit(0)


def _become(request):
    """Turn this fork into ``python -m fairseq_cli.<tool> args``; ends the interpreter."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        out = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, fd)
        os.close(out)
    os.close(null)
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]
    module = f"fairseq_cli.{request['tool']}"
    # as under -m, the module runs once, as __main__ only (its imports are done already)
    sys.argv = [sys.modules.pop(module).__file__, *request["args"]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    sys.exit(0)


def _without(env, key):
    return {name: value for name, value in env.items() if name != key}


class Server:
    """A running server (one per pytest process; started on first use)."""

    def __init__(self, env):
        self.env = dict(env)
        self.directory = tempfile.mkdtemp(prefix="forked_fairseq_")
        self.path = os.path.join(self.directory, "socket")
        self.log = os.path.join(self.directory, "server.log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, __file__, self.path], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=log, env=self.env)
        for line in self.process.stdout:  # fairseq logs to stdout while it is imported
            if line == b"ready\n":
                break
        else:
            self.process.wait()
            with open(self.log, encoding="utf-8", errors="replace") as log:
                raise RuntimeError(f"the fairseq fork server did not start:\n{log.read()[-4000:]}")
        self.lock = threading.Lock()
        self.runs = 0

    def run(self, tool, args, env, timeout):
        """The CompletedProcess of ``python -m fairseq_cli.<tool> args``, or None when this
        server cannot make it (another tool or another environment)."""
        if tool not in TOOLS or _without(env, PER_TEST) != _without(self.env, PER_TEST) or self.process.poll() is not None:
            return None
        with self.lock:
            self.runs += 1
            stem = os.path.join(self.directory, f"run{self.runs}")
        outputs = {"stdout": stem + ".out", "stderr": stem + ".err"}
        command = [sys.executable, "-m", f"fairseq_cli.{tool}", *args]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(self.path)
            connection.sendall((json.dumps({"tool": tool, "args": args, "env": env, "cwd": os.getcwd(), **outputs})
                                + "\n").encode())
            connection.settimeout(timeout)
            with connection.makefile("rb") as reader:
                pid = int(reader.readline())
                try:
                    line = reader.readline()
                except TimeoutError:
                    os.kill(pid, 9)
                    raise subprocess.TimeoutExpired(command, timeout) from None
        if not line:
            raise RuntimeError("the fairseq fork server closed the connection without an exit status")
        texts = []
        for name in ("stdout", "stderr"):  # decoded as subprocess.run(text=True) does
            with open(outputs[name], encoding=locale.getpreferredencoding(False)) as handle:
                texts.append(handle.read())
            os.remove(outputs[name])
        return subprocess.CompletedProcess(command, int(line), *texts)

    def stop(self):
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        for name in os.listdir(self.directory):
            os.remove(os.path.join(self.directory, name))
        os.rmdir(self.directory)


if __name__ == "__main__":
    _serve(sys.argv[1])

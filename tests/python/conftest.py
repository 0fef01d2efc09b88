"""Fixtures for the Python package's tests: unique cluster names, a real easysync-hub, and
child Python processes driven line by line over stdin/stdout."""

import itertools
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

TOKEN = "pytest-token"
_counter = itertools.count()


@pytest.fixture
def cluster():
    """A cluster name no other test uses."""
    return f"pyt{os.getpid()}_{next(_counter)}"


def hub_command():
    exe = shutil.which("easysync-hub", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    if exe is None:
        pytest.fail("easysync-hub is not on PATH: pip install . should have put it there")
    return exe


class Hub:
    def __init__(self, token=TOKEN, *args):
        self.proc = subprocess.Popen(
            [hub_command(), "--port", "0", "--token", token, *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port = None
        for line in self.proc.stdout:
            if "listening on" in line:
                self.port = int(line.rsplit(":", 1)[1])
                break
        if self.port is None:
            self.proc.kill()
            pytest.fail("easysync-hub did not start")
        # Keep draining its log so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self):
        self.proc.terminate()
        try:
            assert self.proc.wait(timeout=10) == 0, "the hub exited with an error"
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def hub():
    h = Hub()
    yield h
    h.stop()


class Child:
    """A Python process running `code`; it talks with the test one line at a time."""

    def __init__(self, code, *args, env=None, python=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [python or sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=full_env)
        self.lines = queue.Queue()
        self.err = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.err.append),
                         daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line.rstrip("\n"))

    def expect(self, timeout=30):
        """The next line the child prints (fails the test on timeout or exit)."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            pytest.fail(f"child printed nothing for {timeout} s; stderr:\n" + "\n".join(self.err))

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout=30):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self.proc.wait(timeout=timeout)
        assert rc == 0, f"child exited {rc}; stderr:\n" + "\n".join(self.err)


@pytest.fixture
def child():
    made = []

    def make(code, *args, **kw):
        c = Child(code, *args, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()

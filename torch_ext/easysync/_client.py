"""Clients: shm_connect(), connect(), and the default client SyncedObject uses."""

from __future__ import annotations

import atexit
import os
import threading
import weakref

from . import _core

_lock = threading.Lock()
_last_client = None  # the most recently connected client that is still open
_open_clients = weakref.WeakSet()


class Client:
    """A connection to a cluster (shared memory) or to a hub (network mode).

    ``stats`` is a dict of counters (``latency_ms``, ``bytes_sent``, ``packets_recv``, ...).
    Use it as a context manager, or call ``close()`` (which first publishes in-place changes,
    as ``flush()`` does; so does the exit of the interpreter); a closed client refuses every
    call.
    """

    def __init__(self, core):
        self._core = core
        # Synced instances, for flush(); by id, as an instance need not be hashable.
        self._objects = weakref.WeakValueDictionary()

    @property
    def stats(self) -> dict[str, int | float]:
        return self._core.stats()

    @property
    def id(self) -> int:
        return self._core.id

    @property
    def cluster(self) -> str:
        return self._core.cluster

    @property
    def mode(self) -> str:
        """'shm' or 'net'."""
        return self._core.mode

    @property
    def closed(self) -> bool:
        return self._core.closed

    def flush(self) -> None:
        """Publishes in-place changes of every synced object's tensors, arrays and containers."""
        from ._synced import push

        for obj in list(self._objects.values()):
            push(obj)

    def torch(self):
        """This connection as a torch.classes.easysync.Client (for TorchScript and C++ code):
        the same client id, the same attributes, no second connection."""
        from ._torch import load_ops

        load_ops()
        import torch

        return torch.classes.easysync.Client("shared", str(self._core.share()), 0, "")

    def close(self) -> None:
        """Publishes what flush() publishes, then closes. Closing twice does nothing."""
        global _last_client
        with _lock:
            if _last_client is self:
                _last_client = None
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self._core.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        state = "closed" if self.closed else f"id={self.id}"
        return f"<easysync.Client {self.mode} {self._core.address} {state}>"


def _register(client):
    global _last_client
    with _lock:
        _last_client = client
        _open_clients.add(client)
    return client


def shm_connect(cluster_name: str | None = None, *, name: str | None = None,
                wait_mode: str = "futex", spin_us: float = 50.0, max_attributes: int = 4096,
                arena_bytes: int = 16 << 20, attach_timeout: float = 5.0) -> Client:
    """Joins (or creates) the shared-memory cluster ``cluster_name`` ([A-Za-z0-9_-], 1..64
    characters; ``name=`` is accepted too).

    No server: the shared segment is the bus; the last client to close removes it.
    ``wait_mode='poll'`` spins while waiting (lowest latency, burns a core); 'futex' spins
    ``spin_us`` then sleeps.
    """
    if (cluster_name is None) == (name is None):
        raise TypeError("shm_connect() takes one cluster name (cluster_name= or name=)")
    name = cluster_name if name is None else name
    if not isinstance(name, str):
        raise TypeError(f"cluster name must be a str, not {type(name).__name__}")
    return _register(Client(_core.shm_connect(
        name, wait_mode=wait_mode, spin_us=float(spin_us), max_attributes=max_attributes,
        arena_bytes=arena_bytes, attach_timeout=float(attach_timeout))))


def connect(host: str = "127.0.0.1", port: int = 5000, *, token: str | None = None,
            transports: str | None = None, timeout: float = 10.0,
            reconnect: bool = True, spin_us: float | None = None,
            encode_threads: int | None = None, decode_threads: int | None = None,
            device_direct: str = "auto") -> Client:
    """Connects to an easysync-hub at host:port over UCX.

    ``token``: the hub's shared secret (default: the EASYSYNC_TOKEN environment variable).
    ``transports``: a UCX transport list ("tcp", "shm,tcp", "rc,ud"); default: UCX's choice.
    ``spin_us``: how long waiting threads keep polling after the last traffic before they
    sleep (default 50; 0: sleep at once). ``encode_threads``: threads that encode a large
    tensor write beside the writing one (default: one fewer than the CPUs, at most 3).
    ``decode_threads``: threads that decode a large tensor update as it arrives (default: as
    many as the CPUs, at most 4, none with one CPU; 0: the progress thread decodes).
    ``device_direct``: whether a whole value of a CUDA tensor goes from GPU memory straight
    to UCX (where UCX moves CUDA memory): "auto" (only over an RDMA connection to the hub),
    "always" or "never".
    Raises ConnectionError when the hub is unreachable, PermissionError on a wrong token.
    """
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if spin_us is not None and not spin_us >= 0:
        raise ValueError(f"spin_us must be >= 0, not {spin_us!r}")
    if encode_threads is not None and (isinstance(encode_threads, bool)
                                       or not isinstance(encode_threads, int)
                                       or not 0 <= encode_threads <= 64):
        raise ValueError(f"encode_threads must be an int in 0..64, not {encode_threads!r}")
    if decode_threads is not None and (isinstance(decode_threads, bool)
                                       or not isinstance(decode_threads, int)
                                       or not 0 <= decode_threads <= 64):
        raise ValueError(f"decode_threads must be an int in 0..64, not {decode_threads!r}")
    if device_direct not in ("auto", "always", "never"):
        raise ValueError(
            f"device_direct must be 'auto', 'always' or 'never', not {device_direct!r}")
    return _register(Client(_core.connect(
        host, port, token=token or "", transports=transports or "", timeout=float(timeout),
        reconnect=bool(reconnect), spin_us=-1.0 if spin_us is None else float(spin_us),
        encode_threads=-1 if encode_threads is None else encode_threads,
        decode_threads=-1 if decode_threads is None else decode_threads,
        device_direct=device_direct)))


def default_client() -> Client:
    """The client SyncedObject uses when given none.

    The most recently connected client that is still open; else one made from the
    environment: EASYSYNC_CLUSTER=name (shared memory) or EASYSYNC_HUB=host:port.
    """
    with _lock:
        client = _last_client
    if client is not None and not client.closed:
        return client
    cluster = os.environ.get("EASYSYNC_CLUSTER")
    if cluster:
        return shm_connect(cluster)
    hub = os.environ.get("EASYSYNC_HUB")
    if hub:
        host, sep, port = hub.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"EASYSYNC_HUB must be host:port, not {hub!r}")
        return connect(host or "127.0.0.1", int(port))
    raise RuntimeError(
        "no easysync client: call easysync.shm_connect() or easysync.connect() first, or set "
        "EASYSYNC_CLUSTER (shared memory) or EASYSYNC_HUB (host:port)")


def _after_fork_in_child():
    # The clients' threads did not survive fork(): leave them to the parent, untouched.
    global _last_client
    for client in list(_open_clients):
        client._core.abandon()
    _open_clients.clear()
    _last_client = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_all():
    # Before the interpreter tears down: a client's callback thread may want the GIL.
    for client in list(_open_clients):
        try:
            client.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass

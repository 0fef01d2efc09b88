"""The SyncedObject decorator: every public attribute of an instance is a synced attribute.

An instance is the object `<name>` (the class's name, or `name=`), or
`<name>[<key>]` with a key, the same identity C++'s easysync::SyncedObject uses. Attributes
whose names start with an underscore stay local to the process.

Joining never resets: the class-level defaults and every assignment made while __init__
runs are initial values, written only when the cluster has no value for that attribute
yet; the instance then holds the cluster's current values. Assignments after __init__ are
writes. Tensors and arrays changed in place are published by easysync.push(obj) or
client.flush(); a torch tensor's change is also found through its version counter whenever
the attribute is read.
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any, Callable

from . import _arrays
from ._client import default_client
from ._containers import SyncedDict, SyncedList

_MISSING = object()
_TRANSPORTS = ("tcp", "reliable", "udp", "best_effort")


class field:  # noqa: N801 - reads like dataclasses.field
    """A class-level default with options:

        @SyncedObject(transport="udp")
        class Player:
            pos_x = 0
            inventory = easysync.field([], transport="tcp")   # stays reliable
    """

    __slots__ = ("default", "transport")

    def __init__(self, default=_MISSING, *, transport=None):
        if transport is not None and transport not in _TRANSPORTS:
            raise ValueError(f"transport must be 'tcp' or 'udp', not {transport!r}")
        self.default = default
        self.transport = transport


class _Slot:
    """One synced attribute of one instance."""

    __slots__ = ("h", "name", "array", "device", "local", "local_counter", "seen", "created",
                 "lock", "host_twin")

    def __init__(self, name, h, array, device, created):
        self.h = h
        self.name = name
        self.array = array  # None for plain values; 'torch' or 'numpy'
        self.device = device  # where a torch tensor attribute lives locally
        self.local = None  # the array this process holds (tensor attributes)
        self.local_counter = None  # its version counter when last published or read
        self.seen = 0  # the version `local` holds
        self.created = created  # this instance's initial value became version 1
        self.host_twin = None  # page-locked CPU tensor a CUDA `local` receives new versions through
        # An array attribute's local copy is read, compared and replaced in several steps; a
        # change callback may run them on the client's thread while the program does too.
        self.lock = threading.RLock()

    def get(self):
        if self.array is None:
            v = self.h.get()
            t = type(v)
            if t is list or t is dict:
                return self._wrap_root(v)
            return v
        return self._get_array()

    def _wrap_root(self, v):
        root = (SyncedList if type(v) is list else SyncedDict)(v, None)
        root._publish = functools.partial(self._write_plain, root)
        return root

    def _get_array(self):
        with self.lock:
            return self._get_array_locked()

    def _get_array_locked(self):
        local = self.local
        if local is not None and self.array == "torch" and local._version != self.local_counter:
            self._write_array(local)  # changed in place since we last published or read it
        if local is not None and self.h.latest() > self.seen:
            # Decoded straight into local, or for a CUDA tensor into a page-locked twin that
            # is then copied to the device once.
            target = None
            if _arrays.decodable_into(local):
                target = local
            elif _arrays.is_cuda(local):
                self.host_twin = target = _arrays.host_twin(local, self.host_twin)
            if target is not None:
                arg, keep = _arrays.tensor_arg(target)
                fitted = self.h.read_into(arg, self.seen)
                del keep
                if fitted:
                    if target is not local:
                        _arrays.copy_into(local, target)
                        self.local_counter = _arrays.version_counter(local)
                    self.seen = self.h.known_version
                    return local
        if self.h.latest() > self.seen or local is None:
            buf = self.h.get()
            if buf is None:
                return None
            new = _arrays.from_buffer(buf, self.array, self.device)
            if local is None or not _arrays.copy_into(local, new):
                self.local = local = new
            self.local_counter = _arrays.version_counter(local)
            self.seen = self.h.version
        return local

    def write(self, value):
        kind = _arrays.flavor(value)
        if (kind is None) != (self.array is None):
            what = "tensors and arrays" if self.array else "plain values"
            raise TypeError(f"attribute {self.h.object}.{self.name} holds {what}; it cannot "
                            f"take a {type(value).__name__}")
        if kind is None:
            self._write_plain(value)
        else:
            self._write_array(value)

    def _write_plain(self, value):
        self.h.set(value)

    def _write_array(self, value):
        with self.lock:
            self._write_array_locked(value)

    def _write_array_locked(self, value):
        arg, keep = _arrays.tensor_arg(value)
        version = self.h.set_tensor(arg)
        del keep
        self.array = _arrays.flavor(value)
        if self.array == "torch":
            self.device = value.device
        self.local = value
        self.local_counter = _arrays.version_counter(value)
        self.seen = max(self.seen, version)

    def push(self):
        """Publishes an in-place change of an array attribute; True when it wrote."""
        if self.array is None:
            return False
        with self.lock:
            if self.local is None:
                return False
            counter = _arrays.version_counter(self.local)
            if counter is not None and counter == self.local_counter:
                return False
            self._write_array_locked(self.local)
            return True


class _State:
    """What a synced instance holds besides its class: the client and its slots."""

    __slots__ = ("client", "object_id", "transport", "transports", "defaults", "slots",
                 "initializing", "__weakref__")

    def __init__(self, client, object_id, transport, transports, defaults):
        self.client = client
        self.object_id = object_id
        self.transport = transport
        self.transports = transports
        self.defaults = defaults
        self.slots = {}
        self.initializing = True

    def declare(self, name, value):
        transport = self.transports.get(name, self.transport)
        kind = _arrays.flavor(value)
        core = self.client._core
        if kind is None:
            h = core.declare(self.object_id, name, "auto", value, True, transport)
        else:
            arg, keep = _arrays.tensor_arg(value, host=True)
            h = core.declare(self.object_id, name, "tensor", arg, True, transport)
            del keep
        device = value.device if kind == "torch" else None
        slot = _Slot(name, h, kind, device, False)
        self.slots[name] = slot
        if kind is not None:
            # The caller's array stays bound to the attribute: in-place changes to it are
            # published, and new versions are copied into it, the cluster's current one first
            # (decoded straight into it; its own bytes again when this declaration made it).
            slot.local = value
            slot.local_counter = _arrays.version_counter(value)
            slot.get()
        else:
            _ = h.version  # reads the value: seen here, so wait_for_change waits for the next
        info = h.info  # what the read above left current: no second read of a tensor
        slot.created = info["version"] == 1 and info["writer"] == self.client.id
        return slot

    def assign(self, name, value):
        slot = self.slots.get(name)
        if slot is None:
            slot = self.declare(name, value)
            if not slot.created and not self.initializing:
                slot.write(value)  # an assignment after __init__ is a write
        elif not self.initializing or slot.created:
            slot.write(value)
        # else: an initial value in __init__ while the cluster has one: the cluster's stands


class _Field:
    """The class-level descriptor of one synced attribute name."""

    __slots__ = ("name", "default")

    def __init__(self, name, default=_MISSING):
        self.name = name
        self.default = default

    def __get__(self, obj, owner=None):
        if obj is None:
            if self.default is _MISSING:
                raise AttributeError(self.name)
            return self.default
        st = obj.__dict__["_easysync"]
        slot = st.slots.get(self.name)
        if slot is None:
            if self.default is _MISSING:
                raise AttributeError(
                    f"{type(obj).__name__!r} object has no attribute {self.name!r}")
            slot = st.declare(self.name, copy.deepcopy(self.default))
        return slot.get()

    def __set__(self, obj, value):
        obj.__dict__["_easysync"].assign(self.name, value)

    def __delete__(self, obj):
        raise AttributeError(f"synced attribute {self.name!r} cannot be deleted")


def _is_default(name, value):
    if name.startswith("_"):
        return False
    if isinstance(value, field):
        return True
    if isinstance(value, (staticmethod, classmethod, property, type)) or callable(value):
        return False
    return not hasattr(value, "__get__") or _arrays.flavor(value) is not None


def SyncedObject(client: Any = None, *, transport: str = "tcp", key: str | None = None,  # noqa: N802
                 name: str | None = None, transports: dict[str, str] | None = None) -> Any:
    """Class decorator: instances are synced objects.

    client: an easysync Client; None uses easysync.default_client() when an instance is made.
    transport: 'tcp' (reliable, the default) or 'udp' (best effort, latest value wins) for
        every attribute; transports={'inventory': 'tcp'} or easysync.field(...) per attribute.
    key: tells instances of one class apart (several coexist); an instance may also be made
        with sync_key=... as a keyword argument.
    name: the object's name in the cluster (default: the class's name).

    Usable bare (@SyncedObject) as well.
    """
    if isinstance(client, type):  # @SyncedObject without arguments
        return SyncedObject()(client)
    if transport not in _TRANSPORTS:
        raise ValueError(f"transport must be 'tcp' or 'udp', not {transport!r}")
    for attr_name, t in (transports or {}).items():
        if t not in _TRANSPORTS:
            raise ValueError(f"transport of {attr_name!r} must be 'tcp' or 'udp', not {t!r}")
    if client is not None and not hasattr(client, "_core"):
        raise TypeError("SyncedObject's client must come from easysync.shm_connect() or "
                        f"easysync.connect(), not {type(client).__name__}")

    def decorate(cls):
        per_attr = dict(transports or {})
        defaults = {}
        for attr_name, value in list(vars(cls).items()):
            if not _is_default(attr_name, value):
                continue
            if isinstance(value, field):
                if value.transport is not None:
                    per_attr[attr_name] = value.transport
                value = value.default
            defaults[attr_name] = value
            setattr(cls, attr_name, _Field(attr_name, value))
        original_init = cls.__init__

        @functools.wraps(original_init)
        def __init__(self, *args, sync_key=None, **kwargs):  # noqa: N807
            c = client if client is not None else default_client()
            k = sync_key if sync_key is not None else key
            object_name = name or type(self).__name__  # a subclass is an object of its own
            object_id = object_name if k is None else f"{object_name}[{k}]"
            st = _State(c, object_id, transport, per_attr, defaults)
            object.__setattr__(self, "_easysync", st)
            try:
                if original_init is object.__init__:
                    if args or kwargs:
                        raise TypeError(f"{cls.__name__}() takes no arguments")
                else:
                    original_init(self, *args, **kwargs)
            finally:
                st.initializing = False
            for attr_name, value in defaults.items():
                if attr_name not in st.slots and value is not _MISSING:
                    st.declare(attr_name, copy.deepcopy(value))
            c._objects[id(self)] = self

        def __setattr__(self, attr_name, value):  # noqa: N807
            if attr_name[0] == "_":
                object.__setattr__(self, attr_name, value)
                return
            st = self.__dict__["_easysync"]
            if attr_name not in st.slots:
                existing = getattr(type(self), attr_name, None)
                if existing is not None and not isinstance(existing, _Field):
                    object.__setattr__(self, attr_name, value)  # a property or a method's name
                    return
                if existing is None:
                    setattr(cls, attr_name, _Field(attr_name))
            st.assign(attr_name, value)

        cls.__init__ = __init__
        cls.__setattr__ = __setattr__
        cls._easysync_defaults = defaults
        return cls

    return decorate


def _state(obj):
    st = getattr(obj, "__dict__", {}).get("_easysync")
    if st is None:
        raise TypeError(f"{type(obj).__name__} is not a synced object (use @SyncedObject)")
    return st


def _slot(obj, name):
    st = _state(obj)
    slot = st.slots.get(name)
    if slot is None:
        raise AttributeError(f"{st.object_id} has no synced attribute {name!r}")
    return slot


def push(obj: Any) -> int:
    """Publishes in-place changes of obj's tensors and arrays (NumPy arrays always, torch
    tensors whose version counter moved). Returns how many attributes were written."""
    return sum(slot.push() for slot in list(_state(obj).slots.values()))


def pull(obj: Any) -> int:
    """Brings every attribute of obj up to date now: arrays bound to it (a model's parameters
    assigned in __init__) receive the newest version in place. Returns how many attributes
    had a newer version."""
    newer = 0
    for slot in list(_state(obj).slots.values()):
        if slot.h.latest() > (slot.seen if slot.array else slot.h.known_version):
            newer += 1
        slot.get()
    return newer


def wait_for_change(obj: Any, name: str | None = None, timeout: float | None = None) -> bool:
    """Waits until attribute `name` (or any attribute of obj) has a version newer than the
    one this process last read. Returns False on timeout."""
    t = 1e9 if timeout is None else float(timeout)
    if name is not None:
        return _slot(obj, name).h.wait_for_change(t)
    st = _state(obj)
    return st.client._core.wait_any([s.h for s in st.slots.values()], t)


def on_change(obj: Any, name: str, callback: Callable[[Any], None]) -> Any:
    """Calls callback(new_value) on the client's callback thread after each new version of
    obj.name (versions may coalesce). Returns a subscription; close() it to stop."""
    slot = _slot(obj, name)
    delivered = [0]

    def fire():
        # A callback that ran late read a version newer than the one that woke it: the next
        # round, woken by that version, does not deliver it again. The version is read first,
        # so a value is never taken for an older one.
        latest = slot.h.latest()
        if latest <= delivered[0]:
            return
        value = getattr(obj, name)
        delivered[0] = latest
        callback(value)

    return slot.h.on_change(fire)


def version(obj: Any, name: str) -> int:
    """The version of obj.name this process can read (versions start at 1). Asking reads
    no value: polling it costs nothing however large the value is."""
    return _slot(obj, name).h.latest()


def info(obj: Any, name: str) -> dict[str, int]:
    """version, clock, writer, write_ns and bytes of the newest value of obj.name (the one
    version() names), read without reading the value."""
    return _slot(obj, name).h.info


def attributes(obj: Any) -> dict[str, str]:
    """{name: kind} of obj's synced attributes."""
    return {name: slot.h.kind for name, slot in _state(obj).slots.items()}

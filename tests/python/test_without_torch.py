"""The package in an environment without torch or NumPy (pip install . with neither):
plain values work, and asking for tensor support says what is missing."""

import importlib.util
import os
import sys

import pytest

import easysync
from easysync import SyncedObject, shm_connect

pytestmark = pytest.mark.skipif(not os.environ.get("EASYSYNC_EXPECT_NO_TORCH"),
                                reason="runs in the environment made without torch and NumPy")


def test_neither_torch_nor_numpy_is_installed():
    assert importlib.util.find_spec("torch") is None
    assert importlib.util.find_spec("numpy") is None


def test_plain_values_work(cluster):
    with shm_connect(cluster) as c1, shm_connect(cluster) as c2:
        @SyncedObject(c1, name="Cfg")
        class A:
            def __init__(self):
                self.name = "run-7"
                self.params = {"lr": 0.1, "sizes": [1, 2, 3], "tags": {"a": None}}
                self.blob = b"\x01\x02"

        @SyncedObject(c2, name="Cfg")
        class B:
            def __init__(self):
                self.name = ""
                self.params = {}
                self.blob = b""

        a, b = A(), B()
        assert (b.name, b.params, b.blob) == (a.name, a.params, a.blob)
        b.params["sizes"].append(4)
        assert a.params["sizes"] == [1, 2, 3, 4]
    assert "torch" not in sys.modules and "numpy" not in sys.modules


def test_torch_ops_say_what_is_missing():
    with pytest.raises(ImportError, match="torch"):
        easysync.ops


def test_built_without_the_torch_extension():
    # `pip install .` here found no torch, so it built the package without the extension.
    assert easysync.torch_library_path() is None

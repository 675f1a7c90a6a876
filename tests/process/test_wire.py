"""shoal.process._wire and _shm: blobs, shared memory, errors and framing, in one process.

Every test gets its own segment prefix; afterwards no segment with that
prefix may be left in /dev/shm and no child process may be left running.
"""

from __future__ import annotations

import copyreg
import errno
import itertools
import mmap
import multiprocessing
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
import traceback
import types

import numpy as np
import pytest

from shoal.process import _frames, _remote, _shm, _wire

SHM = "/dev/shm"
BIG = _shm.SHM_THRESHOLD + 17  # an odd size, above the threshold
_serial = itertools.count()

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason="needs /dev/shm (Linux)")


def segments_named(prefix):
    return sorted(n for n in os.listdir(SHM) if n == prefix or n.startswith(prefix + "-"))


@pytest.fixture
def prefix():
    name = f"shoal-{os.getpid()}-t{next(_serial)}"
    yield name
    left = segments_named(name)
    _shm.unlink_prefix(name)
    assert left == [], f"segments left behind: {left}"


def round_trip(obj, prefix):
    blob = _wire.dumps(obj, prefix)
    assert isinstance(blob[0], bytes)
    for name, size in blob[1]:
        assert name.startswith(prefix + "-")
        assert os.path.getsize(os.path.join(SHM, name)) == size
    result = _wire.loads(blob)
    assert segments_named(prefix) == []
    return blob, result


# -- plain data and buffers ---------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        None,
        0,
        -(2**100),
        1.5,
        "text é",
        (1, "two", 3.0),
        [1, [2, [3]]],
        {"a": {1, 2}, "b": frozenset({3})},
        {"nested": {"list": [b"x" * 100, bytearray(b"y" * 10)]}},
        ValueError("an exception as a value"),
    ],
    ids=repr,
)
def test_plain_data_round_trips_in_band(obj, prefix):
    blob, result = round_trip(obj, prefix)
    assert blob[1] == ()
    if isinstance(obj, BaseException):
        assert type(result) is type(obj) and result.args == obj.args
    else:
        assert result == obj


def test_small_numpy_array_stays_in_band(prefix):
    array = np.arange(100, dtype=np.int32).reshape(10, 10)
    blob, result = round_trip(array, prefix)
    assert blob[1] == ()
    np.testing.assert_array_equal(result, array)


@pytest.mark.parametrize("order", ["C", "F"])
def test_big_numpy_array_goes_through_shared_memory(prefix, order):
    array = np.asarray(np.random.default_rng(0).random((1000, 300)), order=order)
    blob, result = round_trip(array, prefix)
    assert len(blob[1]) == 1
    assert blob[1][0][1] == array.nbytes
    assert len(blob[0]) < 1000
    np.testing.assert_array_equal(result, array)
    assert result.dtype == array.dtype and result.flags.writeable
    result[0, 0] = -1.0  # a private copy: writable, and not the sender's memory
    assert array[0, 0] != -1.0


def test_several_arrays_and_a_non_contiguous_one(prefix):
    a = np.ones(BIG, dtype=np.uint8)
    b = np.zeros((2000, 200))
    strided = np.arange(400_000, dtype=np.float64)[::2]  # not contiguous: in band
    blob, (ra, rb, rs) = round_trip((a, b, strided), prefix)
    assert [size for _, size in blob[1]] == [a.nbytes, b.nbytes]
    np.testing.assert_array_equal(ra, a)
    np.testing.assert_array_equal(rb, b)
    np.testing.assert_array_equal(rs, strided)


@pytest.mark.parametrize("size", [10, BIG], ids=["small", "big"])
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_bytes_and_bytearray_keep_their_type(prefix, kind, size):
    obj = kind(os.urandom(size))
    blob, result = round_trip(obj, prefix)
    assert type(result) is kind
    assert result == obj
    assert len(blob[1]) == (1 if size >= _shm.SHM_THRESHOLD else 0)


def test_big_bytes_inside_call_arguments_go_out_of_band(prefix):
    data = os.urandom(BIG)
    shared = bytearray(BIG)
    blob = _wire.dumps_call(len, ([data, {"k": shared}], shared), {"kw": (data,)}, prefix)
    # data and shared appear twice each but travel once each.
    assert sorted(size for _, size in blob[1]) == [BIG, BIG]
    assert len(blob[0]) < 1000
    fn, args, kwargs = _wire.loads(blob)
    assert fn is len
    assert args[0][0] == data and kwargs["kw"][0] == data
    assert args[0][1]["k"] is args[1]  # shared references stay shared
    assert type(args[1]) is bytearray and args[1] == shared


@pytest.mark.parametrize("size", [16, BIG - BIG % 8], ids=["small", "big"])
@pytest.mark.parametrize("readonly", [True, False])
def test_memoryview_keeps_format_shape_and_readonly(prefix, size, readonly):
    source = bytes(range(256)) * (size // 256) + bytes(size % 256)
    base = source if readonly else bytearray(source)
    view = memoryview(base).cast("i", (2, size // 8))
    blob, result = round_trip(view, prefix)
    assert type(result) is memoryview
    assert (result.format, result.shape, result.readonly) == ("i", view.shape, readonly)
    assert result.tobytes() == view.tobytes()
    assert len(blob[1]) == (1 if size >= _shm.SHM_THRESHOLD else 0)


def test_memoryview_with_a_format_cast_refuses_arrives_as_bytes(prefix):
    array = np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])
    array["a"] = [1, 2, 3]
    view = memoryview(array)
    assert view.format.startswith("T{")
    _, result = round_trip(view, prefix)
    assert (result.format, result.ndim) == ("B", 1)
    assert result.tobytes() == view.tobytes()


def test_non_contiguous_memoryview_arrives_contiguous(prefix):
    view = memoryview(bytes(range(200)))[::3]
    _, result = round_trip(view, prefix)
    assert result.tobytes() == view.tobytes() and result.c_contiguous


# -- functions ----------------------------------------------------------------


def importable(x, y=1):
    return x + y


def test_lambda_and_closure_fall_back_to_cloudpickle(prefix):
    offset = 40

    def closure(x):
        return x + offset

    for fn in (lambda x: x * 2, closure):
        loaded_fn, args, kwargs = _wire.loads(_wire.dumps_call(fn, (1,), {}, prefix))
        assert loaded_fn(*args, **kwargs) == fn(1)


def test_importable_function_goes_by_reference(prefix):
    data, segments = _wire.dumps_call(importable, (1,), {"y": 2}, prefix)
    assert segments == ()
    assert b"test_wire" in data and b"importable" in data
    assert b"cloudpickle" not in data
    # A reference: pickle.loads gives back the very same function object.
    fn, args, kwargs = pickle.loads(data)
    assert fn is importable and fn(*args, **kwargs) == 3


class Holder:
    def method(self):
        return self


def test_dumps_function_only_for_functions_that_travel_by_name():
    import functools
    import math
    import random

    for fn in (importable, len, math.sqrt, os.path.join):
        data = _wire.dumps_function(fn)
        assert data is not None and pickle.loads(data) is fn
    offset = 1

    def closure(x):
        return x + offset

    # Each of these has state of its own (or needs cloudpickle): it must
    # travel with each call, never be shared between calls.
    for fn in (
        lambda x: x,
        closure,
        Holder().method,  # a bound method
        [].append,  # a builtin method of an object
        random.Random(1).getrandbits,
        functools.partial(importable, 1),
        Holder(),
        dict.fromkeys,  # a builtin method of a class
    ):
        assert _wire.dumps_function(fn) is None, fn


def run_python(code, timeout=30):
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_importable_function_needs_no_cloudpickle():
    # cloudpickle cannot even be imported here: plain pickle must do it all.
    done = run_python(
        """
        import sys
        sys.modules["cloudpickle"] = None
        import os.path
        from shoal.process import _shm, _wire
        blob = _wire.dumps_call(os.path.join, ("a", "b"), {}, "shoal-x")
        assert b"posixpath" in blob[0] and b"join" in blob[0], blob
        fn, args, kwargs = _wire.loads(blob)
        assert fn(*args, **kwargs) == "a/b"
        print("ok")
        """
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_a_subprocess_using_shared_memory_prints_no_warning():
    prefix = f"shoal-{os.getpid()}-sub{next(_serial)}"
    done = run_python(
        f"""
        import numpy as np
        from shoal.process import _shm, _wire
        prefix = {prefix!r}
        array = np.arange(1_000_000, dtype=np.float64)
        assert (_wire.loads(_wire.dumps(array, prefix)) == array).all()
        _shm.discard(_wire.dumps(array, prefix))
        _wire.dumps(array, prefix + "-w1")
        _shm.unlink_prefix(prefix)
        print("ok")
        """
    )
    left = segments_named(prefix)
    _shm.unlink_prefix(prefix)
    assert (done.returncode, done.stdout, done.stderr, left) == (0, "ok\n", "", [])


# -- failures leave no segment ------------------------------------------------


class ReduceFails:
    def __reduce__(self):
        raise ValueError("this object refuses to be pickled")


class LoadFails:
    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("this object refuses to be unpickled")


def test_pickling_error_surfaces_and_leaves_no_segment(prefix):
    big = np.ones(BIG, dtype=np.uint8)
    with pytest.raises(ValueError, match="refuses to be pickled"):
        _wire.dumps((big, ReduceFails(), big), prefix)
    with pytest.raises(ValueError, match="refuses to be pickled"):
        _wire.dumps_call(importable, (big, ReduceFails()), {}, prefix)
    assert segments_named(prefix) == []


def test_when_cloudpickle_fails_too_its_error_is_raised(prefix):
    # Plain pickle stumbles on the lambda, which cloudpickle can do: the
    # lock is the real problem, and cloudpickle's error names it.
    with pytest.raises(TypeError, match="lock"):
        _wire.dumps_call(lambda: None, (threading.Lock(),), {}, prefix)


class Watched:
    """A picklable object a weak reference can watch."""


@pytest.mark.parametrize("fails", [False, True], ids=["cloudpickled", "unpicklable"])
def test_pickling_keeps_no_argument_alive(prefix, fails):
    # A lambda sends dumps() down its slow path (_wrap_big_bytes, cloudpickle);
    # a lock makes it fail there. Either way, once dumps() is done its
    # arguments must be free by reference counting alone: a reference cycle
    # kept a pool's initargs (a multiprocessing Queue) alive until the cyclic
    # collector ran.
    import gc
    import weakref

    watched = Watched()
    ref = weakref.ref(watched)
    args = (watched, threading.Lock()) if fails else (watched,)
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            _wire.dumps_call(lambda *a: None, args, {}, prefix)
        except TypeError:
            assert fails
        else:
            assert not fails
        del watched, args
        assert ref() is None
    finally:
        if collecting:
            gc.enable()


def test_unpickling_error_surfaces_and_leaves_no_segment(prefix):
    big = np.ones(BIG, dtype=np.uint8)
    blob = _wire.dumps((big, LoadFails(), big.copy()), prefix)
    assert len(blob[1]) == 2
    with pytest.raises(RuntimeError, match="refuses to be unpickled"):
        _wire.loads(blob)
    assert segments_named(prefix) == []


def test_a_missing_segment_fails_loads_and_unlinks_the_others(prefix):
    blob = _wire.dumps([np.ones(BIG, np.uint8), np.zeros(BIG, np.uint8)], prefix)
    _shm.discard((b"", blob[1][:1]))
    with pytest.raises(FileNotFoundError):
        _wire.loads(blob)
    assert segments_named(prefix) == []


def test_full_shared_memory_falls_back_to_in_band(prefix, monkeypatch):
    calls = []
    real = _shm._create_segment

    def second_fails(shm_prefix, view):
        calls.append(view.nbytes)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(shm_prefix, view)

    monkeypatch.setattr(_shm, "_create_segment", second_fails)
    arrays = [np.full(BIG, 1, np.uint8), np.full(BIG, 2, np.uint8)]
    blob, result = round_trip(arrays, prefix)
    assert len(calls) == 2 and blob[1] == ()
    for got, want in zip(result, arrays, strict=True):
        np.testing.assert_array_equal(got, want)


def test_discard_and_unlink_prefix(prefix):
    big = np.ones(BIG, dtype=np.uint8)
    blob = _wire.dumps(big, prefix)
    assert len(segments_named(prefix)) == 1
    _shm.discard(blob)
    _shm.discard(blob)  # missing segments are ignored
    assert segments_named(prefix) == []
    with pytest.raises(FileNotFoundError):
        _wire.loads(blob)

    _wire.dumps(big, prefix)
    _wire.dumps(big, f"{prefix}-w123")
    sibling = f"{prefix}0"  # shares the text, not the prefix: must survive
    _wire.dumps(big, sibling)
    _wire.dumps(big, f"{prefix}-w12")
    try:
        assert len(segments_named(prefix)) == 3
        _shm.unlink_prefix(f"{prefix}-w12")
        assert len(segments_named(prefix)) == 2
        _shm.unlink_prefix(prefix)
        assert segments_named(prefix) == []
        assert len(segments_named(sibling)) == 1
    finally:
        _shm.unlink_prefix(sibling)


# -- errors -------------------------------------------------------------------


def raise_in_a_named_frame(exc):
    raise exc


def caught(exc):
    try:
        raise_in_a_named_frame(exc)
    except BaseException as error:
        return error
    raise AssertionError("unreachable")


def test_error_round_trip_keeps_type_args_and_remote_traceback(prefix):
    error = caught(KeyError("missing"))
    rebuilt = _remote.load_error(_remote.dumps_error(error, prefix))
    assert type(rebuilt) is KeyError and rebuilt.args == ("missing",)
    cause = rebuilt.__cause__
    assert isinstance(cause, _remote.RemoteTraceback)
    assert "raise_in_a_named_frame" in cause.text and "KeyError: 'missing'" in cause.text
    assert str(cause).startswith('\n"""\n') and str(cause).endswith('"""')
    try:
        raise rebuilt
    except KeyError:
        shown = traceback.format_exc()
    assert "raise_in_a_named_frame" in shown
    assert "The above exception was the direct cause" in shown


def test_system_exit_travels_as_itself(prefix):
    rebuilt = _remote.load_error(_remote.dumps_error(caught(SystemExit(3)), prefix))
    assert type(rebuilt) is SystemExit and rebuilt.code == 3


def _reduce_losing_the_code(exc):
    # What tblib's reducer (installed by Dask distributed) does to a SystemExit.
    return SystemExit, ()


def test_exceptions_travel_as_themselves_whatever_copyreg_holds(prefix):
    copyreg.pickle(SystemExit, _reduce_losing_the_code)
    try:
        rebuilt = _remote.load_error(_remote.dumps_error(caught(SystemExit(3)), prefix))
        # A big buffer in such an exception still goes through shared memory.
        big = caught(ValueError("with data", np.ones(BIG, dtype=np.uint8)))
        blob = _remote.dumps_error(big, prefix)
        assert len(blob[1]) == 1
        np.testing.assert_array_equal(_remote.load_error(blob).args[1], big.args[1])
    finally:
        del copyreg.dispatch_table[SystemExit]
    assert type(rebuilt) is SystemExit and rebuilt.code == 3


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


class HoldsALock(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


@pytest.mark.parametrize(
    ("error", "type_name", "reason"),
    [
        (NeedsTwoArgs("first", "second"), "test_wire.NeedsTwoArgs", "missing 1 required"),
        (HoldsALock("locked"), "test_wire.HoldsALock", "lock"),
    ],
    ids=["does-not-load-back", "does-not-pickle"],
)
def test_unpicklable_exception_comes_back_as_substitute(prefix, error, type_name, reason):
    rebuilt = _remote.load_error(_remote.dumps_error(caught(error), prefix))
    assert type(rebuilt) is _remote.UnpicklableError
    assert rebuilt.type_name == type_name
    assert rebuilt.message == str(error)
    assert reason in rebuilt.reason
    assert type_name in str(rebuilt) and str(error) in str(rebuilt)
    assert "raise_in_a_named_frame" in rebuilt.__cause__.text
    pickle.loads(pickle.dumps(rebuilt))  # the substitute itself travels


def test_exception_the_parent_cannot_load_raises_with_its_name(prefix):
    # The dispatcher fails the call with an UnpicklingFailedError from it.
    module = types.ModuleType("shoal_test_only_in_worker")
    exec("class WorkerOnly(Exception):\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        blob = _remote.dumps_error(caught(module.WorkerOnly("boom")), prefix)
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(_remote.ExceptionNotUnpickled) as info:
        _remote.load_error(blob)
    assert info.value.type_name == "shoal_test_only_in_worker.WorkerOnly"
    assert info.value.message == "boom"
    cause = info.value.__cause__
    assert isinstance(cause, ModuleNotFoundError)
    # The worker's traceback of the exception that did not load.
    assert isinstance(cause.__context__, _remote.RemoteTraceback)
    assert "raise_in_a_named_frame" in cause.__context__.text
    assert "WorkerOnly: boom" in str(info.value)


@pytest.mark.parametrize("unpickling", [False, True])
def test_error_blob_says_whether_unpickling_the_call_raised_it(prefix, unpickling):
    blob = _remote.dumps_error(caught(KeyError("k")), prefix, unpickling=unpickling)
    error, marked = _remote.load_failure(blob)
    assert type(error) is KeyError and marked is unpickling


def test_exception_with_a_big_array_uses_and_frees_shared_memory(prefix):
    error = caught(ValueError("with data", np.ones(BIG, dtype=np.uint8)))
    blob = _remote.dumps_error(error, prefix)
    assert len(blob[1]) == 1
    rebuilt = _remote.load_error(blob)
    np.testing.assert_array_equal(rebuilt.args[1], error.args[1])
    assert segments_named(prefix) == []


def test_error_blob_can_be_discarded(prefix):
    blob = _remote.dumps_error(caught(ValueError(np.ones(BIG, dtype=np.uint8))), prefix)
    _shm.discard(blob)
    assert segments_named(prefix) == []


# -- framing ------------------------------------------------------------------


def test_send_and_recv_over_a_pipe(prefix):
    left, right = multiprocessing.Pipe(duplex=True)
    with left, right:
        blob = _wire.dumps(np.arange(BIG, dtype=np.uint8), prefix)
        message = (_frames.RESULTS, [(7, True, blob, 0.25)])
        _frames.send(left, message)
        assert right.poll(5)
        got = _frames.recv(right)
        assert got == message
        np.testing.assert_array_equal(_wire.loads(got[1][0][2]), np.arange(BIG, dtype=np.uint8))
        left.close()
        with pytest.raises(EOFError):
            _frames.recv(right)


class RecordingWrites:
    """Stands in for ``os`` in _wire: records each write's size and first bytes.

    It reads no more than the first bytes of what it is given, so a "2 GiB"
    answer can be an untouched anonymous mapping that costs no memory; and,
    like Linux, it takes at most 0x7FFFF000 bytes per write.
    """

    def __init__(self):
        self.writes = []

    def write(self, fd, data):
        with memoryview(data) as view:
            self.writes.append((view.nbytes, bytes(view[:64])))
            return min(view.nbytes, 0x7FFFF000)


class FakeConnection:
    def fileno(self):
        return 1_000_000  # never used: the writes are recorded


LONG_HEAD = struct.Struct("!iQBq?d")


def test_an_answer_past_2_gib_goes_with_the_long_length_header(monkeypatch):
    # The payload (mark, task id, ok, duration, pickle) is one byte over what a
    # 4-byte signed length can announce: a struct.error in the worker, once.
    body = 1 + 8 + 1 + 8
    data = mmap.mmap(-1, 2**31 - body)
    fake = RecordingWrites()
    monkeypatch.setattr(_frames, "os", fake)
    with memoryview(data) as pickle_bytes:
        _frames.send_result(FakeConnection(), 7, True, (pickle_bytes, ()), 0.5)
    (head_size, head), *rest = fake.writes
    assert head_size == LONG_HEAD.size
    assert LONG_HEAD.unpack(head) == (-1, 2**31, _frames.RESULT_MARK, 7, True, 0.5)
    # The pickle follows in writes of its own, not glued to the header (a
    # copy of 2 GiB), resumed where the kernel stopped.
    assert [size for size, _ in rest] == [len(data), len(data) - 0x7FFFF000]
    data.close()


def test_a_small_answer_keeps_the_short_length_header(monkeypatch):
    fake = RecordingWrites()
    monkeypatch.setattr(_frames, "os", fake)
    data = pickle.dumps("small")
    _frames.send_result(FakeConnection(), 7, False, (data, ()), 0.5)
    [(size, frame)] = fake.writes
    assert size == 4 + 1 + 8 + 1 + 8 + len(data)
    assert struct.unpack_from("!iBq?d", frame) == (size - 4, _frames.RESULT_MARK, 7, False, 0.5)
    assert frame[22:] == data


def test_a_connection_reads_a_message_framed_with_the_long_header():
    # What the dispatcher sends past 2 GiB (see _frames.frame), shown
    # with a small message: the worker's Connection.recv_bytes takes the long
    # header at any length.
    left, right = multiprocessing.Pipe(duplex=True)
    with left, right:
        payload = pickle.dumps((_frames.RUN, [(1, (b"call", ()))], []), protocol=5)
        os.write(left.fileno(), struct.pack("!iQ", -1, len(payload)) + payload)
        assert right.poll(5)
        assert _frames.recv(right) == (_frames.RUN, [(1, (b"call", ()))], [])


class CountsPickling:
    times = 0

    def __reduce__(self):
        CountsPickling.times += 1
        return CountsPickling, ()


def test_a_big_pickle_with_nothing_out_of_band_is_made_once(prefix):
    # A long str has no buffer for shared memory: pickling it again on the
    # full path would only cost time and, for a moment, twice the memory.
    CountsPickling.times = 0
    text = "x" * (_shm.SHM_THRESHOLD + 1)
    blob = _wire.dumps((text, CountsPickling()), prefix)
    assert blob[1] == ()
    assert CountsPickling.times == 1
    loaded, _counter = _wire.loads(blob)
    assert loaded == text


def test_a_blob_that_cannot_be_read_leaves_the_kept_segments_of_other_calls(prefix):
    # Calls in flight share a kept segment (the same array, submitted again
    # and again); a call whose own segment is gone fails, and must not take
    # the shared one with it: its writer unlinks it once all are answered.
    kept = _shm.create_segment(_shm.kept_prefix(prefix), memoryview(b"k" * BIG))
    own = _shm.create_segment(prefix, memoryview(b"o" * BIG))
    _shm.discard(((), ((own, BIG),)))  # gone before the worker reads it
    blob = _wire.dumps((np.zeros(1),), prefix)[0], ((kept, BIG), (own, BIG))
    with pytest.raises(OSError):
        _wire.loads(blob)
    assert segments_named(prefix) == [kept]
    _shm.discard(((), ((kept, BIG),)))

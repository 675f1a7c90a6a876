"""The wire of the process pool: framing, pickling, remote tracebacks.

This module is mechanism only: it turns objects into bytes and back, their
big buffers out of band. What to send, when, and what a failure means for a
task is decided by the dispatcher (parent) and the worker loop (child),
which both import this module. It imports only the standard library,
``_by_value`` (how functions and classes of ``__main__`` travel), ``_shm``
(the shared-memory segments that carry big buffers) and ``cloudpickle``
when plain pickle cannot do the job.

Wire format::

    frame     = length, payload: as ``Connection.send_bytes`` writes it
                  length: 4 bytes, signed, big-endian; past MAX_SHORT_LENGTH
                  (2 GiB - 1), -1 then the length in 8 bytes, unsigned
                  payload: a message, or an answer framed by send_result()
    message   = pickle.dumps((TAG, ...), protocol=5), one per Connection.send_bytes
                  tuples of ints, floats, strings, bools, lists and Blobs only
    Blob      = (data: bytes, segments: ((name, size), ...))
                  data: a protocol-5 pickle of one object; its out-of-band
                  buffers live, in order, in the shared-memory segments
    call blob = Blob of (fn, args, kwargs)
    args blob = Blob of args (a tuple), for a call whose function travels
                  once per RUN message (see RUN below) and has no kwargs
    items blob= Blob of a sequence of a map's items (a slice of its calls)
    error blob= Blob whose data is a plain pickle of
                  (type_name, message, traceback_text, exception_data,
                  unpickling) and whose segments are those of
                  exception_data; unpickling is True when the exception
                  was raised unpickling the call, not by the call. Read it
                  with load_error() or load_failure() only.

Shared memory: a buffer of at least ``SHM_THRESHOLD`` bytes (a numpy array,
a big ``bytes``/``bytearray``/``memoryview``) travels in a shared-memory
segment instead of the pickle; ``_shm`` creates, reads and unlinks them,
and says who removes a segment when. Where there is no POSIX shared memory
(Windows) every buffer travels in band.

Big ``bytes`` and ``bytearray`` objects arrive as ``bytes`` and
``bytearray``. A ``memoryview`` of any size (plain pickle refuses them)
arrives as a ``memoryview`` over a private copy with the same contents,
``format``, ``shape`` and ``readonly`` flag; when its format is not one
``memoryview.cast`` accepts (e.g. ``'<i'`` or a numpy struct format) it
arrives as a 1-D memoryview of unsigned bytes with the same contents.

Concurrency: every function may be called from any thread; this module
has no shared state of its own (``_shm`` has the segment counter).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import traceback
import types
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

from . import _by_value, _shm
from ._shm import SHM_THRESHOLD, Segments

__all__ = (
    "EXIT",
    "INIT_FAILED",
    "LOADED",
    "MAX_SHORT_LENGTH",
    "READY",
    "RESLICE",
    "RESULTS",
    "RUN",
    "SKIPPED",
    "Blob",
    "ExceptionNotUnpickled",
    "RemoteTraceback",
    "Store",
    "UnpicklableError",
    "decode_result",
    "discard",
    "dumps",
    "dumps_call",
    "dumps_error",
    "dumps_function",
    "dumps_inband",
    "load_error",
    "load_failure",
    "loads",
    "long_header",
    "recv",
    "send",
    "send_result",
    "unlink_prefix",
)

# Message tags (the first element of every message).
# parent -> worker: (RUN, [entry, ...], functions), where an entry is
#   (task_id, blob, index, slot): the call of a call blob (index -1) or
#   functions[index](*args) of an args blob, and functions is a list of
#   function pickles (bytes) made by dumps_function(); slot is the call's
#   slot on the worker's start board (see _board), or -1 for a call the
#   worker may start without asking (it was sent to an idle worker).
#   The worker unpickles each function once per message, on first use.
#   An entry (first_id, count, items_blob, fn, star) is a slice of a map: the
#   calls fn(item) (fn(*item) if star) for the count items of items_blob,
#   answered as first_id, first_id + 1, ...; fn is an index into functions, or
#   a pickle (dumps_inband) unpickled afresh for each call.
RUN = 1
EXIT = 2  # parent -> worker: (EXIT,)
READY = 3  # worker -> parent: (READY, pid)
INIT_FAILED = 4  # worker -> parent: (INIT_FAILED, error_blob)
RESULTS = 5  # worker -> parent: (RESULTS, [(task_id, ok, blob, duration_s), ...])
# worker -> parent: (RESLICE, first_id): the items of that slice do not
# unpickle as one list; send its calls again one per entry.
RESLICE = 6
# worker -> parent: (LOADED, first_id): the items of that slice (of more than
# one call) are unpickled; its calls start. A worker that dies before saying
# so died unpickling them, not in a call.
LOADED = 7
# worker -> parent: (SKIPPED, task_id): that call's slot was closed (it was
# cancelled, or taken by another worker); it did not run.
SKIPPED = 8

Blob: TypeAlias = tuple[bytes, Segments]

# The dispatcher's names for these, until it imports _shm itself.
discard = _shm.discard
unlink_prefix = _shm.unlink_prefix


# -- pickling ----------------------------------------------------------------


def _rebuild_bytearray(data: bytearray | bytes) -> bytearray:
    # Out of band, ``data`` is the fresh bytearray loads() read the segment into.
    return data if type(data) is bytearray else bytearray(data)


def _rebuild_memoryview(
    data: bytes | bytearray | memoryview, fmt: str, shape: tuple[int, ...], readonly: bool
) -> memoryview:
    if not readonly and not isinstance(data, bytearray):
        data = bytearray(data)
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if fmt != "B" or len(shape) != 1:
        # A format cast() refuses stays bytes, as the module docstring says.
        with contextlib.suppress(TypeError, ValueError):
            view = view.cast(fmt, shape)  # type: ignore[call-overload]
    if readonly and not view.readonly:
        view = view.toreadonly()
    return view


class _OutOfBand:
    """Wraps a big bytes or bytearray so that it pickles as an out-of-band buffer.

    The C pickler writes ``bytes`` and ``bytearray`` in band without asking
    reducer_override, so _wrap_big_bytes() puts this wrapper in their place
    before pickling.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild = bytes if type(self.data) is bytes else _rebuild_bytearray
        return rebuild, (pickle.PickleBuffer(self.data),)


# How many container items _wrap_big_bytes() looks at, and how deep. It runs
# only when a plain pickle came out bigger than SHM_THRESHOLD (or failed), so
# its cost (~0.1 us an item) is small next to that pickle's; big bytes nested
# deeper or behind the budget simply stay in band.
_WRAP_BUDGET = 4096
_WRAP_DEPTH = 4
_WRAPPED_TYPES = frozenset({bytes, bytearray, tuple, list, dict})


def _wrap_big_bytes(obj: object) -> object:
    """Return ``obj`` with big bytes/bytearrays in tuples, lists and dicts wrapped.

    Containers holding one are copied (never changed in place); a container
    seen twice is copied once, so shared references stay shared. Returns
    ``obj`` itself when there is nothing to wrap.
    """
    return _Wrapper().wrap(obj, _WRAP_DEPTH)


class _Wrapper:
    """One _wrap_big_bytes() walk.

    A class rather than a recursive closure: a closure that calls itself is a
    reference cycle, which would keep ``seen`` (the user's arguments: a
    multiprocessing Queue in initargs, say) alive until the cyclic collector
    happens to run.
    """

    __slots__ = ("budget", "seen")

    def __init__(self) -> None:
        self.budget = _WRAP_BUDGET
        self.seen: dict[int, object] = {}

    def wrap(self, item: object, depth: int) -> object:
        kind = type(item)
        if kind not in _WRAPPED_TYPES:
            return item
        key = id(item)
        seen = self.seen
        if key in seen:
            return seen[key]
        seen[key] = item  # until finished: a cycle keeps the original
        new: object = item
        if isinstance(item, bytes | bytearray):
            if len(item) >= SHM_THRESHOLD:
                new = _OutOfBand(item)
        elif isinstance(item, dict):
            if depth and self.budget >= len(item):
                self.budget -= len(item)
                values = {k: self.wrap(v, depth - 1) for k, v in item.items()}
                if any(values[k] is not v for k, v in item.items()):
                    new = values
        elif isinstance(item, tuple | list) and depth and self.budget >= len(item):
            self.budget -= len(item)
            items = [self.wrap(x, depth - 1) for x in item]
            if any(a is not b for a, b in zip(items, item, strict=True)):
                new = tuple(items) if kind is tuple else items
        seen[key] = new
        return new


def _reduce_memoryview(view: memoryview) -> tuple[Any, ...]:
    data: object
    if view.nbytes >= SHM_THRESHOLD and view.c_contiguous:
        data = pickle.PickleBuffer(view)
    else:
        data = view.tobytes()
    return _rebuild_memoryview, (data, view.format, view.shape, view.readonly)


class _Pickler(pickle.Pickler):
    """Plain pickle that also handles memoryviews (which pickle refuses), and
    sends functions and classes of ``__main__`` by value (see ``_by_value``)."""

    def reducer_override(self, obj: object) -> Any:
        if type(obj) is memoryview:
            return _reduce_memoryview(obj)
        return _by_value.reduce(obj) or NotImplemented


_cloud_pickler: type[pickle.Pickler] | None = None


def _cloud_pickler_class() -> type[pickle.Pickler]:
    """cloudpickle's Pickler with the bytes-like reductions; imported on first need."""
    global _cloud_pickler
    if _cloud_pickler is None:
        import cloudpickle  # type: ignore[import-untyped]

        class _CloudPickler(cloudpickle.Pickler):  # type: ignore[misc]
            def reducer_override(self, obj: object) -> Any:
                if type(obj) is memoryview:
                    return _reduce_memoryview(obj)
                # Kept pickles of __main__'s functions and classes (it would
                # pickle them by value too, each time afresh).
                return _by_value.reduce(obj) or super().reducer_override(obj)

        _cloud_pickler = _CloudPickler
    return _cloud_pickler


class _BigBuffer(Exception):
    """Raised by _small_in_band() to leave dumps()' fast path."""


def _small_in_band(buffer: pickle.PickleBuffer) -> bool:
    """A buffer_callback keeping small buffers in band and refusing big ones."""
    with memoryview(buffer) as view:
        if view.nbytes >= SHM_THRESHOLD and _shm.AVAILABLE:
            raise _BigBuffer
    return True


def _collector(
    buffers: list[pickle.PickleBuffer], out_of_band: bool
) -> Callable[[pickle.PickleBuffer], bool] | None:
    """A buffer_callback keeping big contiguous buffers out of band (in ``buffers``)."""
    if not out_of_band or not _shm.AVAILABLE:
        return None  # every buffer in band
    threshold = SHM_THRESHOLD

    def callback(buffer: pickle.PickleBuffer) -> bool:
        with memoryview(buffer) as view:
            if view.nbytes >= threshold and view.contiguous:
                buffers.append(buffer)
                return False
        return True

    return callback


def _pickle(
    obj: object, out_of_band: bool = True, main_by_value: bool = False
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``; return the data and its out-of-band buffers (nothing stored yet).

    Three attempts, cheapest first. (1) ``pickle.dumps``: the fast path, and
    all that an importable function with plain arguments needs. Its result
    is final when smaller than SHM_THRESHOLD (it cannot hold a big bytes in
    band then) or when _wrap_big_bytes() finds nothing to wrap, and, with
    ``main_by_value``, when it refers to nothing of ``__main__``. (2) A
    Pickler that also handles memoryviews and sends the functions and
    classes of ``__main__`` by value (kept per function: ``_by_value``), on
    the wrapped object. (3) cloudpickle, for lambdas and closures. When every
    attempt fails, cloudpickle's error is raised: where the two differ, plain
    pickle failed on something cloudpickle handles (a lambda) and cloudpickle
    names the real culprit (a lock among the arguments, say).

    ``main_by_value`` is for the parent of workers that do not share its
    ``__main__`` (spawn, forkserver): there plain pickle succeeds by
    reference and the worker cannot find the function. A worker needs no
    such look: its own by-reference pickle of something sent to it by value
    fails (it is not what its ``__main__`` holds), and (2) takes over.
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=_collector(buffers, out_of_band))
    except Exception:  # any error of any reducer: try harder below
        if out_of_band:
            obj = _wrap_big_bytes(obj)
    else:
        if main_by_value and _by_value.MAIN_BYTES in data:
            if out_of_band:
                obj = _wrap_big_bytes(obj)
        else:
            if len(data) < SHM_THRESHOLD or not out_of_band:
                return data, buffers
            wrapped = _wrap_big_bytes(obj)
            if wrapped is obj:
                return data, buffers
            obj = wrapped
    error: Exception | None = None
    try:
        for cloud in (False, True):
            buffers = []
            file = io.BytesIO()
            try:
                pickler_class = _cloud_pickler_class() if cloud else _Pickler
            except ImportError:
                break  # no cloudpickle: plain pickle's error stands
            try:
                callback = _collector(buffers, out_of_band)
                pickler_class(file, protocol=5, buffer_callback=callback).dump(obj)
            except Exception as exc:
                error = exc
                continue
            return file.getvalue(), buffers
        assert error is not None
        raise error
    finally:
        # An error's traceback holds this frame, whose ``error`` holds the
        # error: a cycle that would keep ``obj`` (the user's arguments: a
        # multiprocessing Queue in initargs, say) and the callers' frames
        # alive until the cyclic collector happens to run, also when a later
        # attempt succeeded.
        error = None


class Store(Protocol):
    """Where ``dumps`` puts big buffers instead of a segment of their own (see _segments)."""

    def put(self, view: memoryview) -> str:
        """The name of a kept segment holding ``view``'s bytes, for one more reader."""

    def release(self, blob: Blob) -> None:
        """The blob's readers are done with its segments."""


def _store(
    data: bytes, buffers: list[pickle.PickleBuffer], shm_prefix: str, store: Store | None = None
) -> Blob:
    """Write the out-of-band buffers to segments; unlink them all on failure."""
    if not buffers:
        return data, ()
    segments: list[tuple[str, int]] = []
    try:
        for buffer in buffers:
            with buffer.raw() as view:
                name = _shm.create_segment(shm_prefix, view) if store is None else store.put(view)
                segments.append((name, view.nbytes))
    except BaseException:
        if store is None:
            _shm.discard((data, tuple(segments)))
        else:
            store.release((data, tuple(segments)))
        raise
    finally:
        for buffer in buffers:
            buffer.release()
    return data, tuple(segments)


def dumps(
    obj: object, shm_prefix: str, store: Store | None = None, *, main_by_value: bool = False
) -> Blob:
    """Pickle ``obj`` into a Blob, its big buffers into segments named ``{shm_prefix}-{n}``.

    With a ``store``, the big buffers go where it puts them (kept segments,
    shared between blobs); release the blob through the store, not discard().
    When shared memory cannot take the buffers (``/dev/shm`` full, too many
    open files) they travel in band instead. Raises what pickling raised
    (cloudpickle's error when both failed), with no segment left behind.
    ``main_by_value``: see ``_pickle``.
    """
    # The fast path, for what nearly every call and result is: small, plain
    # pickle takes it, no buffer worth shared memory.
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=_small_in_band)
    except Exception:  # a big buffer, or plain pickle cannot: the full path decides
        pass
    else:
        # Big, with no big buffer: the full path would make this very pickle
        # again, unless big bytes inside can go out of band instead (a long
        # str or a big list cannot), or it refers to __main__ (see _pickle).
        if not (main_by_value and _by_value.MAIN_BYTES in data) and (
            len(data) < SHM_THRESHOLD or _wrap_big_bytes(obj) is obj
        ):
            return data, ()
        del data  # not two big pickles at once
    data, buffers = _pickle(obj, main_by_value=main_by_value)
    try:
        return _store(data, buffers, shm_prefix, store)
    except OSError:
        pass  # not inside the except block: no chained OSError in user tracebacks
    return _pickle(obj, out_of_band=False, main_by_value=main_by_value)[0], ()


def dumps_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    shm_prefix: str,
    store: Store | None = None,
    *,
    main_by_value: bool = False,
) -> Blob:
    """Pickle the call ``fn(*args, **kwargs)``; importable functions go by reference."""
    return dumps((fn, args, kwargs), shm_prefix, store, main_by_value=main_by_value)


class _Reduced:
    """Pickles as the reduction it holds."""

    __slots__ = ("reduction",)

    def __init__(self, reduction: tuple[Any, ...]) -> None:
        self.reduction = reduction

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduction


def _dumps_main_function(fn: Any) -> bytes | None:
    """dumps_function() of a function of ``__main__``, by value."""
    if fn.__closure__:
        return None
    try:
        reduced = _by_value.reduce(fn)
    except Exception:  # it fails again, with its error, in the call's own pickle
        return None
    return pickle.dumps(_Reduced(reduced), protocol=5) if reduced is not None else None


def dumps_function(fn: object, main_by_value: bool = False) -> bytes | None:
    """The pickle of ``fn`` if a worker may unpickle it once for many calls, else None.

    True for module-level functions and builtins that plain pickle takes by
    name: unpickling them gives the same function every time. With
    ``main_by_value``, also for the functions of ``__main__`` without a
    closure: they travel by value (see ``_by_value``), and a worker rebuilds
    one function from the same bytes every time. Anything with state of its
    own (a closure, a bound method, a builtin method of an object, a
    partial) gives None: it travels inside each call blob, so that every
    call gets its own copy, as every call has its own arguments.
    """
    kind = type(fn)
    if kind is not types.FunctionType and (
        kind is not types.BuiltinFunctionType
        or not isinstance(getattr(fn, "__self__", None), types.ModuleType)
    ):
        return None
    if main_by_value and kind is types.FunctionType and fn.__module__ == _by_value.MAIN:
        return _dumps_main_function(fn)
    try:
        data = pickle.dumps(fn, protocol=5)
    except Exception:  # a lambda, a closure: cloudpickle's
        return None
    # Plain pickle writes such a function as a global (and checks that the name
    # leads back to it); make sure nothing changed that (a dispatch_table entry).
    try:
        if pickle.loads(data) is not fn:
            return None
    except Exception:
        return None
    return data


def dumps_inband(obj: object, main_by_value: bool = False) -> bytes:
    """Pickle ``obj`` with every buffer in band (cloudpickle if need be): bytes that
    can be unpickled any number of times."""
    return _pickle(obj, out_of_band=False, main_by_value=main_by_value)[0]


def loads(blob: Blob) -> Any:
    """Rebuild the object of a blob; its segments are unlinked, also when this fails."""
    data, segments = blob
    if not segments:
        return pickle.loads(data)
    buffers: list[memoryview | bytearray] = []
    try:
        for name, size in segments:
            buffers.append(_shm.read_segment(name, size))
    except BaseException:
        _shm.discard(blob)  # the segments not reached
        raise
    return pickle.loads(data, buffers=buffers)


# -- exceptions ---------------------------------------------------------------


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text.

    load_error() sets it as the ``__cause__`` of the rebuilt exception, so the
    caller's traceback shows the worker's frames first, then "The above
    exception was the direct cause of the following exception".
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class UnpicklableError(Exception):
    """Stands in for a worker's exception that could not travel to the parent.

    Attributes:
        type_name: the qualified name of the original exception's type.
        message: ``str()`` of the original exception.
        reason: why it could not travel (the pickling or unpickling error).
    """

    def __init__(self, type_name: str, message: str, reason: str) -> None:
        super().__init__(type_name, message, reason)
        self.type_name = type_name
        self.message = message
        self.reason = reason

    def __str__(self) -> str:
        head = f"{self.type_name}: {self.message}" if self.message else self.type_name
        return f"{head} (the exception could not be sent by the worker: {self.reason})"


class ExceptionNotUnpickled(Exception):
    """load_error() could not unpickle the exception of an error blob here.

    Raised from the error that unpickling raised (its ``__cause__``), whose
    ``__context__``, when it had none, is the RemoteTraceback of the
    exception that did not unpickle.

    Attributes:
        type_name: the qualified name of the exception's type.
        message: ``str()`` of the exception, as the worker saw it.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        head = f"{self.type_name}: {self.message}" if self.message else self.type_name
        return f"{head} (the exception could not be unpickled here: {self.__cause__!r})"


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception as exc:  # a broken __str__ must not hide the error
        return f"<str() failed: {type(exc).__name__}>"


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    module = kind.__module__
    if module in ("builtins", "__main__", None):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def dumps_error(exc: BaseException, shm_prefix: str, unpickling: bool = False) -> Blob:
    """Pickle ``exc`` with its formatted traceback; read the blob with load_error().

    An exception that cannot be pickled, or whose pickle does not load back
    here (an ``__init__`` with required arguments that ``args`` lacks, say),
    is replaced by an UnpicklableError with its type name and message. The
    traceback text always travels. Never raises for a bad exception.
    ``unpickling`` travels with it (see load_failure()): True for an
    exception raised unpickling the call rather than by the call.
    """
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception as error:
        text = f"<the traceback could not be formatted: {error!r}>\n"
    type_name = _type_name(exc)
    message = _safe_str(exc)
    payload: BaseException = exc
    try:
        data, buffers = _pickle(payload)
        try:
            pickle.loads(data, buffers=buffers)  # the copy is dropped at once
        except BaseException:
            for buffer in buffers:
                buffer.release()
            raise
    except BaseException as error:  # anything, even a SystemExit in __setstate__
        reason = f"{type(error).__name__}: {_safe_str(error)}"
        payload = UnpicklableError(type_name, message, reason)
        data, buffers = _pickle(payload)
    try:
        inner_data, segments = _store(data, buffers, shm_prefix)
    except OSError:  # shared memory is full: in band then
        inner_data, segments = _pickle(payload, out_of_band=False)[0], ()
    outer = pickle.dumps((type_name, message, text, inner_data, unpickling), protocol=5)
    return outer, segments


def load_error(blob: Blob) -> BaseException:
    """Rebuild an exception sent by dumps_error(), its worker traceback as ``__cause__``.

    Raises ExceptionNotUnpickled if the exception does not unpickle here
    (its class exists only in the worker, say; whatever unpickling raised,
    SystemExit included). Unlinks the blob's segments.
    """
    return load_failure(blob)[0]


def load_failure(blob: Blob) -> tuple[BaseException, bool]:
    """load_error(), and whether the exception was raised unpickling the call.

    The second value is the ``unpickling`` given to dumps_error().
    """
    try:
        type_name, message, text, inner_data, unpickling = pickle.loads(blob[0])
    except BaseException:
        _shm.discard(blob)
        raise
    exc: BaseException
    try:
        obj = loads((inner_data, blob[1]))
        if not isinstance(obj, BaseException):
            raise TypeError(f"expected an exception, got {type(obj).__name__}")
        exc = obj
    except BaseException as error:  # anything, even a SystemExit in __setstate__
        if error.__context__ is None and error.__cause__ is None:
            error.__context__ = RemoteTraceback(text)
        raise ExceptionNotUnpickled(type_name, message) from error
    exc.__cause__ = RemoteTraceback(text)
    return exc, unpickling


# -- framing -------------------------------------------------------------------


def send(conn: Any, message: tuple[Any, ...]) -> None:
    """Send one message (a tuple of plain data and Blobs) over a Connection."""
    conn.send_bytes(pickle.dumps(message, protocol=5))


def recv(conn: Any) -> Any:
    """Receive one message; raises EOFError/OSError when the other side is gone.

    An answer sent by ``send_result`` comes back as ``(RESULTS, [answer])``.
    """
    data = conn.recv_bytes()
    if data[:1] == b"R":
        return (RESULTS, [decode_result(memoryview(data))])
    return pickle.loads(data)


# The longest payload a 4-byte length can announce. A longer one goes, as in
# ``Connection.send_bytes``, after the length -1 and then its real length in
# 8 bytes; ``Connection.recv_bytes`` and the dispatcher read both forms.
MAX_SHORT_LENGTH = 0x7FFFFFFF
_LONG_LENGTH = struct.Struct("!iQ")

# One answer, framed for the parent without pickling the envelope: the
# length header of ``Connection.send_bytes`` (4 bytes, big-endian), then
# ``R``, the task id, ok, the duration, and the result's pickle. A worker
# sends one per call, so this is the hottest message on the wire. Answers
# whose blob has shared-memory segments go as a pickled RESULTS message.
RESULT_MARK = 0x52  # "R"; a pickled message starts with 0x80 instead
_RESULT_HEAD = struct.Struct("!iBq?d")
# The same with the long length header, for a pickle past 2 GiB.
_LONG_RESULT_HEAD = struct.Struct("!iQBq?d")
# After the mark: the task id, ok and the duration; the pickle starts at RESULT_DATA_OFFSET.
RESULT_BODY = struct.Struct("!q?d")
RESULT_DATA_OFFSET = 1 + RESULT_BODY.size
_RESULT_BYTES = _RESULT_HEAD.size - 4  # the payload before the pickle


def long_header(size: int) -> bytes:
    """The length header of a payload of ``size`` bytes past MAX_SHORT_LENGTH."""
    return _LONG_LENGTH.pack(-1, size)


def send_result(conn: Any, task_id: int, ok: bool, blob: Blob, duration: float) -> None:
    """Send one call's answer over a Connection, as cheaply as the wire allows."""
    data, segments = blob
    if segments:
        send(conn, (RESULTS, [(task_id, ok, blob, duration)]))
        return
    size = _RESULT_BYTES + len(data)
    if size > 0x7FFFFFFF:  # MAX_SHORT_LENGTH, spelt out: no global lookup on the hot path
        head = _LONG_RESULT_HEAD.pack(-1, size, RESULT_MARK, task_id, ok, duration)
        _write_all(conn.fileno(), head, data)
        return
    frame = _RESULT_HEAD.pack(size, RESULT_MARK, task_id, ok, duration) + data
    fd = conn.fileno()
    written = os.write(fd, frame)
    if written < len(frame):  # a full socket buffer: the rest, as it drains
        view = memoryview(frame)[written:]
        while view:
            view = view[os.write(fd, view) :]


def _write_all(fd: int, *parts: bytes) -> None:
    """Write ``parts`` in order to a blocking descriptor, each without a copy.

    For big frames: gluing the header to a pickle of gigabytes would copy it
    all once more.
    """
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def decode_result(payload: memoryview) -> tuple[int, bool, Blob, float]:
    """Read an answer framed by ``send_result`` (its payload, after the length)."""
    task_id, ok, duration = RESULT_BODY.unpack_from(payload, 1)
    return task_id, ok, (bytes(payload[RESULT_DATA_OFFSET:]), ()), duration

"""The wire of the process pool: pickling calls, results and their big buffers.

This module is mechanism only: it turns objects into bytes and back, their
big buffers out of band. What to send, when, and what a failure means for a
task is decided by the dispatcher (parent) and the worker loop (child),
which both import this module. It imports only the standard library,
``shoal._pickle_path`` (the path to what did not pickle, see ``explain``;
imported on first need, as the worker's start-up never needs it),
``_by_value`` (how functions and classes of ``__main__`` travel), ``_shm``
(the shared-memory segments that carry big buffers) and ``cloudpickle``
when plain pickle cannot do the job.

What travels in the messages (``_frames`` frames them)::

    Blob      = (data: bytes, segments: ((name, size), ...))
                  data: a protocol-5 pickle of one object; its out-of-band
                  buffers live, in order, in the shared-memory segments
    call blob = Blob of (fn, args, kwargs)
    args blob = Blob of args (a tuple), for a call whose function travels
                  once per RUN message (see _frames) and has no kwargs
    items blob= Blob of a sequence of a map's items (a slice of its calls)
    error blob= Blob whose data is a plain pickle of
                  (type_name, message, traceback_text, exception_data,
                  unpickling) and whose segments are those of
                  exception_data; unpickling is True when the exception
                  was raised unpickling the call, not by the call. Made
                  and read by _remote only.

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
import pickle
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from . import _by_value, _shm
from ._shm import SHM_THRESHOLD, Segments

if TYPE_CHECKING:
    from .._pickle_path import Role

__all__ = (
    "Blob",
    "Store",
    "dumps",
    "dumps_call",
    "dumps_function",
    "dumps_inband",
    "explain",
    "loads",
    "pickle_buffers",
    "store_buffers",
)

Blob: TypeAlias = tuple[bytes, Segments]


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


def buffer_collector(
    buffers: list[pickle.PickleBuffer],
) -> Callable[[pickle.PickleBuffer], bool] | None:
    """The buffer_callback ``pickle_buffers`` uses, for a pickler of one's own."""
    return _collector(buffers, True)


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


def pickle_buffers(
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


def probe(obj: object) -> None:
    """Raise what pickling ``obj`` as ``pickle_buffers`` does raises; write nothing anywhere.

    The same attempts (plain pickle, ours, cloudpickle), into a sink, big
    buffers left out of band: explain() probes each part of a failed
    pickle with it.
    """
    from .. import _pickle_path

    picklers: list[type[pickle.Pickler]] = [pickle.Pickler, _Pickler]
    with contextlib.suppress(ImportError):
        picklers.append(_cloud_pickler_class())
    last = picklers[-1]
    for pickler_class in picklers:
        pickler = pickler_class(
            _pickle_path.SINK, protocol=5, buffer_callback=_pickle_path.leave_out_of_band
        )
        try:
            pickler.dump(obj)
        except Exception:
            if pickler_class is last:
                raise
            continue
        return


def explain(
    error: BaseException,
    roots: list[tuple[str, object]],
    what: str | Callable[[int], str],
    role: Role = "call",
) -> BaseException:
    """``error``, raised pickling ``roots``, with the path to the culprit written in.

    See ``shoal._pickle_path.annotate``: the error keeps its type; a
    ``pickle_path`` attribute, its message (for a plain pickling error) and
    a note name the path and say what to do. Runs only after pickling
    failed; bounded; never raises but KeyboardInterrupt.
    """
    from .. import _pickle_path

    try:
        by_value = _cloud_pickler_class() is not None
    except ImportError:
        by_value = False
    _pickle_path.annotate(error, roots, what, role, probe, by_value=by_value)
    return error


class Store(Protocol):
    """Where ``dumps`` puts big buffers instead of a segment of their own (see _segments)."""

    def put(self, view: memoryview) -> str:
        """The name of a kept segment holding ``view``'s bytes, for one more reader."""

    def release(self, blob: Blob) -> None:
        """The blob's readers are done with its segments."""


def store_buffers(
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
    data, buffers = pickle_buffers(obj, main_by_value=main_by_value)
    try:
        return store_buffers(data, buffers, shm_prefix, store)
    except OSError:
        pass  # not inside the except block: no chained OSError in user tracebacks
    return pickle_buffers(obj, out_of_band=False, main_by_value=main_by_value)[0], ()


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
    return pickle_buffers(obj, out_of_band=False, main_by_value=main_by_value)[0]


def loads(blob: Blob) -> Any:
    """Rebuild the object of a blob; its segments are unlinked (but kept ones), also on failure."""
    data, segments = blob
    if not segments:
        return pickle.loads(data)
    buffers: list[memoryview | bytearray] = []
    try:
        for name, size in segments:
            buffers.append(_shm.read_segment(name, size))
    except BaseException:
        # The segments not reached, but the kept ones: other calls in flight
        # may carry them, and their writer unlinks them (see _segments).
        _shm.discard((data, tuple(s for s in segments if not _shm.is_kept(s[0]))))
        raise
    return pickle.loads(data, buffers=buffers)

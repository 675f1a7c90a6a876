"""Exceptions across the process boundary: a worker's error, sent to the parent and rebuilt.

An error blob (a ``_wire.Blob``) holds a plain pickle of
``(type_name, message, traceback_text, exception_data, unpickling)``, its
segments those of ``exception_data``: the exception's own pickle, with its
big buffers out of band. The traceback text always travels, and becomes
the rebuilt exception's ``__cause__`` (a :class:`RemoteTraceback`), so the
caller sees the worker's frames. An exception that cannot travel is
replaced by an :class:`UnpicklableError` naming it; one that does not
unpickle in the parent raises :class:`ExceptionNotUnpickled`, which the
dispatcher turns into that call's ``UnpicklingFailedError``.

Concurrency: stateless; any thread.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import traceback

from . import _shm, _wire
from ._wire import Blob

__all__ = (
    "ExceptionNotUnpickled",
    "RemoteTraceback",
    "UnpicklableError",
    "dumps_error",
    "load_error",
    "load_failure",
)


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


def _is_exception_class(key: object) -> bool:
    return isinstance(key, type) and issubclass(key, BaseException)


def _pickle_exception(exc: BaseException) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle an exception as its own class reduces it, whatever copyreg says.

    A library may register reducers for every exception class in copyreg
    (tblib does, and Dask distributed installs it on import); those lose
    what an exception's own ``__reduce__`` keeps (``SystemExit.code``).
    A process that imported such a library still sends its exceptions as
    themselves. Otherwise, and when that pickle fails, ``_wire`` pickles
    as it does any value (cloudpickle as a last resort).
    """
    table = copyreg.dispatch_table
    if not any(isinstance(k, type) and issubclass(k, BaseException) for k in table):
        return _wire.pickle_buffers(exc)
    own = {
        k: v for k, v in table.items() if not (isinstance(k, type) and issubclass(k, BaseException))
    }
    sink = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    pickler = pickle.Pickler(sink, protocol=5, buffer_callback=_wire.buffer_collector(buffers))
    pickler.dispatch_table = own
    try:
        pickler.dump(exc)
    except Exception:
        return _wire.pickle_buffers(exc)
    return sink.getvalue(), buffers


def dumps_error(exc: BaseException, shm_prefix: str, unpickling: bool = False) -> Blob:
    """Pickle ``exc`` with its formatted traceback; read the blob with load_error().

    An exception that cannot be pickled, or whose pickle does not load back
    here (an ``__init__`` with required arguments that ``args`` lacks, say),
    is replaced by an UnpicklableError with its type name and message (and,
    for one that cannot be pickled, a reason naming the path to what did
    not pickle: ``exception.conn._sock: cannot pickle ...``). The
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
        try:
            data, buffers = _pickle_exception(payload)
        except Exception as error:
            # The reason below names the path to what did not pickle.
            _wire.explain(error, [("exception", exc)], f"a {type_name}", "exception")
            raise
        try:
            pickle.loads(data, buffers=buffers)  # the copy is dropped at once
        except BaseException:
            for buffer in buffers:
                buffer.release()
            raise
    except BaseException as error:  # anything, even a SystemExit in __setstate__
        reason = f"{type(error).__name__}: {_safe_str(error)}"
        payload = UnpicklableError(type_name, message, reason)
        data, buffers = _wire.pickle_buffers(payload)
    try:
        inner_data, segments = _wire.store_buffers(data, buffers, shm_prefix)
    except OSError:  # shared memory is full: in band then
        inner_data, segments = _wire.pickle_buffers(payload, out_of_band=False)[0], ()
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
        obj = _wire.loads((inner_data, blob[1]))
        if not isinstance(obj, BaseException):
            raise TypeError(f"expected an exception, got {type(obj).__name__}")
        exc = obj
    except BaseException as error:  # anything, even a SystemExit in __setstate__
        if error.__context__ is None and error.__cause__ is None:
            error.__context__ = RemoteTraceback(text)
        raise ExceptionNotUnpickled(type_name, message) from error
    exc.__cause__ = RemoteTraceback(text)
    return exc, unpickling

"""Per-call options: ``executor.options(...)``, what they mean, and how they are checked.

``executor.options(timeout=None, retries=0, retry_on=(Exception,),
backoff=0.0, priority=0, name=None, memory_limit=None)`` returns an :class:`OptionsView`: the
same ``submit`` and ``map`` as the executor, each call carrying a
:class:`TaskOptions`. The options never touch the call's own keyword
arguments, and a view can be kept and reused, or refined with its own
``options(...)``. Bad values fail in ``options()``, before anything is
queued, with an error naming the option.

What each executor does with them, the rules shared by all:

* ``timeout``: seconds from the moment the call *starts*; past it the call is
  stopped and its future fails with :class:`~shoal.TaskTimeoutError`
  (``timeout_error``).
* ``retries``, ``retry_on``, ``backoff``: a run that raises an instance of
  ``retry_on`` runs again, up to ``retries`` more times, ``backoff * 2**k``
  seconds after the k-th failure (``retry_delay``). The future stays running
  in between, resolves once, with the last outcome, and the earlier failures
  are notes on the last one (``with_earlier_failures``).
* ``priority``: among calls not started, a higher priority starts first and
  equal ones in submission order. To keep a steady stream of high-priority
  calls from starving a low one, priorities age: a call's place in the queue
  is its submission time minus ``PRIORITY_STEP_SECONDS`` per step of
  priority (``queue_key``). A call of priority 1 goes ahead of the
  priority-0 calls submitted less than that long before it, not of those
  that have waited longer; so a call waits at most that long per step of
  priority between it and the calls that overtake it, beyond what it would
  wait in a plain queue.
* ``name``: how reprs, errors and (later) progress bars and traces name the
  call, instead of its function's name.
* ``memory_limit``: bytes (an int, or a string such as ``"1GiB"``: see
  ``parse_bytes``) of address space the call may take on top of what its
  worker process has when the call starts; past it an allocation fails and
  the call raises ``MemoryError``. Only the process pool can enforce it (a
  per-process limit, set for the call and restored after); the thread
  pool refuses it in ``options()``.

Concurrency: options are immutable; views hold nothing but their executor
and their options.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from ._errors import TaskTimeoutError

if TYPE_CHECKING:
    from ._executor import Executor
    from ._future import Future
    from ._progress import ProgressArg

__all__ = (
    "DEFAULT_OPTIONS",
    "PRIORITY_STEP_SECONDS",
    "OptionsView",
    "TaskOptions",
    "call_name",
    "parse_bytes",
    "queue_key",
    "retry_delay",
    "timeout_error",
    "with_earlier_failures",
)

T = TypeVar("T")
P = ParamSpec("P")

# One step of priority is worth this many seconds of waiting (see the module docstring).
PRIORITY_STEP_SECONDS = 10.0

_UNSET: Any = object()


class TaskOptions:
    """The options of a call (see ``Executor.options``). Immutable; compared by value.

    Built by ``Executor.options`` (which checks the values) or by hand with
    values known to be good. ``plain`` is True when every option that
    changes how a call runs has its default (the executors' fast path).
    """

    __slots__ = (
        "backoff",
        "memory_limit",
        "name",
        "plain",
        "priority",
        "retries",
        "retry_on",
        "timeout",
    )

    timeout: float | None
    retries: int
    retry_on: tuple[type[BaseException], ...]
    backoff: float
    priority: int
    name: str | None
    memory_limit: int | None
    plain: bool

    def __init__(
        self,
        *,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 0.0,
        priority: int = 0,
        name: str | None = None,
        memory_limit: int | None = None,
    ) -> None:
        values = (timeout, retries, retry_on, backoff, priority, name, memory_limit)
        for field_name, value in zip(_FIELDS, values, strict=True):
            object.__setattr__(self, field_name, value)
        plain = (
            timeout is None
            and retries == 0
            and priority == 0
            and name is None
            and memory_limit is None
        )
        object.__setattr__(self, "plain", plain)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TaskOptions are immutable: make new ones with merged({name}=...)")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, field_name) for field_name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskOptions):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in _FIELDS)
        return f"TaskOptions({shown})"

    def merged(self, **changes: Any) -> TaskOptions:
        """These options with ``changes`` (checked), the others kept."""
        values: dict[str, Any] = dict(zip(_FIELDS, self._values(), strict=True))
        values.update(check_options(**changes))
        return TaskOptions(**values)


_FIELDS = ("timeout", "retries", "retry_on", "backoff", "priority", "name", "memory_limit")


DEFAULT_OPTIONS = TaskOptions()


def check_options(
    *,
    timeout: object = _UNSET,
    retries: object = _UNSET,
    retry_on: object = _UNSET,
    backoff: object = _UNSET,
    priority: object = _UNSET,
    name: object = _UNSET,
    memory_limit: object = _UNSET,
) -> dict[str, Any]:
    """The options given, checked and normalised; raises TypeError/ValueError naming the bad one."""
    checked: dict[str, Any] = {}
    if timeout is not _UNSET:
        checked["timeout"] = None if timeout is None else _seconds("timeout", timeout, zero=False)
    if retries is not _UNSET:
        if isinstance(retries, bool) or not isinstance(retries, numbers.Integral):
            raise TypeError(f"options(retries=...) must be an int, not {type(retries).__name__}")
        if retries < 0:
            raise ValueError(f"options(retries=...) must be 0 or more, not {retries}")
        checked["retries"] = int(retries)
    if retry_on is not _UNSET:
        checked["retry_on"] = _exception_classes(retry_on)
    if backoff is not _UNSET:
        checked["backoff"] = _seconds("backoff", backoff, zero=True)
    if priority is not _UNSET:
        if isinstance(priority, bool) or not isinstance(priority, numbers.Integral):
            raise TypeError(
                f"options(priority=...) must be an int, not {type(priority).__name__} "
                f"({priority!r}); higher runs first"
            )
        checked["priority"] = int(priority)
    if name is not _UNSET:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"options(name=...) must be a str or None, not {type(name).__name__}")
        checked["name"] = name
    if memory_limit is not _UNSET:
        checked["memory_limit"] = (
            None if memory_limit is None else parse_bytes(memory_limit, "options(memory_limit=...)")
        )
    return checked


# Units of parse_bytes, by their lower-case spelling.
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*", re.IGNORECASE)
_SIZE_FORMS = (
    "an int (bytes) or a str of a number and a unit: B, KB, MB, GB, TB (powers of 1000) "
    "or KiB, MiB, GiB, TiB (powers of 1024), e.g. '2GiB', '512 MiB', '1.5GB'"
)


def parse_bytes(value: object, what: str) -> int:
    """A size in bytes, from an int or a string with a unit (``"2GiB"``, ``"512MB"``).

    Shared by ``options(memory_limit=...)`` and
    ``ProcessPoolExecutor(max_memory_per_worker=...)``; ``what`` names the
    setting in the errors. Units are case-insensitive; a number without a
    unit is bytes; a fraction of a unit is rounded down to whole bytes.

    Raises:
        TypeError: ``value`` is neither an int nor a str (a float, a bool).
        ValueError: a str that is not a size, or a size that is not above 0.
    """
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = match and _UNITS.get(match.group(2).lower() or "b")
        if match is None or unit is None:
            raise ValueError(f"{what} must be {_SIZE_FORMS}; {value!r} is not one")
        number = match.group(1)
        size = int(number) * unit if number.isdigit() else int(float(number) * unit)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        size = int(value)
    else:
        raise TypeError(f"{what} must be {_SIZE_FORMS}; not {type(value).__name__} ({value!r})")
    if size <= 0:
        raise ValueError(f"{what} must be more than 0 bytes, not {value!r}: give {_SIZE_FORMS}")
    return size


def _seconds(option: str, value: object, *, zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"options({option}=...) must be a number of seconds, not {type(value).__name__} "
            f"({value!r})"
        )
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0 or (not zero and seconds == 0):
        least = "0 or more" if zero else "more than 0 (None for no timeout)"
        raise ValueError(f"options({option}=...) must be {least} seconds, not {value!r}")
    return seconds


def _exception_classes(value: object) -> tuple[type[BaseException], ...]:
    classes = (value,) if isinstance(value, type) else value
    if not isinstance(classes, Iterable) or isinstance(classes, (str, bytes)):
        raise TypeError(
            f"options(retry_on=...) must be an exception class or a tuple of them, not {value!r}"
        )
    classes = tuple(classes)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(
                f"options(retry_on=...) must hold exception classes only; {cls!r} is not one"
            )
    return classes


# -- the rules the executors share ------------------------------------------------


def call_name(options: TaskOptions, fn: object) -> str:
    """How errors and reprs name a call: its ``name`` option, else its function's name."""
    if options.name is not None:
        return options.name
    return getattr(fn, "__qualname__", None) or repr(fn)


def timeout_error(name: str, timeout: float) -> TaskTimeoutError:
    """The error of a call stopped at its timeout."""
    return TaskTimeoutError(
        f"{name} ran past its timeout of {timeout:g} s and was stopped "
        "(options(timeout=...) counts from the moment the call starts)"
    )


def retry_delay(options: TaskOptions, error: BaseException, attempts: int) -> float | None:
    """Seconds to wait before running a call again after ``error``, or None: no retry.

    ``attempts``: how many runs it has had, this failed one included.
    """
    if attempts > options.retries or not isinstance(error, options.retry_on):
        return None
    return float(options.backoff * 2 ** (attempts - 1))


def with_earlier_failures(error: BaseException, earlier: list[BaseException]) -> BaseException:
    """``error`` (the last run's) with a note per earlier failed run of the same call."""
    for attempt, failure in enumerate(earlier, 1):
        error.add_note(f"shoal: attempt {attempt} failed with {failure!r}")
    return error


def queue_key(options: TaskOptions, submitted: float, sequence: int) -> tuple[float, int]:
    """Where a call waits among those not started: lower keys start first.

    ``submitted``: its submission time (``time.monotonic()``); ``sequence``:
    a counter that breaks ties in submission order.
    """
    return submitted - options.priority * PRIORITY_STEP_SECONDS, sequence


# -- the view ------------------------------------------------------------------


class OptionsView:
    """An executor whose calls carry options: ``submit`` and ``map``, as the executor's.

    Returned by ``executor.options(...)``; it can be kept and reused. It is
    not a pool of its own: shut down the executor, not the view.
    """

    __slots__ = ("_executor", "_options")

    def __init__(self, executor: Executor, options: TaskOptions) -> None:
        executor._check_options(options)
        self._executor = executor
        self._options = options

    @property
    def executor(self) -> Executor:
        return self._executor

    @property
    def task_options(self) -> TaskOptions:
        return self._options

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._executor!r} with {self._options!r}>"

    def options(self, **changes: Any) -> OptionsView:
        """This view's options with ``changes``; see ``Executor.options``."""
        return OptionsView(self._executor, self._options.merged(**changes))

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """``executor.submit(fn, *args, **kwargs)``, the call carrying this view's options."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable as its first argument, not {fn!r}")
        return self._executor._submit_with(self._options, fn, args, kwargs)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | Literal["auto"] = 1,
        buffersize: int | None = None,
        ordered: bool = True,
        progress: ProgressArg = None,
    ) -> Iterator[T]:
        """``executor.map(...)``, each call (each chunk, with ``chunksize``) carrying the options.

        ``timeout`` here is ``map``'s own: how long the caller waits for the
        results; the ``timeout`` option bounds each call's run.
        """
        return self._executor._map_with(
            self._options,
            fn,
            iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            ordered=ordered,
            progress=progress,
        )

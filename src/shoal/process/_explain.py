"""Naming what did not pickle in a call: the parent's side of pickling diagnostics.

The dispatcher pickles calls (``_batch``); when one does not pickle, it
fails that call's future with the pickling error, into which
``_wire.explain`` writes the path to the object that did not pickle (see
``shoal._pickle_path``). This module says where a search starts for each
kind of call and how the error names the call:

* a call of ``submit`` (or of a lazy map): ``fn``, ``args``, ``kwargs``,
  named by its task ("task 3 (work)");
* a call of an eager map: its arguments, ``args`` (the item, for a map over
  one iterable, is ``args[0]``), named by its position ("call 12 of
  map(work)");
* a chunk of a chunked map: each of its calls, named by its place in the
  chunk and, for an eager map, in the input ("item 5 of chunk 3 of
  map(work) (call 305 of the map)"); the function is the user's, not the chunk
  runner's partial.

Concurrency: stateless; called by the dispatcher thread.
"""

from __future__ import annotations

import functools
from typing import Any

from .._chunks import CHUNK_RUNNERS
from . import _wire
from ._runs import MapRun

__all__ = ("explain_call", "explain_item", "explain_run_function")


def _from_pickling(error: BaseException) -> BaseException:
    """Drop the dispatcher's own frame, where ``error`` was caught, from its traceback.

    That frame holds the worker, its start board and the task, whose future
    holds the error: a reference cycle, which would keep the board's
    process-shared semaphore alive until the cyclic collector runs, at
    whatever moment (under Python 3.13, inside a call into the resource
    tracker, which then warns of a reentrant call). The frames left are
    pickling's, which show what failed.
    """
    tb = error.__traceback__
    if tb is not None and tb.tb_next is not None:
        error.__traceback__ = tb.tb_next
    return error


def _chunk_function(fn: object) -> Any:
    """The user's function of a chunk runner's partial, else None."""
    if isinstance(fn, functools.partial) and fn.func in CHUNK_RUNNERS and len(fn.args) == 1:
        return fn.args[0]
    return None


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def explain_call(
    error: BaseException,
    fn: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    what: str,
    *,
    task_id: int | None = None,
    first: int | None = None,
) -> BaseException:
    """``error`` with the path to what in ``fn(*args, **kwargs)`` did not pickle.

    ``what`` names the call; for a chunk, ``first`` is the input position
    of its first call, when known. ``error`` is what the caller caught.
    """
    _from_pickling(error)
    inner = _chunk_function(fn)
    if inner is not None and len(args) == 1 and not kwargs:
        star = fn.func is CHUNK_RUNNERS[0]  # type: ignore[attr-defined]
        chunk = list(args[0])
        roots: list[tuple[str, object]] = [("fn", inner)]
        roots += [("args", item if star else (item,)) for item in chunk]
        if task_id is not None:
            what = f"the chunk of task {task_id} ({_name(inner)})"

        def naming(root: int) -> str:
            if root == 0:
                return what
            where = f"item {root - 1} of {what}"
            return where if first is None else f"{where} (call {first + root - 1} of the map)"

        return _wire.explain(error, roots, naming)
    roots = [("fn", fn), ("args", args)]
    if kwargs:
        roots.append(("kwargs", kwargs))
    return _wire.explain(error, roots, what)


def explain_item(error: BaseException, run: MapRun, index: int) -> BaseException:
    """``error`` with the path to what in call ``index`` of ``run`` did not pickle."""
    item = run.items[index]
    what = run.describe(index)
    if _chunk_function(run.fn) is not None:
        first = index * len(run.items[0])  # every chunk but the last is full
        return explain_call(error, run.fn, (item,), None, what, first=first)
    _from_pickling(error)
    return _wire.explain(error, [("args", item if run.star else (item,))], what)


def explain_run_function(error: BaseException, run: MapRun) -> BaseException:
    """``error`` with the path to what in the function of ``run`` did not pickle."""
    _from_pickling(error)
    fn = _chunk_function(run.fn)
    fn = run.fn if fn is None else fn
    return _wire.explain(error, [("fn", fn)], f"every call of map({_name(fn)})")

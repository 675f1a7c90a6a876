"""Functions and classes of ``__main__`` travel by value, and fast.

Plain pickle writes a function or class by reference: its module and name.
A worker finds it by importing that module, which does not work for
``__main__`` in most of the places where users define their functions:
inside ``if __name__ == "__main__":``, in ``python -c``, a script read from
stdin, a REPL, a Jupyter notebook, and in any worker started once the
interpreter has begun to exit (CPython deletes ``__main__.__file__`` when the
main script ends, so a worker started after that cannot even find the
script). Under the ``fork`` start method the child had a copy of ``__main__``
and none of this showed; under ``forkserver`` and ``spawn`` it does.

So shoal sends what ``__main__`` defines by value: cloudpickle writes the
function's code and the globals it uses, or the class's body. That costs
about 0.1-0.2 ms per function, far more than a call's own pickle, so the
pickle is kept per function (or class) and made again only when it may be
stale: when the function, or a global it refers to (followed through other
functions and classes of ``__main__``), has been rebound since. A global
changed in place (``config["k"] = 2`` on a dict the function reads) is not
seen: such a function goes with the value the global had when it was first
sent. A function with a closure is never kept (its cells can change).

In the receiving process, :func:`load` keeps what it rebuilt by the pickle's
bytes, so the calls of one function share one rebuilt function (and its
globals) in a worker, as they shared one module under ``fork``; a class sent
by value rebuilds to the same class each time (cloudpickle tracks classes
for that), which is also how a result of such a class comes back to the
parent as an instance of the parent's own class.

Concurrency: ``reduce`` may be called from any thread (the dispatcher and
submitting threads pickle at once). The caches are a ``WeakKeyDictionary``
and a ``dict`` whose single reads and writes are atomic under the GIL; two
threads that miss together both pickle and the last write wins, which is
harmless (equal pickles). No lock is taken, so no user code (a ``__reduce__``
run by cloudpickle) ever runs under one.
"""

from __future__ import annotations

import pickle
import types
import weakref
from typing import Any

__all__ = ("MAIN", "load", "reduce")

MAIN = "__main__"

# The bytes of every pickle of ``__main__`` by reference contain the module
# name; a pickle without them holds nothing of ``__main__`` (a match may be
# a string argument that happens to contain it: then the slower path is
# taken for nothing, which is still correct).
MAIN_BYTES = MAIN.encode()

_MISSING = object()
# How deep _fingerprint() follows functions and classes of __main__ that a
# function refers to; deeper ones are compared by identity only.
_DEPTH = 4
# How many rebuilt objects load() keeps per process, and the largest pickle
# it keeps one for.
_LOADED_MAX = 256
_LOADED_MAX_BYTES = 1 << 20

# What reduce() made: the object -> (its fingerprint, its pickle).
_pickles: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], bytes]] = (
    weakref.WeakKeyDictionary()
)
# What load() rebuilt, by pickle.
_loaded: dict[bytes, Any] = {}


def _is_main(obj: object) -> bool:
    return getattr(obj, "__module__", None) == MAIN


def _code_names(code: types.CodeType, names: list[str]) -> None:
    names.extend(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_names(const, names)


def _fingerprint(obj: Any, depth: int, seen: set[int]) -> list[Any]:
    """What decides whether ``obj``'s kept pickle is current (``obj`` itself not included).

    The code, defaults and the globals a function uses (a class: its bases
    and its namespace), and the same of the functions and classes of
    ``__main__`` among them; compared by identity.
    """
    seen.add(id(obj))
    parts: list[Any]
    if isinstance(obj, types.FunctionType):
        parts = [obj.__code__, obj.__defaults__, obj.__kwdefaults__]
        names: list[str] = []
        _code_names(obj.__code__, names)
        namespace = obj.__globals__
        values = [namespace.get(name, _MISSING) for name in names]
    elif isinstance(obj, type):
        parts = list(obj.__bases__)
        # Slot and __dict__ descriptors are the class's own structure (and
        # refer back to it, which would keep it alive from the cache).
        values = [v for v in vars(obj).values() if type(v) not in _STRUCTURE]
    else:
        return []
    parts += values
    if depth:
        for value in values:
            inner = value.__func__ if isinstance(value, staticmethod | classmethod) else value
            if (
                isinstance(inner, types.FunctionType | type)
                and id(inner) not in seen
                and _is_main(inner)
            ):
                parts.append(inner)
                parts += _fingerprint(inner, depth - 1, seen)
    return parts


_STRUCTURE = (types.GetSetDescriptorType, types.MemberDescriptorType)


class _Weak:
    """A kept part of a fingerprint that can be referred to weakly.

    Weakly, so that the cache does not keep alive what the user has let go
    of, such as a function that refers to itself (recursion) or a method
    whose ``super()`` cell refers to its class: both would keep the cache's
    key alive through its own value.
    """

    __slots__ = ("ref",)

    def __init__(self, ref: weakref.ref[Any]) -> None:
        self.ref = ref


def _keep(part: Any) -> Any:
    try:
        return _Weak(weakref.ref(part))
    except TypeError:  # ints, strings, tuples: kept as they are
        return part


def _same(kept: tuple[Any, ...], parts: list[Any]) -> bool:
    if len(kept) != len(parts):
        return False
    for old, new in zip(kept, parts, strict=True):
        if type(old) is _Weak:
            if old.ref() is not new:
                return False
        elif old is not new:
            return False
    return True


def _by_value(obj: Any) -> bytes:
    import cloudpickle  # type: ignore[import-untyped]

    return bytes(cloudpickle.dumps(obj, protocol=5))


def reduce(obj: object) -> tuple[Any, ...] | None:
    """The reduction of a function or class of ``__main__`` by value, else None.

    For a ``reducer_override``: the result rebuilds ``obj`` with :func:`load`.
    Raises what cloudpickle raises when it cannot pickle ``obj``.
    """
    if not (isinstance(obj, types.FunctionType | type) and _is_main(obj)):
        return None
    if isinstance(obj, types.FunctionType) and obj.__closure__:
        return load, (_by_value(obj),)  # its cells can change: never kept
    fingerprint = _fingerprint(obj, _DEPTH, set())
    kept = _pickles.get(obj)
    if kept is not None and _same(kept[0], fingerprint):
        return load, (kept[1],)
    data = _by_value(obj)
    try:
        _pickles[obj] = (tuple(_keep(part) for part in fingerprint), data)
    except TypeError:  # pragma: no cover - a class that refuses weak references
        pass
    return load, (data,)


def load(data: bytes) -> Any:
    """Rebuild what :func:`reduce` pickled; the same object for the same bytes."""
    obj = _loaded.get(data)
    if obj is None:
        obj = pickle.loads(data)
        if len(data) <= _LOADED_MAX_BYTES:
            if len(_loaded) >= _LOADED_MAX:
                _loaded.clear()
            _loaded[data] = obj
    return obj

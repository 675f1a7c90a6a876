"""Where pickling fails: the path to the object that cannot be pickled.

When pickling a call, a result or an exception fails, :func:`annotate`
searches the object for its *culprit*: the deepest part whose own pickling
fails while its parts pickle. It writes the way there into the error, as
Python would spell it where it can::

    fn, args[1], kwargs['name'], result, exception      where a search starts
    .name              an attribute: of an instance (``__dict__``, ``__slots__``),
                       a partial (``.func``, ``.args[0]``, ``.keywords['k']``), a
                       method (``.__self__``), an exception (``.args[0]``), a class
    [3]  ['key']       an item of a list or tuple; a value of a dict, by its key
    <key 'k'>          a key of a dict
    {member}           a member of a set or frozenset, by its repr
    .<closure>.name    a free variable of a function (sent by value: cloudpickle)
    .<globals>.name    a global a function sent by value uses
    .__class__         the class of an instance
    .__getstate__()    what a custom ``__getstate__`` returned
    .__reduce__()[1][0], .__reduce__()[2]
                       the arguments and the state a custom ``__reduce__``
                       (or ``__reduce_ex__``) returned

How: the search pickles parts on their own with a *probe* (the pickling
that failed, given by the caller), going down into the first part that
fails. A group of more than ``_SMALL`` parts (a list's items, a dict's
values, a set's members, attributes) is probed by halves, so a bad item at
the end of a million-item list costs about 40 probes, not a million. Each
object is gone into once (a cycle leads back to one already seen, which
explains its ancestors' failure: the search goes on at the next part that
fails), and the search stops after ``MAX_OBJECTS`` probes or ``MAX_DEPTH``
steps (or when a probe runs out of stack), naming the deepest failing
object it reached, "(search stopped after N objects)".

Costs and side effects: nothing runs until pickling has failed. The search
pickles parts again, so a reducer (``__reduce__``, ``__getstate__``) may run
more than once; one that raises something other than an ``Exception``
(``SystemExit``) ends the search, which then names nothing.

What the parts of an object are, and their names, is ``_pickle_parts``'s.
Both modules import only the standard library: the parent and the worker
(which imports nothing of the parent's side) both use them.

Concurrency: stateless; any thread.
"""

from __future__ import annotations

import pickle
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

from ._pickle_parts import parts_of, safe_str, type_name

__all__ = (
    "MAX_DEPTH",
    "MAX_OBJECTS",
    "SINK",
    "Culprit",
    "annotate",
    "find_culprit",
    "leave_out_of_band",
    "plain_probe",
)

# Probes (each pickles a part, or a range of parts, on its own) before the
# search stops; with halving, a path of 20 steps through containers of a
# million items each costs about 800.
MAX_OBJECTS = 2000
# Steps from a root before the search stops (a linked list, say).
MAX_DEPTH = 100
# A group of at most this many parts is probed part by part, a bigger one by halves.
_SMALL = 4

Probe = Callable[[object], object]
Role = Literal["call", "result", "exception"]


class _Sink:
    """A file that forgets what is written: a probe needs no bytes."""

    __slots__ = ()

    def write(self, data: Any) -> int:
        return len(data)


SINK = _Sink()


def leave_out_of_band(buffer: pickle.PickleBuffer) -> bool:
    """A buffer_callback for probes: every buffer out of band, so none is copied."""
    return False


def plain_probe(obj: object) -> None:
    """Pickle ``obj`` with plain pickle (protocol 5) and forget the bytes; raise what it raises."""
    pickle.Pickler(SINK, protocol=5, buffer_callback=leave_out_of_band).dump(obj)


class Culprit(NamedTuple):
    """What :func:`find_culprit` found.

    Attributes:
        path: the way to it from its root (``args[1].session._lock``).
        root: the index of its root among the roots searched.
        type_name: its type (``_thread.lock``).
        error_type: the type of the error pickling it on its own raised.
        message: ``str()`` of that error.
        objects: how many probes the search made.
        stopped: why the search stopped before the culprit was certain
            (``"search stopped after 2000 objects"``), else "".
        owner: the type whose instance has it as an attribute, else "".
        named: it is a function or class, which plain pickle sends by name.
    """

    path: str
    root: int
    type_name: str
    error_type: type[BaseException]
    message: str
    objects: int
    stopped: str
    owner: str
    named: bool


def find_culprit(
    roots: Sequence[tuple[str, object]],
    probe: Probe = plain_probe,
    *,
    by_value: bool = False,
    max_objects: int = MAX_OBJECTS,
    max_depth: int = MAX_DEPTH,
) -> Culprit | None:
    """The culprit among ``roots`` (``(label, object)`` pairs), or None.

    ``probe(obj)`` raises when ``obj`` cannot be pickled. ``by_value``: the
    probe sends functions and classes that cannot be imported by value
    (cloudpickle), so the search looks into them (closures, globals, class
    attributes). None when no root fails on its own, or when a probe raised
    something other than an Exception. May raise KeyboardInterrupt.
    """
    search = _Search(probe, by_value, max_objects, max_depth)
    try:
        return search.run(roots)
    finally:
        # Let go of the user's objects now, not when the search is collected.
        search.keep.clear()
        search.steps.clear()


def annotate(
    error: BaseException,
    roots: Sequence[tuple[str, object]],
    what: str | Callable[[int], str],
    role: Role = "call",
    probe: Probe = plain_probe,
    *,
    by_value: bool = False,
    max_objects: int = MAX_OBJECTS,
) -> Culprit | None:
    """Write the path to the culprit of ``error`` into it; return the culprit, or None.

    ``error`` is what pickling the roots raised; it stays itself (its type
    and traceback), so ``except`` clauses keep catching it. It gets:

    * ``pickle_path``, an attribute: the path (``args[1].session._lock``);
    * its message prefixed with the path (``args[1].session._lock: cannot
      pickle '_thread.lock' object``) when it is a plain pickling error (a
      ``TypeError``, ``AttributeError`` or ``pickle.PicklingError`` whose
      message is its one argument), as the standard pool would raise it;
    * a note (``__notes__``) saying what ``what`` is (``"task 3 (work)"``;
      a callable gets the culprit's root index and names it), the path, and
      what to do.

    Errors that are no pickling failure (``RecursionError``,
    ``MemoryError``, anything not an ``Exception``) and errors already
    annotated are left alone. Never raises but KeyboardInterrupt.
    """
    if (
        not isinstance(error, Exception)
        or isinstance(error, RecursionError | MemoryError)
        or "pickle_path" in getattr(error, "__dict__", {})
    ):
        return None
    try:
        culprit = find_culprit(roots, probe, by_value=by_value, max_objects=max_objects)
    except Exception:  # the diagnosis must never hide the error it explains
        return None
    if culprit is None:
        return None
    path = culprit.path
    stopped = f" ({culprit.stopped})" if culprit.stopped else ""
    try:
        error.pickle_path = path  # type: ignore[attr-defined]
        if _plain_message(error):
            detail = culprit.message
            if culprit.error_type is not type(error):
                detail = f"{culprit.error_type.__name__}: {detail}"
            error.args = (f"{path}{stopped}: {detail}",)
        error.add_note(
            _note(culprit, what if isinstance(what, str) else what(culprit.root), role, stopped)
        )
    except Exception:  # a read-only exception type: leave it as it is
        pass
    return culprit


def _plain_message(error: BaseException) -> bool:
    """Whether ``error``'s message is its one argument, which a path may prefix."""
    return (
        isinstance(error, TypeError | AttributeError | pickle.PicklingError)
        and type(error).__str__ is BaseException.__str__
        and len(error.args) == 1
        and isinstance(error.args[0], str)
    )


def _note(culprit: Culprit, what: str, role: Role, stopped: str) -> str:
    subject = f"{culprit.path} (a {culprit.type_name}){stopped}"
    if role == "result":
        head = f"shoal: {what} is pickled in the worker to reach the caller, and {subject}"
        instead = "return a picklable value in its place"
    elif role == "exception":
        head = f"shoal: {what} is pickled in the worker to reach the caller, and {subject}"
        instead = "raise an exception whose arguments and attributes pickle"
    else:
        head = f"shoal: {what} is pickled to reach a worker process, and {subject}"
        instead = "pass a picklable value in its place"
    fixes = []
    if culprit.named:
        fixes.append("define it at the top level of a module, where the worker can import it")
    if culprit.owner:
        fixes.append(
            f"leave it out of {culprit.owner}'s pickle (define __getstate__, and "
            f"__setstate__ to rebuild it)"
        )
    fixes.append(instead)
    if role == "call":
        fixes.append("use a ThreadPoolExecutor, whose calls are not pickled")
    fix = fixes[-1] if len(fixes) == 1 else f"{', '.join(fixes[:-1])}, or {fixes[-1]}"
    return f"{head} cannot be pickled. To fix: {fix}."


# -- the search -----------------------------------------------------------------


class _Stop(Exception):
    """The search ran out of objects or depth: name the deepest failing object reached."""


class _Abort(Exception):
    """A probe raised something that is not an Exception: the search names nothing."""


# One step of the path: its name, the object, its own error (type, message), its owner.
_Step = tuple[str, object, tuple[type[BaseException], str], str]


class _Search:
    """One find_culprit(): the probes made, the objects seen, the path so far.

    A class, not closures calling one another: a closure that refers to
    itself is a reference cycle, which would keep the user's objects (in
    ``keep``) alive until the cyclic collector runs.
    """

    __slots__ = (
        "by_value",
        "keep",
        "max_depth",
        "max_objects",
        "objects",
        "probe",
        "seen",
        "steps",
    )

    def __init__(self, probe: Probe, by_value: bool, max_objects: int, max_depth: int) -> None:
        self.probe = probe
        self.by_value = by_value
        self.max_objects = max_objects
        self.max_depth = max_depth
        self.objects = 0
        # ids of the objects gone into, kept alive in ``keep`` so that no
        # other object takes their id while the search runs.
        self.seen: set[int] = set()
        self.keep: list[object] = []
        # The path so far: the roots' step, then one per object gone into.
        # Once the culprit is found, it is the last.
        self.steps: list[_Step] = []

    def run(self, roots: Sequence[tuple[str, object]]) -> Culprit | None:
        labels = [label for label, _ in roots]
        values = [value for _, value in roots]
        stopped = ""
        root = -1
        try:
            for index, child, error in self._failing(values, whole_fails=True):
                if error is None:
                    continue  # the same object as a root before it
                root = index
                self.steps = [(labels[index], child, error, "")]
                if self._search(child, 1):
                    break
            else:
                if root < 0:
                    return None  # no root fails on its own
                # Each root's failure leads back to another root: name the last.
        except _Stop as stop:
            stopped = str(stop)
        except _Abort:
            return None
        steps = self.steps
        if not steps:
            return None
        _, obj, (error_type, message), owner = steps[-1]
        return Culprit(
            path="".join(step[0] for step in steps),
            root=root,
            type_name=type_name(type(obj)),
            error_type=error_type,
            message=message,
            objects=self.objects,
            stopped=stopped,
            owner=owner,
            named=isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType),
        )

    def _search(self, obj: object, depth: int) -> bool:
        """Look into ``obj``, which fails; True once the culprit is found (the last step).

        False when its failure is explained by an object seen already (an
        ancestor: a cycle): the caller goes on with its next failing part.
        """
        self.seen.add(id(obj))
        self.keep.append(obj)
        if depth > self.max_depth:
            raise _Stop(f"search stopped at depth {self.max_depth}")
        explained = False
        try:
            groups = parts_of(obj, self.by_value)
        except Exception:  # its reduction fails: it is the culprit
            groups = []
        for group in groups:
            self.keep.append(group.items)
            for index, child, error in self._failing(group.items):
                if error is None:
                    explained = True  # a part seen already: it fails
                    continue
                self.steps.append((group.name(index), child, error, group.owner))
                if self._search(child, depth + 1):
                    return True
                self.steps.pop()
                explained = True
        # No part fails: it is the culprit, unless a part seen already does.
        return not explained

    def _fails(self, obj: object) -> tuple[type[BaseException], str] | None:
        """The error (type, message) that pickling ``obj`` alone raises, or None."""
        if self.objects >= self.max_objects:
            raise _Stop(f"search stopped after {self.objects} objects")
        self.objects += 1
        try:
            self.probe(obj)
        except RecursionError:
            # The search's own frames and a deep part together: no answer
            # about this part. Name the deepest failing object reached.
            raise _Stop("search stopped: too deep to pickle part by part") from None
        except Exception as exc:
            return type(exc), safe_str(exc)
        except KeyboardInterrupt:
            raise
        except BaseException:
            raise _Abort from None
        return None

    def _failing(
        self, items: Sequence[Any], whole_fails: bool = False
    ) -> Iterator[tuple[int, Any, tuple[type[BaseException], str] | None]]:
        """The items that fail, in order: (index, item, its error); error None for one seen already.

        A range of more than ``_SMALL`` items is probed as one list first
        (unless it is all of them and ``whole_fails``), then by halves.
        """
        seen = self.seen
        ranges = [(0, len(items))]
        while ranges:
            low, high = ranges.pop()
            if high - low > _SMALL:
                whole = whole_fails and low == 0 and high == len(items)
                if not whole and self._fails(list(items[low:high])) is None:
                    continue
                middle = (low + high) // 2
                ranges.append((middle, high))
                ranges.append((low, middle))
                continue
            for index in range(low, high):
                item = items[index]
                if id(item) in seen:
                    yield index, item, None
                    continue
                error = self._fails(item)
                if error is not None:
                    yield index, item, error

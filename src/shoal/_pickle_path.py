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
steps, naming the deepest failing object it reached, "(search stopped
after N objects)".

Costs and side effects: nothing runs until pickling has failed. The search
pickles parts again, so a reducer (``__reduce__``, ``__getstate__``) may run
more than once; one that raises something other than an ``Exception``
(``SystemExit``) ends the search, which then names nothing.

This module imports only the standard library: the parent and the worker
(which imports nothing of the parent's side) both use it.

Concurrency: stateless; any thread.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

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
# How much of a dict key's or set member's repr a path shows.
_REPR_CHARS = 40

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


class _Group(NamedTuple):
    """Parts of an object probed together: ``items``, named by ``name(index)``."""

    items: Sequence[Any]
    name: Callable[[int], str]
    owner: str  # the type whose attributes these are, else ""


# One step of the path: its name, the object, its own error (type, message), its owner.
_Step = tuple[str, object, tuple[type[BaseException], str], str]

_ATOMIC = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        bytearray,
        range,
        slice,
        type(Ellipsis),
        type(NotImplemented),
        types.ModuleType,
        types.CodeType,
        pickle.PickleBuffer,
    }
)


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
            type_name=_type_name(type(obj)),
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
            groups = self._groups(obj)
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
            return type(exc), _safe_str(exc)
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

    # -- an object's parts ---------------------------------------------------

    def _groups(self, obj: object) -> list[_Group]:
        """The parts of ``obj`` as its pickle holds them (none for an atomic object)."""
        kind = type(obj)
        if kind in _ATOMIC:
            return []
        parts = _PARTS.get(kind)
        if parts is None:
            if kind is types.FunctionType or isinstance(obj, type):
                parts = _by_value_groups if self.by_value else _no_groups
            elif isinstance(obj, BaseException):
                parts = _exception_groups
            else:
                parts = _reduced_groups
        return parts(obj)


def _no_groups(obj: Any) -> list[_Group]:
    return []


def _sequence_groups(obj: Any) -> list[_Group]:
    return [_Group(obj, _index, "")]


def _dict_groups(obj: Any) -> list[_Group]:
    return _mapping(obj, "[{}]", "")


def _set_groups(obj: Any) -> list[_Group]:
    members = list(obj)
    return [_Group(members, lambda i: "{" + _short(members[i]) + "}", "")]


def _method_groups(obj: Any) -> list[_Group]:
    return [_named({".__self__": obj.__self__, ".__func__": obj.__func__})]


def _builtin_groups(obj: Any) -> list[_Group]:
    owner = getattr(obj, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType):
        return []  # a function of a module: by name
    return [_named({".__self__": owner})]


def _exception_groups(obj: Any) -> list[_Group]:
    groups = [_Group(obj.args, lambda i: f".args[{i}]", "")]
    if obj.__dict__:
        groups += _attributes(obj.__dict__, _type_name(type(obj)))
    return groups


def _by_value_groups(obj: Any) -> list[_Group]:
    """The parts cloudpickle sends of a function or class it sends by value."""
    if isinstance(obj, type):
        parts = {f".{k}": v for k, v in vars(obj).items() if k not in _CLASS_SKIP}
        return [_named(parts)]
    fn: types.FunctionType = obj
    named: dict[str, object] = {}
    code = fn.__code__
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            named[f".<closure>.{name}"] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    fn_globals = fn.__globals__
    for name in _code_names(code):
        if name in fn_globals:
            named[f".<globals>.{name}"] = fn_globals[name]
    groups = [_named(named)]
    if fn.__defaults__:
        groups.append(_Group(fn.__defaults__, lambda i: f".__defaults__[{i}]", ""))
    if fn.__kwdefaults__:
        groups += _mapping(fn.__kwdefaults__, ".__kwdefaults__[{}]", "")
    if fn.__dict__:
        groups += _attributes(fn.__dict__, "")
    return groups


def _reduced_groups(obj: object) -> list[_Group]:
    """The parts of an object pickled by its reduction (``__reduce_ex__``, copyreg)."""
    kind = type(obj)
    reducer = copyreg.dispatch_table.get(kind)
    reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(5)
    if not isinstance(reduced, tuple) or len(reduced) < 2:
        return []  # a global name: it goes by reference
    reduced += (None,) * (5 - len(reduced))
    func, args, state, listitems, dictitems = reduced[:5]
    default = (
        reducer is None
        and kind.__reduce_ex__ is object.__reduce_ex__
        and kind.__reduce__ is object.__reduce__
    )
    owner = _type_name(kind)
    groups: list[_Group] = []
    how = ".__reduce_ex__(5)" if kind.__reduce_ex__ is not object.__reduce_ex__ else ".__reduce__()"
    if default and func is copyreg.__newobj__ and args:  # type: ignore[attr-defined]
        groups.append(_named({".__class__": args[0]}))
        rest = tuple(args[1:])
        groups.append(_Group(rest, lambda i: f".__getnewargs__()[{i}]", ""))
    elif default and func is copyreg.__newobj_ex__ and len(args) == 3:  # type: ignore[attr-defined]
        cls, new_args, new_kwargs = args
        groups.append(_named({".__class__": cls}))
        groups.append(_Group(tuple(new_args), lambda i: f".__getnewargs_ex__()[0][{i}]", ""))
        groups += _mapping(dict(new_kwargs), ".__getnewargs_ex__()[1][{}]", "")
    else:
        groups.append(_named({f"{how}[0]": func}))
        groups.append(_Group(tuple(args), lambda i: f"{how}[1][{i}]", ""))
    if state is not None:
        own_state = getattr(kind, "__getstate__", None) not in (None, _DEFAULT_GETSTATE)
        if not default:
            groups.append(_named({f"{how}[2]": state}))
        elif own_state:
            groups.append(_named({".__getstate__()": state}))
        elif type(state) is dict:
            groups += _attributes(state, owner)
        elif type(state) is tuple and len(state) == 2:
            for part in state:
                if type(part) is dict:
                    groups += _attributes(part, owner)
        else:
            groups.append(_named({".__getstate__()": state}))
    if listitems is not None:
        groups.append(_Group(list(listitems), _index, ""))
    if dictitems is not None:
        groups += _mapping(dict(dictitems), "[{}]", "")
    return groups


_DEFAULT_GETSTATE = getattr(object, "__getstate__", None)  # 3.11+


def _partial_groups(part: functools.partial[Any]) -> list[_Group]:
    groups = [_named({".func": part.func})]
    groups.append(_Group(part.args, lambda i: f".args[{i}]", ""))
    if part.keywords:
        groups += _mapping(part.keywords, ".keywords[{}]", "")
    if part.__dict__:
        groups += _attributes(part.__dict__, "functools.partial")
    return groups


_CLASS_SKIP = frozenset({"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"})


def _named(parts: dict[str, object]) -> _Group:
    names = list(parts)
    return _Group(list(parts.values()), names.__getitem__, "")


def _index(i: int) -> str:
    return f"[{i}]"


def _mapping(mapping: dict[Any, Any], form: str, owner: str) -> list[_Group]:
    """A dict's values (named by ``form`` of the key's repr), then its keys."""
    keys = list(mapping)
    values = [mapping[k] for k in keys]
    return [
        _Group(values, lambda i: form.format(_short(keys[i])), owner),
        _Group(keys, lambda i: f"<key {_short(keys[i])}>", ""),
    ]


def _attributes(state: dict[Any, Any], owner: str) -> list[_Group]:
    """An instance's attributes (a ``__dict__``, or its ``__slots__`` values): ``.name``."""
    keys = list(state)
    values = [state[k] for k in keys]
    return [_Group(values, lambda i: _attribute(keys[i]), owner)]


def _attribute(key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f".{key}"
    return f".__dict__[{_short(key)}]"


def _code_names(code: types.CodeType, budget: int = 1000) -> Iterable[str]:
    """The global names ``code`` and the code nested in it use."""
    names: list[str] = []
    stack = [code]
    while stack and len(names) < budget:
        current = stack.pop()
        names.extend(current.co_names)
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return dict.fromkeys(names)


def _short(obj: object) -> str:
    text = _safe_repr(obj)
    return text if len(text) <= _REPR_CHARS else text[: _REPR_CHARS - 3] + "..."


def _safe_repr(obj: object) -> str:
    try:
        return repr(obj)
    except Exception:
        return f"<{_type_name(type(obj))} object>"


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:
        return f"<str() of the {_type_name(type(obj))} failed>"


def _type_name(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    name = getattr(kind, "__qualname__", None) or getattr(kind, "__name__", "?")
    if module in (None, "builtins"):
        return str(name)
    return f"{module}.{name}"


# The parts of the types pickle itself knows (and a few with reductions
# whose parts have better names than ``__reduce__()[1][0]``).
_PARTS: dict[type, Callable[[Any], list[_Group]]] = {
    list: _sequence_groups,
    tuple: _sequence_groups,
    dict: _dict_groups,
    set: _set_groups,
    frozenset: _set_groups,
    types.MethodType: _method_groups,
    types.BuiltinFunctionType: _builtin_groups,
    functools.partial: _partial_groups,
}

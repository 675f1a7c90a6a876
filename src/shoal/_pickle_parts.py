"""The parts of an object as its pickle holds them, each with the name a path gives it.

``shoal._pickle_path`` searches an object that did not pickle for the part
that does not; this module says what the parts of an object are and how a
path names each (see that module's docstring for the notation). Parts come
in groups (a list's items, a dict's values, an instance's attributes),
which the search probes together and then by halves.

For the types pickle handles itself (lists, tuples, dicts, sets), their
items. For a function or class cloudpickle sends by value: a function's
closure variables, the globals it uses, its defaults and attributes; a
class's attributes. Anything else by its reduction (``copyreg``'s table,
else ``__reduce_ex__(5)``): for the default one, the class, the arguments
of ``__new__`` and the state (an instance's ``__dict__`` and ``__slots__``
as attributes, or what a custom ``__getstate__`` returned); for a custom
``__reduce__``, what it returned, by position. A partial, a method and an
exception get names of their own (``.func``, ``.__self__``, ``.args[0]``).

Imports only the standard library (the worker uses it too). Stateless; any thread.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

__all__ = ("Group", "parts_of", "safe_str", "short", "type_name")

# How much of a dict key's or set member's repr a path shows.
_REPR_CHARS = 40


class Group(NamedTuple):
    """Parts of an object probed together: ``items``, named by ``name(index)``."""

    items: Sequence[Any]
    name: Callable[[int], str]
    owner: str  # the type whose attributes these are, else ""


# Types whose objects have no parts: they pickle, or fail, as a whole.
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


def parts_of(obj: object, by_value: bool) -> list[Group]:
    """The parts of ``obj`` in groups, in pickling order (none for an atomic object).

    ``by_value``: functions and classes that cannot be imported travel by
    value (cloudpickle), so their parts count; else they have none. May
    raise what the object's reduction raises (then it is the culprit).
    """
    kind = type(obj)
    if kind in _ATOMIC:
        return []
    parts = _PARTS.get(kind)
    if parts is None:
        if kind is types.FunctionType or isinstance(obj, type):
            parts = _by_value_groups if by_value else _no_groups
        elif isinstance(obj, BaseException):
            parts = _exception_groups
        else:
            parts = _reduced_groups
    return parts(obj)


def _no_groups(obj: Any) -> list[Group]:
    return []


def _sequence_groups(obj: Any) -> list[Group]:
    return [Group(obj, _index, "")]


def _dict_groups(obj: Any) -> list[Group]:
    return _mapping(obj, "[{}]", "")


def _set_groups(obj: Any) -> list[Group]:
    members = list(obj)
    return [Group(members, lambda i: "{" + short(members[i]) + "}", "")]


def _method_groups(obj: Any) -> list[Group]:
    return [_named({".__self__": obj.__self__, ".__func__": obj.__func__})]


def _builtin_groups(obj: Any) -> list[Group]:
    owner = getattr(obj, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType):
        return []  # a function of a module: by name
    return [_named({".__self__": owner})]


def _exception_groups(obj: Any) -> list[Group]:
    groups = [Group(obj.args, lambda i: f".args[{i}]", "")]
    if obj.__dict__:
        groups += _attributes(obj.__dict__, type_name(type(obj)))
    return groups


def _by_value_groups(obj: Any) -> list[Group]:
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
        groups.append(Group(fn.__defaults__, lambda i: f".__defaults__[{i}]", ""))
    if fn.__kwdefaults__:
        groups += _mapping(fn.__kwdefaults__, ".__kwdefaults__[{}]", "")
    if fn.__dict__:
        groups += _attributes(fn.__dict__, "")
    return groups


def _reduced_groups(obj: object) -> list[Group]:
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
    owner = type_name(kind)
    groups: list[Group] = []
    how = ".__reduce_ex__(5)" if kind.__reduce_ex__ is not object.__reduce_ex__ else ".__reduce__()"
    if default and func is copyreg.__newobj__ and args:  # type: ignore[attr-defined]
        groups.append(_named({".__class__": args[0]}))
        rest = tuple(args[1:])
        groups.append(Group(rest, lambda i: f".__getnewargs__()[{i}]", ""))
    elif default and func is copyreg.__newobj_ex__ and len(args) == 3:  # type: ignore[attr-defined]
        cls, new_args, new_kwargs = args
        groups.append(_named({".__class__": cls}))
        groups.append(Group(tuple(new_args), lambda i: f".__getnewargs_ex__()[0][{i}]", ""))
        groups += _mapping(dict(new_kwargs), ".__getnewargs_ex__()[1][{}]", "")
    else:
        groups.append(_named({f"{how}[0]": func}))
        groups.append(Group(tuple(args), lambda i: f"{how}[1][{i}]", ""))
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
        groups.append(Group(list(listitems), _index, ""))
    if dictitems is not None:
        groups += _mapping(dict(dictitems), "[{}]", "")
    return groups


_DEFAULT_GETSTATE = getattr(object, "__getstate__", None)  # 3.11+


def _partial_groups(part: functools.partial[Any]) -> list[Group]:
    groups = [_named({".func": part.func})]
    groups.append(Group(part.args, lambda i: f".args[{i}]", ""))
    if part.keywords:
        groups += _mapping(part.keywords, ".keywords[{}]", "")
    if part.__dict__:
        groups += _attributes(part.__dict__, "functools.partial")
    return groups


_CLASS_SKIP = frozenset({"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"})


def _named(parts: dict[str, object]) -> Group:
    names = list(parts)
    return Group(list(parts.values()), names.__getitem__, "")


def _index(i: int) -> str:
    return f"[{i}]"


def _mapping(mapping: dict[Any, Any], form: str, owner: str) -> list[Group]:
    """A dict's values (named by ``form`` of the key's repr), then its keys."""
    keys = list(mapping)
    values = [mapping[k] for k in keys]
    return [
        Group(values, lambda i: form.format(short(keys[i])), owner),
        Group(keys, lambda i: f"<key {short(keys[i])}>", ""),
    ]


def _attributes(state: dict[Any, Any], owner: str) -> list[Group]:
    """An instance's attributes (a ``__dict__``, or its ``__slots__`` values): ``.name``."""
    keys = list(state)
    values = [state[k] for k in keys]
    return [Group(values, lambda i: _attribute(keys[i]), owner)]


def _attribute(key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f".{key}"
    return f".__dict__[{short(key)}]"


def _code_names(code: types.CodeType, budget: int = 1000) -> Iterable[str]:
    """The global names ``code`` and the code nested in it use."""
    names: list[str] = []
    stack = [code]
    while stack and len(names) < budget:
        current = stack.pop()
        names.extend(current.co_names)
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return dict.fromkeys(names)


def short(obj: object) -> str:
    text = safe_repr(obj)
    return text if len(text) <= _REPR_CHARS else text[: _REPR_CHARS - 3] + "..."


def safe_repr(obj: object) -> str:
    try:
        return repr(obj)
    except Exception:
        return f"<{type_name(type(obj))} object>"


def safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:
        return f"<str() of the {type_name(type(obj))} failed>"


def type_name(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    name = getattr(kind, "__qualname__", None) or getattr(kind, "__name__", "?")
    if module in (None, "builtins"):
        return str(name)
    return f"{module}.{name}"


# The parts of the types pickle itself knows (and a few with reductions
# whose parts have better names than ``__reduce__()[1][0]``).
_PARTS: dict[type, Callable[[Any], list[Group]]] = {
    list: _sequence_groups,
    tuple: _sequence_groups,
    dict: _dict_groups,
    set: _set_groups,
    frozenset: _set_groups,
    types.MethodType: _method_groups,
    types.BuiltinFunctionType: _builtin_groups,
    functools.partial: _partial_groups,
}

"""The search for what did not pickle (``shoal._pickle_path``), on its own.

The messages of pickle and cloudpickle differ across Python versions: these
tests check paths, types and counts, and only the type names inside the
messages.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import _pickle_path
from shoal._pickle_path import annotate, find_culprit
from shoal.process import _wire


class Session:
    def __init__(self) -> None:
        self.user = "ann"
        self._lock = threading.Lock()


class Job:
    def __init__(self) -> None:
        self.id = 7
        self.session = Session()


class Slotted:
    __slots__ = ("a", "b", "c")


class Obj:
    """A plain object whose attributes the tests set."""


class Reduced:
    """A custom __reduce__ whose state holds a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __reduce__(self) -> tuple[object, ...]:
        return (Reduced, (), {"name": "r", "lock": self.lock})


class ReducedArgs:
    """A custom __reduce__ whose arguments hold a lock."""

    def __init__(self, lock: object) -> None:
        self.lock = lock

    def __reduce__(self) -> tuple[object, ...]:
        return (ReducedArgs, (self.lock,))


class CallableHolder:
    def __init__(self, lock: object) -> None:
        self.lock = lock

    def __call__(self) -> None:
        pass


class Registered:
    """Pickled by a copyreg reducer (registered by its test)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


class OwnState:
    """A __getstate__ of its own, which forgot the lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        return {"kept": [1, self.lock]}


class Refuses:
    """Pickling it raises an error that is no pickling error."""

    def __reduce__(self) -> tuple[object, ...]:
        raise ValueError("refused on purpose")


def lock_path(roots, **kw):
    culprit = find_culprit(roots, **kw)
    assert culprit is not None
    return culprit.path


def test_the_example_of_the_issue():
    args = (1, Job())
    with pytest.raises(TypeError) as info:
        pickle.dumps((len, args, {}))
    error = info.value
    culprit = annotate(error, [("fn", len), ("args", args), ("kwargs", {})], "task 3 (work)")
    assert culprit is not None
    assert culprit.path == "args[1].session._lock"
    assert culprit.type_name == "_thread.lock"
    assert culprit.owner == f"{__name__}.Session"
    assert type(error) is TypeError  # except TypeError still catches it
    assert error.pickle_path == "args[1].session._lock"
    assert str(error).startswith("args[1].session._lock: ")
    assert "_thread.lock" in str(error)
    (note,) = error.__notes__
    assert "task 3 (work)" in note and "args[1].session._lock" in note
    assert "__getstate__" in note and "ThreadPoolExecutor" in note


@pytest.mark.parametrize(
    ("make", "path"),
    [
        (lambda lock: {"a": 1, "b": [2, 3, lock]}, "x['b'][2]"),
        (lambda lock: [{"k": (1, {"deep": lock})}], "x[0]['k'][1]['deep']"),
        (lambda lock: {frozenset({1}): "v", lock: "value"}, "x<key <unlocked _thread.lock object*"),
        (lambda lock: {1, 2, ReducedArgs(lock)}, None),  # a member, by its repr
        (lambda lock: functools.partial(print, 1, lock), "x.args[1]"),
        (lambda lock: functools.partial(print, sep=lock), "x.keywords['sep']"),
        (lambda lock: functools.partial(CallableHolder(lock)), "x.func.lock"),
        (lambda lock: ReducedArgs(lock), "x.__reduce__()[1][0]"),
        (lambda lock: OwnState(), "x.__getstate__()['kept'][1]"),
        (lambda lock: ValueError("message", lock), "x.args[1]"),
    ],
    ids=[
        "nested-dict-list",
        "list-dict-tuple",
        "dict-key",
        "set-member",
        "partial-args",
        "partial-keywords",
        "partial-func",
        "reduce-args",
        "own-getstate",
        "exception-args",
    ],
)
def test_paths_through_containers_and_reductions(make, path):
    culprit = find_culprit([("x", make(threading.Lock()))])
    assert culprit is not None and culprit.type_name == "_thread.lock"
    if path is None:
        assert culprit.path.startswith("x{")
        assert culprit.path.endswith(".__reduce__()[1][0]")
    elif path.endswith("*"):  # a repr with an address in it
        assert culprit.path.startswith(path[:-1])
    else:
        assert culprit.path == path


def test_slots_are_attributes():
    obj = Slotted()
    obj.a = 1
    obj.c = threading.RLock()
    culprit = find_culprit([("x", [obj])])
    assert culprit is not None
    assert culprit.path == "x[0].c"
    assert culprit.owner == f"{__name__}.Slotted"


def test_a_custom_reduce_whose_state_holds_a_lock():
    assert lock_path([("args", (Reduced(),))]) == "args[0].__reduce__()[2]['lock']"


def test_a_bound_method_of_an_object_holding_a_lock():
    job = Job()
    assert lock_path([("fn", job.__init__)]) == "fn.__self__.session._lock"


def test_a_builtin_method_of_a_lock():
    assert lock_path([("fn", threading.Lock().acquire)]) == "fn.__self__"


def test_a_cycle_leads_back_and_the_search_goes_on():
    a, b = Obj(), Obj()
    a.b = b
    b.a = a  # b fails only through a: the culprit is a's own lock
    a.lock = threading.Lock()
    culprit = find_culprit([("x", (a,))])
    assert culprit is not None
    assert culprit.path == "x[0].lock"


def test_a_self_referencing_list():
    items: list[object] = [1]
    items.append(items)
    items.append(threading.Lock())
    assert lock_path([("x", items)]) == "x[2]"


def test_the_first_failing_part_in_order_is_named():
    items = [1, threading.Lock(), threading.RLock()]
    assert lock_path([("x", items)]) == "x[1]"


def test_a_huge_list_is_searched_by_halves():
    n = 1_000_000
    items: list[object] = list(range(n))
    items.append(threading.Lock())
    culprit = find_culprit([("args", (items,))])
    assert culprit is not None
    assert culprit.path == f"args[0][{n}]"
    # About two probes per halving (2 * log2(n) = 40), not a million.
    assert culprit.objects <= 60


def test_a_huge_dict_is_searched_by_halves():
    mapping: dict[object, object] = {i: str(i) for i in range(100_000)}
    mapping["bad"] = threading.Lock()
    culprit = find_culprit([("d", mapping)])
    assert culprit is not None
    assert culprit.path == "d['bad']"
    assert culprit.objects <= 60


def test_the_search_stops_after_its_budget_and_says_so():
    # Wide and deep: every level has many attributes, and the lock is far down.
    root = node = Obj()
    for _ in range(50):
        child = Obj()
        for k in range(20):
            setattr(node, f"a{k}", k)
        node.next = child
        node = child
    node.lock = threading.Lock()
    culprit = find_culprit([("x", root)], max_objects=30)
    assert culprit is not None
    assert culprit.stopped == "search stopped after 30 objects"
    assert culprit.objects == 30
    assert culprit.path.startswith("x.next.next")  # the deepest failing object reached
    error = TypeError("cannot pickle")
    annotate(error, [("x", root)], "task 1 (f)", max_objects=30)
    assert str(error).startswith("x.next") and "(search stopped after 30 objects)" in str(error)


def test_the_search_stops_at_its_depth():
    root = node = Obj()
    for _ in range(30):
        node.next = Obj()
        node = node.next
    node.lock = threading.Lock()
    culprit = find_culprit([("x", root)], max_depth=10)
    assert culprit is not None
    assert culprit.stopped == "search stopped at depth 10"
    assert culprit.path == "x" + ".next" * 10


def test_a_deep_chain_is_followed_to_its_end():
    root = node = Obj()
    for _ in range(60):
        node.next = Obj()
        node = node.next
    node.lock = threading.Lock()
    assert lock_path([("x", root)]) == "x" + ".next" * 60 + ".lock"


def test_nothing_fails_nothing_is_named():
    assert find_culprit([("x", [1, {"a": (2, 3)}, Job])]) is None


def test_a_local_class_is_named_by_plain_pickle():
    class Local:
        pass

    culprit = find_culprit([("args", (1, Local()))])
    assert culprit is not None
    assert culprit.path == "args[1].__class__"
    assert culprit.named
    error = AttributeError("Can't pickle local object")
    annotate(error, [("args", (1, Local()))], "task 1 (f)")
    assert "top level of a module" in error.__notes__[0]


def test_an_error_that_is_no_pickling_error_keeps_its_message_and_gets_a_note():
    error = ValueError("refused on purpose")
    culprit = annotate(error, [("args", (1, [Refuses()]))], "task 2 (g)")
    assert culprit is not None and culprit.path == "args[1][0]"
    assert culprit.error_type is ValueError
    assert str(error) == "refused on purpose"  # its message is its own
    assert error.pickle_path == "args[1][0]"
    assert "args[1][0]" in error.__notes__[0]


def test_annotate_leaves_an_error_alone_once_annotated_and_for_recursion_errors():
    error = TypeError("cannot pickle")
    roots = [("x", [threading.Lock()])]
    assert annotate(error, roots, "w") is not None
    assert annotate(error, roots, "w") is None
    assert str(error).count("x[0]") == 1 and len(error.__notes__) == 1
    deep = RecursionError("maximum recursion depth exceeded")
    assert annotate(deep, roots, "w") is None and not hasattr(deep, "__notes__")


def test_a_system_exit_in_a_reducer_ends_the_search():
    class Exits:
        def __reduce__(self):
            raise SystemExit(3)

    assert find_culprit([("x", [Exits(), threading.Lock()])]) is None


def test_a_copyreg_reducer_is_followed():
    copyreg.pickle(Registered, lambda r: (Registered, (r.lock,)))
    try:
        culprit = find_culprit([("x", Registered())])
    finally:
        del copyreg.dispatch_table[Registered]
    assert culprit is not None and culprit.path == "x.__reduce__()[1][0]"


def test_a_result_and_an_exception_have_their_own_advice():
    error = TypeError("cannot pickle")
    annotate(error, [("result", {"lock": threading.Lock()})], "the result of f", "result")
    assert str(error).startswith("result['lock']: ")
    assert "return a picklable value" in error.__notes__[0]
    assert "ThreadPoolExecutor" not in error.__notes__[0]


# -- with the process pool's pickling: cloudpickle for closures ----------------


def wire_path(roots):
    culprit = find_culprit(roots, _wire.probe, by_value=True)
    assert culprit is not None
    return culprit


def test_a_closure_over_a_lock_names_the_free_variable():
    lock = threading.Lock()

    def work():
        return lock

    culprit = wire_path([("fn", work), ("args", ())])
    assert culprit.path == "fn.<closure>.lock"


def test_a_lambda_with_a_default_and_a_global():
    lock = threading.Lock()
    culprit = wire_path([("fn", lambda x=lock: x)])
    assert culprit.path == "fn.__defaults__[0]"
    culprit = wire_path([("fn", lambda: GLOBAL_LOCK)])
    assert culprit.path == "fn.<globals>.GLOBAL_LOCK"


GLOBAL_LOCK = threading.Lock()


def test_a_memoryview_pickles_with_the_pool_and_is_not_blamed():
    # Plain pickle refuses memoryviews; the pool's pickling does not.
    culprit = wire_path([("args", (memoryview(b"abc"), threading.Lock()))])
    assert culprit.path == "args[1]"


def test_a_lambda_without_cloudpickle_is_the_culprit_itself():
    culprit = find_culprit([("fn", lambda: 1)])
    assert culprit is not None and culprit.path == "fn" and culprit.named


def test_the_sink_copies_nothing():
    assert _pickle_path.SINK.write(b"x" * 10) == 10


# -- property: one lock somewhere in a random structure ------------------------

# A spec: ("leaf", None), ("lock", None), or (kind, children) for kind in
# list, tuple, dict, obj, slots; children are a list of specs.
KINDS = ("list", "tuple", "dict", "obj", "slots")

leaves = st.sampled_from([("leaf", None), ("leaf", None), ("lock", None)])
specs = st.recursive(
    leaves,
    lambda inner: st.tuples(st.sampled_from(KINDS), st.lists(inner, max_size=3)).map(
        lambda t: (t[0], t[1][:3] if t[0] == "slots" else t[1])
    ),
    max_leaves=25,
)


def build(spec):
    """The object of ``spec`` and the path to its first lock in pickling order, or None."""
    kind, children = spec
    if kind == "leaf":
        return 1, None
    if kind == "lock":
        return threading.Lock(), ""
    built = [build(child) for child in children]
    objects = [obj for obj, _ in built]
    first = next(((i, path) for i, (_, path) in enumerate(built) if path is not None), (None, None))
    index, rest = first
    if kind in ("list", "tuple"):
        obj = objects if kind == "list" else tuple(objects)
        step = f"[{index}]"
    elif kind == "dict":
        obj = {f"k{i}": o for i, o in enumerate(objects)}
        step = f"['k{index}']"
    elif kind == "obj":
        obj = Obj()
        for i, o in enumerate(objects):
            setattr(obj, f"a{i}", o)
        step = f".a{index}"
    else:
        obj = Slotted()
        for name, o in zip(("a", "b", "c"), objects, strict=False):
            setattr(obj, name, o)
        step = f".{'abc'[index]}" if index is not None else ""
    return obj, None if index is None else step + rest


@settings(max_examples=200, deadline=None)
@given(specs)
def test_the_first_lock_is_found_wherever_it_is(spec):
    obj, path = build(spec)
    culprit = find_culprit([("x", obj)])
    if path is None:
        assert culprit is None
    else:
        assert culprit is not None
        assert culprit.path == "x" + path
        assert culprit.type_name == "_thread.lock"


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=20_000), st.integers(min_value=1, max_value=20_000))
def test_a_bad_item_anywhere_in_a_long_list_costs_a_logarithm(at, extra):
    items: list[object] = list(range(at + extra))
    items[at] = threading.Lock()
    culprit = find_culprit([("x", items)])
    assert culprit is not None and culprit.path == f"x[{at}]"
    assert culprit.objects <= 2 * (at + extra).bit_length() + 8

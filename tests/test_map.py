"""Executor.map: equal to the builtin map, errors at their position, timeouts, streaming."""

from __future__ import annotations

import gc
import itertools
import threading

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shoal
from shoal._options import DEFAULT_OPTIONS


class MapError(Exception):
    pass


def square(x):
    return x * x


def negate(x):
    return -x


def fail_on_multiples_of_7(x):
    if x % 7 == 6:
        raise MapError(x)
    return x + 1


def add(x, y):
    return x + y


def chunked_map(executor, fn, *iterables, timeout=None, chunksize=1, buffersize=None, ordered=True):
    """``executor.map`` with batching by an integer ``chunksize`` on every executor.

    The thread pool's own ``map`` ignores a number, as the standard one does,
    and batches only with ``chunksize="auto"``; the base class's ``_map_with``
    is the machinery it then runs, here with chunk sizes the test chooses.
    """
    return shoal.Executor._map_with(
        executor,
        DEFAULT_OPTIONS,
        fn,
        iterables,
        timeout=timeout,
        chunksize=chunksize,
        buffersize=buffersize,
        ordered=ordered,
    )


PROCESS_KINDS = pytest.mark.kinds("process-forkserver", "process-spawn", "process-fork")


FUNCTIONS = [square, negate, str, fail_on_multiples_of_7]
NEVER_FAILING = [square, negate, str]


def outcomes(iterator):
    """Drain ``iterator``: its values, then ("raised", type, args) if it raised."""
    seen = []
    try:
        for value in iterator:
            seen.append(value)  # noqa: PERF402 - keep what came before the exception
    except Exception as exc:
        seen.append(("raised", type(exc), exc.args))
    return seen


map_settings = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@map_settings
@given(
    fn=st.sampled_from(FUNCTIONS),
    length=st.integers(0, 40),
    chunksize=st.integers(1, 6),
    buffersize=st.none() | st.integers(1, 6),
)
def test_ordered_map_equals_builtin_map(executor, fn, length, chunksize, buffersize):
    expected = outcomes(map(fn, range(length)))
    got = outcomes(executor.map(fn, range(length), chunksize=chunksize, buffersize=buffersize))
    assert got == expected
    got = outcomes(
        executor.map(
            fn, iter(range(length)), chunksize=chunksize, buffersize=buffersize, ordered=True
        )
    )
    assert got == expected


@map_settings
@given(
    fn=st.sampled_from(NEVER_FAILING),
    length=st.integers(0, 40),
    chunksize=st.integers(1, 6),
    buffersize=st.none() | st.integers(1, 6),
)
def test_unordered_map_yields_the_same_multiset(executor, fn, length, chunksize, buffersize):
    inputs = [i % 5 for i in range(length)]
    got = list(executor.map(fn, inputs, chunksize=chunksize, buffersize=buffersize, ordered=False))
    assert sorted(got, key=repr) == sorted(map(fn, inputs), key=repr)


@map_settings
@given(a=st.lists(st.integers(), max_size=20), b=st.lists(st.integers(), max_size=20))
def test_map_over_several_iterables_stops_at_the_shortest(executor, a, b):
    assert list(executor.map(add, a, b)) == list(map(add, a, b))


@pytest.mark.parametrize("chunksize", [1, 2, 3, 10])
@pytest.mark.parametrize("buffersize", [None, 1, 4])
def test_exception_at_its_position(executor, chunksize, buffersize):
    results = executor.map(
        fail_on_multiples_of_7, range(20), chunksize=chunksize, buffersize=buffersize
    )
    assert [next(results) for _ in range(6)] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(MapError) as info:
        next(results)
    assert info.value.args == (6,)
    with pytest.raises(StopIteration):
        next(results)


@pytest.mark.in_process
@pytest.mark.parametrize("chunksize", [1, 2])
def test_an_error_cancels_the_calls_left_before_it_reaches_the_caller(executor_factory, chunksize):
    executor = executor_factory(max_workers=1)
    gate = threading.Event()
    ran = []

    def call(x):
        ran.append(x)
        if x == chunksize - 1:
            raise MapError(x)
        if x >= chunksize:
            assert gate.wait(10)
        return x

    results = chunked_map(executor, call, range(10 * chunksize), chunksize=chunksize)
    assert [next(results) for _ in range(chunksize - 1)] == list(range(chunksize - 1))
    with pytest.raises(MapError):
        next(results)
    gate.set()  # only now may the calls behind the failure run, if any is left
    executor.shutdown(wait=True)
    with pytest.raises(StopIteration):
        next(results)
    # The failing chunk, and the one the worker may have started before the
    # failure reached the caller; every later one was cancelled.
    assert len(ran) <= 2 * chunksize, ran


@PROCESS_KINDS
@pytest.mark.parametrize("chunksize", [0, -1, numpy.int64(0)])
def test_chunksize_below_one(executor, chunksize):
    # The thread pool ignores chunksize (test_thread_pool.py).
    with pytest.raises(ValueError, match=r"chunksize must be >= 1\."):
        executor.map(square, range(3), chunksize=chunksize)


class Three:
    """Not an int, but a whole number: what ``range()`` and ``islice()`` take."""

    def __index__(self):
        return 3


@pytest.mark.parametrize("chunksize", [numpy.int64(3), Three(), True], ids=type)
def test_chunksize_of_any_whole_number_type(executor, chunksize):
    # A chunk size computed with numpy, as the standard pools accept it.
    assert list(executor.map(square, range(10), chunksize=chunksize)) == [x * x for x in range(10)]


@pytest.mark.parametrize("buffersize", [0, -1])
def test_buffersize_below_one(executor, buffersize):
    with pytest.raises(ValueError):
        executor.map(square, range(3), buffersize=buffersize)


def test_map_is_eager_without_buffersize(executor):
    read = []

    def inputs():
        for i in range(10):
            read.append(i)
            yield i

    results = executor.map(square, inputs())
    assert read == list(range(10))
    assert list(results) == [i * i for i in range(10)]


# -- tests whose calls share state with the test (threads only) -----------------------


class InFlight:
    """Counts calls of ``fn`` submitted and not yet yielded, and the most at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.read = 0

    def inputs(self, source):
        for item in source:
            with self.lock:
                self.read += 1
            yield item

    def call(self, x):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            return x * 2
        finally:
            with self.lock:
                self.running -= 1


@pytest.mark.in_process
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize(("buffersize", "chunksize"), [(1, 1), (3, 1), (2, 4), (5, 3)])
def test_buffersize_bounds_calls_in_flight_on_an_endless_input(
    executor_factory, buffersize, chunksize, ordered
):
    executor = executor_factory(max_workers=4)
    counter = InFlight()
    results = chunked_map(
        executor,
        counter.call,
        counter.inputs(itertools.count()),
        buffersize=buffersize,
        chunksize=chunksize,
        ordered=ordered,
    )
    bound = buffersize * chunksize
    assert counter.read <= bound
    taken = []
    for _ in range(60):
        taken.append(next(results))
        # Read from the input but not yet yielded: the buffer's chunks, plus
        # what is left of the finished chunk being yielded.
        assert counter.read - len(taken) <= bound + chunksize - 1
    results.close()
    assert counter.most_running <= bound
    if ordered:
        assert taken == [2 * i for i in range(60)]
    else:
        assert len(set(taken)) == 60


def blocked_until(gate, x):
    assert gate.wait(10)
    return x


@pytest.mark.in_process
@pytest.mark.parametrize("ordered", [True, False])
def test_timeout_cancels_the_calls_left(executor_factory, ordered):
    executor = executor_factory(max_workers=1)
    gate = threading.Event()
    ran = []

    def call(x):
        ran.append(x)
        assert gate.wait(10)
        return x

    results = executor.map(call, range(10), timeout=0.05, ordered=ordered)
    with pytest.raises(TimeoutError):
        next(results)
    gate.set()
    executor.shutdown(wait=True)
    assert ran == [0]


class SecondChunkHeld:
    """A call for map(): the first chunk runs freely, the second waits for ``gate``."""

    def __init__(self, chunksize):
        self.chunksize = chunksize
        self.ran = []
        self.second_started = threading.Event()
        self.gate = threading.Event()

    def __call__(self, x):
        self.ran.append(x)
        if x == self.chunksize:
            self.second_started.set()
        if x >= self.chunksize:
            assert self.gate.wait(10)
        return x


@pytest.mark.in_process
@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("how", ["close", "drop"])
def test_closing_the_iterator_cancels_queued_calls(executor_factory, chunksize, ordered, how):
    executor = executor_factory(max_workers=1)
    call = SecondChunkHeld(chunksize)
    results = chunked_map(
        executor, call, range(6 * chunksize), chunksize=chunksize, ordered=ordered
    )
    assert next(results) == 0
    assert call.second_started.wait(10)
    if how == "close":
        results.close()
    else:
        del results
        gc.collect()
    call.gate.set()
    executor.shutdown(wait=True)
    # The first chunk and the one running when the iterator closed ran; no other.
    assert call.ran == list(range(2 * chunksize))


@pytest.mark.in_process
@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("ordered", [True, False])
def test_an_unstarted_iterator_cancels_nothing(executor_factory, ordered, chunksize):
    # As in the standard library (bpo-11777): map() used only for its side
    # effects runs every call, even if its iterator is closed or dropped
    # before the first next().
    executor = executor_factory(max_workers=1)
    gate = threading.Event()
    ran = []

    def call(x):
        ran.append(x)
        assert gate.wait(10)
        return x

    results = chunked_map(executor, call, range(10), ordered=ordered, chunksize=chunksize)
    results.close()
    del results
    gate.set()
    executor.shutdown(wait=True)
    assert sorted(ran) == list(range(10))


@pytest.mark.in_process
@pytest.mark.parametrize("chunksize", [1, 2])
@pytest.mark.parametrize("ordered", [True, False])
def test_closing_a_started_iterator_cancels_queued_calls(executor_factory, ordered, chunksize):
    executor = executor_factory(max_workers=1)
    gate = threading.Event()
    ran = []

    def call(x):
        ran.append(x)
        if x >= chunksize:
            assert gate.wait(10)
        return x

    results = chunked_map(executor, call, range(10), ordered=ordered, chunksize=chunksize)
    assert next(results) in range(chunksize)
    results.close()
    gate.set()
    executor.shutdown(wait=True)
    # The chunk after the first may have started before close(); no later one.
    assert len(ran) <= 2 * chunksize


@pytest.mark.in_process
@pytest.mark.parametrize("chunksize", [1, 2])
@pytest.mark.parametrize("buffersize", [None, 2])
@pytest.mark.parametrize("ordered", [True, False])
def test_no_reference_to_yielded_results(executor_factory, chunksize, buffersize, ordered):
    import weakref

    class Result:
        pass

    executor = executor_factory(max_workers=2)
    results = chunked_map(
        executor,
        lambda _: Result(),
        range(5),
        buffersize=buffersize,
        chunksize=chunksize,
        ordered=ordered,
    )
    refs = [weakref.ref(next(results)) for _ in range(4)]
    gc.collect()
    assert [r() for r in refs] == [None] * 4
    assert isinstance(next(results), Result)


@pytest.mark.parametrize("ordered", [True, False])
def test_auto_chunksize_sized_and_lazy(executor_factory, ordered):
    executor = executor_factory(max_workers=2)
    expected = [x * x for x in range(1000)]
    got = list(executor.map(square, range(1000), chunksize="auto", ordered=ordered))
    assert (got if ordered else sorted(got)) == expected
    # Without a length and under buffersize, the input is still read lazily.
    got = list(
        executor.map(
            square, (x for x in range(1000)), chunksize="auto", buffersize=4, ordered=ordered
        )
    )
    assert (got if ordered else sorted(got)) == expected


def test_auto_chunksize_matches_pool_map():
    from shoal._executor import AUTO_CHUNK_UNSIZED, _auto_chunksize

    assert _auto_chunksize((range(200_000),), 2) == 25_000
    assert _auto_chunksize((range(3),), 8) == 1
    assert _auto_chunksize((iter(range(10)),), 2) == AUTO_CHUNK_UNSIZED


@PROCESS_KINDS
@pytest.mark.parametrize("chunksize", ["big", 2.0, 2.5, None])
def test_bad_chunksize_names_the_value(executor_factory, chunksize):
    # TypeError, as from the standard process pool on 3.13 (on 3.11 and 3.12
    # its islice() raises a ValueError for a float).
    executor = executor_factory(max_workers=1)
    with pytest.raises(TypeError, match=f"chunksize must be a whole number .*{chunksize!r}"):
        executor.map(square, range(3), chunksize=chunksize)


class _NoSlicing(list):
    def __getitem__(self, index):
        if isinstance(index, slice):
            raise AssertionError("map() sliced a list subclass")
        return super().__getitem__(index)


@pytest.mark.parametrize(
    "items",
    [
        list(range(23)),
        tuple(range(23)),
        range(3, 70, 3),
        range(0),
        [],
        _NoSlicing(range(23)),
    ],
    ids=["list", "tuple", "range-step", "range-empty", "list-empty", "list-subclass"],
)
@pytest.mark.parametrize("chunksize", [2, 5, "auto"])
@pytest.mark.parametrize("buffersize", [None, 2])
def test_chunked_map_over_sequences(executor, items, chunksize, buffersize):
    expected = [x * x for x in items]
    got = list(executor.map(square, items, chunksize=chunksize, buffersize=buffersize))
    assert got == expected

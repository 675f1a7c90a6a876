"""Pickling diagnostics in the process pool: the error names the path to what did not pickle.

For a call's function and arguments (pickled by the dispatcher), a map's
item or chunk, a result (pickled in the worker) and an exception raised by
a call. The error keeps the type pickling raised; the pool goes on and
every other call completes. Messages of pickle and cloudpickle differ
across versions: only paths and type names are checked.
"""

from __future__ import annotations

import functools
import socket
import threading

import crashers
import pytest

import shoal

TIMEOUT = 30


class Session:
    def __init__(self) -> None:
        self.user = "ann"
        self._lock = threading.Lock()


class Job:
    def __init__(self) -> None:
        self.id = 7
        self.session = Session()


class HoldsALock(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def work(*args: object, **kwargs: object) -> int:
    return len(args) + len(kwargs)


def square(x: int) -> int:
    return x * x


def return_job() -> Job:
    return Job()


def return_socket() -> dict[str, object]:
    return {"conn": socket.socket()}


def raise_holding_a_lock() -> None:
    raise HoldsALock("held")


@pytest.fixture
def pool():
    executor = shoal.ProcessPoolExecutor(max_workers=2)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def failure(future: shoal.Future[object]) -> BaseException:
    error = future.exception(TIMEOUT)
    assert error is not None
    return error


def assert_names(error: BaseException, path: str, type_name: str, what: str) -> None:
    assert error.pickle_path == path
    assert str(error).startswith(f"{path}: ")
    notes = "\n".join(error.__notes__)
    assert f"{path} (a {type_name})" in notes
    assert what in notes


def test_the_example_of_the_issue_and_the_pool_goes_on(start_method):
    with shoal.ProcessPoolExecutor(max_workers=2, mp_context=start_method) as pool:
        before = [pool.submit(square, i) for i in range(10)]
        doomed = pool.submit(work, 1, Job())
        after = [pool.submit(square, i) for i in range(10)]
        with pytest.raises(TypeError) as info:  # the type pickling raised
            doomed.result(TIMEOUT)
        assert_names(info.value, "args[1].session._lock", "_thread.lock", "(work)")
        assert "__getstate__" in info.value.__notes__[-1]
        assert [f.result(TIMEOUT) for f in before + after] == [i * i for i in range(10)] * 2
        assert pool.submit(square, 9).result(TIMEOUT) == 81


def test_a_keyword_argument(pool):
    error = failure(pool.submit(work, 1, job=[1, {"x": Job()}]))
    assert type(error) is TypeError
    assert_names(error, "kwargs['job'][1]['x'].session._lock", "_thread.lock", "(work)")


def test_a_closure_over_a_lock_goes_through_cloudpickle(pool):
    lock = threading.Lock()

    def locked() -> bool:
        return lock.locked()

    error = failure(pool.submit(locked))
    assert_names(error, "fn.<closure>.lock", "_thread.lock", "locked")
    # A closure over picklable values still runs.
    value = 5
    assert pool.submit(lambda: value * 2).result(TIMEOUT) == 10


def test_a_partial(pool):
    error = failure(pool.submit(functools.partial(work, threading.Lock()), 1))
    assert_names(error, "fn.args[0]", "_thread.lock", "task")


def test_an_object_whose_reducer_raises_keeps_its_error_and_gets_a_note(pool):
    # crashers.Boom is no pickling error: its message stays, the note names the path.
    error = failure(pool.submit(work, 1, [crashers.FailOnPickle("raise")]))
    assert type(error) is crashers.Boom
    assert str(error) == "raised on purpose"
    assert error.pickle_path == "args[1][0]"
    assert "args[1][0]" in error.__notes__[-1]


def test_with_options(pool):
    view = pool.options(timeout=10, retries=1, name="fetch")
    error = failure(view.submit(work, Job()))
    assert_names(error, "args[0].session._lock", "_thread.lock", "(fetch)")
    assert view.submit(square, 3).result(TIMEOUT) == 9


def test_a_result_that_does_not_pickle(pool):
    error = failure(pool.submit(return_job))
    assert type(error) is TypeError
    assert_names(error, "result.session._lock", "_thread.lock", "the result of")
    assert "return a picklable value" in error.__notes__[-1]
    error = failure(pool.submit(return_socket))
    assert_names(error, "result['conn']", "socket.socket", "the result of")
    assert pool.submit(square, 4).result(TIMEOUT) == 16


def test_an_exception_that_does_not_pickle_names_its_path(pool):
    error = failure(pool.submit(raise_holding_a_lock))
    assert type(error).__name__ == "UnpicklableError"
    assert "HoldsALock" in error.type_name
    assert error.reason.startswith("TypeError: exception.lock: ")


def test_an_eager_map_names_the_call(pool):
    items: list[object] = list(range(30))
    items[12] = Job()
    results = pool.map(work, items)
    got = [next(results) for _ in range(12)]
    with pytest.raises(TypeError) as info:
        next(results)
    assert got == [1] * 12  # the calls before it completed
    assert_names(info.value, "args[0].session._lock", "_thread.lock", "call 12 of map(work)")
    assert list(pool.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_a_map_over_two_iterables(pool):
    second: list[object] = list(range(10))
    second[3] = {"s": Session()}
    with pytest.raises(TypeError) as info:
        list(pool.map(work, range(10), second))
    assert_names(info.value, "args[1]['s']._lock", "_thread.lock", "call 3 of map(work)")


def test_a_chunked_map_names_the_call_in_the_input(pool):
    items: list[object] = list(range(40))
    items[25] = Job()
    with pytest.raises(TypeError) as info:
        list(pool.map(work, items, chunksize=10))
    assert_names(
        info.value,
        "args[0].session._lock",
        "_thread.lock",
        "item 5 of chunk 2 of map(work) (call 25 of the map)",
    )


def test_a_lazy_chunked_map_names_the_item_of_the_chunk(pool):
    items: list[object] = list(range(40))
    items[25] = Job()
    with pytest.raises(TypeError) as info:
        list(pool.map(work, items, chunksize=10, buffersize=2))
    assert_names(info.value, "args[0].session._lock", "_thread.lock", "item 5 of the chunk of")


def test_the_function_of_a_map(pool):
    lock = threading.Lock()
    with pytest.raises(TypeError) as info:
        list(pool.map(lambda x: lock, range(5)))
    assert_names(info.value, "fn.<closure>.lock", "_thread.lock", "every call of map(")


def test_a_huge_argument_with_one_bad_item_at_the_end(pool):
    items: list[object] = list(range(200_000))
    items.append(threading.Lock())
    error = failure(pool.submit(work, items))
    assert_names(error, "args[0][200000]", "_thread.lock", "(work)")


def test_many_bad_calls_fail_alone(pool):
    futures = [
        pool.submit(work, Job()) if i % 3 == 0 else pool.submit(square, i) for i in range(60)
    ]
    for i, future in enumerate(futures):
        if i % 3 == 0:
            assert failure(future).pickle_path == "args[0].session._lock"
        else:
            assert future.result(TIMEOUT) == i * i


def frames_of(error: BaseException) -> list[str]:
    names = []
    tb = error.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


def test_the_error_keeps_no_frame_of_the_dispatcher(pool):
    # The dispatcher's frame holds the worker's start board and the task,
    # whose future holds the error: a cycle keeping a process-shared
    # semaphore alive until the cyclic collector runs.
    error = failure(pool.submit(work, Job()))
    items: list[object] = [1, 2, Job()]
    with pytest.raises(TypeError) as info:
        list(pool.map(work, items))
    lock = threading.Lock()
    with pytest.raises(TypeError) as fn_info:
        list(pool.map(lambda x: lock, range(3)))
    with pytest.raises(TypeError) as chunk_info:
        list(pool.map(work, items, chunksize=2))
    for failed in (error, info.value, fn_info.value, chunk_info.value):
        names = frames_of(failed)
        assert names, "the pickling frames stay"
        assert not {"batch", "_slice_entries", "_run_function"} & set(names), names

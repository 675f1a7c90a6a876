"""Chunked maps: running a chunk of calls in a worker, and yielding its results back.

``map(..., chunksize=k)`` sends ``k`` calls as one task: a partial of one of
:data:`CHUNK_RUNNERS` bound to the user's function, which runs the calls of
its chunk in order and stops at the first failure, returning the results
before it and the failure. :func:`unchunk` turns the chunks' outcomes back
into one iterator of results, the failure raised at its own position.

Concurrency: none of its own; the iterator runs in the consuming thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._progress import Progress

__all__ = ("CHUNK_RUNNERS", "run_chunk", "run_chunk_single", "unchunk")

T = TypeVar("T")


def run_chunk(
    fn: Callable[..., T], chunk: list[tuple[Any, ...]]
) -> tuple[list[T], BaseException | None]:
    """Run ``fn`` over a chunk; stop at the first failure, returning it and the results before."""
    results: list[T] = []
    try:
        # list.extend keeps what the iterator gave before it raised: the
        # results before a failing call survive it, at C speed.
        results.extend(itertools.starmap(fn, chunk))
    except BaseException as exc:
        return results, exc
    return results, None


def run_chunk_single(
    fn: Callable[..., T], chunk: Iterable[Any]
) -> tuple[list[T], BaseException | None]:
    """``run_chunk`` for a map over one iterable: the items travel bare, not as 1-tuples."""
    results: list[T] = []
    try:
        results.extend(map(fn, chunk))
    except BaseException as exc:
        return results, exc
    return results, None


# What runs a chunk of a chunked map (bound to the user's function by a partial).
CHUNK_RUNNERS = (run_chunk, run_chunk_single)


class _ChunkResults(itertools.chain[T]):
    """The iterator of a chunked ``map``: each chunk's results at C speed.

    A generator yielding one result at a time costs a frame resumption per
    result, as much as a tiny call itself; chaining one C iterator per chunk
    does not. ``close()`` closes the generator of chunks, as closing map's
    generator would: the calls not started are cancelled.
    """

    __slots__ = ("_chunks",)
    _chunks: Generator[Iterator[T], None, None]

    def close(self) -> None:
        self._chunks.close()


def unchunk(
    chunks: Iterator[tuple[list[T], BaseException | None]], progress: Progress | None
) -> Iterator[T]:
    source = _chunk_iterators(chunks, progress)
    results: _ChunkResults[T] = _ChunkResults.from_iterable(source)  # type: ignore[assignment]
    results._chunks = source
    return results


def _chunk_iterators(
    chunks: Iterator[tuple[list[T], BaseException | None]], progress: Progress | None
) -> Generator[Iterator[T], None, None]:
    pop, repeat = list.pop, itertools.repeat
    try:
        for results, error in chunks:
            # Pop as we go: a yielded result is not kept alive by its chunk.
            results.reverse()
            yield map(pop, repeat(results, len(results)))
            if error is not None:
                if progress is not None:
                    # Counted before the chunks are closed, which ends the display.
                    progress.saw(error)
                # Cancel what is left before the caller sees the error, as a
                # generator's ``finally`` would, then raise it and stop.
                chunks.close()  # type: ignore[attr-defined]
                yield _raising(error)
                return
    finally:
        chunks.close()  # type: ignore[attr-defined]


def _raising(error: BaseException) -> Iterator[Any]:
    try:
        raise error
    finally:
        del error
    yield  # unreachable: makes this function a generator

"""Starting a worker without running the main module in it.

Under ``forkserver`` and ``spawn``, ``multiprocessing`` has every new process
import the parent's main module first (the script, or the module of
``python -m``), as ``__mp_main__``: it runs the module's top level, its
imports and whatever else is not under ``if __name__ == "__main__":``. A
standard pool needs that, since its calls name the functions of
``__main__`` by reference. shoal's workers do not: the functions and classes
of ``__main__`` travel by value (``_by_value``), and everything else by
reference to its own module, found through the parent's ``sys.path``,
which the worker still gets. So shoal's workers start without it, which
saves each worker the import of the main module and of everything it
imports (tens of milliseconds for a small script, seconds for one that
imports a big library at its top level).

What a user sees: the main module's top level does not run in shoal's
workers. Its side effects (a ``logging.basicConfig()``, a ``warnings``
filter, a global filled at import time and read through ``__main__`` by
another module's function) are not there; a function of ``__main__`` gets
the globals it uses by value, as they were when it was sent. The main
module is still imported when a worker needs it: when the initializer and
its arguments cannot go by shoal's pickle and travel as objects, by
reference (``initializer_objects``), or when the forkserver preloads it
(``set_forkserver_preload``, ``__main__`` by default, for a script run by
path: the forkserver imports it once, and the workers it forks have it).

How: ``multiprocessing`` takes what a child needs of its parent, the main
module included, from ``multiprocessing.spawn.get_preparation_data(name)``
when it starts the process. :func:`without_main` wraps that function once
(the wrapper calls whatever was there before) and, only for the calls made
by the same thread for the process it is starting, under its name, leaves
out the two entries that import the main module. Any other process
started by anyone (the standard pool, the forkserver itself, another
thread) gets them as before.

Concurrency: the name of the process being started is thread-local (each
dispatcher thread starts its own workers); ``_install_lock`` guards the
one-time wrapping. It is innermost: the dispatcher may hold its
``_main_file_lock`` around it, and nothing is called under it but the
wrapping itself.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import multiprocessing.context

__all__ = ("MAIN_KEYS", "preload_in_forkserver", "without_main")

# The entries of the preparation data that make a child import the main module.
MAIN_KEYS = ("init_main_from_path", "init_main_from_name")

_local = threading.local()
_install_lock = threading.Lock()
_installed = False


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        from multiprocessing import spawn

        original = spawn.get_preparation_data

        def get_preparation_data(name: str) -> dict[str, Any]:
            data: dict[str, Any] = original(name)
            if getattr(_local, "starting", None) == name:
                for key in MAIN_KEYS:
                    data.pop(key, None)
            return data

        get_preparation_data.__wrapped__ = original  # type: ignore[attr-defined]
        get_preparation_data.__doc__ = original.__doc__
        spawn.get_preparation_data = get_preparation_data
        _installed = True


@contextlib.contextmanager
def without_main(name: str, skip: bool = True) -> Iterator[None]:
    """While this thread starts the process called ``name``, leave the main module out.

    With ``skip`` false, or under ``fork`` (which copies the parent and
    prepares nothing), this changes nothing.
    """
    if not skip:
        yield
        return
    _install()
    _local.starting = name
    try:
        yield
    finally:
        _local.starting = None


_WORKER_MODULE = "shoal.process._worker"


def preload_in_forkserver(ctx: multiprocessing.context.BaseContext) -> None:
    """Have the forkserver import shoal's worker module once, before it forks any worker.

    Each worker then starts with shoal imported (about 50 ms less here per
    worker): a new pool, a worker replacing one that died, and every
    recycling under ``max_tasks_per_child`` start that much sooner. The
    modules already listed (``__main__`` by default, or the user's choice)
    stay. It has an effect only when the forkserver has not started yet; it
    reads a private attribute, and does nothing if that ever changes.
    """
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    modules = getattr(server, "_preload_modules", None)
    if isinstance(modules, list) and _WORKER_MODULE not in modules:
        server.set_forkserver_preload([*modules, _WORKER_MODULE])  # type: ignore[union-attr]

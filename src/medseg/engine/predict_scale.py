"""Prediction at scale: cases sharded across ``torchrun`` ranks, finished cases skipped, stages overlapped.

* **Sharding.** Under ``torchrun --nproc-per-node N`` every rank lists the same sorted cases and predicts
  case ``i`` when ``i % N`` is its rank (:func:`shard`); each rank writes its own cases, atomically.
* **Skipping.** Outputs are written atomically (:mod:`medseg.fileio`: a hidden temporary, then a rename),
  so a file under its final name is complete. A case whose every output exists is finished and is skipped
  by the next run (:func:`case_is_finished`); a temporary that a killed run left behind never counts. The
  output folder keeps a record of what its predictions came from (:data:`RUN_RECORD`: each checkpoint's
  path, size and modification time, and the prediction settings); a run whose record differs (a retrained
  checkpoint, other settings) predicts every case again instead of keeping stale outputs.
* **Overlap** (``--workers N``, :func:`run_pipelined`): ``N`` threads read and preprocess the next cases,
  the calling thread runs the network, and one writer thread behind a bounded queue maps the scores back,
  postprocesses and writes. Every case goes through the same three functions as the serial path, so the
  files are identical; with ``0`` workers the cases run one after the other in the calling thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically

logger = logging.getLogger(__name__)

__all__ = ["RUN_RECORD", "case_is_finished", "check_workers", "run_pipelined", "run_record", "same_run",
           "shard", "write_run_record"]

RUN_RECORD = ".medseg-predict.json"
"""The file in a prediction folder that records what its predictions came from."""

T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items of process ``rank`` of ``world_size``: item ``i`` goes to rank ``i % world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise MedsegError(f"rank {rank} of {world_size} processes is not a valid place in the job")
    return list(items[rank::world_size])


def case_is_finished(paths: Iterable[Path | None]) -> bool:
    """Whether every output path of a case (``None`` entries: not requested) exists as a file."""
    return all(path is None or path.is_file() for path in paths)


def run_record(checkpoints: Sequence[str | Path], settings: Any) -> dict[str, Any]:
    """What a run's predictions come from: each checkpoint's resolved path, size and modification time
    (a retrained checkpoint differs), and the settings (any JSON-able record; other types as text)."""
    files = []
    for checkpoint in map(Path, checkpoints):
        stat = checkpoint.stat()
        files.append({"path": str(checkpoint.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return json.loads(json.dumps({"checkpoints": files, "settings": settings}, default=str, sort_keys=True))


def same_run(folder: Path, record: dict[str, Any]) -> bool:
    """Whether ``folder``'s :data:`RUN_RECORD` is ``record`` (a missing or unreadable record is not)."""
    try:
        return json.loads((folder / RUN_RECORD).read_text()) == record
    except (OSError, ValueError):
        return False


def write_run_record(folder: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``folder``'s :data:`RUN_RECORD` (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_RECORD
    write_text_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def check_workers(workers: int) -> int:
    """``workers`` if it is a count of threads (0: serial), else a :class:`MedsegError`."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise MedsegError(f"--workers must be an integer >= 0, got {workers!r}")
    return workers


def _serial(items: Sequence[Any], read: Callable[[Any], Any], infer: Callable[[Any], Any],
            finish: Callable[[Any, Any, Any], Path], done: Callable[[], None]) -> list[Path]:
    results = []
    for item in items:
        loaded = read(item)
        results.append(finish(item, loaded, infer(loaded)))
        done()
    return results


def run_pipelined(items: Sequence[T], read: Callable[[T], Any], infer: Callable[[Any], Any],
                  finish: Callable[[T, Any, Any], Path], workers: int,
                  done: Callable[[], None] = lambda: None) -> list[Path]:
    """``finish(item, loaded, infer(loaded))`` with ``loaded = read(item)`` for every item, in order.

    ``workers`` 0: one item after the other. Otherwise ``read`` runs in ``workers`` threads (at most
    ``2 * workers`` items ahead), ``infer`` in the calling thread and ``finish`` in one writer thread fed
    by a queue of ``workers`` entries. The first exception stops the run: items before the failing one are
    finished (as in the serial order), none after it is started by the writer, and the exception is raised.
    ``done`` is called after each finished item (a progress bar). Returns ``finish``'s results in order.
    """
    if workers == 0:
        return _serial(items, read, infer, finish, done)
    results: list[Path | None] = [None] * len(items)
    feed: queue.Queue[tuple[int, Any, Any] | None] = queue.Queue(maxsize=workers)
    failures: list[BaseException] = []

    def write() -> None:
        while (entry := feed.get()) is not None:
            if failures:
                continue  # drain what the calling thread queued before it saw the failure
            index, loaded, scores = entry
            try:
                results[index] = finish(items[index], loaded, scores)
                done()
            except BaseException as exc:  # handed to the calling thread
                failures.append(exc)

    writer = threading.Thread(target=write, name="medseg-predict-writer", daemon=True)
    writer.start()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medseg-predict-read")
    pending: deque[tuple[int, Future[Any]]] = deque()
    upcoming = iter(range(len(items)))
    try:
        for index in upcoming:
            pending.append((index, pool.submit(read, items[index])))
            if len(pending) >= 2 * workers:
                break
        while pending and not failures:
            index, future = pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, pool.submit(read, items[following])))
            loaded = future.result()
            feed.put((index, loaded, infer(loaded)))  # blocks while the writer is `workers` items behind
            del loaded
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        feed.put(None)
        writer.join()
    if failures:
        raise failures[0]
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:  # cannot happen without a failure; a guard against silent gaps
        raise RuntimeError(f"predict pipeline: {len(missing)} cases were not written")
    return [r for r in results if r is not None]

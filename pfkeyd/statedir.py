"""Durable state, the I/O part: the state directory, group commit, compaction.

The format and the replay are :mod:`pfkeyd.state`'s; this module reads and
writes the files.

* :meth:`StateDir.open` makes the directory (mode 0700) if it is missing,
  refuses one that others may enter or that belongs to another user, and takes
  an exclusive lock (``lock``) so that two daemons never share it.
* :meth:`StateDir.load` fills an empty engine: the snapshot, then the journals in
  order.  A journal whose tail is cut short or fails its CRC is cut at the last
  whole record (reported as a warning); journals after a damaged one are renamed
  ``*.damaged`` and not read.  A snapshot that cannot be read stops the start.
* :class:`Durable` is what the server calls.  After each request, tick or control
  command, :meth:`Durable.capture` drains the engine's change log into one journal
  record and returns the sequence number that must be on disk before the effects
  of that step may leave.  The committer task writes everything gathered so far
  with one ``write`` and one ``fdatasync`` in a worker thread
  (``trio.to_thread``), then tells the server, which sends the replies that
  waited: the replies of a burst share one sync (group commit).
* Compaction: when a journal has grown past :data:`COMPACT_MIN` bytes and past
  the last snapshot's size, the committer takes the tables' records (immutable,
  so a list of references is a consistent view), begins the next journal, and a
  background task writes the snapshot in a worker thread (``snapshot.tmp``,
  fsync, rename, fsync of the directory) and then removes the older journals.

Every file is created mode 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from pfkeyd import state
from pfkeyd.knobs import Knobs

__all__ = ["COMPACT_MIN", "Durable", "LoadReport", "StateDir", "StateDirError"]

log = logging.getLogger("pfkeyd.state")

#: A journal is compacted into a snapshot once it is larger than this and than the
#: last snapshot.
COMPACT_MIN = 64 * 1024 * 1024
#: How often changes that no reply waits for are written (seconds).
FLUSH_INTERVAL = 1.0
#: Syncs under way at once.
SYNCS_IN_FLIGHT = 2
#: Zero bytes reserved at a time past a journal's last record.
JOURNAL_RESERVE = 8 * 1024 * 1024
_JOURNAL = re.compile(r"^journal\.(\d+)$")
_FILE_MODE = 0o600


class StateDirError(Exception):
    """The state directory cannot be used; the daemon does not start."""


@dataclass
class LoadReport:
    """What :meth:`StateDir.load` restored and what it found wrong."""

    sas: int = 0
    policies: int = 0
    records: int = 0
    knobs: tuple[tuple[str, int], ...] = ()
    counters: tuple[int, int, int] = (0, 0x4000, 0)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _fsync_dir(fd: int) -> None:
    os.fsync(fd)


class StateDir:
    """One state directory, locked for this process."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._dir_fd = -1
        self._lock_fd = -1
        self.generation = 0  #: the journal being appended to
        self.snapshot_generation = 0
        self.snapshot_size = 0
        self._journal_fd = -1
        self.journal_size = 0  #: where the next record goes
        self._allocated = 0  #: the journal's size, zeros reserved past journal_size included

    # ------------------------------------------------------------ opening

    def open(self) -> None:
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            msg = f"{self.path}: cannot make the state directory: {exc.strerror}"
            raise StateDirError(msg) from exc
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            msg = f"{self.path}: {exc.strerror}"
            raise StateDirError(msg) from exc
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            os.close(fd)
            msg = (
                f"{self.path}: the state directory must belong to this user and be mode 0700 "
                f"(it is {stat.S_IMODE(st.st_mode):04o}, owner {st.st_uid}): keys are stored in it"
            )
            raise StateDirError(msg)
        self._dir_fd = fd
        try:
            self._lock_fd = os.open(
                "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, _FILE_MODE, dir_fd=fd
            )
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            msg = f"{self.path}: in use by another pfkeyd"
            raise StateDirError(msg) from None
        except OSError as exc:
            self.close()
            msg = f"{self.path}: cannot lock the state directory: {exc.strerror}"
            raise StateDirError(msg) from exc

    def close(self) -> None:
        for name in ("_journal_fd", "_lock_fd", "_dir_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def _read(self, name: str) -> bytes:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd)
        with os.fdopen(fd, "rb") as fh:
            return fh.read()

    def _journals(self) -> list[int]:
        gens = []
        for name in os.listdir(self._dir_fd):
            m = _JOURNAL.match(name)
            if m:
                gens.append(int(m[1]))
        return sorted(gens)

    # ------------------------------------------------------------ loading

    def load(self, engine: object, baseline: Knobs, offset: float) -> LoadReport:
        """Fill ``engine`` (empty) from the directory; ``offset`` is wall minus
        monotonic seconds now.  Sets the engine's knobs to ``baseline`` with the
        saved run-time changes, and resumes its allocators."""
        started = time.monotonic()
        # Millions of long-lived objects: the collector would scan them over and
        # over while they are made; once restored they are frozen (never scanned).
        gc.disable()
        try:
            report = self._load(engine, baseline, offset)
        finally:
            gc.enable()
        gc.freeze()
        report.seconds = time.monotonic() - started
        self._open_journal()
        return report

    def _load(self, engine: object, baseline: Knobs, offset: float) -> LoadReport:
        report = LoadReport()
        sad, spd = engine.sad, engine.spd  # type: ignore[attr-defined]
        codec = state.Codec(offset)
        knobs: tuple[tuple[str, int], ...] = ()
        counters = engine.allocators()  # type: ignore[attr-defined]
        try:
            data = self._read("snapshot")
        except FileNotFoundError:
            data = None
        if data is not None:
            what = f"{self.path}/snapshot"
            self.snapshot_generation = state.read_header(data, state.SNAPSHOT_MAGIC, what)
            self.snapshot_size = len(data)
            found = state.scan(data)
            if found.problem:
                msg = f"{what}: {found.problem}; a snapshot is written whole and renamed into place, so this is damage"
                raise state.StateError(msg)
            counters, knobs = state.restore_snapshot(sad, spd, found.payloads, codec, what)
            del data, found
        gens = [g for g in self._journals() if g >= self.snapshot_generation]
        for old in (g for g in self._journals() if g < self.snapshot_generation):
            os.unlink(f"journal.{old}", dir_fd=self._dir_fd)  # a compaction's left-over
        self.generation = self.snapshot_generation
        for i, gen in enumerate(gens):
            name = f"journal.{gen}"
            what = f"{self.path}/{name}"
            data = self._read(name)
            if state.read_header(data, state.JOURNAL_MAGIC, what) != gen:
                msg = f"{what}: its header names another generation"
                raise state.StateError(msg)
            found = state.scan(data)
            for payload in found.payloads:
                counters, changed = state.apply_ops(sad, spd, payload, codec)
                if changed is not None:
                    knobs = changed
            report.records += len(found.payloads)
            self.generation, self.journal_size = gen, found.end
            if found.problem:
                report.problems.append(
                    f"{what}: {found.problem}; cut at byte {found.end}, the end of the last "
                    f"whole record ({len(data[found.end :].rstrip(bytes(1)))} bytes dropped)"
                )
                fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd)
                try:
                    os.ftruncate(fd, found.end)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                for later in gens[i + 1 :]:
                    os.rename(
                        f"journal.{later}", f"journal.{later}.damaged", src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd
                    )
                    report.problems.append(
                        f"{self.path}/journal.{later}: follows a damaged journal; "
                        f"renamed journal.{later}.damaged and not read"
                    )
                break
        engine_knobs, skipped = state.apply_knobs(baseline, knobs)
        report.problems += [f"saved knob change not applied: {s}" for s in skipped]
        engine.knobs = engine_knobs  # type: ignore[attr-defined]
        engine.resume(counters)  # type: ignore[attr-defined]
        report.sas, report.policies, report.knobs, report.counters = len(sad), len(spd), knobs, counters
        return report

    def _open_journal(self) -> None:
        name = f"journal.{self.generation}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd)
            self._allocated = os.fstat(fd).st_size
        except FileNotFoundError:
            fd = self._create(name, state.header(state.JOURNAL_MAGIC, self.generation))
            self.journal_size = state.HEADER.size
        self._journal_fd = fd

    def _create(self, name: str, head: bytes) -> int:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, _FILE_MODE, dir_fd=self._dir_fd
        )
        os.write(fd, head)
        self._allocated = len(head)
        self._reserve(fd, JOURNAL_RESERVE)
        _fsync_dir(self._dir_fd)
        return fd

    def _reserve(self, fd: int, size: int) -> None:
        """Write ``size`` zero bytes at the end of the journal and sync them with
        the new size, so that the records written over them later change no
        metadata."""
        zeros = bytes(min(size, 1 << 20))
        left = size
        while left:
            n = os.pwrite(fd, zeros[:left], self._allocated)
            self._allocated += n
            left -= n
        os.fsync(fd)

    # ------------------------------------------------------------ writing (worker threads)

    @property
    def journal_fd(self) -> int:
        return self._journal_fd

    def has_room(self, size: int) -> bool:
        return self.journal_size + size <= self._allocated

    def make_room(self, size: int) -> None:
        """Reserve more zeros past the end (in a worker thread)."""
        self._reserve(self._journal_fd, max(JOURNAL_RESERVE, size))

    def append(self, data: bytes) -> None:
        """Write records over the reserved zeros (the caller made room and syncs)."""
        view = memoryview(data)
        at = self.journal_size
        while view:
            n = os.pwrite(self._journal_fd, view, at)
            view, at = view[n:], at + n
        self.journal_size = at

    def write(self, data: bytes) -> None:
        """Append and sync."""
        if not self.has_room(len(data)):
            self.make_room(len(data))
        self.append(data)
        os.fdatasync(self._journal_fd)

    def next_journal(self) -> tuple[int, int]:
        """Begin journal N+1 (in a worker thread); returns (old fd, old generation)."""
        gen = self.generation + 1
        fd = self._create(f"journal.{gen}", state.header(state.JOURNAL_MAGIC, gen))
        old = (self._journal_fd, self.generation)
        self._journal_fd, self.generation, self.journal_size = fd, gen, state.HEADER.size
        return old

    def write_snapshot(self, generation: int, records: Iterable[bytes]) -> int:
        """Write the snapshot of ``generation`` and remove the journals before it
        (in a worker thread); returns its size."""
        tmp = "snapshot.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self._dir_fd)
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, _FILE_MODE, dir_fd=self._dir_fd
        )
        size = 0
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20, closefd=False) as fh:
                fh.write(state.header(state.SNAPSHOT_MAGIC, generation))
                size = state.HEADER.size
                for rec in records:
                    fh.write(rec)
                    size += len(rec)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, "snapshot", src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        _fsync_dir(self._dir_fd)
        self.snapshot_generation, self.snapshot_size = generation, size
        for gen in self._journals():
            if gen < generation:
                os.unlink(f"journal.{gen}", dir_fd=self._dir_fd)
        return size


class Durable:
    """Group commit of the engine's changes, for the server (see the module doc).

    ``on_commit`` (set by the server) is called on the event loop with the
    highest sequence number that is on disk.
    """

    def __init__(
        self,
        store: StateDir,
        engine: object,
        *,
        wall_clock: Callable[[], float] = time.time,
        compact_min: int = COMPACT_MIN,
    ) -> None:
        self.store = store
        self.engine = engine
        self._recorder: state.Recorder | None = None
        self._wall = wall_clock
        self._compact_min = compact_min
        self._pending: list[bytes] = []
        self.appended = 0  #: sequence number of the last record captured
        self.committed = 0  #: ... and of the last one on disk
        self._work = trio.lowlevel.ParkingLot()
        self._committed_lot = trio.lowlevel.ParkingLot()
        self.on_commit: Callable[[int], None] | None = None
        self._in_flight = trio.Semaphore(SYNCS_IN_FLIGHT)
        self._compacting = False
        self._compacted_lot = trio.lowlevel.ParkingLot()
        self.commits = 0  #: syncs done (a statistic for tests and benchmarks)
        self.compactions = 0  #: snapshots written

    def offset(self) -> float:
        return self._wall() - trio.current_time()

    def load(self, baseline: Knobs) -> LoadReport:
        """Fill the engine from the directory, then record its changes from here on."""
        report = self.store.load(self.engine, baseline, self.offset())
        self._recorder = state.Recorder(self.engine, baseline)
        return report

    @property
    def recorder(self) -> state.Recorder:
        if self._recorder is None:
            msg = "the durable state records nothing before load()"
            raise RuntimeError(msg)
        return self._recorder

    def capture(self) -> int:
        """Drain the change log into a record; the sequence number the step's
        effects wait for (``committed`` or less: nothing to wait for)."""
        rec = self.recorder.drain(self.offset())
        if rec is not None:
            self._pending.append(rec)
            self.appended += 1
            self._work.unpark_all()
        return self.appended

    def rebase(self, baseline: Knobs) -> None:
        self.recorder.rebase(baseline)

    async def wait_compacted(self, count: int) -> None:
        """Until ``count`` snapshots have been written."""
        while self.compactions < count:
            await self._compacted_lot.park()

    async def wait(self, seq: int) -> None:
        """Until record ``seq`` is on disk."""
        while self.committed < seq:
            await self._committed_lot.park()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The committer: write and sync what was captured, until cancelled; then
        the rest, shielded."""
        task_status.started()
        async with trio.open_nursery() as syncs:
            try:
                while True:
                    while not self._pending:
                        with trio.move_on_after(FLUSH_INTERVAL):
                            await self._work.park()
                        # Changes with nothing to send (the usage the data plane
                        # reports) wait for no step: take them now and then, so
                        # that the change log stays short.
                        self.capture()
                    # Let the readers handle what has already arrived, so that one
                    # sync covers the whole burst: commit once a round of the
                    # other tasks captured nothing more.
                    seen = -1
                    while seen != self.appended:
                        seen = self.appended
                        await trio.lowlevel.checkpoint()
                    await self._commit(syncs)
                    if (
                        not self._compacting
                        and self.store.journal_size > self._compact_min
                        and self.store.journal_size > self.store.snapshot_size
                    ):
                        await self._begin_compaction(syncs)
            finally:
                with trio.CancelScope(shield=True):
                    if self._pending:
                        await self._commit(syncs)
                    await self._quiesce()
                log.info("state: %d records written with %d syncs", self.committed, self.commits)

    async def _commit(self, syncs: trio.Nursery) -> None:
        """Write what was captured (on the event loop: into the page cache, over
        reserved zeros) and start its sync in a worker thread.  Two syncs may be
        under way at once: records captured while one runs need not wait for it
        to end before theirs begins."""
        await self._in_flight.acquire()
        data = b"".join(self._pending)
        seq = self.appended
        self._pending.clear()
        if not self.store.has_room(len(data)):
            await trio.to_thread.run_sync(self.store.make_room, len(data))
        self.store.append(data)
        syncs.start_soon(self._sync, self.store.journal_fd, seq)

    async def _sync(self, fd: int, seq: int) -> None:
        try:
            # fdatasync makes durable every byte written to the file before it
            # began, so the records up to seq are on disk when it returns.
            await trio.to_thread.run_sync(os.fdatasync, fd)
        finally:
            self._in_flight.release()
        self.commits += 1
        if seq > self.committed:
            self.committed = seq
            self._committed_lot.unpark_all()
            if self.on_commit is not None:
                self.on_commit(seq)

    async def _quiesce(self) -> None:
        """Until no sync is under way."""
        for _ in range(SYNCS_IN_FLIGHT):
            await self._in_flight.acquire()
        for _ in range(SYNCS_IN_FLIGHT):
            self._in_flight.release()

    async def _begin_compaction(self, nursery: trio.Nursery) -> None:
        # The view and the switch of journal belong together: whatever is captured
        # after the view goes to the new journal (a record captured before it and
        # written after it is replayed again over the snapshot, which changes
        # nothing: its operations are stores and removals by key).
        self.capture()
        sas, policies = state.table_order(self.engine.sad, self.engine.spd)  # type: ignore[attr-defined]
        counters = self.recorder.counters()
        knobs = self.recorder.overrides
        offset = self.offset()
        await self._quiesce()  # no sync of the old journal's descriptor under way
        old_fd, _ = await trio.to_thread.run_sync(self.store.next_journal)
        os.close(old_fd)
        self._compacting = True
        generation = self.store.generation
        records = state.snapshot_records(sas, policies, counters, knobs, offset)
        nursery.start_soon(self._write_snapshot, generation, records, len(sas), len(policies))

    async def _write_snapshot(self, generation: int, records: Iterable[bytes], nsa: int, nsp: int) -> None:
        try:
            started = trio.current_time()
            size = await trio.to_thread.run_sync(self.store.write_snapshot, generation, records)
            log.info(
                "state compacted: snapshot of %d SAs and %d policies, %d bytes, in %.1f s",
                nsa,
                nsp,
                size,
                trio.current_time() - started,
            )
            self.compactions += 1
        finally:
            self._compacting = False
            self._compacted_lot.unpark_all()

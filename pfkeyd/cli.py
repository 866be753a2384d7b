"""The pfkeyd command line.

    pfkeyd [-dh] [--syslog] [-f file] [-s path[:dialect]] [-l path:dialect ...]
           [--group group] [--allow-uid uid ...] [--dataplane[=ifname]]
           [--no-routes] [--no-firewall] [--no-compiled] [--enc] [--pcap file]
           [--mtu bytes] [--state-dir dir] [--metrics [host:]port]
        Run the daemon in the foreground until SIGTERM or SIGINT; SIGHUP re-reads
        the -f file.  With --dataplane it also protects the host's traffic
        (pfkeyd.dataplane).
    pfkeyd sysctl [-s path] [-adn] [name[=value] ...]
    pfkeyd stats [-s path] [--json | --prometheus]
    pfkeyd lookup [-s path] dir src dst [proto [sport dport]]
    pfkeyd dialect [-s path]
        Ask the running daemon through its control socket (see pfkeyd.control).
    pfkeyd exec [--socket path] -- command [arg ...]
    pfkeyd preload-path
        Run a program under the PF_KEY bridge; print the bridge's path.
    pfkeyd decode [-d dialect] [-k] file ...
        Decode PF_KEY messages (hex text or raw bytes) and print them field by field.

The daemon logs to stderr (or syslog) and prints nothing on stdout.  Exit status: 0
after an orderly stop, 1 when it cannot start (socket in use, bad configuration
file), 64 for usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import grp
import json
import logging
import logging.handlers
import os
import pwd
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

from pfkeyd import systemd
from pfkeyd.defaults import SOCKET_ENV, connect_failure, control_path, default_socket_path, native_dialect
from pfkeyd.effects import Effect, Instant
from pfkeyd.errors import DecodeError
from pfkeyd.knobs import KnobError, Knobs
from pfkeyd.wire import Dialect, decode
from pfkeyd.wire.describe import describe
from pfkeyd.wire.framing import split_messages

if TYPE_CHECKING:
    import trio

    from pfkeyd.daemon import Daemon
    from pfkeyd.engine import KeyEngine
    from pfkeyd.server import Endpoint, Server
    from pfkeyd.statedir import Durable

__all__ = ["main"]

EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66


def _decode_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pfkeyd decode",
        description="Decode PF_KEY v2 messages and print them field by field.",
    )
    parser.add_argument("-d", "--dialect", choices=[d.value for d in Dialect], default="linux")
    parser.add_argument("-k", "--show-keys", action="store_true", help="print key material")
    parser.add_argument("files", nargs="+", metavar="file")
    args = parser.parse_args(argv)
    status = 0
    for name in args.files:
        try:
            with open(name, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            print(f"pfkeyd: {name}: {exc.strerror}", file=sys.stderr)
            return EX_NOINPUT
        for i, message in enumerate(split_messages(raw)):
            try:
                msg = decode(message, args.dialect, request=False)
            except DecodeError as exc:
                print(f"pfkeyd: {name}: message {i + 1}: {exc}", file=sys.stderr)
                status = EX_DATAERR
                continue
            print(f"# {name}: message {i + 1}, {len(message)} bytes, {args.dialect} dialect")
            print(describe(msg, show_keys=args.show_keys))
    return status


# ------------------------------------------------------------------------ daemon

#: The SYNOPSIS of pfkeyd/man/pfkeyd.8, word for word (tests/test_manpages.py checks it).
USAGE = """\
usage: pfkeyd [-dh] [--syslog] [-f file] [-s path[:dialect]] [-l path:dialect ...]
              [--group group] [--allow-uid uid ...] [--dataplane[=ifname]]
              [--no-routes] [--no-firewall] [--no-compiled] [--enc] [--pcap file]
              [--mtu bytes] [--state-dir dir] [--metrics [host:]port]
       pfkeyd sysctl [-s path] [-adn] [name[=value] ...]
       pfkeyd stats [-s path] [--json | --prometheus]
       pfkeyd lookup [-s path] dir src dst [proto [sport dport]]
       pfkeyd dialect [-s path]
       pfkeyd exec [--socket path] -- command [arg ...]
       pfkeyd preload-path
       pfkeyd decode [-d dialect] [-k] file ...
"""

log = logging.getLogger("pfkeyd")


class _UsageError(Exception):
    pass


class _StartError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _daemon_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pfkeyd",
        usage=USAGE.removeprefix("usage: ").rstrip("\n"),
        add_help=False,
        description="Run the PF_KEY v2 key engine daemon in the foreground.",
    )
    p.add_argument("-h", "--help", action="store_true", help="print this help and exit")
    p.add_argument("-d", "--debug", action="store_true", help="log every message (never key material)")
    p.add_argument("--syslog", action="store_true", help="log to syslog (facility daemon), not stderr")
    p.add_argument("-f", "--config", metavar="file", help="set knobs from name=value lines at start")
    p.add_argument(
        "-s",
        "--socket",
        metavar="path[:dialect]",
        help="the main socket (default /run/pfkeyd.sock for root, else "
        "$XDG_RUNTIME_DIR/pfkeyd.sock; dialect of the host)",
    )
    p.add_argument(
        "-l",
        "--listen",
        metavar="path:dialect",
        action="append",
        default=[],
        help="one more socket, speaking freebsd or linux",
    )
    p.add_argument("--group", metavar="group", help="make the sockets mode 0660 and owned by this group")
    p.add_argument(
        "--allow-uid",
        metavar="uid",
        action="append",
        default=[],
        help="admit this user as well as root and the daemon's own",
    )
    p.add_argument(
        "--dataplane",
        metavar="ifname",
        nargs="?",
        const="ipsec0",
        default=None,
        help="protect real traffic through a TUN interface (default ipsec0)",
    )
    p.add_argument(
        "--no-routes", action="store_true", help="with --dataplane: leave the routes into the TUN to the user"
    )
    p.add_argument(
        "--no-firewall",
        action="store_true",
        help="with --dataplane: leave cleartext under inbound require policies to the user's firewall",
    )
    p.add_argument(
        "--no-compiled",
        action="store_true",
        help="with --dataplane: move every packet in Python, never in the compiled loop",
    )
    p.add_argument("--enc", action="store_true", help="with --dataplane: show plaintext on an enc0 interface")
    p.add_argument("--pcap", metavar="file", help="with --dataplane: write the enc0 packets to a pcap file")
    p.add_argument("--mtu", metavar="bytes", type=int, default=1400, help="with --dataplane: the TUN's MTU")
    p.add_argument(
        "--state-dir",
        metavar="dir",
        help="keep the SAD, the SPD and run-time knob changes in this directory (keys included) "
        "so that they survive a restart or a crash; off by default",
    )
    p.add_argument(
        "--metrics",
        metavar="[host:]port",
        help="serve the counters for Prometheus at http://host:port/metrics (host 127.0.0.1 "
        "if left out); off by default",
    )
    return p


def _split_endpoint(text: str, *, dialect_required: bool) -> tuple[str, Dialect]:
    """``path:dialect``, or (where the dialect may be left out) ``path``.

    Whatever follows the last colon names a dialect unless it holds a slash (then
    the colon is part of a directory name): ``x.sock:openbsd`` or ``x.sock:Linux``
    is an error, not a socket of that name.  A file name that itself holds a colon
    needs its dialect spelled out (``a:b.sock:linux``).
    """
    path, sep, name = text.rpartition(":")
    if sep and name in {d.value for d in Dialect}:
        dialect = Dialect(name)
    elif dialect_required or (sep and "/" not in name):
        msg = f"'{text}': expected path:dialect, the dialect being freebsd or linux"
        if sep and "/" not in name:
            msg = f"'{text}': unknown dialect '{name}' (freebsd or linux)"
        raise _UsageError(msg)
    else:
        path, dialect = text, native_dialect()
    if not path:
        msg = f"'{text}': empty socket path"
        raise _UsageError(msg)
    return path, dialect


def _gid(name: str) -> int:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        msg = f"unknown group '{name}'"
        raise _UsageError(msg) from None


def _uid(name: str) -> int:
    try:
        return int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid
    except KeyError:
        msg = f"unknown user '{name}'"
        raise _UsageError(msg) from None


def load_config(path: str, knobs: Knobs) -> Knobs:
    """Knob settings from a file of ``name=value`` lines; ``#`` starts a comment.

    Raises :class:`ValueError` naming ``file:line`` for the first bad line.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{path}: {getattr(exc, 'strerror', None) or exc}"
        raise ValueError(msg) from None
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip() or not value.strip():
            msg = f"{path}:{number}: expected name=value, not '{line}'"
            raise ValueError(msg)
        try:
            knobs = knobs.set(name.strip(), value.strip())
        except KnobError as exc:
            msg = f"{path}:{number}: {exc}"
            raise ValueError(msg) from None
    return knobs


def _setup_logging(use_syslog: bool, debug: bool) -> logging.Handler:
    handler: logging.Handler
    if use_syslog:
        try:
            handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
        except OSError as exc:
            msg = f"syslog: {exc.strerror or exc}"
            raise _StartError(msg) from None
        handler.setFormatter(logging.Formatter("pfkeyd[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s pfkeyd: %(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    return handler


def _daemon_command(argv: Sequence[str]) -> int:
    parser = _daemon_parser()
    try:
        opts = parser.parse_args(argv)
        if opts.help:
            parser.print_help()
            return 0
        try:
            # Sockets passed in by systemd stand in for the default socket.
            passed = systemd.take_listen_fds(os.environ)
        except systemd.ActivationError as exc:
            print(f"pfkeyd: socket activation: {exc}", file=sys.stderr)
            return 1
        sockets = list(passed)
        if opts.socket is not None:
            sockets.insert(0, systemd.Planned(*_split_endpoint(opts.socket, dialect_required=False)))
        elif not passed:
            path = default_socket_path()
            if path is None:
                msg = "no socket path: give -s path, set XDG_RUNTIME_DIR or run as root"
                raise _UsageError(msg)
            sockets.insert(0, systemd.Planned(path, native_dialect()))
        sockets += [systemd.Planned(*_split_endpoint(t, dialect_required=True)) for t in opts.listen]
        paths = [s.path for s in sockets]
        if len(set(paths)) != len(paths):
            msg = "the same socket path is given twice"
            raise _UsageError(msg)
        group = _gid(opts.group) if opts.group is not None else None
        allow = frozenset(_uid(u) for u in opts.allow_uid)
        dataplane = _dataplane_options(opts)
        metrics_at = None
        if opts.metrics is not None:
            from pfkeyd.metrics_http import parse_address

            try:
                metrics_at = parse_address(opts.metrics)
            except ValueError as exc:
                raise _UsageError(f"--metrics {exc}") from None
    except _UsageError as exc:
        sys.stderr.write(USAGE)
        print(f"pfkeyd: {exc}", file=sys.stderr)
        return EX_USAGE

    knobs = Knobs()
    if opts.config is not None:
        try:
            knobs = load_config(opts.config, knobs)
        except ValueError as exc:
            print(f"pfkeyd: {exc}", file=sys.stderr)
            return 1
    try:
        handler = _setup_logging(opts.syslog, opts.debug)
    except _StartError as exc:
        print(f"pfkeyd: {exc}", file=sys.stderr)
        return 1
    try:
        return _run_daemon(
            sockets,
            knobs,
            group,
            allow,
            opts.config,
            dataplane,
            metrics_at,
            systemd.Notifier.from_environment(os.environ),
            opts.state_dir,
        )
    finally:
        log.removeHandler(handler)
        handler.close()


def _tune_gc() -> None:
    """The SAD and SPD are millions of long-lived, acyclic objects; Python's default
    collector thresholds would scan them over and over while messages arrive.
    Young collections become rare and full ones rarer still; what exists at start
    is never scanned again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 1000)


#: Allocations between two young-generation collections (Python's default: 700).
GC_YOUNG_THRESHOLD = 100_000


def _dataplane_options(opts: argparse.Namespace) -> Any:
    if opts.dataplane is None:
        if opts.no_routes or opts.no_firewall or opts.no_compiled or opts.enc or opts.pcap is not None:
            msg = "--no-routes, --no-firewall, --no-compiled, --enc and --pcap need --dataplane"
            raise _UsageError(msg)
        return None
    from pfkeyd.dataplane.daemon import DataplaneOptions
    from pfkeyd.dataplane.tun import check_ifname

    try:
        check_ifname(opts.dataplane)
        return DataplaneOptions(
            ifname=opts.dataplane,
            manage_routes=not opts.no_routes,
            firewall=not opts.no_firewall,
            compiled=not opts.no_compiled,
            enc=opts.enc,
            pcap=opts.pcap,
            mtu=opts.mtu,
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def knob_changes(old: Knobs, new: Knobs) -> list[str]:
    """``name old -> new`` for every knob whose value differs (shared nodes once)."""
    changes: list[str] = []
    seen: set[str] = set()
    for (spec, before), (_, after) in zip(old.items(), new.items(), strict=True):
        if before != after and spec.attr not in seen:
            seen.add(spec.attr)
            changes.append(f"{spec.name} {before} -> {after}")
    return changes


def reload_config(path: str | None, current: Knobs) -> Knobs:
    """SIGHUP: the knobs after re-reading ``path`` (the -f file) over ``current``.

    As FreeBSD's ``service sysctl reload`` applies sysctl.conf, every line of the
    file is set again and knobs the file does not name keep their current values
    (changes made with ``pfkeyd sysctl`` included).  A bad file changes nothing.
    Logs what changed, or why nothing did.
    """
    if path is None:
        log.info("SIGHUP received; no configuration file (-f) to re-read")
        return current
    try:
        knobs = load_config(path, current)
    except ValueError as exc:
        log.error("SIGHUP received; %s; no knob changed", exc)
        return current
    changes = knob_changes(current, knobs)
    log.info("SIGHUP received; re-read %s: %s", path, ", ".join(changes) if changes else "no knob changed")
    return knobs


def _open_durable(state_dir: str | None, engine: Any) -> tuple[bool, Any]:
    """(True, the durable state) for --state-dir, (True, None) without it, (False, None)
    if the directory cannot be used (said in the log)."""
    if state_dir is None:
        return True, None
    from pfkeyd.statedir import Durable, StateDir, StateDirError

    store = StateDir(state_dir)
    try:
        store.open()
    except StateDirError as exc:
        log.error("%s", exc)
        return False, None
    return True, Durable(store, engine)


async def _with_committer(durable: Any, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` with the durable state's committer beside it (if any); the committer
    writes what is left before it stops."""
    import trio

    async with trio.open_nursery() as keeper:
        committer = trio.CancelScope()
        if durable is not None:

            async def commit(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with committer:
                    await durable.run(task_status=task_status)

            await keeper.start(commit)
        await body()
        committer.cancel()


async def _start_server(nursery: Any, server: Any, failure: list[str]) -> bool:
    """Start the PF_KEY server; False (and the reason in ``failure``) if it cannot listen."""
    from pfkeyd.server import ServerError

    try:
        await nursery.start(server.serve)
    except ServerError as exc:
        failure.append(str(exc))
        return False
    return True


async def _start_metrics(
    nursery: Any,
    in_extras: Callable[..., Awaitable[None]],
    where: tuple[str, int],
    render: Callable[[], bytes],
    failure: list[str],
) -> bool:
    """Start the --metrics listener beside the server; False (and the reason in ``failure``)
    if it cannot listen."""
    from pfkeyd.metrics_http import serve_metrics

    try:
        await nursery.start(in_extras, partial(serve_metrics, *where, render))
    except OSError as exc:
        failure.append(f"--metrics {where[0]}:{where[1]}: {exc.strerror or exc}")
        return False
    return True


async def _until_stopped(
    signals: AsyncIterator[int], reload: Callable[[], object], notifier: systemd.Notifier, status: str
) -> None:
    """Wait for SIGTERM or SIGINT; a SIGHUP meanwhile re-reads the configuration."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            reload()
            notifier.notify(READY=1, STATUS=status)
            continue
        log.info("%s received, stopping", signal.Signals(signum).name)
        notifier.notify(STOPPING=1, STATUS=f"stopping ({signal.Signals(signum).name})")
        return


def _run_daemon(
    sockets: Sequence[systemd.Planned],
    knobs: Knobs,
    group: int | None,
    allow: frozenset[int],
    config: str | None = None,
    dataplane_options: Any = None,
    metrics_at: tuple[str, int] | None = None,
    notifier: systemd.Notifier | None = None,
    state_dir: str | None = None,
) -> int:
    import trio

    from pfkeyd import control, metrics
    from pfkeyd.daemon import Daemon
    from pfkeyd.engine import KeyEngine
    from pfkeyd.server import Endpoint, Server

    endpoints = [Endpoint(s.path, s.dialect, s.fd, s.control_fd) for s in sockets]
    notifier = notifier or systemd.Notifier(None)
    engine = KeyEngine(knobs)
    daemon = Daemon(engine)
    plane: Any = None

    def control_hook(argv: Sequence[str], now: Instant, dialect: Dialect) -> tuple[int, str, str, Sequence[Effect]]:
        outcome = control.run(engine, argv, now, dialect, dataplane=plane)
        return outcome.status, outcome.out, outcome.err, outcome.effects

    opened, durable = _open_durable(state_dir, engine)
    if not opened:
        return 1
    server = Server(daemon, endpoints, group=group, allow_uids=allow, control=control_hook, durable=durable)
    failure: list[str] = []
    restored = ""

    extras = trio.CancelScope()  # the tasks beside the server, ended with it

    async def in_extras(
        fn: Callable[..., Awaitable[object]], *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with extras:
            await fn(task_status=task_status)

    async def run() -> None:
        nonlocal restored
        if durable is not None:
            loaded = _load_state(durable, knobs, failure)
            if loaded is None:
                return
            restored = loaded
        await _with_committer(durable, serve)

    def render_metrics() -> bytes:
        return metrics.render(engine.statistics(), plane.statistics() if plane is not None else None)

    async def serve() -> None:
        nonlocal plane
        # Listen for signals before the sockets exist, so that none is missed.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as outer:
                if dataplane_options is not None:
                    plane = await _start_dataplane(outer, dataplane_options, engine, server, sockets, allow, failure)
                    if plane is None:
                        return
                async with trio.open_nursery() as nursery:
                    if not await _start_server(nursery, server, failure):
                        outer.cancel_scope.cancel()
                        return
                    if metrics_at is not None and not await _start_metrics(
                        nursery, in_extras, metrics_at, render_metrics, failure
                    ):
                        server.stop()
                        outer.cancel_scope.cancel()
                        return
                    status = _status(endpoints, metrics_at) + restored
                    notifier.notify(READY=1, STATUS=status)
                    await _until_stopped(
                        signals, lambda: _reload(config, durable, server, daemon, notifier), notifier, status
                    )
                    extras.cancel()
                    server.stop()
                # The server has shut down: the data plane removes its routes,
                # rules and interfaces as it is cancelled.
                outer.cancel_scope.cancel()
        log.info("stopped")

    _tune_gc()
    try:
        trio.run(run)
    finally:
        if durable is not None:
            durable.store.close()
    if failure:
        log.error("%s", failure[0])
        return 1
    return 0


async def _start_dataplane(
    nursery: trio.Nursery,
    options: Any,
    engine: KeyEngine,
    server: Server,
    sockets: Sequence[systemd.Planned],
    allow: frozenset[int],
    failure: list[str],
) -> Any:
    """Open the data plane and start it and its socket-policy listeners in ``nursery``:
    the plane, or None (the failure noted) when it cannot be opened."""
    from pfkeyd.dataplane.daemon import open_dataplane
    from pfkeyd.dataplane.seam import EngineSeam
    from pfkeyd.dataplane.sockpol import sockpol_path

    try:
        plane, listeners = open_dataplane(
            options, EngineSeam(engine, server.emit), [sockpol_path(s.path) for s in sockets], tuple(allow)
        )
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0)
        failure.append(f"data plane: {exc.strerror or exc}" + (f" ({code})" if code else ""))
        return None
    import trio

    from pfkeyd.dataplane.pump import PacketThreadError

    async def run_plane(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await plane.run(task_status=task_status)
        except PacketThreadError as exc:
            # The packet loop itself failed: end the daemon with the error (exit 1),
            # as a start failure does, rather than run on carrying nothing.
            failure.append(f"data plane: {exc}")
            nursery.cancel_scope.cancel()

    await nursery.start(run_plane)
    for listener in listeners:
        nursery.start_soon(listener.serve)
    log.info("data plane on %s", options.ifname)
    return plane


def _load_state(durable: Durable, knobs: Knobs, failure: list[str]) -> str | None:
    """Restore the SAs and policies of the state directory: the STATUS= suffix that
    says so, or None (the failure noted) when the directory cannot be read."""
    from pfkeyd.state import StateError

    try:
        report = durable.load(knobs)
    except (StateError, OSError) as exc:
        failure.append(f"state directory: {exc}")
        return None
    for problem in report.problems:
        log.warning("state: %s", problem)
    log.info(
        "state: restored %d SAs and %d policies from %s (%d journal records) in %.1f s%s",
        report.sas,
        report.policies,
        durable.store.path,
        report.records,
        report.seconds,
        f"; run-time knobs: {', '.join(f'{n}={v}' for n, v in report.knobs)}" if report.knobs else "",
    )
    return f"; restored {report.sas} SAs and {report.policies} policies"


def _reload(
    config: str | None, durable: Durable | None, server: Server, daemon: Daemon, notifier: systemd.Notifier
) -> None:
    """SIGHUP: the configuration file read again (the durable state rebased on it)."""
    notifier.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
    if durable is not None and config is not None:
        with contextlib.suppress(ValueError):  # reload_config reports it
            durable.rebase(load_config(config, Knobs()))
    server.set_knobs(reload_config(config, daemon.knobs))


def _status(endpoints: Sequence[Endpoint], metrics_at: tuple[str, int] | None) -> str:
    """The STATUS= line of a daemon that serves."""
    where = ", ".join(f"{e.path} ({e.dialect.value})" for e in endpoints)
    return f"serving on {where}" + (f"; metrics on {metrics_at[0]}:{metrics_at[1]}" if metrics_at else "")


def _control_target(argv: list[str]) -> tuple[str, str, str, list[str]]:
    """(control socket, PF_KEY socket, where its path came from, the other arguments)."""
    path = os.environ.get(SOCKET_ENV)
    origin = SOCKET_ENV
    if not path:
        path, origin = default_socket_path(), "the default"
    if argv[:1] in (["-s"], ["--socket"]):
        if len(argv) < 2:
            msg = f"option {argv[0]} needs a path"
            raise _UsageError(msg)
        path, origin = argv[1], argv[0]
        argv = argv[2:]
    if not path:
        msg = "no socket path: give -s path or set PFKEY_SOCKET"
        raise _UsageError(msg)
    return control_path(path), path, origin, argv


def _remote(command: str) -> Callable[[Sequence[str]], int]:
    """A command run by the daemon through its control socket."""

    def run(argv: Sequence[str]) -> int:
        try:
            path, pfkey_path, origin, rest = _control_target(list(argv))
        except _UsageError as exc:
            print(f"pfkeyd {command}: {exc}", file=sys.stderr)
            return EX_USAGE
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.settimeout(15)
                sock.connect(path)
                try:
                    sock.send(json.dumps({"argv": [command, *rest]}).encode())
                    data = sock.recv(4 * 1024 * 1024)
                except (BrokenPipeError, ConnectionResetError):
                    data = b""
            if not data:
                # The daemon closes a peer whose credentials it refuses without a word.
                print(
                    f"pfkeyd {command}: {path}: the daemon closed the connection without an answer "
                    "(is this user allowed to use it?)",
                    file=sys.stderr,
                )
                return 1
            answer = json.loads(data)
        except OSError as exc:
            text = connect_failure(path, exc, option="-s", origin=origin, pfkey_path=pfkey_path)
            print(f"pfkeyd {command}: {text}", file=sys.stderr)
            return 1
        except ValueError:
            print(f"pfkeyd {command}: {path}: no answer from the daemon", file=sys.stderr)
            return 1
        sys.stdout.write(answer.get("out", ""))
        sys.stderr.write(answer.get("err", ""))
        return int(answer.get("status", 1))

    return run


def _preload_path_command(argv: Sequence[str]) -> int:
    from pfkeyd.preload import PreloadError, library_path

    if argv:
        print("usage: pfkeyd preload-path", file=sys.stderr)
        return EX_USAGE
    try:
        print(library_path())
    except PreloadError as exc:
        print(f"pfkeyd: {exc}", file=sys.stderr)
        return 1
    return 0


def _exec_command(argv: Sequence[str]) -> int:
    from pfkeyd.preload import PreloadError, exec_under_bridge

    args = list(argv)
    socket_path: str | None = None
    if len(args) >= 2 and args[0] == "--socket":
        socket_path = args[1]
        args = args[2:]
    if not args or args[0] != "--" or len(args) < 2:
        print("usage: pfkeyd exec [--socket path] -- command [arg ...]", file=sys.stderr)
        return EX_USAGE
    try:
        exec_under_bridge(args[1:], socket_path)
    except PreloadError as exc:
        print(f"pfkeyd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pfkeyd exec: {args[1]}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached: exec replaced the process


_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "decode": _decode_command,
    "sysctl": _remote("sysctl"),
    "stats": _remote("stats"),
    "lookup": _remote("lookup"),
    "dialect": _remote("dialect"),
    "exec": _exec_command,
    "preload-path": _preload_path_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _COMMANDS:
        return _COMMANDS[args[0]](args[1:])
    return _daemon_command(args)

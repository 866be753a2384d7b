"""The counters of ``pfkeyd stats`` in the Prometheus text exposition format.

Pure: :func:`render` turns one :class:`~pfkeyd.stats.Statistics` snapshot into the
bytes of the format (version 0.0.4), written by the official client library,
``prometheus_client``: a collector of our own yields the metric families and
``generate_latest`` writes them.  The library's own metric objects (global,
lock-guarded, meant to be incremented in place) are not used: the engine already
counts, and one snapshot per scrape is all there is to say.  :func:`http_answer`
is the pure half of the optional HTTP listener (:mod:`pfkeyd.metrics_http`).

The metrics, every one a counter since the daemon started except the three
gauges:

=====================================  ========================================
``pfkeyd_messages_received_total``     PF_KEY messages received, label ``type``
``pfkeyd_messages_sent_total``         PF_KEY messages sent, label ``type``
                                       (one per copy: a broadcast to three
                                       sockets counts three; ``type="ACQUIRE"``
                                       and ``type="EXPIRE"`` are the ACQUIREs
                                       and expirations)
``pfkeyd_errors_total``                error replies, label ``errno`` (its name)
``pfkeyd_drops_total``                 drops, label ``reason``
``pfkeyd_packets_total``               the packet path, labels ``proto`` (esp,
                                       ah, ipcomp, natt) and ``counter`` (the
                                       netstat name)
``pfkeyd_clients``                     connected PF_KEY clients (gauge)
``pfkeyd_sas``                         SAs in the SAD (gauge)
``pfkeyd_policies``                    policies in the SPD (gauge)
=====================================  ========================================

With the data plane on, its counters follow (``pfkeyd_dataplane_events_total``,
``pfkeyd_dataplane_io_total``, ``pfkeyd_dataplane_held_flows``) and the bytes and
packets of each SA it carries traffic on (``pfkeyd_dataplane_sa_bytes_total``,
``..._sa_packets_total``, labels spi, proto, mode, src, dst).  The SAD itself has
no per-SA metric: a SAD of a million SAs would make a scrape of a million series
whose labels (SPIs) change at every rekey; ``setkey -D`` shows each SA's counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from pfkeyd.stats import Statistics

__all__ = ["CONTENT_TYPE", "METRICS_PATH", "http_answer", "render"]

#: What a scrape's response says it is.
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The one path the HTTP listener serves.
METRICS_PATH = "/metrics"


def _counter(name: str, doc: str, label: str, table: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in table.items():
        family.add_metric([key], value)
    return family


class _Snapshot(Collector):
    """Yields the metric families of one snapshot."""

    def __init__(self, st: Statistics, dataplane: Mapping[str, Any] | None = None) -> None:
        self._st = st
        self._dataplane = dataplane

    def collect(self) -> Iterator[Metric]:
        st = self._st
        yield _counter("pfkeyd_messages_received", "PF_KEY messages received, by type.", "type", st.messages_in)
        yield _counter(
            "pfkeyd_messages_sent", "PF_KEY messages sent (each copy of a broadcast), by type.", "type", st.messages_out
        )
        yield _counter("pfkeyd_errors", "PF_KEY error replies, by errno.", "errno", st.errors)
        yield _counter("pfkeyd_drops", "Messages dropped or refused, by reason.", "reason", st.drops)
        packets = CounterMetricFamily(
            "pfkeyd_packets",
            "The packet path's counters, by protocol and name (netstat -s -p esp's).",
            labels=["proto", "counter"],
        )
        for key, value in st.packets.items():
            proto, _, name = key.partition(".")
            packets.add_metric([proto, name], value)
        yield packets
        yield GaugeMetricFamily("pfkeyd_clients", "Connected PF_KEY clients.", value=st.clients)
        yield GaugeMetricFamily("pfkeyd_sas", "Security associations in the SAD.", value=st.sas)
        yield GaugeMetricFamily("pfkeyd_policies", "Security policies in the SPD.", value=st.policies)
        dp = self._dataplane
        if dp is not None:
            yield _counter(
                "pfkeyd_dataplane_events", "The data plane's own counters, by name.", "counter", dp.get("counters", {})
            )
            yield _counter(
                "pfkeyd_dataplane_io",
                "The data plane's I/O counters, by socket and errno.",
                "counter",
                dp.get("io", {}),
            )
            yield GaugeMetricFamily(
                "pfkeyd_dataplane_held_flows", "Flows held back until an SA exists.", value=dp.get("held_flows", 0)
            )
            labels = ["spi", "proto", "mode", "src", "dst"]
            nbytes = CounterMetricFamily("pfkeyd_dataplane_sa_bytes", "Bytes an SA in use carried.", labels=labels)
            packets = CounterMetricFamily("pfkeyd_dataplane_sa_packets", "Packets an SA in use carried.", labels=labels)
            for sa in dp.get("sas", ()):
                values = [f"{sa['spi']:#010x}", sa["proto"], sa["mode"], sa["src"], sa["dst"]]
                nbytes.add_metric(values, sa["bytes"])
                packets.add_metric(values, sa["packets"])
            yield nbytes
            yield packets


def render(st: Statistics, dataplane: Mapping[str, Any] | None = None) -> bytes:
    """The exposition text (UTF-8) of one snapshot, and of the data plane's
    statistics (``Plane.statistics()``) when the daemon runs one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(st, dataplane))
    return generate_latest(registry)


def _response(
    status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", extra: str = "", *, head: bool = False
) -> bytes:
    headers = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return headers.encode("ascii") + (b"" if head else body)


def http_answer(head: bytes, body: Callable[[], bytes]) -> bytes:
    """The whole HTTP/1.1 response to a request whose head (request line and
    headers, up to the blank line) is ``head``; ``body`` renders the metrics and is
    called only for ``GET`` or ``HEAD`` of :data:`METRICS_PATH`.

    Anything else gets 400 (a request line that is not ``METHOD target
    HTTP/1.x``), 405 (a method other than GET and HEAD) or 404 (another path).
    The connection is always closed after the answer.
    """
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/"):
        return _response("400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response("405 Method Not Allowed", b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
    if target != METRICS_PATH.encode():
        return _response("404 Not Found", f"the metrics are at {METRICS_PATH}\n".encode(), head=method == b"HEAD")
    return _response("200 OK", body(), CONTENT_TYPE, head=method == b"HEAD")

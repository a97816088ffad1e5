"""Container logs of the fake kubelet: timestamped files and the HTTPS endpoint.

Each container run writes `<RFC3339 timestamp> <line>` records to its own file,
like the CRI log format a real kubelet reads. The API server's `pods/log`
subresource proxies to `GET /containerLogs/{namespace}/{pod}/{container}` on
the node's kubelet port, which `LogServer` answers from those files.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("kubelet.logs")

# How often a follow request looks for new lines.
FOLLOW_POLL_S = 0.2


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 with microseconds in UTC, the form Kubernetes prints."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def copy_stream(source: IO[bytes], target: Path) -> None:
    """Copy a process's output line by line into a timestamped log file."""
    with target.open("ab", buffering=0) as out:
        for line in iter(source.readline, b""):
            out.write(timestamp().encode() + b" " + line)
    source.close()


@dataclass(frozen=True)
class LogRecord:
    """One line of a container log."""

    time: datetime
    stamp: bytes
    content: bytes


def parse_record(raw: bytes) -> LogRecord:
    stamp, _, content = raw.partition(b" ")
    moment = datetime.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return LogRecord(moment, stamp, content)


def read_records(path: Path, offset: int = 0, partial: bool = False) -> tuple[list[LogRecord], int]:
    """Records from `offset` on, and the offset after the last one read.

    A line still being written (no newline yet) is left for the next read
    unless `partial`: the process has exited and that line is its last.
    """
    if not path.exists():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    records = []
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n") and not partial:
            break
        records.append(parse_record(raw))
        offset += len(raw)
    return records, offset


def tail_of(path: Path, lines: int, max_bytes: int) -> str:
    """The last lines of a finished log without timestamps (termination messages)."""
    records, _ = read_records(path, partial=True)
    text = b"".join(r.content for r in records[-lines:])
    return text[-max_bytes:].decode(errors="replace")


@dataclass(frozen=True)
class LogSource:
    """Where one container run's log lives and whether it can still grow."""

    path: Path
    finished: Callable[[], bool]


# (namespace, pod, container, previous) -> the log of that run, or an error text.
Resolver = Callable[[str, str, str, bool], "LogSource | str"]


@dataclass(frozen=True)
class LogQuery:
    """The query parameters of /containerLogs that the kubelet honours."""

    follow: bool = False
    tail_lines: int | None = None
    timestamps: bool = False
    since: datetime | None = None
    limit_bytes: int | None = None
    previous: bool = False

    @classmethod
    def parse(cls, query: str) -> LogQuery:
        q = {k: v[-1] for k, v in parse_qs(query).items()}
        since = None
        if "sinceSeconds" in q:
            since = datetime.now(UTC) - timedelta(seconds=int(q["sinceSeconds"]))
        elif "sinceTime" in q:
            since = datetime.fromisoformat(q["sinceTime"].replace("Z", "+00:00"))
        return cls(
            follow=q.get("follow") == "true",
            tail_lines=int(q["tailLines"]) if "tailLines" in q else None,
            timestamps=q.get("timestamps") == "true",
            since=since,
            limit_bytes=int(q["limitBytes"]) if "limitBytes" in q else None,
            previous=q.get("previous") == "true",
        )

    def render(self, record: LogRecord) -> bytes:
        return record.stamp + b" " + record.content if self.timestamps else record.content


def stream_log(source: LogSource, query: LogQuery) -> Iterator[bytes]:
    """The chunks of a log response, following it while the container runs."""
    done = source.finished()
    records, offset = read_records(source.path, partial=done)
    if query.since is not None:
        records = [r for r in records if r.time >= query.since]
    if query.tail_lines is not None:
        records = records[-query.tail_lines :] if query.tail_lines > 0 else []
    for record in records:
        yield query.render(record)
    while query.follow and not done:
        time.sleep(FOLLOW_POLL_S)
        done = source.finished()
        new, offset = read_records(source.path, offset, partial=done)
        for record in new:
            yield query.render(record)


class _Handler(BaseHTTPRequestHandler):
    server: LogServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _reply(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            return self._reply(200, "ok")
        if len(parts) != 4 or parts[0] != "containerLogs":
            return self._reply(404, f"the fake kubelet serves only /containerLogs, not {url.path}")
        query = LogQuery.parse(url.query)
        found = self.server.resolve(parts[1], parts[2], parts[3], query.previous)
        if isinstance(found, str):
            return self._reply(404, found)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        # No length: the body ends when the connection closes, as a follow needs.
        self.send_header("Connection", "close")
        self.end_headers()
        self._send_body(stream_log(found, query), query.limit_bytes)

    def _send_body(self, chunks: Iterator[bytes], limit: int | None) -> None:
        sent = 0
        try:
            for chunk in chunks:
                if limit is not None:
                    chunk = chunk[: max(limit - sent, 0)]
                self.wfile.write(chunk)
                self.wfile.flush()
                sent += len(chunk)
                if limit is not None and sent >= limit:
                    break
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client went away, for example a follow that was cancelled
        self.close_connection = True


class LogServer(ThreadingHTTPServer):
    """HTTPS on loopback that answers the API server's container-log requests.

    Clients must present a certificate signed by `client_ca` (the API server's
    kubelet client certificate); no further authorization is done.
    """

    daemon_threads = True

    def __init__(
        self, port: int, cert: Path, key: Path, client_ca: Path, resolve: Resolver
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.resolve = resolve
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
        context.load_cert_chain(str(cert), str(key))
        context.verify_mode = ssl.CERT_REQUIRED
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self._thread = threading.Thread(target=self.serve_forever, name="log-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

#!/usr/bin/env python3
"""Many clients at once against a running weightgate portal, over plain
HTTP/1.1 on raw sockets (asyncio streams), and one JSON object of results on
stdout.

  downloads --url SIGNED_LINK --clients N --range-mib M --seconds S
      N keep-alive connections, each fetching M MiB ranges of the file
      (`Range: bytes=a-b`, a 206 of exactly that length expected) one after
      another until S seconds are up; client i starts at the i-th M MiB of
      the file and moves on one range each time, wrapping inside the file
      (whose size a one-byte probe reads from Content-Range first). No new
      request starts after S seconds; one in flight may finish, until S + 30
      seconds, when whatever is left is cut and counted as a timeout.

  idle --url URL --connections N --hold S [--ready-file PATH]
      N keep-alive connections, opened at most --connect-concurrency at a
      time, each sending one GET of URL (the portal's /healthz) and reading
      the whole answer; then all of them held idle for S seconds (the line
      HOLDING on stderr, and PATH created, while they are held), then a second
      GET on each: how many still answer, and how many the server closed.

Errors are counted by kind: status_NNN (an unexpected status), reset (the
connection was reset), refused (connect refused), closed (the server closed
the connection before answering), short_body (the body ended early),
bad_length (a 206 of another length than asked for), timeout (no progress for
--io-timeout seconds, or cut at the hard stop), os_ERRNO (EMFILE and the
like), bad_response (not HTTP).

Standard library only, so it needs no virtualenv.
"""

import argparse
import asyncio
import errno
import json
import os
import pathlib
import resource
import sys
import time
import urllib.parse

MIB = 1024 * 1024
# The streams' buffer: each read takes up to this much of a body at once.
READ_LIMIT = 256 * 1024
USER_AGENT = "weightgate-bench-scale/1"
# The hard stop of the downloads mode comes this long after --seconds.
HARD_STOP_AFTER = 30.0


class Failed(Exception):
    """A request that failed, with the kind it is counted under."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


def raise_nofile():
    """Raises the soft limit on open files to the hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            print(f"scale.py: cannot raise RLIMIT_NOFILE from {soft} to {hard}: {e}", file=sys.stderr)
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def target(url):
    """(host, port, path with query) of an http:// URL."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        sys.exit(f"scale.py: only http:// URLs, not {url!r}")
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    return u.hostname, u.port or 80, path


def request(host, port, path, extra=""):
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: {USER_AGENT}\r\n{extra}\r\n"
    ).encode("latin-1")


def kind_of(exc):
    """The error kind an exception is counted under."""
    if isinstance(exc, Failed):
        return exc.kind
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed" if not exc.partial else "short_body"
    if isinstance(exc, asyncio.LimitOverrunError):
        return "bad_response"
    if isinstance(exc, OSError) and exc.errno:
        return "os_" + errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


async def read_head(reader):
    """Reads a response's status line and headers: (status, headers with
    lower-case names, whether the connection stays open)."""
    line = await reader.readline()
    if not line:
        raise Failed("closed")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise Failed("bad_response")
    status = int(parts[1])
    headers = {}
    while True:
        line = await reader.readline()
        if not line:
            raise Failed("closed")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = parts[0] != b"HTTP/1.0" and "close" not in headers.get("connection", "").lower()
    return status, headers, keep


async def read_body(reader, headers):
    """Reads and discards a whole (small) body; returns its length."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        n = 0
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return n
            await reader.readexactly(size + 2)
            n += size
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length:
            await reader.readexactly(length)
        return length
    return len(await reader.read())


def close(writer):
    if writer is not None:
        writer.transport.abort()


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def rounded(x, digits=3):
    return None if x is None else round(x, digits)


# ---------------------------------------------------------------- downloads


class Client:
    def __init__(self, index):
        self.index = index
        self.requests = 0
        self.bytes = 0
        self.errors = {}
        self.writer = None
        self.progress = time.monotonic()
        self.in_flight = False
        self.timed_out = False
        self.ended = None

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def probe_size(host, port, path, io_timeout):
    """The file's size, from the Content-Range of a one-byte ranged GET."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), io_timeout)
    try:
        writer.write(request(host, port, path, "Range: bytes=0-0\r\n"))
        status, headers, _ = await asyncio.wait_for(read_head(reader), io_timeout)
        if status != 206:
            sys.exit(f"scale.py: the probe `Range: bytes=0-0` got HTTP {status}, not 206")
        total = headers.get("content-range", "").rpartition("/")[2]
        if not total.isdigit() or int(total) == 0:
            sys.exit(f"scale.py: no file size in Content-Range {headers.get('content-range')!r}")
        return int(total)
    finally:
        close(writer)


async def download_client(c, host, port, path, size, range_len, slots, stop_at, opts, connects, ttfb):
    reader = writer = None
    k = 0
    while time.monotonic() < stop_at:
        start = ((c.index + k) % slots) * range_len
        length = min(range_len, size - start)
        k += 1
        c.in_flight = True
        c.timed_out = False
        c.progress = time.monotonic()
        try:
            if writer is None:
                async with connects:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(host, port, limit=READ_LIMIT), opts.io_timeout
                    )
                c.writer = writer
                c.progress = time.monotonic()
            writer.write(request(host, port, path, f"Range: bytes={start}-{start + length - 1}\r\n"))
            sent = time.monotonic()
            status, headers, keep = await read_head(reader)
            c.progress = now = time.monotonic()
            ttfb.append(now - sent)
            if status != 206:
                raise Failed(f"status_{status}")
            if headers.get("content-length") != str(length):
                raise Failed("bad_length")
            left = length
            while left:
                chunk = await reader.read(min(left, READ_LIMIT))
                if not chunk:
                    raise Failed("short_body")
                left -= len(chunk)
                c.bytes += len(chunk)
                c.progress = time.monotonic()
            c.requests += 1
            if not keep:
                close(writer)
                reader = writer = c.writer = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every failure is counted, by kind
            c.error("timeout" if c.timed_out else kind_of(e))
            close(writer)
            reader = writer = c.writer = None
            # Not a busy loop against a server that refuses.
            await asyncio.sleep(0.1)
        finally:
            c.in_flight = False
            c.ended = time.monotonic()
    close(writer)
    c.writer = None


async def watchdog(clients, io_timeout):
    """Cuts the connection of a client that made no progress for io_timeout."""
    while True:
        await asyncio.sleep(0.5)
        now = time.monotonic()
        for c in clients:
            if c.in_flight and c.writer is not None and now - c.progress > io_timeout:
                c.timed_out = True
                close(c.writer)


async def downloads(opts):
    host, port, path = target(opts.url)
    size = await probe_size(host, port, path, opts.io_timeout)
    range_len = min(int(opts.range_mib * MIB), size)
    slots = max(1, size // range_len)
    clients = [Client(i) for i in range(opts.clients)]
    ttfb = []
    connects = asyncio.Semaphore(opts.connect_concurrency)
    started = time.monotonic()
    stop_at = started + opts.seconds
    tasks = [
        asyncio.ensure_future(
            download_client(c, host, port, path, size, range_len, slots, stop_at, opts, connects, ttfb)
        )
        for c in clients
    ]
    dog = asyncio.ensure_future(watchdog(clients, opts.io_timeout))
    _, pending = await asyncio.wait(tasks, timeout=opts.seconds + HARD_STOP_AFTER)
    ended = time.monotonic()
    dog.cancel()
    for c in clients:
        if c.in_flight:
            c.error("timeout")
            c.ended = ended
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, dog, return_exceptions=True)
    for c in clients:
        close(c.writer)

    wall = max((c.ended or ended) for c in clients) - started
    total = sum(c.bytes for c in clients)
    errors = {}
    for c in clients:
        for kind, n in c.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    rates = sorted(c.bytes / MIB / max((c.ended or ended) - started, 1e-9) for c in clients)
    squares = sum(c.bytes * c.bytes for c in clients)
    jain = total * total / (len(clients) * squares) if squares else None
    ttfb.sort()
    return {
        "mode": "downloads",
        "clients": opts.clients,
        "seconds": opts.seconds,
        "range_mib": opts.range_mib,
        "file_bytes": size,
        "wall_seconds": rounded(wall),
        "total_bytes": total,
        "mib_per_s": rounded(total / MIB / wall if wall > 0 else 0.0),
        "requests_completed": sum(c.requests for c in clients),
        "errors": dict(sorted(errors.items())),
        "error_count": sum(errors.values()),
        "clients_with_no_completed_request": sum(1 for c in clients if c.requests == 0),
        "per_client_mib_per_s": {
            "min": rounded(rates[0]),
            "p10": rounded(percentile(rates, 10)),
            "median": rounded(percentile(rates, 50)),
            "max": rounded(rates[-1]),
        },
        "jain_fairness": rounded(jain, 4),
        "ttfb_ms": {
            "p50": rounded(percentile(ttfb, 50) * 1000 if ttfb else None, 2),
            "p99": rounded(percentile(ttfb, 99) * 1000 if ttfb else None, 2),
        },
        "nofile_limit": opts.nofile,
    }


# ---------------------------------------------------------------- idle


async def exchange(reader, writer, req):
    """One GET on an open connection; the status, or Failed."""
    writer.write(req)
    status, headers, _ = await read_head(reader)
    await read_body(reader, headers)
    if not 200 <= status < 300:
        raise Failed(f"status_{status}")
    return status


async def idle(opts):
    host, port, path = target(opts.url)
    req = request(host, port, path)
    gate = asyncio.Semaphore(opts.connect_concurrency)
    failed = {}
    held = []

    def fail(phase, kind):
        key = f"{phase}:{kind}"
        failed[key] = failed.get(key, 0) + 1

    async def open_one():
        writer = None
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), opts.io_timeout)
            except Exception as e:
                fail("open", kind_of(e))
                return
            try:
                await asyncio.wait_for(exchange(reader, writer, req), opts.io_timeout)
            except Exception as e:
                fail("first", kind_of(e))
                close(writer)
                return
            held.append((reader, writer))

    async def again(reader, writer):
        async with gate:
            try:
                if reader.at_eof():
                    raise Failed("closed")
                await asyncio.wait_for(exchange(reader, writer, req), opts.io_timeout)
                return True
            except Exception as e:
                fail("after_hold", kind_of(e))
                return False
            finally:
                close(writer)

    ready = pathlib.Path(opts.ready_file) if opts.ready_file else None
    started = time.monotonic()
    opened_ok = 0
    try:
        await asyncio.gather(*(open_one() for _ in range(opts.connections)))
        open_seconds = time.monotonic() - started
        answered_first = len(held)
        opened_ok = answered_first + sum(n for k, n in failed.items() if k.startswith("first:"))
        print("HOLDING", file=sys.stderr, flush=True)
        if ready:
            ready.touch()
        await asyncio.sleep(opts.hold)
        closed_in_hold = sum(1 for reader, _ in held if reader.at_eof())
        answers = await asyncio.gather(*(again(r, w) for r, w in held))
    finally:
        if ready:
            try:
                ready.unlink()
            except FileNotFoundError:
                pass
        for _, w in held:
            close(w)
    return {
        "mode": "idle",
        "connections": opts.connections,
        "hold_seconds": opts.hold,
        "opened": opened_ok,
        "answered_first": answered_first,
        "closed_by_server_during_hold": closed_in_hold,
        "answered_after_hold": sum(answers),
        "failed": dict(sorted(failed.items())),
        "time_to_open_all_s": rounded(open_seconds),
        "nofile_limit": opts.nofile,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("downloads", help="concurrent ranged downloads of one signed link")
    d.add_argument("--url", required=True, help="a signed link, http://HOST:PORT/dl/TOKEN/NAME")
    d.add_argument("--clients", type=int, required=True)
    d.add_argument("--range-mib", type=float, default=1.0)
    d.add_argument("--seconds", type=float, required=True)
    i = sub.add_parser("idle", help="idle keep-alive connections")
    i.add_argument("--url", required=True, help="what each connection GETs, e.g. http://HOST:PORT/healthz")
    i.add_argument("--connections", type=int, required=True)
    i.add_argument("--hold", type=float, required=True, help="seconds to hold them idle")
    i.add_argument("--ready-file", help="created while the connections are held, removed after")
    for s in (d, i):
        s.add_argument("--connect-concurrency", type=int, default=500, help="connects under way at once")
        s.add_argument("--io-timeout", type=float, default=30.0, help="seconds without progress before a timeout")
    opts = p.parse_args()
    opts.nofile = raise_nofile()
    want = opts.clients if opts.mode == "downloads" else opts.connections
    if want + 64 > opts.nofile:
        print(f"scale.py: {want} connections need more than the {opts.nofile} open files allowed", file=sys.stderr)
    result = asyncio.run(downloads(opts) if opts.mode == "downloads" else idle(opts))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

"""The WAN bench's helpers that run inside the namespaces: a delaying TCP relay and a probe server.

``python -m wenlv.bench.wan_tools relay --delay-ms D LISTEN=UPSTREAM ...`` forwards every
connection accepted on LISTEN (host:port) to UPSTREAM, holding each piece of data D ms in
each direction before passing it on (so a round trip gains 2·D). Bandwidth is not its job
(tbf on the links does that); it buffers at most :data:`MAX_BUFFER` bytes per direction.
``python -m wenlv.bench.wan_tools probe --listen HOST:PORT`` answers the plain transfer that
checks a link before the run: ``e`` + bytes → echoed; ``s`` + 8-byte length + bytes → ``k``.
"""
from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from collections import deque

PIECE = 1 << 16
MAX_BUFFER = 32 << 20


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader → writer, each piece released `delay` seconds after it arrived."""
    queue: deque = deque()
    buffered = 0
    arrived = asyncio.Event()
    done = False

    async def read():
        nonlocal buffered, done
        while True:
            while buffered > MAX_BUFFER:  # back-pressure: stop reading until the writer catches up
                await asyncio.sleep(0.001)
            data = await reader.read(PIECE)
            if not data:
                done = True
                arrived.set()
                return
            queue.append((time.monotonic() + delay, data))
            buffered += len(data)
            arrived.set()

    async def write():
        nonlocal buffered
        while True:
            if not queue:
                if done:
                    break
                arrived.clear()
                await arrived.wait()
                continue
            due, data = queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            queue.popleft()
            buffered -= len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, OSError):
        pass


async def _relay(pairs: list[tuple[str, int, str, int]], delay: float) -> None:
    async def handle(host, port, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer, delay), _pump(up_reader, writer, delay))
        for w in (writer, up_writer):
            w.close()

    servers = []
    for lhost, lport, uhost, uport in pairs:
        servers.append(await asyncio.start_server(lambda r, w, h=uhost, p=uport: handle(h, p, r, w), lhost, lport))
    print("relay ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


async def _probe(host: str, port: int) -> None:
    async def handle(reader, writer):
        try:
            kind = await reader.readexactly(1)
            if kind == b"e":
                while data := await reader.read(PIECE):
                    writer.write(data)
                    await writer.drain()
            elif kind == b"s":
                (n,) = struct.unpack(">Q", await reader.readexactly(8))
                left = n
                while left > 0:
                    data = await reader.read(min(PIECE, left))
                    if not data:
                        break
                    left -= len(data)
                writer.write(b"k")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, host, port)
    print("probe ready", flush=True)
    await server.serve_forever()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wenlv.bench.wan_tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay")
    r.add_argument("--delay-ms", type=float, required=True, help="one-way delay added in each direction")
    r.add_argument("routes", nargs="+", help="LISTEN_HOST:PORT=UPSTREAM_HOST:PORT")
    p = sub.add_parser("probe")
    p.add_argument("--listen", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "relay":
        pairs = []
        for route in args.routes:
            listen, _, upstream = route.partition("=")
            pairs.append((*_hostport(listen), *_hostport(upstream)))
        asyncio.run(_relay(pairs, args.delay_ms / 1000.0))
    else:
        asyncio.run(_probe(*_hostport(args.listen)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A TCP relay on loopback that adds a fixed delay in each direction: a stand-in for `tc qdisc ... netem delay`
where the kernel has no netem (sch_netem is not built into this machine's kernel).

    python bench/delay_proxy.py --delay-ms 25 127.0.76.1:22=10.76.1.2:22 127.0.76.1:993=10.76.1.2:993

Every chunk read from one side is written to the other `delay` later, in order, so a request and its answer
cross it with one round trip of 2 x delay, like netem on both ends of a link. It ends the relay's TCP on both
sides (no bandwidth limit, no loss), which is all a round-trip figure needs. Prints `ready` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy one direction, each chunk written `delay` after it was read (in order); EOF passes on too."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            await queue.put((loop.time() + delay, data))
            if not data:
                return

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.create_task(pump()), asyncio.create_task(deliver())]
    try:
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for t in tasks:
            t.cancel()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> asyncio.Server:
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            t_reader, t_writer = await asyncio.open_connection(*target)
        except OSError:
            c_writer.close()
            return
        _nodelay(c_writer)
        _nodelay(t_writer)
        both = [
            asyncio.create_task(_pipe(c_reader, t_writer, delay)),
            asyncio.create_task(_pipe(t_reader, c_writer, delay)),
        ]
        try:
            await asyncio.gather(*both, return_exceptions=True)
        finally:
            for w in (c_writer, t_writer):
                w.close()

    return await asyncio.start_server(handle, *listen, reuse_address=True)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _main(args: argparse.Namespace) -> None:
    servers = []
    for spec in args.routes:
        listen, _, target = spec.partition("=")
        servers.append(await _serve(_addr(listen), _addr(target), args.delay_ms / 1000.0))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay (RTT is twice this)")
    ap.add_argument("routes", nargs="+", metavar="LISTEN=TARGET", help="e.g. 127.0.76.1:22=10.76.1.2:22")
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

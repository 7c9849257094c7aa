"""A throwaway HTTP/1.1 server on loopback for tests of load generators: the test writes the handler."""
from __future__ import annotations

import asyncio
import threading

from wenlv.serving.runtime import free_port


def serve_in_thread(handle) -> tuple[int, threading.Event]:
    """Run `asyncio.start_server(handle)` on a free 127.0.0.1 port in a daemon thread; (port, stop): set stop to close it."""
    port, ready, stop = free_port(), threading.Event(), threading.Event()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    ready.wait(5)
    return port, stop

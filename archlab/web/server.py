"""`archlab serve`: bind the port first (so a busy one is a clear error), then run uvicorn on it."""

import errno
import socket
from pathlib import Path
from typing import Callable

from archlab.errors import UserError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; a busy port or an unknown host is a UserError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT: a busy port stays busy
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use; pick another --port (0 = any free)") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise UserError(
                f"not allowed to listen on {host}:{port} (ports below 1024 need privileges); choose another --port"
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--host {host}: not an address of this machine") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    on_ready: Callable[[str], None] = print,
    steer_token: str | None = None,
) -> None:
    """Serve the run's review UI until interrupted. Everything that can fail because of the
    user's input (not a run, busy port) fails before anything is printed as ready."""
    try:
        import uvicorn

        from archlab.web.app import create_app
    except ImportError as e:
        raise UserError(f"the web UI needs its extra ({e.name} is missing): pip install 'archlab[web]'") from None
    app = create_app(run_dir, host, steer_token)
    sock = bind(host, port)
    # A client that holds connections open cannot starve the others: idle ones close after 5 s, and
    # past 64 at once new ones get a 503.
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=5,
            limit_concurrency=64,
        )
    )
    on_ready(url_of(sock) + (f"?token={steer_token}" if steer_token else ""))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        app.state.view.close()

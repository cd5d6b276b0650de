"""The web UI's HTTP side (Starlette): a static page and a read-only JSON API over one run.

Only GET (and HEAD) routes exist (with `archlab serve --allow-steer`, also POST /api/steer, which
needs the token printed in the server's URL); node and evaluation ids are integers in the path; static
files come from the package's static/ folder (Starlette refuses paths that leave it); no
route takes a file name. Host names other than the bound one and localhost are refused (a
guard against DNS rebinding), and a strict Content-Security-Policy keeps any text that a
candidate or a model wrote from running as script in the page.
"""

import json
import math
import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from archlab.errors import UserError
from archlab.search import steering
from archlab.text import loads
from archlab.web.data import RunView
from archlab.web.highlight import stylesheet

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class JSON(JSONResponse):
    """JSON that browsers can parse: NaN and infinities (a diverged loss) become null."""

    def render(self, content) -> bytes:
        return json.dumps(_finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class SecurityHeaders:
    """Pure ASGI middleware: adds the headers above to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.decode().lower() not in {h.lower() for h in SECURITY_HEADERS}
                ]
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if scope["path"].startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(run_dir: Path, host: str = "127.0.0.1", steer_token: str | None = None) -> Starlette:
    view = RunView(run_dir)

    def _int(request: Request, name: str, default: int | None) -> int | None:
        value = request.query_params.get(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise HTTPException(400, f"{name} must be an integer") from None

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def highlight_css(request: Request) -> Response:
        return Response(stylesheet(), media_type="text/css")

    async def live(request: Request) -> Response:
        return JSON(await run_in_threadpool(view.live))

    async def run(request: Request) -> Response:
        return JSON(await run_in_threadpool(view.run_info))

    async def tree(request: Request) -> Response:
        return JSON(await run_in_threadpool(view.tree, _int(request, "limit", 400), _int(request, "focus", None)))

    async def children(request: Request) -> Response:
        return JSON(
            await run_in_threadpool(
                view.children, request.path_params["node_id"], _int(request, "offset", 0), _int(request, "limit", 200)
            )
        )

    async def node(request: Request) -> Response:
        return JSON(await run_in_threadpool(view.node, request.path_params["node_id"]))

    async def code(request: Request) -> Response:
        return JSON(await run_in_threadpool(view.code, request.path_params["node_id"]))

    async def node_traces(request: Request) -> Response:
        return JSON(
            await run_in_threadpool(
                view.traces,
                request.path_params["node_id"],
                None,
                _int(request, "offset", 0),
                _int(request, "limit", 500),
            )
        )

    async def traces(request: Request) -> Response:
        return JSON(
            await run_in_threadpool(
                view.traces,
                _int(request, "node", None),
                request.query_params.get("role") or None,
                _int(request, "offset", 0),
                _int(request, "limit", 100),
            )
        )

    async def log(request: Request) -> Response:
        full = request.query_params.get("full") in ("1", "true")
        try:
            return PlainTextResponse(
                await run_in_threadpool(view.evaluation_log, request.path_params["evaluation_id"], full)
            )
        except LookupError as e:
            raise HTTPException(404, str(e)) from None

    async def evaluation(request: Request) -> Response:
        try:
            return JSON(await run_in_threadpool(view.evaluation, request.path_params["evaluation_id"]))
        except LookupError as e:
            raise HTTPException(404, str(e)) from None

    async def curves(request: Request) -> Response:
        try:
            ids = [int(i) for i in request.query_params.get("nodes", "").split(",") if i.strip()]
        except ValueError:
            raise HTTPException(400, "nodes must be node ids separated by commas") from None
        return JSON(await run_in_threadpool(view.curves, ids))

    async def compare(request: Request) -> Response:
        return JSON(await run_in_threadpool(view.compare, request.path_params["a"], request.path_params["b"]))

    async def leaderboard(request: Request) -> Response:
        q = request.query_params
        try:
            return JSON(
                await run_in_threadpool(
                    view.leaderboard,
                    q.get("sort") or "fitness",
                    q.get("order") or "desc",
                    q.get("q") or "",
                    _int(request, "offset", 0),
                    _int(request, "limit", 200),
                )
            )
        except ValueError as e:
            raise HTTPException(400, str(e)) from None

    async def archive(request: Request) -> Response:
        q = request.query_params
        try:
            return JSON(await run_in_threadpool(view.archive, q.get("x") or None, q.get("y") or None))
        except ValueError as e:
            raise HTTPException(400, str(e)) from None

    async def plots(request: Request) -> Response:
        return JSON(await run_in_threadpool(view.plots))

    async def steer(request: Request) -> Response:
        """`archlab serve --allow-steer` only: a steering command (search/steering.py), with the run's token."""
        if not secrets.compare_digest(request.headers.get("x-archlab-token", ""), steer_token):
            raise HTTPException(
                403, "steering needs this server's token (the URL `archlab serve --allow-steer` printed)"
            )
        body = await request.body()
        try:
            order = loads(body) if len(body) <= 4096 else None
            assert isinstance(order, dict)
            node, text = order.get("node"), order.get("text")
            assert (node is None or type(node) is int) and (text is None or isinstance(text, str))
        except (ValueError, AssertionError):
            raise HTTPException(
                400, 'send {"action": "pin" | "veto" | "note" | "stop", "node": N, "text": "..."}'
            ) from None
        try:
            await run_in_threadpool(
                steering.add, view.writer(), str(order.get("action")), node, text, steering.who("web")
            )
        except UserError as e:
            raise HTTPException(400, str(e)) from None
        return JSON({"ok": True})

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSON({"error": str(exc)}, status_code=404)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSON({"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSON({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    get = ["GET"]
    routes = [
        Route("/", index, methods=get),
        Route("/highlight.css", highlight_css, methods=get),
        Route("/favicon.ico", lambda request: Response(status_code=204), methods=get),
        Route("/api/live", live, methods=get),
        Route("/api/run", run, methods=get),
        Route("/api/tree", tree, methods=get),
        Route("/api/children/{node_id:int}", children, methods=get),
        Route("/api/node/{node_id:int}", node, methods=get),
        Route("/api/node/{node_id:int}/code", code, methods=get),
        Route("/api/node/{node_id:int}/traces", node_traces, methods=get),
        Route("/api/traces", traces, methods=get),
        Route("/api/evaluation/{evaluation_id:int}/log", log, methods=get),
        Route("/api/evaluation/{evaluation_id:int}", evaluation, methods=get),
        Route("/api/curves", curves, methods=get),
        Route("/api/compare/{a:int}/{b:int}", compare, methods=get),
        Route("/api/leaderboard", leaderboard, methods=get),
        Route("/api/plots", plots, methods=get),
        Route("/api/archive", archive, methods=get),
        Mount("/static", app=StaticFiles(directory=STATIC, follow_symlink=False), name="static"),
    ]
    if steer_token:  # the one write, and only with the flag: everything else stays read-only
        routes.insert(0, Route("/api/steer", steer, methods=["POST"]))
    allowed = ["127.0.0.1", "localhost", "::1", "[::1]"]
    if host in ("0.0.0.0", "::", ""):
        allowed = ["*"]
    elif host not in allowed:
        allowed.append(host)
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(TrustedHostMiddleware, allowed_hosts=allowed)],
        exception_handlers={UserError: not_found, HTTPException: http_error, Exception: server_error},
    )
    app.state.view = view
    return app

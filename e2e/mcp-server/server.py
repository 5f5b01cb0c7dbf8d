"""An MCP server built on the official Python SDK (PyPI `mcp`), served over
Streamable HTTP, for the end-to-end tests of mcp-ratelimit.

Tools:
- `search_docs(query)` and `get_weather(city)`: ordinary tools;
- `find_tool(query)` and `call_tool(tool_name, parameters)`: an optimizer-style
  pair, as ToolHive's vMCP exposes. `find_tool` names the tools that match a
  query; `call_tool` runs the named tool with `parameters`. Rate limits must
  apply to the tool that `call_tool` runs, which is what the filter unwraps.

Usage:
    server.py [--host 127.0.0.1] [--port 8082] [--json-response] [--stateless]

`--port 0` binds a free port. Once the socket is bound (before the server
accepts requests, which the kernel queues meanwhile) it prints
`mcp-server listening on HOST:PORT`. Responses are SSE streams unless
`--json-response` is given. `search_docs` and `get_weather` report progress
when the call asks for it (with a `progressToken`): in SSE mode the answer
is then a stream with a notification before the result, under every
protocol version (under 2026-07-28 the SDK answers in JSON when nothing is
streamed).

`GET /__server/stats` answers how many times each tool actually ran here,
so a test can tell that a denied call never arrived.

SIGTERM or SIGINT stops it gracefully, with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections import Counter
from typing import Annotated, Any

import uvicorn
from pydantic import Field
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from starlette.requests import Request
from starlette.responses import JSONResponse

mcp = MCPServer(
    "mcp-ratelimit-e2e",
    version="1.0.0",
    instructions="Search the docs, ask for the weather, or find and call a tool by name.",
    log_level="WARNING",
)

# How many times each tool ran, including those run through `call_tool`.
RUNS: Counter[str] = Counter()

DOCS = {
    "envoy": "Envoy is an L7 proxy and communication bus.",
    "ratelimit": "Envoy's global rate-limit service decides per descriptor.",
    "mcp": "The Model Context Protocol connects models to tools.",
}


@mcp.tool()
async def search_docs(query: str, ctx: Context) -> str:
    """Search the documentation for a query."""
    RUNS["search_docs"] += 1
    await ctx.report_progress(1, 1, "searched")
    hits = [text for key, text in DOCS.items() if key in query.lower()]
    return "\n".join(hits) if hits else f"no documents match {query!r}"


@mcp.tool()
async def get_weather(city: str, ctx: Context) -> str:
    """Current weather for a city."""
    RUNS["get_weather"] += 1
    await ctx.report_progress(1, 1, "measured")
    return f"{city}: 18 degrees C, light wind"


# The tools that `find_tool` searches and `call_tool` runs.
CALLABLE = {"search_docs": search_docs, "get_weather": get_weather}


@mcp.tool()
def find_tool(query: str) -> list[str]:
    """Names of the tools whose name or description matches the query."""
    RUNS["find_tool"] += 1
    words = [w for w in query.lower().replace("_", " ").split() if w]
    found = []
    for name, fn in CALLABLE.items():
        text = f"{name.replace('_', ' ')} {fn.__doc__ or ''}".lower()
        if not words or any(w in text for w in words):
            found.append(name)
    return found


@mcp.tool()
async def call_tool(
    # Mirrored into the `Mcp-Param-ToolName` header (MCP 2026-07-28), so that
    # intermediaries can see the real target without reading the body.
    tool_name: Annotated[str, Field(json_schema_extra={"x-mcp-header": "ToolName"})],
    parameters: dict[str, Any],
    ctx: Context,
) -> str:
    """Run the tool named `tool_name` with `parameters` as its arguments."""
    RUNS["call_tool"] += 1
    fn = CALLABLE.get(tool_name)
    if fn is None:
        raise ToolError(f"unknown tool {tool_name!r}; find_tool lists the tools")
    try:
        return await fn(**parameters, ctx=ctx)
    except TypeError as e:
        raise ToolError(f"bad parameters for {tool_name}: {e}") from e


@mcp.custom_route("/__server/stats", methods=["GET"])
async def stats(_request: Request) -> JSONResponse:
    return JSONResponse({"runs": dict(RUNS)})


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8082, help="port to listen on; 0 picks a free one (default 8082)")
    p.add_argument("--path", default="/mcp", help="MCP endpoint path (default /mcp)")
    p.add_argument("--json-response", action="store_true", help="answer POSTs with JSON instead of SSE streams")
    p.add_argument("--stateless", action="store_true", help="no sessions: every request stands alone")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    app = mcp.streamable_http_app(
        streamable_http_path=args.path,
        json_response=args.json_response,
        stateless_http=args.stateless,
        host=args.host,
    )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    mode = "json" if args.json_response else "sse"
    state = "stateless" if args.stateless else "stateful"
    config = uvicorn.Config(
        app,
        log_level="warning",
        # Open GET streams would otherwise hold a graceful shutdown forever.
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)

    # While it serves, uvicorn catches SIGTERM and SIGINT itself, shuts down
    # gracefully, then raises the signal again against the handlers it found:
    # these, which end the process normally (status 0). Before it serves,
    # they make it stop as soon as it starts.
    def stop(_sig: int, _frame: object) -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    print(f"mcp-server listening on {shown}:{port}", flush=True)
    print(f"mcp-server: {mode} responses, {state}", file=sys.stderr, flush=True)
    await server.serve(sockets=[sock])


def main(argv: list[str]) -> int:
    # Stopped while starting: nothing to shut down.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: sys.exit(0))
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(args))
    print("mcp-server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The official MCP Python SDK client (PyPI `mcp`) against a rate-limited MCP
server: reports what the SDK surfaces when a tool call is denied.

Usage:
    python_client.py URL SCENARIO [--mode auto|legacy] [--max-calls N]

SCENARIO is `direct` (call `search_docs`) or `call_tool` (call `call_tool`
with `tool_name: search_docs`, which the filter counts against the same
bucket). The client connects (`--mode auto`, the SDK's default, probes
`server/discover` and falls back to `initialize`; `legacy` always sends
`initialize`), lists the tools, then calls the tool until a call fails, at
most `--max-calls` times. It never retries a call itself. After the failure
it calls `get_weather` on the same session to see whether the session still
works.

It prints one JSON object on stdout:

    {"sdk": "mcp (python)", "sdk_version": "2.3.0", "mode": "auto",
     "protocol_version": "...", "tools": [...], "allowed": 3,
     "error": {"type": "MCPError", "code": 429, "message": "...",
               "data": {...} | null, "http_status": null},
     "after": {"tool": "get_weather", "ok": true, "error": null},
     "wire": {"tools_call": [{"id": 3, "tool": "search_docs", "status": 200,
                              "content_type": "text/event-stream"}, ...],
              "sdk_retried": false}}

Every call asks for progress notifications; `progress` counts those
received. `error` is null when no call failed. `http_status` is what the
SDK's error exposes (this SDK exposes none). `wire` is what was actually
sent, recorded by an HTTP event hook below the SDK: every `tools/call` POST
with the HTTP status and content type of its answer. A retry made by the
SDK itself shows as more POSTs than calls (`sdk_retried`). The exit status
is 0 whenever this report could be produced.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import sys
import traceback
from typing import Any

import httpx2
import wire
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

AFTER_TOOL = "get_weather"


def scenario_call(scenario: str) -> tuple[str, dict[str, Any]]:
    if scenario == "direct":
        return "search_docs", {"query": "envoy"}
    if scenario == "call_tool":
        return "call_tool", {"tool_name": "search_docs", "parameters": {"query": "envoy"}}
    raise SystemExit(f"unknown scenario {scenario!r}: use direct or call_tool")


def describe_error(exc: BaseException) -> dict[str, Any]:
    """What the SDK put in the exception: its class, and the JSON-RPC fields
    and HTTP status where the exception carries them."""
    code = getattr(exc, "code", None)
    data = getattr(exc, "data", None)
    response = getattr(exc, "response", None)
    http_status = getattr(response, "status_code", None)
    if isinstance(exc, httpx2.HTTPStatusError):
        code = None
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "code": code if isinstance(code, int) else None,
        "message": getattr(exc, "message", None) or str(exc),
        "data": data if data is None or isinstance(data, (dict, list, str, int, float, bool)) else repr(data),
        "http_status": http_status if isinstance(http_status, int) else None,
    }


def unwrap(exc: BaseException) -> BaseException:
    """The single error inside (nested) exception groups, else `exc` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Wire(wire.Wire):
    """[`wire.Wire`] for httpx2, the HTTP client of the 2.x SDK."""

    def __init__(self) -> None:
        super().__init__(httpx2.RequestNotRead)


async def run(report: dict[str, Any], wire: Wire, url: str, max_calls: int) -> None:
    """Fills `report` as it goes, so that a failure leaves what came before."""
    tool, arguments = report["tool"], report["arguments"]
    mode = report["mode"]
    http = create_mcp_http_client()
    http.event_hooks = {"request": [wire.on_request], "response": [wire.on_response]}

    async def on_progress(_progress: float, _total: float | None, _message: str | None) -> None:
        report["progress"] += 1

    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            report["protocol_version"] = client.protocol_version
            report["tools"] = [t.name for t in (await client.list_tools()).tools]
            for _ in range(max_calls):
                report["attempts"] += 1
                try:
                    result = await client.call_tool(tool, arguments, progress_callback=on_progress)
                except Exception as exc:  # what the SDK raises is the point
                    report["error"] = describe_error(exc)
                    break
                if result.is_error:
                    report["error"] = {
                        "type": "CallToolResult.is_error",
                        "code": None,
                        "message": " ".join(getattr(c, "text", "") for c in result.content),
                        "data": None,
                        "http_status": None,
                    }
                    break
                report["allowed"] += 1
            if report["error"] is not None:
                after: dict[str, Any] = {"tool": AFTER_TOOL, "ok": False, "error": None}
                try:
                    result = await client.call_tool(AFTER_TOOL, {"city": "Oslo"}, progress_callback=on_progress)
                    after["ok"] = not result.is_error
                    after["text"] = " ".join(getattr(c, "text", "") for c in result.content)
                except Exception as exc:
                    after["error"] = describe_error(exc)
                report["after"] = after
                report["attempts"] += 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="the MCP endpoint, e.g. http://127.0.0.1:10000/mcp")
    p.add_argument("scenario", choices=["direct", "call_tool"])
    p.add_argument("--mode", choices=["auto", "legacy"], default="auto", help="protocol negotiation (default auto)")
    p.add_argument("--max-calls", type=int, default=10, help="stop after this many allowed calls (default 10)")
    args = p.parse_args(argv)
    tool, arguments = scenario_call(args.scenario)
    report: dict[str, Any] = {
        "sdk": "mcp (python)",
        "sdk_version": importlib.metadata.version("mcp"),
        "mode": args.mode,
        "scenario": args.scenario,
        "tool": tool,
        "arguments": arguments,
        "protocol_version": None,
        "tools": [],
        "allowed": 0,
        "attempts": 0,
        "progress": 0,
        "error": None,
        "after": None,
        "wire": None,
        "failure": None,
    }
    wire = Wire()
    try:
        asyncio.run(run(report, wire, args.url, args.max_calls))
    except Exception as exc:  # the session itself failed: report that too
        inner = unwrap(exc)
        report["failure"] = describe_error(inner)
        report["traceback"] = traceback.format_exception(inner)
    wire.report(report, (tool, AFTER_TOOL))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The official MCP Python SDK 1.x client (PyPI `mcp` 1.x, the API of
`mcp.client.streamable_http.streamablehttp_client` and `ClientSession`)
against a rate-limited MCP server: reports what the SDK surfaces when a tool
call is denied.

Usage:
    client.py URL SCENARIO [--max-calls N]

SCENARIO is `direct` (call `search_docs`) or `call_tool` (call `call_tool`
with `tool_name: search_docs`, which the filter counts against the same
bucket). The client connects (`initialize`), lists the tools, then calls the
tool until a call fails, at most `--max-calls` times. It never retries a
call itself. After the failure it calls `get_weather` on the same session to
see whether the session still works.

It prints one JSON object on stdout, in the shape of the other clients'
reports:

    {"sdk": "mcp (python)", "sdk_version": "1.30.0",
     "protocol_version": "2025-11-25", "session_id": true, "tools": [...],
     "allowed": 3,
     "error": {"type": "McpError", "module": "mcp.shared.exceptions",
               "code": 429, "message": "...", "data": {...} | null,
               "http_status": null, "surfaced": "call", "raised_as": "McpError",
               "call_raised": "McpError"},
     "after": {"tool": "get_weather", "ok": true, "error": null, "attempted": true},
     "session_survived": true,
     "wire": {"tools_call": [{"id": 3, "tool": "search_docs", "status": 200,
                              "content_type": "text/event-stream"}, ...],
              "sdk_retried": false}}

`error` is what the SDK surfaced for the failed call, null when no call
failed. This SDK can surface it in two places, which `surfaced` tells
apart:
- `call`: `call_tool` raised it, and the session is still open;
- `context`: the transport failed, the SDK cancelled the pending call
  (`call_raised` names what the call itself raised, e.g. `CancelledError`)
  and the exception escaped the client's `async with` blocks, wrapped in the
  exception group that `raised_as` names. `error` then describes the
  exception inside the group (e.g. `httpx.HTTPStatusError`), and the
  session is gone: `after.attempted` is false, `session_survived` false.
`code`, `message` and `data` are the JSON-RPC fields where the exception
carries them (`McpError.error`); `http_status` is the HTTP status where it
carries one (`HTTPStatusError.response`). `session_survived` is true when
the call after the failure worked on the same session.

Every call asks for progress notifications; `progress` counts those
received. `wire` is what was actually sent, recorded by HTTP event hooks
below the SDK: every `tools/call` POST with the HTTP status and content type
of its answer. A retry made by the SDK itself shows as more POSTs than calls
(`sdk_retried`). `failure` is set when the run failed in any other way. The
exit status is 0 whenever this report could be produced.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
from pathlib import Path
import sys
import traceback
import warnings
from typing import Any

import httpx

# The shared recorder, one directory up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import wire  # noqa: E402
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared._httpx_utils import create_mcp_http_client

AFTER_TOOL = "get_weather"


def scenario_call(scenario: str) -> tuple[str, dict[str, Any]]:
    if scenario == "direct":
        return "search_docs", {"query": "envoy"}
    if scenario == "call_tool":
        return "call_tool", {"tool_name": "search_docs", "parameters": {"query": "envoy"}}
    raise SystemExit(f"unknown scenario {scenario!r}: use direct or call_tool")


def unwrap(exc: BaseException) -> BaseException:
    """The single error inside (nested) exception groups, else `exc` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe_error(exc: BaseException, surfaced: str, raised_as: BaseException | None = None) -> dict[str, Any]:
    """What the SDK put in the exception: its class, the JSON-RPC fields of
    an `McpError` (`exc.error`), and the HTTP status where it carries one."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    data = getattr(error, "data", None)
    message = getattr(error, "message", None)
    response = getattr(exc, "response", None)
    http_status = getattr(response, "status_code", None)
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "code": code if isinstance(code, int) else None,
        "message": message if isinstance(message, str) else str(exc),
        "data": data if data is None or isinstance(data, (dict, list, str, int, float, bool)) else repr(data),
        "http_status": http_status if isinstance(http_status, int) else None,
        "surfaced": surfaced,
        "raised_as": type(raised_as if raised_as is not None else exc).__name__,
    }


class Wire(wire.Wire):
    """[`wire.Wire`] for httpx, the HTTP client of the 1.x SDK, which also
    makes that client."""

    def __init__(self) -> None:
        super().__init__(httpx.RequestNotRead)

    def client_factory(
        self,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        auth: httpx.Auth | None = None,
    ) -> httpx.AsyncClient:
        """The SDK's own HTTP client, with the recording hooks."""
        client = create_mcp_http_client(headers=headers, timeout=timeout, auth=auth)
        client.event_hooks = {"request": [self.on_request], "response": [self.on_response]}
        return client


def content_text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def run(report: dict[str, Any], wire: Wire, url: str, max_calls: int) -> None:
    """Fills `report` as it goes, so that a failure leaves what came before."""
    tool, arguments = report["tool"], report["arguments"]
    # The call in flight and what it raised, for an error that escapes the
    # client context instead of being raised by the call.
    state: dict[str, Any] = {"in_call": False, "call_raised": None}

    async def on_progress(_progress: float, _total: float | None, _message: str | None) -> None:
        report["progress"] += 1

    async def call(name: str, args: dict[str, Any]) -> Any:
        state["in_call"] = True
        try:
            return await session.call_tool(name, args, progress_callback=on_progress)
        except BaseException as exc:
            state["call_raised"] = type(exc).__name__
            raise
        finally:
            state["in_call"] = False

    try:
        with warnings.catch_warnings():
            # streamablehttp_client is deprecated in favour of
            # streamable_http_client in the newest 1.x; it is the API every
            # 1.x release has, and runs the same transport.
            warnings.simplefilter("ignore", DeprecationWarning)
            client = streamablehttp_client(url, httpx_client_factory=wire.client_factory)
        async with client as (read, write, get_session_id):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                report["protocol_version"] = init.protocolVersion
                report["session_id"] = get_session_id() is not None
                report["tools"] = [t.name for t in (await session.list_tools()).tools]
                for _ in range(max_calls):
                    report["attempts"] += 1
                    try:
                        result = await call(tool, arguments)
                    except Exception as exc:  # what the SDK raises is the point
                        report["error"] = describe_error(exc, "call")
                        report["error"]["call_raised"] = type(exc).__name__
                        break
                    if result.isError:
                        report["error"] = {
                            "type": "CallToolResult.isError",
                            "module": None,
                            "code": None,
                            "message": content_text(result),
                            "data": None,
                            "http_status": None,
                            "surfaced": "call",
                            "raised_as": None,
                            "call_raised": None,
                        }
                        break
                    report["allowed"] += 1
                if report["error"] is not None:
                    after: dict[str, Any] = {"tool": AFTER_TOOL, "ok": False, "error": None, "attempted": True}
                    report["after"] = after
                    report["attempts"] += 1
                    try:
                        result = await call(AFTER_TOOL, {"city": "Oslo"})
                        after["ok"] = not result.isError
                        after["text"] = content_text(result)
                    except Exception as exc:
                        after["error"] = describe_error(exc, "call")
                    report["session_survived"] = after["ok"]
    except BaseException as exc:
        # Escaped the client context during a tool call: the SDK's answer
        # to that call. Anything else is a failure of the run.
        escaped_during_call = state["call_raised"] is not None and report["tools"]
        if report["error"] is None and escaped_during_call and isinstance(exc, Exception):
            report["error"] = describe_error(unwrap(exc), "context", exc)
            report["error"]["call_raised"] = state["call_raised"]
            report["after"] = {"tool": AFTER_TOOL, "ok": False, "error": None, "attempted": False}
            report["session_survived"] = False
            report["escaped_traceback"] = traceback.format_exception(unwrap(exc))
        else:
            raise


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="the MCP endpoint, e.g. http://127.0.0.1:10000/mcp")
    p.add_argument("scenario", choices=["direct", "call_tool"])
    p.add_argument("--max-calls", type=int, default=10, help="stop after this many allowed calls (default 10)")
    args = p.parse_args(argv)
    tool, arguments = scenario_call(args.scenario)
    report: dict[str, Any] = {
        "sdk": "mcp (python)",
        "sdk_version": importlib.metadata.version("mcp"),
        "api": "streamablehttp_client + ClientSession",
        "scenario": args.scenario,
        "tool": tool,
        "arguments": arguments,
        "protocol_version": None,
        "session_id": None,
        "tools": [],
        "allowed": 0,
        "attempts": 0,
        "progress": 0,
        "error": None,
        "after": None,
        "session_survived": None,
        "wire": None,
        "failure": None,
    }
    wire = Wire()
    try:
        asyncio.run(run(report, wire, args.url, args.max_calls))
    except Exception as exc:  # the session itself failed: report that too
        inner = unwrap(exc)
        report["failure"] = describe_error(inner, "context", exc)
        report["traceback"] = traceback.format_exception(inner)
    wire.report(report, (tool, AFTER_TOOL))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What the Python SDK clients of the tests record on the wire: every
`tools/call` POST with the HTTP status and content type of its answer.
Shared by `python_client.py` (SDK 2.x, httpx2) and `py1/client.py` (SDK 1.x,
httpx); it imports neither.
"""

from __future__ import annotations

import json
from typing import Any


class Wire:
    """Records every `tools/call` POST with the HTTP status and content type
    of its answer, as event hooks of the SDK's HTTP client. `not_read` is
    the HTTP library's error for a request body that was not read."""

    def __init__(self, not_read: type[BaseException]) -> None:
        self.tools_call: list[dict[str, Any]] = []
        self._pending: dict[int, dict[str, Any]] = {}
        self._not_read = not_read

    async def on_request(self, request: Any) -> None:
        if request.method != "POST":
            return
        try:
            body = json.loads(request.content or b"null")
        except (ValueError, self._not_read):
            return
        if isinstance(body, dict) and body.get("method") == "tools/call":
            params = body.get("params") or {}
            entry = {"id": body.get("id"), "tool": params.get("name"), "status": None, "content_type": None}
            self.tools_call.append(entry)
            self._pending[id(request)] = entry

    async def on_response(self, response: Any) -> None:
        entry = self._pending.pop(id(response.request), None)
        if entry is not None:
            entry["status"] = response.status_code
            entry["content_type"] = response.headers.get("content-type")

    def report(self, report: dict[str, Any], tools: tuple[str, ...]) -> None:
        """Adds the `tools/call` POSTs of `tools` as sent to `report` (more
        POSTs than attempts means the SDK sent some call again by itself)
        and prints it, one JSON line."""
        calls = [c for c in self.tools_call if c["tool"] in tools]
        report["wire"] = {"tools_call": calls, "sdk_retried": len(calls) > report["attempts"]}
        print(json.dumps(report), flush=True)

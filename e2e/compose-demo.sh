#!/usr/bin/env bash
# Shows the filter denying MCP tool calls in the Docker Compose stack:
#
#   make build
#   docker compose -f e2e/docker-compose.yml up --build     # terminal 1
#   e2e/compose-demo.sh                                     # terminal 2
#
# It opens an MCP session through Envoy (127.0.0.1:10000), calls search_docs
# until envoy/ratelimit.yaml's limit (3 a minute) is hit, then calls it
# through the call_tool meta-tool (same bucket) and calls get_weather (its
# own bucket). Exits 0 once a call was denied with HTTP 429, 1 otherwise.
# MCP_URL and ADMIN_URL override the addresses.
set -euo pipefail

MCP_URL=${MCP_URL:-http://127.0.0.1:10000/mcp}
ADMIN_URL=${ADMIN_URL:-http://127.0.0.1:9901}

ready=0
for _ in $(seq 1 120); do
  if curl -fsS -o /dev/null "$ADMIN_URL/ready" 2>/dev/null; then ready=1; break; fi
  sleep 0.5
done
if [[ $ready != 1 ]]; then
  echo "Envoy is not ready at $ADMIN_URL: is 'docker compose -f e2e/docker-compose.yml up' running?" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
session=""
protocol=""
denied=0

# The value of a response header of the last call.
header() {
  grep -i "^$1:" "$tmp/headers" | tail -n 1 | cut -d: -f2- | tr -d ' \r' || true
}

# post LABEL JSON: POSTs one JSON-RPC message and prints what came back.
post() {
  local args=(-sS -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' -X POST "$MCP_URL"
    -H 'content-type: application/json'
    -H 'accept: application/json, text/event-stream')
  [[ -n $session ]] && args+=(-H "mcp-session-id: $session")
  [[ -n $protocol ]] && args+=(-H "mcp-protocol-version: $protocol")
  local status retry
  status=$(curl "${args[@]}" --data-binary "$2")
  retry=$(header retry-after)
  printf '  %-44s -> HTTP %s%s\n' "$1" "$status" "${retry:+ (Retry-After: $retry)}"
  if [[ $status == 429 ]]; then
    denied=1
    printf '     %s\n' "$(cat "$tmp/body")"
  elif [[ $status != 2?? ]]; then
    printf '     %s\n' "$(head -c 300 "$tmp/body")"
  fi
}

call() { # call ID LABEL TOOL ARGUMENTS
  post "$2" "{\"jsonrpc\":\"2.0\",\"id\":$1,\"method\":\"tools/call\",\"params\":{\"name\":\"$3\",\"arguments\":$4}}"
}

echo "MCP endpoint: $MCP_URL"
post "initialize (never rate-limited)" \
  '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"compose-demo","version":"1.0.0"}}}'
session=$(header mcp-session-id)
protocol=$(grep -o '"protocolVersion":"[^"]*"' "$tmp/body" | head -n 1 | cut -d'"' -f4 || true)
post "notifications/initialized" '{"jsonrpc":"2.0","method":"notifications/initialized"}'
for i in 1 2 3 4; do
  call $((i + 1)) "tools/call search_docs #$i" search_docs '{"query":"envoy"}'
done
call 6 "tools/call call_tool -> search_docs" call_tool \
  '{"tool_name":"search_docs","parameters":{"query":"envoy"}}'
call 7 "tools/call get_weather (its own bucket)" get_weather '{"city":"Lisbon"}'

echo
echo "Filter counters:"
curl -fsS "$ADMIN_URL/stats?filter=wasmcustom.mcp_ratelimit" | sed 's/^/  /'
if [[ $denied != 1 ]]; then
  echo "no call was denied: check the ratelimit container's logs" >&2
  exit 1
fi

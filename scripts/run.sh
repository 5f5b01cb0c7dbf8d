#!/usr/bin/env bash
# Starts the local stack of `make run` and shows a per-tool limit being hit:
#
#   curl -> Envoy :10000 -> [mcp-ratelimit] -> mcp-upstream :8082
#                                 |
#                                 +-> dev-rls :8081 (limits: envoy/ratelimit.yaml)
#
# Ctrl-C stops everything it started. With --once it stops after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY=${ENVOY_BIN:-.venv/bin/envoy}
DEV_RLS=${DEV_RLS_BIN:-target/release/dev-rls}
UPSTREAM=${MCP_UPSTREAM_BIN:-target/release/mcp-upstream}
LOGS=target/run
ONCE=false
[ "${1:-}" = "--once" ] && ONCE=true

for bin in "$ENVOY" "$DEV_RLS" "$UPSTREAM" target/mcp_ratelimit.wasm; do
  [ -e "$bin" ] || { echo "missing $bin: run 'make build' first" >&2; exit 1; }
done
for port in 10000 9901 8081 8082; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is in use; stop what listens there and retry" >&2
    exit 1
  fi
done

mkdir -p "$LOGS"
pids=()
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped Envoy, dev-rls and mcp-upstream"
}
trap stop EXIT
trap 'exit 130' INT TERM

"$DEV_RLS" --config envoy/ratelimit.yaml --listen 127.0.0.1:8081 >"$LOGS/dev-rls.log" 2>&1 &
pids+=($!)
"$UPSTREAM" --listen 127.0.0.1:8082 >"$LOGS/mcp-upstream.log" 2>&1 &
pids+=($!)
"$ENVOY" -c envoy/envoy.yaml --concurrency 1 --disable-hot-restart --log-level warn \
  >"$LOGS/envoy.log" 2>&1 &
pids+=($!)

ready=false
for _ in $(seq 100); do
  if curl -fs http://127.0.0.1:9901/ready >/dev/null 2>&1 &&
     (exec 3<>/dev/tcp/127.0.0.1/8081) 2>/dev/null &&
     (exec 3<>/dev/tcp/127.0.0.1/8082) 2>/dev/null; then
    ready=true; break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a process exited early; logs in $LOGS/" >&2; tail -n 20 "$LOGS"/*.log >&2; exit 1; }
  done
  sleep 0.1
done
$ready || { echo "the stack did not become ready; logs in $LOGS/" >&2; exit 1; }

# The limits use minute windows aligned to the clock: keep the demo's calls
# inside one window.
[ "$(date +%S)" -lt 57 ] || sleep 4

URL=http://127.0.0.1:10000/mcp
mcp() { # mcp BODY [extra curl args]: POST one JSON-RPC message, print status + body
  local body=$1; shift
  curl -s -o "$LOGS/last-body" -D "$LOGS/last-headers" -w '%{http_code}' "$URL" \
    -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
    -H 'mcp-protocol-version: 2025-06-18' "$@" -d "$body"
}
call() { # call ID TOOL: tools/call of TOOL
  mcp "{\"jsonrpc\":\"2.0\",\"id\":$1,\"method\":\"tools/call\",\"params\":{\"name\":\"$2\",\"arguments\":{\"query\":\"envoy\"}}}"
}
show() { # show LABEL STATUS
  local retry; retry=$(sed -n 's/^retry-after: *//Ip' "$LOGS/last-headers" | tr -d '\r')
  printf '  %-44s -> HTTP %s%s\n     %s\n' "$1" "$2" "${retry:+ (Retry-After: $retry)}" "$(cat "$LOGS/last-body")"
}

echo "mcp-ratelimit is in front of an MCP server at $URL"
echo "limits (envoy/ratelimit.yaml): search_docs 3/minute, every other tool 60/minute"
echo
status=$(mcp '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}')
show "initialize (never rate-limited)" "$status"
for i in 1 2 3 4; do
  status=$(call "$i" search_docs)
  show "tools/call search_docs #$i" "$status"
done
status=$(mcp '{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs","parameters":{"query":"envoy"}}}}')
show "tools/call call_tool -> search_docs" "$status"
status=$(call 6 get_weather)
show "tools/call get_weather (its own bucket)" "$status"
echo
echo "The 4th search_docs call and the call_tool call that wraps it share one"
echo "bucket and were denied before reaching the MCP server."

if $ONCE; then exit 0; fi
cat <<TXT

Try it yourself (the window resets at the start of each minute):
  curl -s $URL -H 'content-type: application/json' \\
    -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{}}}'
  curl -s $URL -H 'content-type: application/json' \\
    -d '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs"}}}'
  curl -s http://127.0.0.1:9901/stats | grep mcp_ratelimit     # the filter's counters
  curl -s http://127.0.0.1:8082/__upstream/stats               # what the MCP server received
Logs: $LOGS/. Press Ctrl-C to stop.
TXT
while :; do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a process exited; logs in $LOGS/" >&2; exit 1; }
  done
  sleep 1
done

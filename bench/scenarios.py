"""The scenarios of `make bench`: for each, the request wrk sends (a Lua
script), the limits the rate-limit services load, and the Envoy
configurations compared under that same load.

Every configuration is built from a file of the repository: the plain
router and the filter from the shipped envoy/envoy.yaml (access log off,
the filter's configuration replaced by the one named here), the filter
behind Envoy's buffer filter from envoy/envoy-buffer-filter.yaml, and the
native peer from bench/envoy-native.yaml. Ports are set by bench.py.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Largest body the filter buffers by default (its `max_body_bytes`): the
# "1 MB" body stays just under it.
MAX_BODY_BYTES = 1048576
# How long the filter may keep an OVER_LIMIT answer in the flood scenario.
FLOOD_CACHE_MS = 1000
# Requests a descriptor's lease covers in the lease scenario.
LEASE = 100

ACCEPT = "application/json, text/event-stream"


@dataclass
class Config:
    """One Envoy configuration of a scenario.

    kind: "router", "native" or "filter" (how it is built, and which
    counters it has). calls: the rate-limit calls expected per request,
    checked on every window: "none", "one" (one call per request, each
    answered), "cached" (at most 1 call per 10 requests: denials come
    from the filter's over-limit cache) or "lease" (fewer calls than half
    the requests: most spend from the lease; the target, 1 per LEASE / 2,
    is reported, not checked). needs: filter configuration keys the
    module must accept; a module that refuses one of them (an older
    build) skips the configuration, with the reason in the results."""
    id: str
    label: str
    kind: str
    calls: str
    plugin: dict = field(default_factory=dict)
    base: str = "shipped"
    native_whole_body: bool = False
    needs: tuple = ()
    note: str = ""

    @property
    def uses_service(self):
        return self.kind != "router"


@dataclass
class Scenario:
    name: str
    title: str
    description: str
    body: str            # one request's body, as sent
    lua: str             # the whole wrk script
    limits: str          # the rate-limit services' limits file
    configs: list
    expect: str = "2xx"  # "2xx": every answer 2xx; "429": every answer 429
    messages: int = 1
    note: str = ""
    connections: int = None  # wrk connections, when not --connections
    # The rate-limit call's timeout of every configuration (filter and
    # native alike), when not the shipped 100 ms.
    rls_timeout_ms: int = None

    @property
    def body_bytes(self):
        return len(self.body.encode())


def tools_call(tool, size=None, msg_id=1, arguments=None):
    """A tools/call of `tool`, padded in params.arguments to exactly `size`
    bytes when size is given."""
    args = dict(arguments or {"query": "envoy rate limits"})
    if size is None:
        return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call",
                           "params": {"name": tool, "arguments": args}}, separators=(",", ":"))
    args["padding"] = ""
    empty = tools_call(tool, None, msg_id, args)
    assert size >= len(empty), (size, len(empty))
    args["padding"] = "x" * (size - len(empty))
    body = tools_call(tool, None, msg_id, args)
    assert len(body) == size
    return body


def lua(body, headers=None, count_statuses=False):
    """A wrk script that POSTs `body`. A long run of padding is sent as
    string.rep, so that a 1 MB body does not make a 1 MB script.
    count_statuses: also count answers by HTTP status, printed by `done`
    as `statuses: 429=N ...` (wrk alone counts only non-2xx)."""
    hdrs = {"content-type": "application/json", "accept": ACCEPT, **(headers or {})}
    out = ['wrk.method = "POST"']
    out += [f'wrk.headers["{k}"] = "{v}"' for k, v in hdrs.items()]
    run = body.find("x" * 64)
    if run >= 0:
        end = run
        while end < len(body) and body[end] == "x":
            end += 1
        out.append(f'wrk.body = {json.dumps(body[:run])} .. string.rep("x", {end - run}) .. {json.dumps(body[end:])}')
    else:
        out.append(f"wrk.body = {json.dumps(body)}")
    if count_statuses:
        out.append("""\
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("statuses")) do total[s] = (total[s] or 0) + n end
  end
  local parts = {}
  for s, n in pairs(total) do parts[#parts + 1] = s .. "=" .. n end
  io.write("statuses: " .. table.concat(parts, " ") .. "\\n")
end""")
    return "\n".join(out) + "\n"


def limits(*entries):
    """A limits file in envoyproxy/ratelimit's format (dev-rls reads the
    same): domain mcp, one `key: tool` descriptor per (value, unit, n);
    value None is the default for every other tool."""
    out = ["domain: mcp", "descriptors:"]
    for value, unit, n in entries:
        out.append("  - key: tool")
        if value is not None:
            out.append(f"    value: {value}")
        out.append(f"    rate_limit: {{unit: {unit}, requests_per_unit: {n}}}")
    return "\n".join(out) + "\n"


# Never limited: every request makes the full rate-limit call and is let
# through.
ALLOWED = limits((None, "day", 4000000000))

ROUTER = Config("router", "router only", "router", "none")
NATIVE = Config("native", "native mcp + ratelimit", "native", "one")
FILTER = Config("filter", "mcp-ratelimit", "filter", "one")


def body_size_scenario(name, title, size, label):
    body = tools_call("search_docs", size)
    return Scenario(
        name, title,
        f"An allowed tools/call of {label} ({size:,} bytes, the bulk in params.arguments), never limited.",
        body, lua(body), ALLOWED,
        [ROUTER,
         Config("native", "native mcp + ratelimit", "native", "one",
                note="as shipped: Envoy's mcp filter parses the first 8 KB of the body (its default "
                     "max_request_body_size, 8192) and passes the rest unparsed; it finds params.name, "
                     "which comes first"),
         Config("native-whole-body", "native mcp + ratelimit, whole body parsed", "native", "one",
                native_whole_body=True,
                note="max_request_body_size: 2097152, so that the native filter parses the whole body, "
                     "as mcp-ratelimit does"),
         FILTER],
        note="Envoy's mcp filter parses only the first 8 KB of a body by default: a tool name placed "
             "after the bulk is not seen, and such a request escapes its limit (its rate-limit call "
             "carries no descriptor). The rate-limit timeout is 1 s in this scenario, for every "
             "configuration: under 32 connections of large bodies on one worker, answers queue past "
             "the shipped 100 ms, and a request let through on a timeout would measure the timeout.",
        rls_timeout_ms=1000)


BATCH_TOOLS = ["search_docs", "get_weather"] * 5


def _batch():
    return json.dumps([json.loads(tools_call(tool, msg_id=i + 1)) for i, tool in enumerate(BATCH_TOOLS)],
                      separators=(",", ":"))


def _scenarios():
    one_k = tools_call("search_docs", 1024)
    batch = _batch()
    flood = tools_call("flood_tool")
    hot = tools_call("get_weather", arguments={"city": "Paris"})
    modern = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "search_docs"}
    fast_body = tools_call("search_docs", 1024)
    return [
        Scenario(
            "allowed-1k", "allowed 1 KB tools/call",
            "An allowed ~1 KB tools/call, never limited: every request makes the full rate-limit "
            "call and reaches the MCP server.",
            one_k, lua(one_k), ALLOWED,
            [ROUTER, NATIVE, FILTER,
             Config("filter-uncached", "mcp-ratelimit, no over-limit cache", "filter", "one",
                    plugin={"over_limit_cache": False}, needs=("over_limit_cache",),
                    note="what the over-limit cache's lookup (one shared-data read per descriptor) "
                         "costs an allowed request"),
             Config("filter-buffer", "mcp-ratelimit + buffer filter", "filter", "one", base="buffer",
                    note="envoy/envoy-buffer-filter.yaml: hold_headers false, Envoy's buffer filter "
                         "after the filter (for proxies without allow_on_headers_stop_iteration)")]),
        body_size_scenario("allowed-64k", "allowed 64 KB tools/call", 65536, "64 KB"),
        body_size_scenario("allowed-1m", "allowed 1 MB tools/call", MAX_BODY_BYTES - 576, "~1 MB"),
        Scenario(
            "batch", "2025-03-26 batch of 10 tools/call",
            "A JSON-RPC batch (MCP 2025-03-26, no MCP-Protocol-Version header) of 10 tools/call "
            "messages, 5 of search_docs and 5 of get_weather, never limited.",
            batch, lua(batch), ALLOWED,
            [Config("native", "native mcp + ratelimit", "native", "one",
                    note="Envoy's mcp filter leaves a batch unparsed: the ratelimit filter still makes "
                         "one call per request, with no descriptor, so none of the 10 calls is counted"),
             Config("filter", "mcp-ratelimit", "filter", "one",
                    note="one call per batch: 2 descriptors (one per tool), each with hits_addend 5")],
            messages=len(BATCH_TOOLS),
            note="Native Envoy does not rate-limit batches per message: its row measures a request "
                 "that counts nothing."),
        Scenario(
            "denied-flood", "denied flood",
            "One tool over its limit (flood_tool, 1 a day), hammered: every answer is a 429, and no "
            "request reaches the MCP server.",
            flood, lua(flood, count_statuses=True),
            limits((None, "day", 4000000000), ("flood_tool", "day", 1)),
            [NATIVE,
             Config("filter-cached", "mcp-ratelimit, over-limit cache", "filter", "cached",
                    plugin={"over_limit_cache": True, "over_limit_cache_max_ms": FLOOD_CACHE_MS},
                    needs=("over_limit_cache", "over_limit_cache_max_ms"),
                    note=f"an OVER_LIMIT answer is kept for at most {FLOOD_CACHE_MS} ms; requests for "
                         "the same descriptor meanwhile are denied without a call"),
             Config("filter-uncached", "mcp-ratelimit, no over-limit cache", "filter", "one",
                    plugin={"over_limit_cache": False}, needs=("over_limit_cache",))],
            expect="429"),
        Scenario(
            "fast-path", "header fast path (MCP 2026-07-28 headers)",
            "The allowed ~1 KB tools/call with its MCP 2026-07-28 routing headers (MCP-Protocol-Version, "
            "Mcp-Method, Mcp-Name), never limited.",
            fast_body, lua(fast_body, headers=modern), ALLOWED,
            [NATIVE,
             Config("filter", "mcp-ratelimit (body parsed, headers checked against it)", "filter", "one"),
             Config("filter-fast-path", "mcp-ratelimit, header fast path", "filter", "one",
                    plugin={"header_fast_path": True},
                    note="judged by its headers alone: the body is passed on unparsed")]),
        Scenario(
            "lease", "leased quota on a hot descriptor",
            f"A small tools/call of one hot tool (get_weather, 100,000,000 a minute, at least 100 times "
            f"the lease of {LEASE}), never limited.",
            hot, lua(hot), limits((None, "day", 4000000000), ("get_weather", "minute", 100000000)),
            [NATIVE,
             Config("filter-lease", f"mcp-ratelimit, lease {LEASE}", "filter", "lease",
                    plugin={"descriptors": [{"name": "tool", "entries": [{"key": "tool", "mcp": "tool"}],
                                             "lease": LEASE}]},
                    needs=("lease",),
                    note=f"one call takes {LEASE} hits at once; the next requests spend them locally"),
             Config("filter-no-lease", "mcp-ratelimit, no lease", "filter", "one",
                    plugin={"descriptors": [{"name": "tool", "entries": [{"key": "tool", "mcp": "tool"}]}]})],
            note="Native Envoy has no leases: it makes one call per request."),
    ]


SCENARIOS = {s.name: s for s in _scenarios()}


# -- Envoy configurations -------------------------------------------------

_VALUE = "                  value: |\n"
_VALUE_END = "\n                    }\n"


def _without_access_log(text):
    if "          access_log:\n" not in text:
        return text
    start = text.index("          access_log:\n")
    end = text.index("          route_config:", start)
    return text[:start] + text[end:]


def _plugin(text):
    """(start, end, configuration) of the filter's JSON configuration
    block in an Envoy config of the repository."""
    start = text.index(_VALUE) + len(_VALUE)
    end = text.index(_VALUE_END, start) + len(_VALUE_END)
    return start, end, json.loads(text[start:end])


def base_plugin():
    """The shipped filter configuration, as measured: envoy/envoy.yaml's,
    without `filter_state` (the access log it feeds is off)."""
    _, _, plugin = _plugin((ROOT / "envoy/envoy.yaml").read_text())
    plugin.pop("filter_state", None)
    return plugin


def envoy_yaml(config, rls_timeout_ms=None):
    """The Envoy config of a Config, with the repository's ports (9901,
    10000, 8081, 8082) and module path, which bench.py replaces."""
    if config.kind == "native":
        text = (ROOT / "bench/envoy-native.yaml").read_text()
        if config.native_whole_body:
            anchor = '"@type": type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp\n'
            assert anchor in text
            text = text.replace(anchor, anchor + "              max_request_body_size: 2097152\n")
        if rls_timeout_ms:
            assert "              timeout: 0.1s\n" in text
            text = text.replace("              timeout: 0.1s\n", f"              timeout: {rls_timeout_ms / 1000}s\n")
        return text
    shipped = _without_access_log((ROOT / "envoy/envoy.yaml").read_text())
    if config.kind == "router":
        start = shipped.index("          - name: envoy.filters.http.wasm")
        end = shipped.index("          - name: envoy.filters.http.router")
        return shipped[:start] + shipped[end:]
    text = shipped if config.base == "shipped" else \
        _without_access_log((ROOT / "envoy/envoy-buffer-filter.yaml").read_text())
    plugin = plugin_json(config, rls_timeout_ms)
    start, end, _ = _plugin(text)
    return text[:start] + "                    " + json.dumps(plugin, separators=(",", ":")) + "\n" + text[end:]


def plugin_json(config, rls_timeout_ms=None):
    """The filter configuration a Config runs with."""
    if config.kind != "filter":
        return None
    text = (ROOT / ("envoy/envoy.yaml" if config.base == "shipped" else "envoy/envoy-buffer-filter.yaml")).read_text()
    _, _, plugin = _plugin(text)
    plugin.pop("filter_state", None)
    plugin.update(config.plugin)
    if rls_timeout_ms:
        plugin["timeout_ms"] = rls_timeout_ms
    return plugin

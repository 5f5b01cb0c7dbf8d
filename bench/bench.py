#!/usr/bin/env python3
"""`make bench`: Envoy's CPU cost per MCP request with mcp-ratelimit, against
a plain router and against Envoy's native mcp + ratelimit filters.

Every configuration runs the real Envoy 1.40 (1 worker) in front of the same
mcp-upstream, under the same wrk load (a ~1 KB `tools/call` that is never
limited). Each configuration that calls a rate-limit service runs once per
service of `--rls`: dev-rls (development, counters in memory) and
envoyproxy/ratelimit + Redis (the production stack), the native peer always
calling the same service as the filter it is compared with. wrk, the
services and the upstream share the machine's cores with Envoy, so the
figures are CPU-cost comparisons valid as ratios within one run, not
capacity claims. Envoy's CPU per request, and the service's (dev-rls, or
ratelimit + Redis together), come from /proc/<pid>/stat (user + system time)
over the measured window. Rate-limit calls and their outcomes come from
Envoy's own counters, the same for every configuration and service: calls
from the rate-limit cluster's `upstream_rq_total`, and answers (ok or over
limit) and requests let through on a failure (`failure_mode_allowed`) from
the filter's stats, the native filter's or mcp-ratelimit's.

Each round runs every configuration once, in an order rotated from round to
round; the summary gives each configuration's median and its min-max over
the rounds (never the best round). `--smoke` takes one short round and fails
unless every configuration served only 2xx answers, and every filter
configuration made exactly one rate-limit call per request, answered by the
service (not failed open) - with each service of `--rls`.
"""
import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from services import RLS, cpu_seconds, free_port, http_get, start, stop

ROOT = Path(__file__).resolve().parent.parent

LIMITS = """\
domain: mcp
descriptors:
  - key: tool
    rate_limit: {unit: day, requests_per_unit: 4000000000}
"""

BODY = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "tools/call",
    "params": {"name": "search_docs", "arguments": {"query": "envoy rate limits", "padding": "x" * 900}},
}, separators=(",", ":"))

LUA = """\
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["accept"] = "application/json, text/event-stream"
wrk.body = [[%s]]
""" % BODY

# The same request as an MCP 2026-07-28 client sends it, with its routing
# headers, for the header fast path.
MODERN_LUA = LUA + """\
wrk.headers["mcp-protocol-version"] = "2026-07-28"
wrk.headers["mcp-method"] = "tools/call"
wrk.headers["mcp-name"] = "search_docs"
"""

FAST_PLUGIN = '{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":100,"header_fast_path":true}'

# Counters read from Envoy's admin /stats before and after each measured
# window. Calls: the rate-limit cluster's requests (one gRPC call each),
# whichever filter made them and whichever service answered. Answers and
# fail-opens: the native ratelimit filter's stats (under the route's
# cluster) and mcp-ratelimit's (Wasm custom metrics); a configuration has
# one filter or none, the other's counters are absent and count 0.
CALLS = ("cluster.ratelimit.upstream_rq_total",)
ANSWERS = ("cluster.mcp_server.ratelimit.ok", "cluster.mcp_server.ratelimit.over_limit",
           "wasmcustom.mcp_ratelimit.ok", "wasmcustom.mcp_ratelimit.over_limit")
FAILED_OPEN = ("cluster.mcp_server.ratelimit.failure_mode_allowed",
               "wasmcustom.mcp_ratelimit.failure_mode_allowed")


def configs(rls_ports, up_port, listen, admin, wasm):
    """(configuration, service) -> (Envoy config, wrk script), for each
    service of `rls_ports` (name -> gRPC port). The plain router calls no
    service: it runs once, with service None."""
    def ports(text, rls_port):
        for a, b in (("port_value: 10000", listen), ("port_value: 9901", admin),
                     ("port_value: 8081", rls_port), ("port_value: 8082", up_port)):
            assert a in text, a
            text = text.replace(a, f"port_value: {b}")
        return text.replace("filename: target/mcp_ratelimit.wasm", f"filename: {wasm}")

    # The shipped config writes an access log line per request with the
    # filter's record (`filter_state`); the native peer's config logs
    # nothing. Both are measured without logging, the filter in its default
    # configuration.
    shipped = (ROOT / "envoy/envoy.yaml").read_text()
    log_start = shipped.index("          access_log:\n")
    log_end = shipped.index("          route_config:", log_start)
    shipped = shipped[:log_start] + shipped[log_end:]
    assert ',\n                      "filter_state": true' in shipped
    shipped = shipped.replace(',\n                      "filter_state": true', "")
    block_start = shipped.index("                  value: |\n") + len("                  value: |\n")
    block_end = shipped.index("\n                    }\n", block_start) + len("\n                    }\n")
    fast = shipped[:block_start] + "                    " + FAST_PLUGIN + "\n" + shipped[block_end:]
    start_w = shipped.index("          - name: envoy.filters.http.wasm")
    end_w = shipped.index("          - name: envoy.filters.http.router")
    router = shipped[:start_w] + shipped[end_w:]
    filters = {
        "native mcp + ratelimit": ((ROOT / "bench/envoy-native.yaml").read_text(), "post.lua"),
        "mcp-ratelimit": (shipped, "post.lua"),
        "mcp-ratelimit + buffer filter": ((ROOT / "envoy/envoy-buffer-filter.yaml").read_text(), "post.lua"),
        "mcp-ratelimit, header fast path (2026-07-28 headers)": (fast, "modern.lua"),
    }
    # The router's config keeps the rate-limit cluster, which nothing calls.
    out = {("router only", None): (ports(router, next(iter(rls_ports.values()))), "post.lua")}
    for service, rls_port in rls_ports.items():
        for name, (yaml, lua) in filters.items():
            out[(name, service)] = (ports(yaml, rls_port), lua)
    return out


def envoy_counters(admin):
    """Envoy's counters named in CALLS, ANSWERS and FAILED_OPEN."""
    names = CALLS + ANSWERS + FAILED_OPEN
    regex = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    text = http_get(f"http://127.0.0.1:{admin}/stats?filter=" + urllib.parse.quote(regex))
    values = dict(re.findall(r"^(\S+): (\d+)$", text, re.M))
    return {n: int(values.get(n, 0)) for n in names}


def run_wrk(url, lua, seconds, conns):
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", lua, url],
                         capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return reqs, int(non2xx.group(1)) if non2xx else 0, errors.group(1) if errors else "", lat


def to_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def run_envoy(envoy, yaml, lua, args, listen, admin, service_pids, work, log_name):
    """One measured window of one configuration: start Envoy, warm up,
    measure, stop it. Returns the row's figures."""
    path = work / "envoy.yaml"
    path.write_text(yaml)
    with open(work / log_name, "w") as elog:
        e = subprocess.Popen([envoy, "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                              "--log-level", "warn"], stdout=elog, stderr=elog, start_new_session=True)
    try:
        for _ in range(200):
            try:
                if http_get(f"http://127.0.0.1:{admin}/ready").strip() == "LIVE":
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise SystemExit(f"Envoy was not ready after 10 s; see {work / log_name}")
        url = f"http://127.0.0.1:{listen}/mcp"
        run_wrk(url, lua, max(1, round(args.warmup)), args.connections)  # warm-up
        counters0 = envoy_counters(admin)
        cpu0 = cpu_seconds(e.pid)
        service_cpu0 = sum(cpu_seconds(pid) for pid in service_pids)
        reqs, non2xx, errs, lat = run_wrk(url, lua, args.seconds, args.connections)
        cpu = cpu_seconds(e.pid) - cpu0
        service_cpu = sum(cpu_seconds(pid) for pid in service_pids) - service_cpu0
        counters = envoy_counters(admin)
    finally:
        stop(e)
    delta = {n: counters[n] - counters0[n] for n in counters}
    return dict(rps=reqs / args.seconds, p50=to_ms(lat["50"]), p99=to_ms(lat["99"]),
                cpu_us=cpu / reqs * 1e6, service_cpu_us=service_cpu / reqs * 1e6 if service_pids else None,
                non2xx=non2xx, errors=errs, reqs=reqs,
                rls_calls=sum(delta[n] for n in CALLS),
                rls_answers=sum(delta[n] for n in ANSWERS),
                failed_open=sum(delta[n] for n in FAILED_OPEN))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--rls", default=",".join(RLS),
                    help="the rate-limit services to run every filter configuration against, "
                         f"comma-separated, from {', '.join(RLS)} (default: all)")
    ap.add_argument("--smoke", action="store_true",
                    help="one 1-second round per configuration, checked, for `make test`")
    ap.add_argument("--out", default=str(ROOT / "target/bench/results.md"))
    args = ap.parse_args()
    services = [name.strip() for name in args.rls.split(",") if name.strip()]
    unknown = [name for name in services if name not in RLS]
    if not services or unknown or len(set(services)) != len(services):
        ap.error(f"--rls takes a comma-separated list from {', '.join(RLS)}, each once")
    if args.smoke:
        args.seconds, args.rounds, args.warmup = 1, 1, 1
    envoy = os.environ.get("ENVOY_BIN", str(ROOT / ".venv/bin/envoy"))
    upstream = os.environ.get("MCP_UPSTREAM_BIN", str(ROOT / "target/release/mcp-upstream"))
    wasm = os.environ.get("MCP_RATELIMIT_WASM", str(ROOT / "target/mcp_ratelimit.wasm"))
    work = Path(tempfile.mkdtemp(prefix="mcp-rl-bench-"))
    (work / "limits.yaml").write_text(LIMITS)
    (work / "post.lua").write_text(LUA)
    (work / "modern.lua").write_text(MODERN_LUA)
    log = open(work / "services.log", "w")
    results = {}
    # Everything started here is stopped on the way out, error and Ctrl-C
    # included (each Envoy by run_envoy).
    with contextlib.ExitStack() as running:
        rls = {}
        for name in services:
            rls[name] = RLS[name](work / "limits.yaml", work, log)
            running.callback(rls[name].stop)
        up, up_addr = start([upstream, "--listen", "127.0.0.1:0"], "mcp-upstream listening on", log)
        running.callback(stop, up)
        listen, admin = free_port(), free_port()
        cfgs = configs({name: svc.grpc_port for name, svc in rls.items()},
                       up_addr.rsplit(":", 1)[1], listen, admin, wasm)
        keys = list(cfgs)
        for rnd in range(args.rounds):
            order = keys[rnd % len(keys):] + keys[:rnd % len(keys)]
            for name, service in order:
                yaml, lua = cfgs[(name, service)]
                r = run_envoy(envoy, yaml, str(work / lua), args, listen, admin,
                              rls[service].pids() if service else [], work,
                              f"envoy-{rnd}-{sum(map(len, results.values()))}.log")
                results.setdefault((name, service), []).append(r)
                print(f"round {rnd + 1} {name} [{service or 'no service'}]: {r['rps']:.0f} req/s, "
                      f"{r['cpu_us']:.1f} us Envoy CPU/request, rls calls {r['rls_calls']}/{r['reqs']}, "
                      f"answered {r['rls_answers']}, failed open {r['failed_open']}, "
                      f"non-2xx {r['non2xx']} {r['errors']}", flush=True)
    lines = [
        f"Envoy 1.40.0, 1 worker; wrk -t2 -c{args.connections}, {args.seconds} s x {args.rounds} rounds; "
        f"~{len(BODY)} B tools/call, never limited; {os.cpu_count()} cores shared with wrk, "
        "the rate-limit services and the upstream.",
        "",
        "| configuration | rate-limit service | req/s | p99 ms | Envoy CPU/request | service CPU/request "
        "| RLS calls/request | failed open |",
        "|---|---|---|---|---|---|---|---|",
    ]
    bad = []

    def spread(runs, key, fmt):
        values = [r[key] for r in runs]
        med = statistics.median(values)
        if len(values) == 1:
            return fmt.format(med)
        return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"

    # In configs' order: the router, then one block per service, each
    # filter next to its native peer.
    for name, service in cfgs:
        label = f"{name} [{service}]" if service else name
        runs = results.get((name, service), [])
        calls = sum(r["rls_calls"] for r in runs) / max(1, sum(r["reqs"] for r in runs))
        service_cpu = f"{spread(runs, 'service_cpu_us', '{:.0f}')} µs" if service else "–"
        lines.append(f"| {name} | {rls[service].label if service else '–'} | {spread(runs, 'rps', '{:.0f}')} | "
                     f"{spread(runs, 'p99', '{:.2f}')} | {spread(runs, 'cpu_us', '{:.0f}')} µs | {service_cpu} | "
                     f"{calls:.2f} | {sum(r['failed_open'] for r in runs)} |")
        if any(r["non2xx"] or r["errors"] or not r["reqs"] for r in runs):
            bad.append(label)
        # Every filter configuration makes one rate-limit call per request,
        # and the service answers it: a request let through because the
        # call failed measures the failure, not the service. (Counters are
        # read around the window: in-flight requests may fall either side.)
        if service:
            if any(abs(r["rls_calls"] - r["reqs"]) > 2 * args.connections for r in runs):
                bad.append(f"{label} (rate-limit calls per request)")
            if any(r["rls_answers"] < r["reqs"] - 2 * args.connections for r in runs):
                bad.append(f"{label} (requests not answered by the rate-limit service)")
    lines.append("")
    lines.append(f"(median over {args.rounds} rounds in rotating order, min–max in brackets; service CPU: "
                 "dev-rls, or envoyproxy/ratelimit and Redis together; failed open: requests let through "
                 "without an answer from the service, over all rounds)")
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print()
    print(text)
    print(f"\nwritten to {args.out}; logs in {work}")
    if bad:
        print("failed checks (non-2xx, socket errors, no requests, calls per request, or unanswered calls): "
              + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

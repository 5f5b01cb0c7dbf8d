#!/usr/bin/env python3
"""`make bench`: Envoy's CPU cost per MCP request with mcp-ratelimit, against
a plain router and against Envoy's native mcp + ratelimit filters.

Every configuration runs the real Envoy 1.40 (1 worker) in front of the same
mcp-upstream, calling the same dev-rls, under the same wrk load (a ~1 KB
`tools/call` that is never limited). wrk, dev-rls and the upstream share the
machine's cores with Envoy, so the figures are CPU-cost comparisons valid as
ratios within one run, not capacity claims. Envoy's CPU per request comes
from /proc/<pid>/stat (user + system time) over the measured window.

Each round runs every configuration once, in an order rotated from round to
round; the summary gives each configuration's median and its min-max over
the rounds (never the best round). `--smoke` takes one short round and fails
unless every configuration served only 2xx answers, and every filter
configuration made exactly one rate-limit call per request.
"""
import statistics
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")

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



def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(cmd, ready_line, log):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(ready_line + r" (\S+)", line)
        if m:
            return proc, m.group(1)
    stop(proc)
    raise SystemExit(f"{cmd[0]} did not start; see {log.name}")


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def http_get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def configs(rls_port, up_port, listen, admin, wasm):
    def ports(text):
        for a, b in (("port_value: 10000", listen), ("port_value: 9901", admin),
                     ("port_value: 8081", rls_port), ("port_value: 8082", up_port)):
            assert a in text, a
            text = text.replace(a, f"port_value: {b}")
        return text.replace("filename: target/mcp_ratelimit.wasm", f"filename: {wasm}")

    shipped = (ROOT / "envoy/envoy.yaml").read_text()
    block_start = shipped.index("                  value: |\n") + len("                  value: |\n")
    block_end = shipped.index("\n                    }\n", block_start) + len("\n                    }\n")
    fast = shipped[:block_start] + "                    " + FAST_PLUGIN + "\n" + shipped[block_end:]
    start_w = shipped.index("          - name: envoy.filters.http.wasm")
    end_w = shipped.index("          - name: envoy.filters.http.router")
    router = shipped[:start_w] + shipped[end_w:]
    # name: (Envoy config, wrk script)
    return {
        "router only": (ports(router), "post.lua"),
        "native mcp + ratelimit": (ports((ROOT / "bench/envoy-native.yaml").read_text()), "post.lua"),
        "mcp-ratelimit": (ports(shipped), "post.lua"),
        "mcp-ratelimit + buffer filter": (ports((ROOT / "envoy/envoy-buffer-filter.yaml").read_text()), "post.lua"),
        "mcp-ratelimit, header fast path (2026-07-28 headers)": (ports(fast), "modern.lua"),
    }


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--smoke", action="store_true",
                    help="one 1-second round per configuration, checked, for `make test`")
    ap.add_argument("--out", default=str(ROOT / "target/bench/results.md"))
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.rounds, args.warmup = 1, 1, 1
    envoy = os.environ.get("ENVOY_BIN", str(ROOT / ".venv/bin/envoy"))
    dev_rls = os.environ.get("DEV_RLS_BIN", str(ROOT / "target/release/dev-rls"))
    upstream = os.environ.get("MCP_UPSTREAM_BIN", str(ROOT / "target/release/mcp-upstream"))
    wasm = os.environ.get("MCP_RATELIMIT_WASM", str(ROOT / "target/mcp_ratelimit.wasm"))
    work = Path(tempfile.mkdtemp(prefix="mcp-rl-bench-"))
    (work / "limits.yaml").write_text(LIMITS)
    (work / "post.lua").write_text(LUA)
    (work / "modern.lua").write_text(MODERN_LUA)
    log = open(work / "services.log", "w")
    rls, rls_addr = start([dev_rls, "--config", str(work / "limits.yaml"), "--listen", "127.0.0.1:0",
                           "--admin", "127.0.0.1:0"], "dev-rls listening on", log)
    up, up_addr = None, None
    results = {}
    try:
        rls_admin = re.search(r"dev-rls admin on (\S+)", rls.stdout.readline()).group(1)
        up, up_addr = start([upstream, "--listen", "127.0.0.1:0"], "mcp-upstream listening on", log)
        listen, admin = free_port(), free_port()
        cfgs = configs(rls_addr.rsplit(":", 1)[1], up_addr.rsplit(":", 1)[1], listen, admin, wasm)
        names = list(cfgs)
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                yaml, lua = cfgs[name]
                path = work / "envoy.yaml"
                path.write_text(yaml)
                elog = open(work / f"envoy-{rnd}-{len(results)}.log", "w")
                e = subprocess.Popen([envoy, "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                                      "--log-level", "warn"], stdout=elog, stderr=elog, start_new_session=True)
                try:
                    for _ in range(200):
                        try:
                            if http_get(f"http://127.0.0.1:{admin}/ready").strip() == "LIVE":
                                break
                        except OSError:
                            time.sleep(0.05)
                    url = f"http://127.0.0.1:{listen}/mcp"
                    run_wrk(url, str(work / lua), max(1, round(args.warmup)), args.connections)  # warm-up
                    calls0 = json.loads(http_get(f"http://{rls_admin}/stats"))["calls"]
                    cpu0 = cpu_seconds(e.pid)
                    reqs, non2xx, errs, lat = run_wrk(url, str(work / lua), args.seconds, args.connections)
                    cpu = cpu_seconds(e.pid) - cpu0
                    calls = json.loads(http_get(f"http://{rls_admin}/stats"))["calls"] - calls0
                finally:
                    stop(e)
                r = results.setdefault(name, [])
                r.append(dict(rps=reqs / args.seconds, p50=to_ms(lat["50"]), p99=to_ms(lat["99"]),
                              cpu_us=cpu / reqs * 1e6, non2xx=non2xx, errors=errs, rls_calls=calls, reqs=reqs))
                print(f"round {rnd + 1} {name}: {reqs / args.seconds:.0f} req/s, "
                      f"{cpu / reqs * 1e6:.1f} us Envoy CPU/request, rls calls {calls}/{reqs}, "
                      f"non-2xx {non2xx} {errs}", flush=True)
    finally:
        stop(rls)
        if up:
            stop(up)
    lines = [
        f"Envoy 1.40.0, 1 worker; wrk -t2 -c{args.connections}, {args.seconds} s x {args.rounds} rounds; "
        f"~{len(BODY)} B tools/call, never limited; {os.cpu_count()} cores shared with wrk, dev-rls, upstream.",
        "",
        "| configuration | req/s | p99 ms | Envoy CPU/request | RLS calls/request |",
        "|---|---|---|---|---|",
    ]
    bad = []

    def spread(runs, key, fmt):
        values = [r[key] for r in runs]
        med = statistics.median(values)
        if len(values) == 1:
            return fmt.format(med)
        return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"

    for name in cfgs:
        runs = results.get(name, [])
        calls = sum(r["rls_calls"] for r in runs) / max(1, sum(r["reqs"] for r in runs))
        lines.append(f"| {name} | {spread(runs, 'rps', '{:.0f}')} | {spread(runs, 'p99', '{:.2f}')} | "
                     f"{spread(runs, 'cpu_us', '{:.0f}')} µs | {calls:.2f} |")
        if any(r["non2xx"] or r["errors"] or not r["reqs"] for r in runs):
            bad.append(name)
        # Every filter configuration makes one rate-limit call per request.
        if name.startswith("mcp-ratelimit") or name.startswith("native"):
            if any(abs(r["rls_calls"] - r["reqs"]) > 2 * args.connections for r in runs):
                bad.append(f"{name} (rate-limit calls per request)")
    lines.append("")
    lines.append(f"(median over {args.rounds} rounds in rotating order, min–max in brackets)")
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print()
    print(text)
    print(f"\nwritten to {args.out}; logs in {work}")
    if bad:
        print("failed checks (non-2xx, socket errors, no requests, or calls per request): "
              + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

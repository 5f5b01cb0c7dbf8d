#!/usr/bin/env python3
"""`make bench`: what Envoy spends per MCP request with mcp-ratelimit,
against a plain router and against Envoy's native mcp + ratelimit filters,
in the scenarios of bench/scenarios.py (allowed bodies of 1 KB, 64 KB and
1 MB, a batch, a denied flood, the header fast path, leased quota).

Every configuration runs the real Envoy (1 worker) in front of the same
mcp-upstream, under the same wrk load within a scenario (same script,
threads, connections and durations). Each configuration that calls a
rate-limit service runs once per service of `--rls`: dev-rls (counters in
memory) and envoyproxy/ratelimit + Redis (the production stack), the native
peer always calling the same service as the filter it is compared with.
The services are started anew for each scenario, with its limits. wrk, the
services and the upstream share the machine's cores with Envoy, so the
figures are comparisons valid as ratios within one run, not capacity
claims.

A window: Envoy starts, wrk warms it up, then wrk runs the measured load;
Envoy's CPU (user + system, /proc/<pid>/stat) and the service's are read
around it, and so are Envoy's counters: rate-limit calls from the
rate-limit cluster's `upstream_rq_total`, answers and fail-opens from the
native ratelimit filter's stats and mcp-ratelimit's own (`checked`,
`over_limit`, `over_limit_cached`, `leased`...), requests and bytes from
the listener's. A counter that a configuration does not have reads 0.

Each round runs every configuration of a scenario once, in an order rotated
from round to round; the reports give each configuration's median and its
min-max over the rounds (never the best round). Every window is checked:
the answers (all 2xx, or all 429 in the flood), the rate-limit calls per
request each configuration must make, every call answered by the service
and none failed open. `--smoke` takes one short round of everything, so
that the benchmark cannot rot unseen (`make test`).

Outputs (in --out-dir): results.json (every window, raw), results.md, and
the charts (bench/charts.py, matplotlib). `--write-benchmarks` then
rewrites the generated parts of BENCHMARKS.md and copies the charts to
bench/charts/.
"""
import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from scenarios import SCENARIOS, envoy_yaml, plugin_json  # noqa: E402
from services import RLS, cpu_seconds, free_port, http_get, start, stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Time a window takes beyond wrk's: Envoy's start (the Wasm module is
# compiled on each), its stop, the counters.
WINDOW_OVERHEAD_S = 0.8
# Starting a scenario's services: envoyproxy/ratelimit and Redis take the
# longest.
SERVICE_START_S = 2

# Envoy's counters read around each measured window (absent ones read 0).
COUNTERS = (
    # rate-limit calls, whichever filter made them and whichever service answered
    "cluster.ratelimit.upstream_rq_total",
    # the native ratelimit filter (stats under the route's cluster)
    "cluster.mcp_server.ratelimit.ok", "cluster.mcp_server.ratelimit.over_limit",
    "cluster.mcp_server.ratelimit.error", "cluster.mcp_server.ratelimit.failure_mode_allowed",
    # mcp-ratelimit
    "wasmcustom.mcp_ratelimit.inspected", "wasmcustom.mcp_ratelimit.checked",
    "wasmcustom.mcp_ratelimit.ok", "wasmcustom.mcp_ratelimit.over_limit",
    "wasmcustom.mcp_ratelimit.over_limit_cached", "wasmcustom.mcp_ratelimit.leased",
    "wasmcustom.mcp_ratelimit.error", "wasmcustom.mcp_ratelimit.failure_mode_allowed",
    "wasmcustom.mcp_ratelimit.fast_path",
    # the listener: requests, answers by class, bytes received
    "http.mcp.downstream_rq_total", "http.mcp.downstream_rq_2xx", "http.mcp.downstream_rq_4xx",
    "http.mcp.downstream_rq_5xx", "http.mcp.downstream_cx_rx_bytes_total",
    # requests that reached the MCP server
    "cluster.mcp_server.upstream_rq_total",
)


def envoy_counters(admin):
    regex = "^(" + "|".join(re.escape(n) for n in COUNTERS) + ")$"
    text = http_get(f"http://127.0.0.1:{admin}/stats?filter=" + urllib.parse.quote(regex))
    values = dict(re.findall(r"^(\S+): (\d+)$", text, re.M))
    return {n: int(values.get(n, 0)) for n in COUNTERS}


def with_ports(text, listen, admin, rls_port, up_port, wasm):
    for a, b in (("port_value: 10000", listen), ("port_value: 9901", admin),
                 ("port_value: 8081", rls_port), ("port_value: 8082", up_port)):
        assert a in text, a
        text = text.replace(a, f"port_value: {b}")
    return text.replace("filename: target/mcp_ratelimit.wasm", f"filename: {wasm}")


def run_wrk(url, lua, seconds, connections, args):
    out = subprocess.run(["wrk", f"-t{args.threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", lua, url], capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    statuses = re.search(r"^statuses: (.*)$", out, re.M)
    return dict(reqs=reqs, non2xx=int(non2xx.group(1)) if non2xx else 0,
                socket_errors=errors.group(1) if errors else "",
                p50_ms=to_ms(lat["50"]), p99_ms=to_ms(lat["99"]),
                statuses={k: int(v) for k, v in re.findall(r"(\d+)=(\d+)", statuses.group(1))}
                if statuses else None)


def to_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def wait_ready(admin, proc, log):
    for _ in range(400):
        if proc.poll() is not None:
            raise SystemExit(f"Envoy exited with status {proc.returncode}; see {log}")
        try:
            if http_get(f"http://127.0.0.1:{admin}/ready").strip() == "LIVE":
                return
        except OSError:
            pass
        time.sleep(0.025)
    raise SystemExit(f"Envoy was not ready after 10 s; see {log}")


def run_window(yaml, lua, connections, args, ctx, service_pids, log):
    """One measured window of one configuration: start Envoy, warm up,
    measure, stop it. Returns the window's figures."""
    path = ctx["work"] / "envoy.yaml"
    path.write_text(yaml)
    with open(log, "w") as elog:
        e = subprocess.Popen([ctx["envoy"], "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                              "--log-level", "warn"], stdout=elog, stderr=elog, start_new_session=True)
    try:
        wait_ready(ctx["admin"], e, log)
        url = f"http://127.0.0.1:{ctx['listen']}/mcp"
        run_wrk(url, lua, args.warmup, connections, args)
        counters0 = envoy_counters(ctx["admin"])
        cpu0 = cpu_seconds(e.pid)
        service_cpu0 = sum(cpu_seconds(pid) for pid in service_pids)
        t0 = time.monotonic()
        w = run_wrk(url, lua, args.seconds, connections, args)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(e.pid) - cpu0
        service_cpu = sum(cpu_seconds(pid) for pid in service_pids) - service_cpu0
        counters = envoy_counters(ctx["admin"])
    finally:
        stop(e)
    reqs = max(1, w["reqs"])
    delta = {n: counters[n] - counters0[n] for n in counters}
    return dict(w, seconds=args.seconds, wall_seconds=round(elapsed, 3), rps=w["reqs"] / args.seconds,
                cpu_us=cpu / reqs * 1e6, service_cpu_us=service_cpu / reqs * 1e6 if service_pids else None,
                counters=delta)


def validate(envoy, yaml, work):
    """None if Envoy accepts the config, else the reason (the module's
    message when it refuses its configuration)."""
    path = work / "validate.yaml"
    path.write_text(yaml)
    out = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--log-level", "error"],
                         capture_output=True, text=True)
    if out.returncode == 0:
        return None
    text = out.stdout + out.stderr
    m = re.search(r"invalid plugin configuration: ([^\n]*)", text)
    return m.group(1)[:300] if m else (text.strip().splitlines() or ["?"])[-1][:300]


def machine():
    info = dict(cores=os.cpu_count(), cpu_model=None, kernel=platform.release(), memory_gib=None)
    with contextlib.suppress(OSError, AttributeError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu_model"] = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M).group(1).strip()
    with contextlib.suppress(OSError, AttributeError):
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        info["memory_gib"] = round(kib / 2**20, 1)
    return info


def loadavg():
    with contextlib.suppress(OSError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return None


def version_of(cmd, pattern):
    with contextlib.suppress(OSError, subprocess.SubprocessError, AttributeError):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return re.search(pattern, out.stdout + out.stderr, re.M).group(1)
    return None


def git_state():
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    return None


def measure(args, selected, services):
    envoy = os.environ.get("ENVOY_BIN", str(ROOT / ".venv/bin/envoy"))
    upstream = os.environ.get("MCP_UPSTREAM_BIN", str(ROOT / "target/release/mcp-upstream"))
    wasm = os.environ.get("MCP_RATELIMIT_WASM", str(ROOT / "target/mcp_ratelimit.wasm"))
    work = Path(tempfile.mkdtemp(prefix="mcp-rl-bench-"))
    listen, admin = free_port(), free_port()
    ctx = dict(envoy=envoy, work=work, listen=listen, admin=admin)

    # Configurations that need filter keys an older module refuses are
    # skipped, with its message; any other refusal is an error.
    skipped = {}
    for sc in selected:
        for c in sc.configs:
            if c.needs:
                reason = validate(envoy, with_ports(envoy_yaml(c, sc.rls_timeout_ms), listen, admin, 1, 1, wasm),
                                  work)
                if reason and any(f"unknown field `{k}`" in reason for k in c.needs):
                    skipped[(sc.name, c.id)] = f"the module refuses its configuration ({reason})"
                elif reason:
                    raise SystemExit(f"{sc.name} / {c.label}: Envoy refuses the configuration: {reason}")

    plan = []
    for sc in selected:
        keys = [(c, svc) for c in sc.configs if (sc.name, c.id) not in skipped
                for svc in (services if c.uses_service else [None])]
        plan.append((sc, keys))
    windows = args.rounds * sum(len(k) for _, k in plan)
    estimate = windows * (args.warmup + args.seconds + WINDOW_OVERHEAD_S) + \
        len(selected) * len(services) * SERVICE_START_S
    print(f"{len(selected)} scenarios, {windows} windows ({args.rounds} rounds x "
          f"{sum(len(k) for _, k in plan)} configurations), {args.warmup} s warm-up + {args.seconds} s "
          f"measured each: about {report.duration(round(estimate))}", flush=True)
    load = loadavg()
    if load and load[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: the machine is busy (load average {load[0]} on {os.cpu_count()} cores): the figures "
              "will be noisy, and rate-limit calls may time out", file=sys.stderr, flush=True)
    for (scn, cid), reason in skipped.items():
        print(f"SKIPPED {scn} / {cid}: {reason}", file=sys.stderr, flush=True)

    results = dict(
        meta=dict(
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), smoke=args.smoke, argv=sys.argv[1:],
            machine=machine(), loadavg_start=loadavg(),
            envoy=version_of([envoy, "--version"], r"version: (\S+)"),
            wrk=version_of(["wrk", "-v"], r"^(wrk \S+)"),
            module=dict(bytes=Path(wasm).stat().st_size,
                        sha256=hashlib.sha256(Path(wasm).read_bytes()).hexdigest()),
            commit=git_state(),
            load=dict(threads=args.threads, connections=args.connections, seconds=args.seconds,
                      warmup=args.warmup, rounds=args.rounds),
            services={name: RLS_LABELS.get(name, name) for name in services},
            estimated_seconds=round(estimate)),
        scenarios={}, runs=[])
    for sc in selected:
        results["scenarios"][sc.name] = dict(
            title=sc.title, description=sc.description, note=sc.note, expect=sc.expect,
            body_bytes=sc.body_bytes, messages=sc.messages, limits=sc.limits,
            connections=sc.connections or args.connections, rls_timeout_ms=sc.rls_timeout_ms,
            configs=[dict(id=c.id, label=c.label, kind=c.kind, calls=c.calls, note=c.note,
                          plugin=plugin_json(c, sc.rls_timeout_ms), skipped=skipped.get((sc.name, c.id)))
                     for c in sc.configs])

    t_start = time.monotonic()
    log = open(work / "services.log", "w")
    try:
        run_plan(args, plan, results, ctx, services, upstream, wasm, log)
    except BaseException:
        # What was measured is kept, for a look at what went wrong.
        partial = work / "results.partial.json"
        partial.write_text(json.dumps(results, indent=1) + "\n")
        print(f"stopped; the windows measured so far are in {partial}", file=sys.stderr)
        raise
    results["meta"].update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           elapsed_seconds=round(time.monotonic() - t_start), loadavg_end=loadavg(), logs=str(work))
    return results


def run_plan(args, plan, results, ctx, services, upstream, wasm, log):
    """Every window of the plan, scenario by scenario, each with its own
    rate-limit services; the windows go to results["runs"]."""
    work, listen, admin = ctx["work"], ctx["listen"], ctx["admin"]
    # Everything started here is stopped on the way out, error and Ctrl-C
    # included (each Envoy by run_window).
    with contextlib.ExitStack() as running:
        up, up_addr = start([upstream, "--listen", "127.0.0.1:0"], "mcp-upstream listening on", log)
        running.callback(stop, up)
        up_port = up_addr.rsplit(":", 1)[1]
        for sc, keys in plan:
            if not keys:
                continue
            scenario_dir = work / sc.name
            scenario_dir.mkdir()
            (scenario_dir / "limits.yaml").write_text(sc.limits)
            (scenario_dir / "load.lua").write_text(sc.lua)
            with contextlib.ExitStack() as scenario_services:
                rls = {}
                for name in services:
                    rls[name] = RLS[name](scenario_dir / "limits.yaml", scenario_dir, log)
                    scenario_services.callback(rls[name].stop)
                first = next(iter(rls.values()))
                yamls = {(c.id, svc): with_ports(envoy_yaml(c, sc.rls_timeout_ms), listen, admin,
                                                 (rls[svc] if svc else first).grpc_port, up_port, wasm)
                         for c, svc in keys}
                for rnd in range(args.rounds):
                    shift = rnd % len(keys)
                    for pos, (c, svc) in enumerate(keys[shift:] + keys[:shift]):
                        log_path = scenario_dir / f"envoy-{c.id}-{svc or 'none'}-{rnd + 1}.log"
                        r = run_window(yamls[(c.id, svc)], str(scenario_dir / "load.lua"),
                                       sc.connections or args.connections, args, ctx,
                                       rls[svc].pids() if svc else [], log_path)
                        r.update(scenario=sc.name, config=c.id, service=svc, round=rnd + 1, position=pos + 1)
                        results["runs"].append(r)
                        print(report.window_line(sc, c, r), flush=True)


RLS_LABELS = {"dev-rls": "dev-rls", "ratelimit": "envoyproxy/ratelimit + Redis"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, from {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--rls", default=",".join(RLS),
                    help="the rate-limit services to run every configuration that calls one against, "
                         f"comma-separated, from {', '.join(RLS)} (default: all)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per configuration (default 5)")
    ap.add_argument("--seconds", type=int, default=5, help="measured seconds per window (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up seconds per window (default 1)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--smoke", action="store_true",
                    help="one round of 1 s windows of everything, checked, for `make test` "
                         "(outputs in target/bench/smoke/)")
    ap.add_argument("--out-dir", help="where results.json, results.md and the charts go (default "
                                      "target/bench, target/bench/smoke with --smoke, the results' own "
                                      "directory with --from)")
    ap.add_argument("--from", dest="from_json", metavar="RESULTS_JSON",
                    help="measure nothing: report (results.md, charts, BENCHMARKS.md) from an earlier results.json")
    ap.add_argument("--no-charts", action="store_true", help="do not draw the charts")
    ap.add_argument("--write-benchmarks", action="store_true",
                    help="rewrite the generated parts of BENCHMARKS.md from these results and copy the "
                         "charts to bench/charts/")
    args = ap.parse_args()
    out_dir = Path(args.out_dir or (Path(args.from_json).parent if args.from_json else
                                    ROOT / ("target/bench/smoke" if args.smoke else "target/bench")))
    charts_mod = None
    if not args.no_charts:
        try:
            import charts as charts_mod  # matplotlib, from bench/requirements.txt
        except ImportError as e:
            ap.error(f"the charts need matplotlib ({e}): run `make bench`, which installs it in "
                     "target/bench-venv, and use target/bench-venv/bin/python; or pass --no-charts")

    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if not names or unknown or len(set(names)) != len(names):
            ap.error(f"--scenarios takes a comma-separated list from {', '.join(SCENARIOS)}, each once")
        services = [n.strip() for n in args.rls.split(",") if n.strip()]
        unknown = [n for n in services if n not in RLS]
        if not services or unknown or len(set(services)) != len(services):
            ap.error(f"--rls takes a comma-separated list from {', '.join(RLS)}, each once")
        if args.smoke:
            args.seconds, args.rounds, args.warmup = 1, 1, 1
        if args.rounds < 1 or args.seconds < 1 or args.warmup < 1:
            ap.error("--rounds, --seconds and --warmup must be at least 1 (wrk counts whole seconds)")
        results = measure(args, [SCENARIOS[n] for n in names], services)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    out_dir.mkdir(parents=True, exist_ok=True)
    failures = report.check(results)
    text = report.results_md(results, failures)
    (out_dir / "results.md").write_text(text)
    print()
    print(text)
    charts = []
    if charts_mod:
        charts = charts_mod.draw(results, out_dir)
        print("charts: " + ", ".join(str(p) for p in charts))
    print(f"written to {out_dir}" + (f"; logs in {results['meta'].get('logs')}" if not args.from_json else ""))
    if failures:
        print(f"failed checks ({len(failures)}):\n  " + "\n  ".join(failures), file=sys.stderr)
    if args.write_benchmarks:
        if results["meta"].get("smoke"):
            print("not writing BENCHMARKS.md from a smoke run", file=sys.stderr)
            return 1
        if failures:
            print("not writing BENCHMARKS.md from a run that failed its checks", file=sys.stderr)
            return 1
        if args.no_charts:
            print("not writing BENCHMARKS.md without its charts", file=sys.stderr)
            return 1
        if results["meta"]["load"]["rounds"] < 5:
            print(f"warning: BENCHMARKS.md written from {results['meta']['load']['rounds']} round(s); "
                  "`make bench` runs 5", file=sys.stderr)
        dest = ROOT / "bench/charts"
        dest.mkdir(exist_ok=True)
        for p in charts:
            shutil.copyfile(p, dest / p.name)
        path = ROOT / "BENCHMARKS.md"
        path.write_text(report.fill_benchmarks(path.read_text(), results))
        print(f"BENCHMARKS.md and {dest.relative_to(ROOT)}/ written")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""What `make bench` makes of its windows (results.json): the checks, the
summary, the ratios, the targets, results.md and the generated parts of
BENCHMARKS.md. Only the standard library: it runs without the charts'
matplotlib too."""
import json
import math
import re
import statistics
from pathlib import Path

from scenarios import FLOOD_CACHE_MS, LEASE, SCENARIOS

ROOT = Path(__file__).resolve().parent.parent

NATIVE_COUNTERS = ("ok", "over_limit", "error", "failure_mode_allowed")
FILTER_COUNTERS = ("checked", "ok", "over_limit", "over_limit_cached", "leased", "error", "failure_mode_allowed")


def c(run, name):
    return run["counters"].get(name, 0)


def calls(run):
    return c(run, "cluster.ratelimit.upstream_rq_total")


def answers(run):
    """Calls the service answered, as the filter of the configuration
    counted them (one of the two sets reads 0)."""
    return sum(c(run, f"cluster.mcp_server.ratelimit.{n}") + c(run, f"wasmcustom.mcp_ratelimit.{n}")
               for n in ("ok", "over_limit"))


def failed_open(run):
    return c(run, "cluster.mcp_server.ratelimit.failure_mode_allowed") + \
        c(run, "wasmcustom.mcp_ratelimit.failure_mode_allowed")


def rls_errors(run):
    return c(run, "cluster.mcp_server.ratelimit.error") + c(run, "wasmcustom.mcp_ratelimit.error")


def connections(results, scenario):
    return results["scenarios"][scenario].get("connections") or results["meta"]["load"]["connections"]


def slack(results, scenario):
    """Requests in flight at either edge of a window may fall on either
    side of the counters."""
    return 2 * connections(results, scenario)


# -- grouping -------------------------------------------------------------

def groups(results):
    """(scenario, config id, service) -> its windows, in the scenario's
    configuration order: the router, then each service's block."""
    out = {}
    services = list(results["meta"]["services"])
    for name, sc in results["scenarios"].items():
        for cfg in sc["configs"]:
            for svc in ([None] if cfg["kind"] == "router" else services):
                runs = [r for r in results["runs"]
                        if r["scenario"] == name and r["config"] == cfg["id"] and r["service"] == svc]
                out[(name, cfg["id"], svc)] = runs
    # router first, then by service, each block in configuration order
    order = {s: i for i, s in enumerate([None] + services)}
    return dict(sorted(out.items(), key=lambda kv: (list(results["scenarios"]).index(kv[0][0]),
                                                     order[kv[0][2]])))


def config_of(results, scenario, cid):
    return next(cfg for cfg in results["scenarios"][scenario]["configs"] if cfg["id"] == cid)


def stat(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def per_request(runs, fn):
    reqs = sum(r["reqs"] for r in runs)
    return sum(fn(r) for r in runs) / reqs if reqs else None


# -- formatting -----------------------------------------------------------

def fmt_stat(s, fmt):
    if s is None:
        return "–"
    med, lo, hi = s
    if lo == hi:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(lo)}–{fmt.format(hi)})"


def fmt_rate(v):
    """Calls (or counts) per request."""
    if v is None:
        return "–"
    if v == 0:
        return "0"
    if v >= 0.995:
        return f"{v:.2f}"
    return f"{v:.{max(2, 1 - math.floor(math.log10(v)))}f}"


def fmt_ratio(med, lo=None, hi=None):
    if med is None:
        return "–"
    if lo is None or (lo == hi):
        return f"{med:.2f}×"
    return f"{med:.2f}× ({lo:.2f}–{hi:.2f})"


def service_label(results, svc):
    return results["meta"]["services"].get(svc, svc) if svc else "–"


# -- checks ---------------------------------------------------------------

def check(results):
    """Every window's failures, as lines; empty if all is as expected."""
    bad = []
    for r in results["runs"]:
        sc = results["scenarios"][r["scenario"]]
        s = slack(results, r["scenario"])
        cfg = config_of(results, r["scenario"], r["config"])
        where = f"{r['scenario']} / {cfg['label']} [{r['service'] or 'no service'}] round {r['round']}"
        reqs, n = r["reqs"], calls(r)
        if not reqs:
            bad.append(f"{where}: no request completed")
            continue
        if r["socket_errors"]:
            bad.append(f"{where}: socket errors: {r['socket_errors']}")
        if sc["expect"] == "2xx" and r["non2xx"]:
            bad.append(f"{where}: {r['non2xx']} answers of {reqs} were not 2xx")
        if sc["expect"] == "429":
            # Every answer a 429, bar requests let through on a failed
            # rate-limit call (counted in failed open, and checked below).
            st = r.get("statuses") or {}
            if sum(st.values()) != reqs or reqs - st.get("429", 0) > failed_open(r):
                bad.append(f"{where}: not every answer was a 429: {st or 'no status counts'} of {reqs}")
            if c(r, "cluster.mcp_server.upstream_rq_total") > failed_open(r):
                bad.append(f"{where}: {c(r, 'cluster.mcp_server.upstream_rq_total')} denied requests "
                           "reached the MCP server")
        rx = c(r, "http.mcp.downstream_cx_rx_bytes_total") / reqs
        if rx < 0.9 * sc["body_bytes"]:
            bad.append(f"{where}: Envoy received {rx:.0f} bytes per request, less than the "
                       f"{sc['body_bytes']}-byte body")
        kind = cfg["calls"]
        if kind == "none" and n:
            bad.append(f"{where}: {n} rate-limit calls, expected none")
        if kind == "one" and abs(n - reqs) > s:
            bad.append(f"{where}: {n} rate-limit calls for {reqs} requests, expected one each")
        if kind == "cached" and n * 10 > reqs:
            bad.append(f"{where}: {n} rate-limit calls for {reqs} requests: the over-limit cache should "
                       "leave far fewer calls than requests")
        if kind == "lease" and n * 2 > reqs + 2 * s:
            bad.append(f"{where}: {n} rate-limit calls for {reqs} requests: with a lease, most requests "
                       "should spend from it without a call")
        if cfg["kind"] != "router":
            # The service was reached and answered: a request let through
            # because the call failed measures the failure, not the
            # service. A stray timeout (at most 1 in 1000 requests) is
            # tolerated, and shown in the tables' "failed open".
            tolerated = reqs // 1000
            if answers(r) < n - s - tolerated or (kind == "one" and answers(r) < reqs - s - tolerated):
                bad.append(f"{where}: only {answers(r)} of {n} rate-limit calls were answered by the service")
            if max(failed_open(r), rls_errors(r)) > tolerated:
                bad.append(f"{where}: {rls_errors(r)} rate-limit calls failed, {failed_open(r)} requests "
                           "let through without an answer")
    return bad


# -- ratios ---------------------------------------------------------------

def ratio(results, g, scenario, cid, svc, ref_cid, ref_svc, key):
    """Median of `key` for (cid, svc) over the median for the reference,
    and the min-max of the per-round ratios (each round runs both)."""
    a, b = g.get((scenario, cid, svc)), g.get((scenario, ref_cid, ref_svc))
    if not a or not b:
        return None
    med = statistics.median(r[key] for r in a) / statistics.median(r[key] for r in b)
    by_round = {r["round"]: r[key] for r in b}
    per_round = [r[key] / by_round[r["round"]] for r in a if r["round"] in by_round and by_round[r["round"]]]
    return med, min(per_round), max(per_round)


def summary_rows(results):
    """A row per configuration that is neither the router nor the native
    peer as shipped: its ratios against that native peer (same service)
    and against the router (same scenario)."""
    g = groups(results)
    rows = []
    for (scenario, cid, svc), runs in g.items():
        cfg = config_of(results, scenario, cid)
        if cid in ("native", "router"):
            continue
        row = dict(scenario=scenario, config=cfg["label"], service=service_label(results, svc),
                   skipped=cfg.get("skipped"))
        for ref, ref_svc, tag in (("native", svc, "native"), ("router", None, "router")):
            for key in ("cpu_us", "rps", "p99_ms"):
                row[f"{key}_vs_{tag}"] = ratio(results, g, scenario, cid, svc, ref, ref_svc, key) \
                    if runs else None
        rows.append(row)
    return rows


def summary_table(results):
    lines = ["| scenario | configuration | rate-limit service | Envoy CPU/request vs native | req/s vs native "
             "| p99 vs native | Envoy CPU/request vs router | req/s vs router |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary_rows(results):
        if row["skipped"]:
            cells = ["n/a (not run: see the scenario)"] + ["–"] * 4
        else:
            cells = [fmt_ratio(*(row[k] or (None,))) for k in
                     ("cpu_us_vs_native", "rps_vs_native", "p99_ms_vs_native", "cpu_us_vs_router", "rps_vs_router")]
        lines.append(f"| {row['scenario']} | {row['config']} | {row['service']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Ratios of medians; in brackets, the range of the same ratio taken round by round (both "
                 "configurations run in every round). Below 1× is cheaper (CPU) or faster (p99); above 1× "
                 "is more requests per second. The router runs in the allowed 1 KB, 64 KB and 1 MB scenarios only.")
    return "\n".join(lines)


# -- targets --------------------------------------------------------------

def micro_throughput():
    """The criterion benchmarks of `make bench-micro` that parse ~1 MB:
    (name, GB/s from the median time), from target/criterion."""
    found = []
    for bench in sorted((ROOT / "target/criterion").glob("**/new/benchmark.json")):
        try:
            meta = json.loads(bench.read_text())
            est = json.loads((bench.parent / "estimates.json").read_text())
        except (OSError, ValueError):
            continue
        size = (meta.get("throughput") or {}).get("Bytes")
        name = meta.get("full_id") or str(bench.parent.parent.relative_to(ROOT))
        if size and 900_000 <= size <= 1_100_000 and (meta.get("group_id") == "parse" or name.startswith("parse/")):
            # bytes per nanosecond: GB/s (10^9 bytes)
            found.append((name, size / est["median"]["point_estimate"]))
    return found


def targets(results):
    """The targets, each with met / not met and the measured figures."""
    g = groups(results)
    services = list(results["meta"]["services"])
    out = []

    def verdict(ok):
        return "**met**" if ok else "**not met**"

    def missing(scenario, cids):
        sc = results["scenarios"].get(scenario)
        if sc is None:
            return "not measured in this run"
        for cid in cids:
            cfg = config_of(results, scenario, cid)
            if cfg.get("skipped"):
                return f"not measured: {cfg['label']}: {cfg['skipped']}"
        return None

    # 1. allowed 1 KB: Envoy CPU/request <= native and p99 <= native
    t = "Allowed 1 KB: mcp-ratelimit's Envoy CPU/request ≤ native and its p99 ≤ native"
    why = missing("allowed-1k", ["filter", "native"])
    if why:
        out.append(f"- {t}: {why}")
    else:
        parts, ok = [], True
        for svc in services:
            cpu = ratio(results, g, "allowed-1k", "filter", svc, "native", svc, "cpu_us")
            p99 = ratio(results, g, "allowed-1k", "filter", svc, "native", svc, "p99_ms")
            ok = ok and cpu[0] <= 1 and p99[0] <= 1
            parts.append(f"CPU {cpu[0]:.2f}×, p99 {p99[0]:.2f}× ({service_label(results, svc)})")
        out.append(f"- {t}: {verdict(ok)}: " + "; ".join(parts))

    # 2. denied flood: >= 2x native req/s, <= 1 call per descriptor per cache period
    t = (f"Denied flood: the filter with its over-limit cache ≥ 2× native req/s, and ≤ 1 rate-limit call "
         f"per descriptor per cache period ({FLOOD_CACHE_MS} ms; one descriptor, so at most one call per "
         f"period in each window, plus one for a period cut by the window's edges)")
    why = missing("denied-flood", ["filter-cached", "native"])
    if why:
        out.append(f"- {t}: {why}")
    else:
        parts, ok = [], True
        for svc in services:
            rps = ratio(results, g, "denied-flood", "filter-cached", svc, "native", svc, "rps")
            runs = g[("denied-flood", "filter-cached", svc)]
            periods = [r["seconds"] * 1000 // FLOOD_CACHE_MS for r in runs]
            ok = ok and rps[0] >= 2 and all(calls(r) <= p + 1 for r, p in zip(runs, periods))
            parts.append(f"{rps[0]:.2f}× native req/s, at most {max(calls(r) for r in runs)} calls in a window "
                         f"of {max(periods)} periods ({service_label(results, svc)})")
        out.append(f"- {t}: {verdict(ok)}: " + "; ".join(parts))

    # 3. lease: >= 1.5x native req/s
    t = f"Leased quota (lease {LEASE}): ≥ 1.5× native req/s"
    why = missing("lease", ["filter-lease", "native"])
    if why:
        out.append(f"- {t}: {why}")
    else:
        parts, ok = [], True
        for svc in services:
            rps = ratio(results, g, "lease", "filter-lease", svc, "native", svc, "rps")
            per_req = per_request(g[("lease", "filter-lease", svc)], calls)
            ok = ok and rps[0] >= 1.5
            parts.append(f"{rps[0]:.2f}× native req/s, {fmt_rate(per_req)} calls/request "
                         f"({service_label(results, svc)})")
        out.append(f"- {t}: {verdict(ok)}: " + "; ".join(parts))

    t = (f"Leased quota (lease {LEASE}): ≤ 1 rate-limit call per {LEASE // 2} requests (median over the "
         "windows; a window that covers a minute's last second, where no lease is granted, is the top of "
         "the range)")
    why = missing("lease", ["filter-lease"])
    if why:
        out.append(f"- {t}: {why}")
    else:
        parts, ok = [], True
        for svc in services:
            runs = g[("lease", "filter-lease", svc)]
            rates = sorted(calls(r) / r["reqs"] for r in runs if r["reqs"])
            if not rates:
                parts.append(f"no requests ({service_label(results, svc)})")
                ok = False
                continue
            med = statistics.median(rates)
            ok = ok and med <= 1 / (LEASE // 2)
            every = lambda x: f"1 per {1 / x:.0f}" if x else "none"
            parts.append(f"{every(med)} requests ({every(rates[0])} to {every(rates[-1])}; "
                         f"{service_label(results, svc)})")
        out.append(f"- {t}: {verdict(ok)}: " + "; ".join(parts))

    # 4. the parser alone, from `make bench-micro` (criterion)
    t = "Native (non-Wasm) parse of a 1 MB body ≥ 1 GB/s, from `make bench-micro` (criterion)"
    micro = micro_throughput()
    if not micro:
        out.append(f"- {t}: not measured: no criterion result of a ~1 MB parse in target/criterion "
                   "(run `make bench-micro` first)")
    else:
        ok = all(v >= 1 for _, v in micro)
        out.append(f"- {t}: {verdict(ok)}: " + "; ".join(f"{v:.2f} GB/s ({n})" for n, v in micro))
    return "\n".join(out)


# -- tables ---------------------------------------------------------------

def answers_cell(sc, runs):
    reqs = sum(r["reqs"] for r in runs)
    if not reqs:
        return "–"
    if sc["expect"] == "429":
        n, what = sum((r.get("statuses") or {}).get("429", 0) for r in runs), "429"
    else:
        n, what = reqs - sum(r["non2xx"] for r in runs), "2xx"
    return f"all {what}" if n == reqs else f"{100 * n / reqs:.2f}% {what} ({reqs - n} other)"


def scenario_table(results, name):
    sc = results["scenarios"][name]
    g = groups(results)
    lines = ["| configuration | rate-limit service | req/s | p99 ms | Envoy CPU/request µs | service CPU/request µs "
             "| RLS calls/request | filter checked / over_limit / over_limit_cached / leased per request "
             "| failed open | answers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (scn, cid, svc), runs in g.items():
        if scn != name:
            continue
        cfg = config_of(results, name, cid)
        head = f"| {cfg['label']} | {service_label(results, svc)} |"
        if cfg.get("skipped"):
            lines.append(head + " n/a: not run (see below) |" + " – |" * 7)
            continue
        if not runs:
            lines.append(head + " – |" * 8)
            continue
        filt = "–"
        if cfg["kind"] == "filter":
            filt = " / ".join(fmt_rate(per_request(runs, lambda r, n=n: c(r, f"wasmcustom.mcp_ratelimit.{n}")))
                              for n in ("checked", "over_limit", "over_limit_cached", "leased"))
        lines.append(
            f"{head} {fmt_stat(stat(runs, 'rps'), '{:.0f}')} | {fmt_stat(stat(runs, 'p99_ms'), '{:.2f}')} | "
            f"{fmt_stat(stat(runs, 'cpu_us'), '{:.0f}')} | {fmt_stat(stat(runs, 'service_cpu_us'), '{:.0f}')} | "
            f"{fmt_rate(per_request(runs, calls))} | {filt} | {sum(failed_open(r) for r in runs)} | "
            f"{answers_cell(sc, runs)} |")
    return "\n".join(lines)


def scenario_section(results, name, heading=True):
    sc = results["scenarios"][name]
    runs = [r for r in results["runs"] if r["scenario"] == name]
    rx = [c(r, "http.mcp.downstream_cx_rx_bytes_total") / r["reqs"] for r in runs if r["reqs"]]
    out = [f"### {name}: {sc['title']}", "", sc["description"], ""] if heading else []
    size = f"Request body: {sc['body_bytes']:,} bytes"
    if sc["messages"] > 1:
        size += f" ({sc['messages']} messages)"
    if rx:
        size += (f"; Envoy received {statistics.median(rx):,.0f} bytes per request (median; headers, and "
                 "requests in flight at the window's edges, included)")
    if connections(results, name) != results["meta"]["load"]["connections"]:
        size += f"; wrk `-c{connections(results, name)}` in this scenario"
    out += [size + ".", "", scenario_table(results, name), ""]
    notes = []
    for cfg in sc["configs"]:
        bits = []
        if cfg.get("plugin") is not None:
            bits.append(f"`{json.dumps(cfg['plugin'], separators=(',', ':'))}`")
        if cfg.get("note"):
            bits.append(cfg["note"])
        if cfg.get("skipped"):
            bits.append(f"**not run**: {cfg['skipped']}")
        if bits:
            notes.append(f"- {cfg['label']}: " + "; ".join(bits))
    if notes:
        out += notes + [""]
    if sc.get("note"):
        out += [sc["note"], ""]
    return "\n".join(out)


def duration(seconds):
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def other_connections(results):
    other = [f"{connections(results, n)} in {n}" for n in results["scenarios"]
             if connections(results, n) != results["meta"]["load"]["connections"]]
    return f" ({', '.join(other)})" if other else ""


def setup_text(results):
    m = results["meta"]
    mach, load = m["machine"], m["load"]
    lines = [
        f"- Machine: {mach['cores']} cores ({mach.get('cpu_model') or 'CPU model unknown'}), "
        f"{mach.get('memory_gib')} GiB, Linux {mach['kernel']}; Envoy, wrk, the rate-limit service and the MCP "
        "server share the cores.",
        f"- Envoy: {m.get('envoy')}, `--concurrency 1`.",
        f"- Module: target/mcp_ratelimit.wasm, {m['module']['bytes']:,} bytes, sha256 "
        f"`{m['module']['sha256'][:16]}…`; commit {m.get('commit') or 'unknown'}.",
        f"- Load: {m.get('wrk') or 'wrk'}, `-t{load['threads']} -c{load['connections']}`{other_connections(results)}, "
        f"{load['warmup']} s warm-up + {load['seconds']} s measured per window, {load['rounds']} round(s), "
        "configurations in an order rotated each round.",
        "- Rate-limit services: " + ", ".join(m["services"].values()) + ".",
        f"- Run: {m['started']} to {m.get('finished')}, {duration(m.get('elapsed_seconds', 0))}; "
        f"load average {m.get('loadavg_start')} at the start, {m.get('loadavg_end')} at the end.",
    ]
    if m.get("smoke"):
        lines.append("- **Smoke run** (`--smoke`): one 1-second round, for the checks only; not figures to quote.")
    elif load["rounds"] < 5:
        lines.append(f"- **A short run**: {load['rounds']} round(s) of {load['seconds']} s, not the 5 rounds of "
                     "`make bench`: a single round has no spread, and its figures are indicative only.")
    return "\n".join(lines)


def results_md(results, failures):
    out = ["# mcp-ratelimit benchmark results", "", setup_text(results), "",
           "Each figure is the median over the rounds, with the min–max in brackets (never the best round). "
           "Envoy CPU/request: Envoy's user + system CPU over the measured window, per request. Service "
           "CPU/request: dev-rls, or envoyproxy/ratelimit and Redis together. RLS calls/request: the "
           "rate-limit cluster's requests. Filter counters: mcp-ratelimit's own. Failed open: requests let "
           "through without an answer from the service, over all rounds.", "",
           "## Summary", "", summary_table(results), "", "## Targets", "", targets(results), "",
           "## Scenarios", ""]
    for name in results["scenarios"]:
        out.append(scenario_section(results, name))
    out += ["## Checks", ""]
    out += [f"- FAILED: {f}" for f in failures] if failures else \
        [f"All {len(results['runs'])} windows passed their checks (answers, body received, rate-limit calls "
         "per request, calls answered, at most 1 in 1000 requests let through on a failed call)."]
    return "\n".join(out) + "\n"


# -- BENCHMARKS.md --------------------------------------------------------

def benchmarks_blocks(results):
    blocks = dict(setup=setup_text(results), summary=summary_table(results), targets=targets(results))
    for name in SCENARIOS:
        if name in results["scenarios"]:
            blocks[f"scenario:{name}"] = scenario_section(results, name, heading=False).strip()
        else:
            blocks[f"scenario:{name}"] = "_Not measured in this run._"
    return blocks


def fill_benchmarks(text, results):
    """BENCHMARKS.md with every `<!-- bench:NAME -->` ... `<!-- /bench:NAME -->`
    block replaced by the one generated from these results."""
    for name, body in benchmarks_blocks(results).items():
        pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(\n<!-- /bench:{re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"BENCHMARKS.md has no <!-- bench:{name} --> block")
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    return text


def window_line(sc, cfg, r):
    st = f", statuses {r['statuses']}" if r.get("statuses") is not None else f", non-2xx {r['non2xx']}"
    return (f"{sc.name} round {r['round']} #{r['position']} {cfg.label} [{r['service'] or 'no service'}]: "
            f"{r['rps']:.0f} req/s, p99 {r['p99_ms']:.2f} ms, {r['cpu_us']:.0f} µs Envoy CPU/request, "
            f"rls calls {calls(r)}/{r['reqs']}, answered {answers(r)}, failed open {failed_open(r)}"
            f"{st} {r['socket_errors']}".rstrip())

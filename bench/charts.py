#!/usr/bin/env python3
"""The charts of `make bench`, drawn from its results.json alone:

- rps.png: requests per second per configuration, one panel per scenario;
- cpu.png: Envoy CPU per request per configuration, one panel per scenario;
- body-size.png: Envoy CPU per request against the body size (1 KB, 64 KB,
  1 MB) for the router, the native peer and mcp-ratelimit;
- rls-calls.png: rate-limit calls per request in the denied flood and the
  leased-quota scenarios.

Bars and points are medians over the rounds, error bars the min-max.

    python bench/charts.py target/bench/results.json [OUT_DIR]
"""
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

COLOURS = {None: "#7f7f7f", "dev-rls": "#1f77b4", "ratelimit": "#ff7f0e"}
BODY_SCENARIOS = ("allowed-1k", "allowed-64k", "allowed-1m")


def _colour(svc):
    return COLOURS.get(svc, "#2ca02c")


def _legend(fig, results):
    handles = [plt.Rectangle((0, 0), 1, 1, color=_colour(None), label="no rate-limit service")]
    handles += [plt.Rectangle((0, 0), 1, 1, color=_colour(s), label=label)
                for s, label in results["meta"]["services"].items()]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, 1.0))


def _panels(results, names):
    """(scenario, [(label, service, runs, skipped)]) for each scenario."""
    g = report.groups(results)
    out = []
    for name in names:
        rows = []
        for (scn, cid, svc), runs in g.items():
            if scn == name:
                cfg = report.config_of(results, name, cid)
                rows.append((cfg["label"], svc, runs, cfg.get("skipped")))
        out.append((name, rows))
    return out


def bars(results, key, xlabel, path, names=None, per_request_fn=None, log=False):
    names = list(names or results["scenarios"])
    panels = _panels(results, names)
    floor = 1e-4
    if log:
        rates = [per_request_fn(r) / r["reqs"] for _, rows in panels for _, _, runs, _ in rows
                 for r in runs if r["reqs"] and per_request_fn(r)]
        while rates and floor > 1e-7 and min(rates) < floor * 2:
            floor /= 10
    heights = [max(1, len(rows)) + 1.2 for _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 0.36 * sum(heights) + 0.8),
                             gridspec_kw=dict(height_ratios=heights), squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], panels):
        ax.set_title(f"{name}: {results['scenarios'][name]['title']}", loc="left", fontsize=10)
        labels, top = [], 0
        for i, (label, svc, runs, skipped) in enumerate(rows):
            y = len(rows) - 1 - i
            labels.append((y, label + (" (not run)" if skipped else "")))
            if skipped or not runs:
                continue
            if per_request_fn:
                reqs = sum(r["reqs"] for r in runs)
                vals = [per_request_fn(r) / r["reqs"] for r in runs if r["reqs"]]
                med = sum(per_request_fn(r) for r in runs) / reqs if reqs else 0
            else:
                vals = [r[key] for r in runs]
                med = statistics.median(vals)
            lo, hi = min(vals), max(vals)
            shown = max(med, floor) if log else med
            ax.barh(y, shown, color=_colour(svc), height=0.7,
                    xerr=[[max(0, shown - max(lo, floor if log else lo))], [max(0, hi - shown)]],
                    error_kw=dict(ecolor="black", capsize=3, lw=1))
            text = report.fmt_rate(med) if per_request_fn else f"{med:,.0f}"
            ax.text(max(hi, shown), y, "  " + text, va="center", fontsize=8)
            top = max(top, hi, shown)
        ax.set_yticks([y for y, _ in labels], [t for _, t in labels], fontsize=8)
        ax.set_ylim(-0.6, max(1, len(rows)) - 0.4)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(floor, 3)
        else:
            ax.set_xlim(0, (top or 1) * 1.25)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    _legend(fig, results)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def body_size(results, path):
    services = list(results["meta"]["services"])
    present = [n for n in BODY_SCENARIOS if n in results["scenarios"]]
    g = report.groups(results)
    fig, axes = plt.subplots(1, len(services), figsize=(5.2 * len(services), 4.4), squeeze=False, sharey=True)
    lines = (("router", "router only", "#7f7f7f", "o", "-"),
             ("native", "native mcp + ratelimit (as shipped)", "#d62728", "s", "-"),
             ("native-whole-body", "native, whole body parsed", "#d62728", "s", "--"),
             ("filter", "mcp-ratelimit", "#1f77b4", "D", "-"))
    for ax, svc in zip(axes[0], services):
        for cid, label, colour, marker, style in lines:
            xs, meds, los, his = [], [], [], []
            for name in present:
                runs = g.get((name, cid, None if cid == "router" else svc)) or []
                if not runs:
                    continue
                vals = [r["cpu_us"] for r in runs]
                med = statistics.median(vals)
                xs.append(results["scenarios"][name]["body_bytes"])
                meds.append(med)
                los.append(med - min(vals))
                his.append(max(vals) - med)
            if xs:
                ax.errorbar(xs, meds, yerr=[los, his], label=label, color=colour, marker=marker,
                            linestyle=style, capsize=3, lw=1.2, ms=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([1024, 65536, 1048576], ["1 KB", "64 KB", "1 MB"])
        ax.minorticks_off()
        ax.set_xlim(600, 2e6)
        ax.set_title(f"rate-limit service: {results['meta']['services'][svc]}", fontsize=10)
        ax.set_xlabel("request body")
        ax.grid(alpha=0.3, which="both")
        if not present:
            ax.text(0.5, 0.5, "no body-size scenario in this run", ha="center", transform=ax.transAxes)
    axes[0, 0].set_ylabel("Envoy CPU per request (µs, log)")
    axes[0, 0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw(results, out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        bars(results, "rps", "requests per second (median, min–max)", out_dir / "rps.png"),
        bars(results, "cpu_us", "Envoy CPU per request, µs (median, min–max)", out_dir / "cpu.png"),
        body_size(results, out_dir / "body-size.png"),
    ]
    calls_scenarios = [n for n in ("denied-flood", "lease") if n in results["scenarios"]] or \
        list(results["scenarios"])[:1]
    paths.append(bars(results, None, "rate-limit calls per request (all rounds; log scale)",
                      out_dir / "rls-calls.png", names=calls_scenarios, per_request_fn=report.calls, log=True))
    return paths


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    res = json.loads(Path(sys.argv[1]).read_text())
    for p in draw(res, sys.argv[2] if len(sys.argv) == 3 else Path(sys.argv[1]).parent):
        print(p)

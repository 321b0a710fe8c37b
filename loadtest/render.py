"""The load-test report: plots (PNG), ``report.md`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from bort.artifacts import atomic_write_text
from loadtest.report import read_samples

LATENCY_PNG = "latency.png"
RPS_PNG = "rps.png"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def plot_latency(results: dict[str, Any], raw_dir: Path, out: Path) -> None:
    """Empirical CDF of per-request latency, one panel per user count, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    users_list = results["users"]
    fig, axes = plt.subplots(1, len(users_list), figsize=(5 * len(users_list), 3.6), squeeze=False)
    for ax, users in zip(axes[0], users_list, strict=True):
        for role, model in results["models"].items():
            lat = np.sort(read_samples(raw_dir / f"{role}_u{users}")[:, 2])
            if lat.size:
                ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=model["label"])
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency, ms (log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{users} user{'s' if users != 1 else ''}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_rps(results: dict[str, Any], out: Path) -> None:
    """Requests/s and p95 against users, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rps, ax_p95) = plt.subplots(1, 2, figsize=(10, 3.6))
    for model in results["models"].values():
        users = sorted(int(u) for u in model["levels"])
        levels = [model["levels"][str(u)] for u in users]
        ax_rps.plot(users, [lv["rps"] for lv in levels], marker="o", label=model["label"])
        ax_p95.plot(users, [lv["p95_ms"] for lv in levels], marker="o", label=model["label"])
    ax_rps.set(xlabel="concurrent users", ylabel="requests/s", title="Throughput")
    ax_p95.set(xlabel="concurrent users", ylabel="p95 latency, ms", title="Tail latency", yscale="log")
    for ax in (ax_rps, ax_p95):
        ax.set_xticks(results["users"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's tables as (title, header, rows) so Markdown and HTML show the same thing."""
    figures = []
    for model in results["models"].values():
        for users in results["users"]:
            lv = model["levels"].get(str(users))
            if lv is None:
                continue
            batches = lv.get("batches") or {}
            figures.append([model["label"], str(users), _fmt(lv["rps"]), _fmt(lv["p50_ms"], 2),
                            _fmt(lv["p95_ms"], 2), _fmt(lv["p99_ms"], 2), f"{lv['failures']} / {lv['requests']}",
                            _fmt(batches.get("mean_texts"), 2), _fmt(lv.get("ceiling_rps")),
                            _fmt(lv.get("served_fraction"), 3),
                            _fmt(lv["locust"]["rps"]), _fmt(lv["locust"]["p50_ms"], 0), _fmt(lv.get("server_cpu_share"), 2),
                            _fmt(lv.get("locust_cpu_share"), 2)])
    ratio_rows = [[str(u), _fmt(r["rps_ratio"], 2), _fmt(r["p50_ratio"], 2)] for u, r in results["ratios"].items()]
    acc_title, acc_header, acc_rows = accuracy_table(results)
    return [
        ("Served figures (after warm-up)",
         ["model", "users", "requests/s", "p50 ms", "p95 ms", "p99 ms", "failed / requests",
          "texts per model call", "raw ceiling requests/s", "served / ceiling",
          "Locust requests/s", "Locust p50 ms", "server CPU share", "Locust CPU share"], figures),
        ("Optimised against baseline", ["users", "requests/s ratio (opt/base)", "p50 ratio (base/opt)"],
         ratio_rows),
        (acc_title, acc_header, acc_rows),
    ]


def accuracy_table(results: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """Each served model's test scores beside what a model that ignores its input scores."""
    judging = results.get("judging") or {}
    chance = judging.get("chance_metric")
    names = {"mcc": "MCC", "macro_f1": "macro-F1"}
    header = ["model", "accuracy"] + ([names.get(chance, chance)] if chance else []) + ["note"]
    rows = []
    for m in results["models"].values():
        extra = [_fmt((m.get("scores") or {}).get(chance), 4)] if chance else []
        rows.append([m["label"], _fmt(m["accuracy"], 4), *extra, m.get("accuracy_note", "")])
    for base, label in (("majority", "always the majority class"), ("stratified", "stratified random (expected)")):
        scores = (judging.get("baselines") or {}).get(base)
        if scores:
            rows.append([f"baseline: {label}", _fmt(scores["accuracy"], 4), *([_fmt(scores[chance], 4)] if chance else []),
                         "what a model that ignores its input scores on the same test split"])
    metric = judging.get("metric")
    title = "Accuracy (from the upstream manifests, test split)"
    if metric:
        title += f"; the task is judged by {names.get(metric, metric)}"
    return title, header, rows


def _conditions(results: dict[str, Any]) -> list[str]:
    c = results["conditions"]
    lines = [f"- Host 127.0.0.1 only; each model served alone, one after the other, by the same server code "
             f"({c['server']}).",
             f"- Users {results['users']}, {c['duration_s']} s measured per user count after a {c['warmup_s']} s "
             f"warm-up (excluded); {c['mode']} loop, {c['texts_per_request']} text(s) per request drawn from "
             f"{c['texts']} real test texts.",
             f"- Server threads {c['num_threads']}; server CPUs {c['server_cpus']}; Locust CPUs {c['locust_cpus']}; "
             f"CPU {c['cpu']}." + (f" Client: {c['client']}." if c.get("client") else ""),
             "- Percentiles and requests/s from exact per-request times; Locust's own figures (its CSV: "
             "response times rounded to whole ms, written once a second) are shown beside.",
             "- CPU share: CPU seconds used per wall second (2.0 = two cores busy); Locust shares the machine.",
             "- Texts per model call: the batches the server formed in the measured window (its call log). Raw "
             "ceiling: the model's own throughput at those batches, onnxruntime alone on the same texts with the same "
             "threads (measured after the service stopped); served / ceiling is what the service delivers of it."]
    if any(m.get("speed_only") for m in results["models"].values()):
        lines.append("- **speed only**: a model with random weights at the stated shape; its accuracy means "
                     "nothing and is not reported.")
    if c.get("load_generators"):
        lines.append(f"- Load generators: {c['load_generators']}.")
    lines += _worker_shares(results)
    return lines


def _worker_shares(results: dict[str, Any]) -> list[str]:
    """Each Locust worker's requests, per model and user count (a run with a master and workers)."""
    lines = []
    for model in results["models"].values():
        for users, level in model["levels"].items():
            if level.get("workers"):
                shares = ", ".join(f"{w['worker']} {w['requests']} ({100 * w['share']:.0f}%)" for w in level["workers"])
                lines.append(f"- {model['label']}, {users} users: requests per worker: {shares}.")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown (plots linked, relative)."""
    top = results["headline"]
    md = ["# Load test: optimised against baseline", "",
          f"**{_fmt(top['rps_ratio'], 2)}x** the requests/s at {top['rps_ratio_users']} users; "
          f"**{_fmt(top['p50_ratio'], 2)}x** lower p50 at {top['p50_ratio_users']} user(s).", "",
          *_conditions(results), ""]
    for title, header, rows in tables(results):
        md += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    md += ["## SLO", ""]
    slo = results["slo"]
    if not slo["configured"]:
        md += ["No SLO configured (loadtest.slo_* are 0).", ""]
    elif slo["missed"]:
        md += [f"**Missed** (exit code {slo['exit_code']}):", ""] + [f"- {m}" for m in slo["missed"]] + [""]
    else:
        md += ["All configured objectives held.", ""]
    md += [f"![latency distribution]({LATENCY_PNG})", "", f"![requests/s against users]({RPS_PNG})", ""]
    return "\n".join(md)


def html_page(results: dict[str, Any], folder: Path) -> str:
    """The report as one HTML file with the plots inlined (base64), so it can be mailed as is."""
    e = html.escape
    top = results["headline"]
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>bort load test</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}</style></head><body>",
           "<h1>Load test: optimised against baseline</h1>",
           f"<p><b>{e(_fmt(top['rps_ratio'], 2))}x</b> the requests/s at {top['rps_ratio_users']} users; "
           f"<b>{e(_fmt(top['p50_ratio'], 2))}x</b> lower p50 at {top['p50_ratio_users']} user(s).</p><ul>"]
    out += [f"<li>{e(line[2:]).replace('**', '')}</li>" for line in _conditions(results)] + ["</ul>"]
    for title, header, rows in tables(results):
        out.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        out.append("</table>")
    slo = results["slo"]
    out.append("<h2>SLO</h2><p>" + ("No SLO configured." if not slo["configured"] else
               "Missed: " + "; ".join(e(m) for m in slo["missed"]) if slo["missed"] else "All held.") + "</p>")
    for name in (LATENCY_PNG, RPS_PNG):
        if (folder / name).is_file():
            data = base64.b64encode((folder / name).read_bytes()).decode()
            out.append(f"<p><img alt='{name}' src='data:image/png;base64,{data}' style='max-width:100%'></p>")
    return "\n".join(out + ["</body></html>"])


def write_report(results: dict[str, Any], folder: Path, raw_dir: Path) -> None:
    """Plots, report.md and report.html into `folder`."""
    plot_latency(results, raw_dir, folder / LATENCY_PNG)
    plot_rps(results, folder / RPS_PNG)
    atomic_write_text(folder / "report.md", markdown(results))
    atomic_write_text(folder / "report.html", html_page(results, folder))

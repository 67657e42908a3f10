"""Writes `benchmarks/RESULTS.md` (tables between markers) and `RESULTS.png` from suite runs.

`benchmarks/run.py` saves each run to `benchmarks/results/<backend>[_quick].json`; the
tables are rebuilt from every saved backend (a full run preferred over a quick one), and
text outside the markers in RESULTS.md (the analysis) is kept.
"""

import json
import os

from benchmarks.run import HERE, target_for

RESULTS_DIR = os.path.join(HERE, "results")
RESULTS_MD = os.path.join(HERE, "RESULTS.md")
RESULTS_PNG = os.path.join(HERE, "RESULTS.png")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
BACKENDS = ("jax", "tensorflow", "torch")


def save(report, quick=False):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    backend = report["machine"]["backend"]
    path = os.path.join(RESULTS_DIR, f"{backend}{'_quick' if quick else ''}.json")
    previous = {}
    if os.path.exists(path):
        with open(path) as file:
            previous = json.load(file)
    if previous and report["machine"]["date"] != previous["machine"]["date"]:
        # A later partial run (--only) updates its benchmarks and keeps the others.
        update = {"date": report["machine"]["date"], "command": report["machine"]["command"],
                  "benchmarks": sorted(report["results"])}
        updates = previous.get("updates", [])
        # `run` saves after every benchmark: one run is one entry, its list growing.
        same_run = updates and {k: updates[-1][k] for k in ("date", "command")} == {
            k: update[k] for k in ("date", "command")}
        updates = updates[:-1] + [update] if same_run else updates + [update]
        report = dict(previous, **report)
        report.update(machine=previous["machine"], updates=updates,
                      results={**previous["results"], **report["results"]})
        if not report.get("parameters"):
            report["parameters"] = previous.get("parameters")
    with open(path, "w") as file:
        json.dump(report, file, indent=1)
    write_results_md()
    write_chart()


def load_reports():
    reports = {}
    for backend in BACKENDS:
        for suffix in ("", "_quick"):
            path = os.path.join(RESULTS_DIR, f"{backend}{suffix}.json")
            if os.path.exists(path):
                with open(path) as file:
                    reports[backend] = json.load(file)
                break
    return reports


def _fmt(value, digits=1):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value):
    return "n/a" if value is None else f"{value:.2f}"


def _status(ratio, target, smaller_is_better=False):
    if target is None or ratio is None:
        return ""
    met = ratio <= target if smaller_is_better else ratio >= target
    sign = "<=" if smaller_is_better else ">="
    return f"{sign} {target}: {'met' if met else 'missed'}"


def backend_section(backend, report):
    machine, results = report["machine"], report["results"]
    lines = [
        f"### {backend}{' (quick)' if report.get('quick') else ''}",
        "",
        f"{machine['date']}; `{machine['command']}`; {machine['cpu']}, {machine['cores']} cores; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
        + f"; {report.get('parameters', 0) / 1e6:.1f}M parameters.",
        "",
    ]
    for update in report.get("updates", []):
        lines += [f"Re-measured {', '.join(update['benchmarks'])}: {update['date']}, `{update['command']}`.", ""]
    ceilings = results.get("ceilings")
    if ceilings:
        lines += [
            f"Ceilings: float32 matmul {ceilings['matmul_n']}^3 "
            f"{_fmt(ceilings['matmul_gflops_backend'])} GFLOP/s through {backend}, "
            f"{_fmt(ceilings['matmul_gflops_numpy'])} through NumPy; memory read "
            f"{_fmt(ceilings['read_bandwidth_gbs'])} GB/s (NumPy sum over 1 GiB).",
            "",
        ]
    lines += [
        "| benchmark | ours | KerasHub | ours / KerasHub | target | notes |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, result in results.items():
        if result["kind"] == "error":
            lines.append(f"| {name} | | | | failed | {result['error']} |")
        elif result["kind"] == "speed":
            notes = []
            if "ours_mfu" in result:
                notes.append(f"MFU {result['ours_mfu']:.0%} vs {result['theirs_mfu']:.0%}")
            if "ours_bandwidth_fraction" in result:
                notes.append(
                    f"weight reads {result['ours_bandwidth_fraction']:.0%} vs "
                    f"{result['theirs_bandwidth_fraction']:.0%} of bandwidth"
                )
            lines.append(
                f"| {name} ({result['unit']}) | {_fmt(result['ours'])} | {_fmt(result['theirs'])} | "
                f"{result['ratio']:.2f} | {_status(result['ratio'], target_for(name, backend))} | "
                f"{'; '.join(notes)} |"
            )
        elif name == "generate_8192":
            lines.append(
                f"| KV cache at {result['length']} (MiB) | {_fmt(result['kv_ours'] / 2**20)} | "
                f"{_fmt(result['kv_theirs'] / 2**20)} | {result['kv_ratio']:.2f} | "
                f"{_status(result['kv_ratio'], target_for('kv_cache_8192', backend), True)} | |"
            )
            lines.append(
                f"| generate {result['length']} peak RSS (MiB) | {_fmt(result['ours'], 0)} | "
                f"{_fmt(result['theirs'], 0)} | {_ratio(result['ratio'])} | | "
                f"call {result['ours_s']:.1f} s vs {result['theirs_s']:.1f} s |"
            )
        elif name == "train_memory":
            lines.append(
                f"| train step peak RSS (MiB) | {_fmt(result['ours'], 0)} | {_fmt(result['theirs'], 0)} | "
                f"{_ratio(result['ratio'])} | | no remat |"
            )
            lines.append(
                f"| train step peak RSS, remat (MiB) | {_fmt(result['ours_remat'], 0)} | "
                f"{_fmt(result['theirs_remat'], 0)} | {_ratio(result['ratio_remat'])} | | "
                + "; ".join(result.get(f"{k}_remat_error", "") for k in ("ours", "theirs")).strip("; ")
                + " |"
            )
    return lines + [""]


def write_results_md():
    reports = load_reports()
    block = [BEGIN, ""]
    for backend, report in reports.items():
        block += backend_section(backend, report)
    block += ["![ratios ours / KerasHub](RESULTS.png)", "", END]
    text = ""
    if os.path.exists(RESULTS_MD):
        with open(RESULTS_MD) as file:
            text = file.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = "# Benchmarks: vishwam-keras against KerasHub's Gemma 3\n\n", "\n"
    with open(RESULTS_MD, "w") as file:
        file.write(head + "\n".join(block) + tail)


def chart_rows(report, backend):
    """(label, ratio, target) per benchmark; memory ratios inverted so higher is better."""
    rows = []
    for name, result in report["results"].items():
        if result["kind"] == "speed":
            rows.append((name, result["ratio"], target_for(name, backend)))
        elif name == "generate_8192":
            rows.append(("1/kv_cache", 1 / result["kv_ratio"], 1 / target_for("kv_cache_8192", backend)))
            if result["ratio"]:
                rows.append(("1/gen_peak_rss", 1 / result["ratio"], None))
        elif name == "train_memory" and result["ratio"]:
            rows.append(("1/train_peak_rss", 1 / result["ratio"], None))
    return rows


def write_chart():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = load_reports()
    if not reports:
        return
    figure, axes = plt.subplots(
        1, len(reports), figsize=(5.5 * len(reports), 4.5), squeeze=False, sharey=True
    )
    for axis, (backend, report) in zip(axes[0], reports.items()):
        rows = chart_rows(report, backend)
        positions = range(len(rows))
        colors = ["tab:green" if t is None or r >= t else "tab:red" for _, r, t in rows]
        axis.bar(positions, [r for _, r, _ in rows], color=colors)
        for x, (_, _, target) in zip(positions, rows):
            if target is not None:
                axis.hlines(target, x - 0.4, x + 0.4, colors="black", linestyles="--")
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xticks(list(positions))
        axis.set_xticklabels([label for label, _, _ in rows], rotation=60, ha="right", fontsize=8)
        axis.set_title(f"{backend}{' (quick)' if report.get('quick') else ''}")
        axis.set_yscale("log")
    axes[0][0].set_ylabel("ours / KerasHub (higher is better; dashes: target)")
    figure.tight_layout()
    figure.savefig(RESULTS_PNG, dpi=110)
    plt.close(figure)

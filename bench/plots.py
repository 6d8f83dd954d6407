"""The plots of docs/PERFORMANCE.md (PNG, matplotlib): throughput vs concurrency, latency
percentiles, and the rows per ONNX run read from the `atelier_batch_rows` histogram buckets.
Each takes a summary (bench.summary, JSON-shaped: keys are strings) and a path.

    .venv/bin/python -c "import json; from pathlib import Path; from bench import plots; \
plots.plot_latency(json.loads(Path('docs/perf/summary.json').read_text()), Path('/tmp/latency.png'))"
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402

VARIANT_LABELS = {"atelier": "Atelier", "unbatched": "Atelier, batching off (max_batch 1)",
                  "naive": "naive torch server", "ceiling": "in-process ceiling"}
COLOURS = {"atelier": "#1f77b4", "unbatched": "#ff7f0e", "naive": "#d62728", "ceiling": "#7f7f7f",
           "step": "#1f77b4", "request": "#9467bd"}


def _sorted_concurrencies(points: dict) -> list:
    return sorted(points, key=int)


def plot_throughput(summary: dict, path: Path) -> None:
    closed = summary["closed"]
    figure, axes = plt.subplots(1, len(closed), figsize=(5.5 * len(closed), 4), squeeze=False)
    for axis, (model, points) in zip(axes[0], closed.items()):
        concurrencies = _sorted_concurrencies(points)
        xs = [int(c) for c in concurrencies]
        for variant in ("atelier", "unbatched", "naive"):
            stats = [points[c][variant]["images_per_s"] for c in concurrencies]
            medians = [s["median"] for s in stats]
            errors = [[m - s["min"] for m, s in zip(medians, stats)], [s["max"] - m for m, s in zip(medians, stats)]]
            axis.errorbar(xs, medians, yerr=errors, marker="o", capsize=3, label=VARIANT_LABELS[variant],
                          color=COLOURS[variant])
        best = max(summary["ceiling"]["sweep"][model].values())
        axis.axhline(best, linestyle="--", color=COLOURS["ceiling"], label="in-process ceiling (best batch)")
        axis.set_xscale("log", base=2)
        axis.set_xticks(xs, [str(x) for x in xs])
        axis.set_ylim(bottom=0)
        steps = f", {summary['meta']['diffusion_steps']} steps" if model == "diffusion" else ""
        axis.set_title(f"{model}{steps}: throughput vs concurrency")
        axis.set_xlabel("concurrent clients (closed loop)")
        axis.set_ylabel("images/s (median, bars min–max)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _percentile_bars(axis, groups: dict[str, dict], title: str) -> None:
    labels = ("p50_s", "p95_s", "p99_s")
    width = 0.8 / max(len(groups), 1)
    for index, (name, stats) in enumerate(groups.items()):
        medians = [stats[p]["median"] for p in labels]
        errors = [[m - stats[p]["min"] for m, p in zip(medians, labels)],
                  [stats[p]["max"] - m for m, p in zip(medians, labels)]]
        positions = [i + index * width for i in range(len(labels))]
        axis.bar(positions, medians, width, yerr=errors, capsize=2, label=VARIANT_LABELS.get(name, name),
                 color=COLOURS.get(name))
    axis.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(labels))], ["p50", "p95", "p99"])
    axis.set_ylabel("latency, s")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)


def plot_latency(summary: dict, path: Path) -> None:
    panels = []
    for model, points in summary["closed"].items():
        if "32" in points:
            point = points["32"]
            panels.append((f"{model} at concurrency 32", {v: point[v] for v in ("atelier", "unbatched", "naive")}))
    if summary.get("mixed"):
        mixed = summary["mixed"]
        panels.append((f"mixed diffusion 10/25/50 steps, Poisson {mixed['offered_per_s']:.2f} req/s",
                       {"step": mixed["modes"]["step"], "request": mixed["modes"]["request"]}))
    _save_panels(panels, _percentile_bars, path, height=4)


def _save_panels(panels: list[tuple[str, dict]], draw, path: Path, height: float) -> None:
    """One figure, one panel per (title, data) side by side, each drawn by `draw(axis, data, title)`."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), height), squeeze=False)
    for axis, (title, data) in zip(axes[0], panels):
        draw(axis, data, title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _bucket_bars(axis, series: dict[str, dict], title: str) -> None:
    width = 0.8 / max(len(series), 1)
    for index, (name, buckets) in enumerate(series.items()):
        bounds = sorted(buckets, key=float)
        total = sum(buckets.values()) or 1.0
        axis.bar([i + index * width for i in range(len(bounds))], [buckets[b] / total for b in bounds], width,
                 label=VARIANT_LABELS.get(name, name), color=COLOURS.get(name))
        axis.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(bounds))],
                        [f"≤{float(b):g}" for b in bounds], fontsize=7)
    axis.set_xlabel("rows per ONNX run (Prometheus bucket)")
    axis.set_ylabel("fraction of runs")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)


def plot_batch_sizes(summary: dict, path: Path) -> None:
    panels = []
    for model, function in (("dcgan", "dcgan.generate"), ("diffusion", "diffusion.denoise")):
        point = summary["closed"].get(model, {}).get("32")
        if point:
            panels.append((f"{function} at concurrency 32", {"atelier": point["atelier"]["batch_buckets"]}))
    if summary.get("mixed"):
        modes = summary["mixed"]["modes"]
        panels.append(("diffusion.denoise, mixed 10/25/50 steps",
                       {"step": modes["step"]["batch_buckets"], "request": modes["request"]["batch_buckets"]}))
    _save_panels(panels, _bucket_bars, path, height=3.8)

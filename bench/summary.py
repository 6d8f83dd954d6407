"""The summary: raw suite results reduced to medians, spreads (min–max) and per-repetition ratios.

Every ratio is computed inside one repetition (two measurements seconds apart) and only then
summarised over repetitions, so slow drifts of a shared machine cancel out of it.

    .venv/bin/python -c "from bench.summary import spread; print(spread([1.0, 2.0, 4.0]))"
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from bench.suite import DIFFUSION_STEPS, GUIDANCE

PERCENTILES = ("p50_s", "p95_s", "p99_s")

# (name, goal text, ratio key, model, concurrency, threshold, p95 ratio key or None)
TARGETS = (
    ("served ÷ ceiling (dcgan, c=32)", "≥ 0.85", "served_over_ceiling", "dcgan", 32, 0.85, None),
    ("batching on ÷ off (dcgan, c=32)", "≥ 3×", "batching_on_over_off", "dcgan", 32, 3.0, None),
    ("batching on ÷ off (diffusion, c=32)", "≥ 3×", "batching_on_over_off", "diffusion", 32, 3.0, None),
    ("Atelier ÷ naive (dcgan, c=32), p95 no worse", "≥ 5×", "atelier_over_naive", "dcgan", 32, 5.0,
     "p95_atelier_over_naive"),
    ("Atelier ÷ naive (diffusion, c=32), p95 no worse", "≥ 5×", "atelier_over_naive", "diffusion", 32, 5.0,
     "p95_atelier_over_naive"),
)


def spread(values: list[float]) -> dict:
    array = np.asarray(values, dtype=float)
    return {"median": float(np.median(array)), "min": float(array.min()), "max": float(array.max()),
            "n": int(array.size)}


def rows_per_run(histograms: list[dict], function: str) -> float | None:
    """Mean rows per ONNX run over the windows: their summed row and run count deltas."""
    runs = sum(h.get(function, {}).get("count", 0.0) for h in histograms)
    return sum(h[function]["sum"] for h in histograms if function in h) / runs if runs else None


def per_bucket(histograms: list[dict], function: str) -> dict[float, float]:
    """Runs per bucket (upper bound in rows -> runs), summed over windows; +Inf is dropped."""
    cumulative: dict[float, float] = defaultdict(float)
    for histogram in histograms:
        for le, count in histogram.get(function, {}).items():
            if le not in ("+Inf", "sum", "count"):
                cumulative[float(le)] += count
    bounds = sorted(cumulative)
    return {bound: cumulative[bound] - (cumulative[bounds[i - 1]] if i else 0.0) for i, bound in enumerate(bounds)}


def summarise_closed(rows: list[dict]) -> dict:
    """{model: {concurrency: {variant: {metric: spread}}}} plus the ceiling per model."""
    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        grouped[row["model"]][row["concurrency"]][row["variant"]].append(row)
    out: dict = {}
    for model, points in grouped.items():
        function = "dcgan.generate" if model == "dcgan" else "diffusion.denoise"
        for concurrency, variants in points.items():
            for variant, runs in variants.items():
                out.setdefault(model, {}).setdefault(concurrency, {})[variant] = {
                    "images_per_s": spread([r["images_per_s"] for r in runs]),
                    **{p: spread([r[p] for r in runs]) for p in PERCENTILES},
                    "errors": sum(r["errors"] for r in runs),
                    "client_cpu_share": spread([r["client_cpu_share"] for r in runs]),
                    "rows_per_run": rows_per_run([r["batch_rows"] for r in runs], function),
                    "batch_buckets": per_bucket([r["batch_rows"] for r in runs], function),
                }
            out[model][concurrency]["ceiling"] = {
                "images_per_s": spread([r["ceiling_images_per_s"] for r in variants["atelier"]])}
    return out


def closed_ratios(rows: list[dict]) -> dict:
    """Per-repetition ratios, summarised: {ratio: {model: {concurrency: spread}}}."""
    by_key = {(r["model"], r["concurrency"], r["repetition"], r["variant"]): r for r in rows}
    ratios: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for (model, concurrency, repetition, variant), row in by_key.items():
        if variant != "atelier":
            continue
        off = by_key.get((model, concurrency, repetition, "unbatched"))
        naive = by_key.get((model, concurrency, repetition, "naive"))
        ratios["served_over_ceiling"][model][concurrency].append(row["images_per_s"] / row["ceiling_images_per_s"])
        if off:
            ratios["batching_on_over_off"][model][concurrency].append(row["images_per_s"] / off["images_per_s"])
        if naive:
            ratios["atelier_over_naive"][model][concurrency].append(row["images_per_s"] / naive["images_per_s"])
            ratios["p95_atelier_over_naive"][model][concurrency].append(row["p95_s"] / naive["p95_s"])
    return {name: {model: {c: spread(v) for c, v in points.items()} for model, points in models.items()}
            for name, models in ratios.items()}


def summarise_mixed(rows: list[dict]) -> dict:
    if not rows:
        return {}
    modes: dict = defaultdict(list)
    for row in rows:
        modes[row["mode"]].append(row)
    over_request = {mode: over_baseline(rows, mode, "request") for mode in modes if mode != "request"}
    return {
        "offered_per_s": rows[0]["offered_per_s"],
        "requests_per_run": rows[0]["requests"] + rows[0]["errors"],
        "modes": {mode: {"images_per_s": spread([r["images_per_s"] for r in runs]),
                         **{p: spread([r[p] for r in runs]) for p in PERCENTILES},
                         "errors": sum(r["errors"] for r in runs),
                         "rows_per_run": rows_per_run([r["batch_rows"] for r in runs], "diffusion.denoise"),
                         "batch_buckets": per_bucket([r["batch_rows"] for r in runs], "diffusion.denoise")}
                  for mode, runs in modes.items()},
        "over_request": over_request,
        "step_over_request": over_request.get("step", {}).get("throughput"),
        "p95_step_over_request": over_request.get("step", {}).get("p95"),
    }


def over_baseline(rows: list[dict], mode: str, baseline: str) -> dict:
    """Throughput and p95 of `mode` ÷ `baseline`, taken inside each repetition."""
    by_rep = {(r["repetition"], r["mode"]): r for r in rows}
    pairs = [(by_rep[(k, mode)], by_rep[(k, baseline)]) for k in sorted({r["repetition"] for r in rows})
             if (k, mode) in by_rep and (k, baseline) in by_rep]
    if not pairs:
        return {}
    return {"throughput": spread([m["images_per_s"] / b["images_per_s"] for m, b in pairs]),
            "p95": spread([m["p95_s"] / b["p95_s"] for m, b in pairs])}


def summarise_simulated(simulated: dict) -> dict:
    if not simulated or not simulated.get("rows"):
        return {}
    rows = simulated["rows"]
    modes: dict = defaultdict(list)
    for row in rows:
        modes[row["mode"]].append(row)
    return {"cost": simulated["cost"], "users": rows[0]["users"],
            "modes": {mode: {"images_per_s": spread([r["images_per_s"] for r in runs]),
                             **{p: spread([r[p] for r in runs]) for p in PERCENTILES},
                             "errors": sum(r["errors"] for r in runs),
                             "rows_per_run": rows_per_run([r["batch_rows"] for r in runs], "diffusion.denoise")}
                      for mode, runs in modes.items()},
            "step_over_request": over_baseline(rows, "step", "request")}


def summarise_tuning(rows: list[dict]) -> dict:
    if not rows:
        return {}
    by_key = {(r["repetition"], r["config"]): r for r in rows}
    configs = list(dict.fromkeys(r["config"] for r in rows))
    out = {}
    for config in configs:
        runs = [r for r in rows if r["config"] == config]
        out[config] = {"env": runs[0]["env"], "images_per_s": spread([r["images_per_s"] for r in runs]),
                       "p95_s": spread([r["p95_s"] for r in runs]),
                       "over_defaults": spread([r["images_per_s"] / by_key[(r["repetition"], "defaults")]["images_per_s"]
                                                for r in runs]),
                       "rows_per_run": rows_per_run([r["batch_rows"] for r in runs], "dcgan.generate")}
    return out


def summarise_utilisation(raw: dict, closed: dict) -> dict:
    """Achieved GFLOP/s over the GEMM peak: each graph in process at batch 32, and the served
    models at concurrency 32 (diffusion: DIFFUSION_STEPS steps x 2 denoiser rows + 1 decode)."""
    util = raw["utilisation"]
    peak, flops = util["gemm_peak_gflops"], util["flops_per_row"]
    graphs = {function: {"mflop_per_row": flops[function] / 1e6, "rows_per_s": rate,
                         "gflops": flops[function] * rate / 1e9, "percent_of_peak": 100 * flops[function] * rate / 1e9 / peak}
              for function, rate in util["rows_per_s_at_32"].items()}
    rows_per_image = 2 if GUIDANCE != 1.0 else 1
    per_image = {"dcgan": flops["dcgan.generate"],
                 "diffusion": DIFFUSION_STEPS * rows_per_image * flops["diffusion.denoise"] + flops["vae.decode"]}
    served = {}
    for model, image_flops in per_image.items():
        point = closed.get(model, {}).get(32)
        if point:
            for variant in ("atelier", "naive", "ceiling"):
                rate = point[variant]["images_per_s"]["median"]
                served.setdefault(model, {})[variant] = {
                    "mflop_per_image": image_flops / 1e6, "images_per_s": rate,
                    "percent_of_peak": 100 * image_flops * rate / 1e9 / peak}
    return {"gemm_peak_gflops": peak, "graphs_at_batch_32": graphs, "served_at_c32": served}


def targets(ratios: dict, mixed: dict, simulated: dict | None = None, admission: dict | None = None) -> list[dict]:
    out = []
    for name, goal, key, model, concurrency, threshold, p95_key in TARGETS:
        found = ratios.get(key, {}).get(model, {}).get(concurrency)
        if found is None:
            continue
        p95 = ratios[p95_key][model][concurrency] if p95_key else None
        met = found["median"] >= threshold and (p95 is None or p95["median"] <= 1.0)
        out.append({"name": name, "goal": goal, "ratio": found, "p95_ratio": p95, "met": met})
    if mixed and mixed.get("step_over_request"):
        met = mixed["step_over_request"]["median"] >= 1.0 and mixed["p95_step_over_request"]["median"] <= 1.0
        out.append({"name": "step-level ÷ request-level (mixed diffusion, this CPU), p95 no worse", "goal": "≥ 1.0×",
                    "ratio": mixed["step_over_request"], "p95_ratio": mixed["p95_step_over_request"], "met": met})
    sim = (simulated or {}).get("step_over_request")
    if sim:
        met = sim["throughput"]["median"] >= 1.6 and sim["p95"]["median"] <= 1.0
        out.append({"name": "step-level ÷ request-level (mixed diffusion, simulated accelerator), p95 no worse",
                    "goal": "≥ 1.6×", "ratio": sim["throughput"], "p95_ratio": sim["p95"], "met": met})
    flood = (admission or {}).get("flood")
    if flood:
        ratio = {"median": flood["interactive_p95_ratio"], "min": flood["interactive_p95_ratio"],
                 "max": flood["interactive_p95_ratio"], "n": 1}
        out.append({"name": "interactive p95 under a batch flood ÷ unloaded (batch requests still done)",
                    "goal": "≤ 2.0×", "ratio": ratio, "p95_ratio": None,
                    "met": flood["interactive_p95_ratio"] <= 2.0 and flood["batch_ok"] > 0})
    return out


def summarise(raw: dict) -> dict:
    closed = summarise_closed(raw.get("closed", []))
    ratios = closed_ratios(raw.get("closed", []))
    mixed = summarise_mixed(raw.get("mixed", []))
    simulated = summarise_simulated(raw.get("simulated", {}))
    if mixed:
        mixed["ceiling_images_per_s"] = raw["mixed_ceiling_images_per_s"]
    return {
        "meta": raw["meta"],
        "scale": raw["scale"],
        "ceiling": raw.get("ceiling"),
        "closed": closed,
        "ratios": ratios,
        "mixed": mixed,
        "simulated": simulated,
        "admission": raw.get("admission", {}),
        "tuning": summarise_tuning(raw.get("tuning", [])),
        "utilisation": summarise_utilisation(raw, closed) if "utilisation" in raw else {},
        "targets": targets(ratios, mixed, simulated, raw.get("admission")),
    }

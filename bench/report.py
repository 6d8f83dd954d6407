"""The report: docs/PERFORMANCE.md, its plots and docs/perf/summary.json, from one summary.

Nothing here measures: every number on the page comes from the summary (bench.summary), which is
written beside the plots, so the page can be re-rendered from a committed summary:

    .venv/bin/python -c "import json; from pathlib import Path; from bench.report import write; \
write(json.loads(Path('docs/perf/summary.json').read_text()), Path('docs'))"
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import plots

COMMANDS = {"full": "make bench", "quick": "make bench-quick", "steps": "make bench-steps"}


def spread_text(stat: dict | None, digits: int = 1, suffix: str = "") -> str:
    """'median (min–max)' of a spread."""
    if not stat:
        return "–"
    return f"{stat['median']:.{digits}f}{suffix} ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"


def ratio_text(stat: dict | None) -> str:
    return spread_text(stat, 2, "×")


def _concurrencies(points: dict) -> list[str]:
    return sorted(points, key=int)


def provenance_line(summary: dict) -> str:
    meta = summary["meta"]
    return (f"Command: `{COMMANDS.get(meta['scale'], meta['scale'])}` · device: CPU, {meta['cpu']} "
            f"({meta['cores']} cores), no GPU · commit `{meta['commit']}` · {meta['date']}")


def header(summary: dict) -> str:
    meta = summary["meta"]
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    load_start, load_end = meta["loadavg_start"], meta["loadavg_end"]
    busy = max(load_start[0], load_end[0]) > meta["cores"]
    return f"""# Atelier performance

Measured by `bench/` ({COMMANDS.get(meta['scale'], meta['scale'])}, scale **{meta['scale']}**) on
{meta['date']}, commit `{meta['commit']}`. Every figure below is a median over
{summary['scale']['repetitions']} repetitions with the spread (min–max) in brackets; every ratio is
taken inside one repetition (both sides measured seconds apart in the same run) and then summarised.

## Rerun

```
make bench        # full suite (this page, docs/perf/*.png, docs/perf/summary.json); took {meta['wall_s'] / 60:.0f} min here
make bench-quick  # ≤ 5 min: concurrency 32 only, no tuning sweep; writes bench/results/quick/
make bench-steps  # ≤ 4 min: step- vs request-level diffusion (queue orders, simulated accelerator) only, printed
```
Raw per-request results: `bench/results/{meta['raw_file']}` (gitignored).

## Machine
- CPU: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']:.0f} GiB RAM, {meta['os']}; no GPU.
- Software: Python {meta['python']}, {versions}.
- Load average (1, 5, 15 min) at start {_load(load_start)}, at end {_load(load_end)}.{
    " **The machine was shared with other jobs during this run** (load above its core count): absolute"
    " numbers are low and noisy; the ratios, measured side by side, are the figures to read."
    if busy else ""}
- The load generator runs on the same {meta['cores']} cores as the servers; its CPU share is in the tables.
"""


def _load(values: list[float]) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


def targets_section(summary: dict) -> str:
    lines = ["## Targets", "",
             "| target | goal | measured, median (min–max) | p95 ratio (≤ 1 = no worse) | met |", "|---|---|---|---|---|"]
    for target in summary["targets"]:
        lines.append(f"| {target['name']} | {target['goal']} | {ratio_text(target['ratio'])} | "
                     f"{ratio_text(target['p95_ratio']) if target['p95_ratio'] else '–'} | "
                     f"{'yes' if target['met'] else '**no**'} |")
    lines += ["", "Utilisation of the CPU's GEMM peak per model at batch 32: section 4. GPU: not measured "
              "(section 6).", "", provenance_line(summary), ""]
    return "\n".join(lines)


def method_section(summary: dict) -> str:
    scale, meta = summary["scale"], summary["meta"]
    sim = summary.get("simulated") or {}
    SIM_USERS_TEXT = (f"{sim['users']} closed-loop users of the mixed workload, {scale.get('sim_window_s', 0):g} s "
                      "measured per variant and repetition." if sim else "Not run.")
    return f"""## Method
- **Closed loop** (`bench/load.py`): `c` clients each send `POST /v1/generate` (n = 1, PNG output) and
  send the next request when the answer arrives. Throughput counts the images answered inside the
  measured window ({scale['gan_window_s']:g} s for dcgan, {scale['diffusion_window_s']:g} s for diffusion, after a
  warm-up of {scale['gan_warmup_s']:g} s / {scale['diffusion_warmup_s']:g} s); latency percentiles use the requests
  started inside it. The load then drains, so every point starts on an idle server.
- dcgan: one class-conditional image per request. diffusion: {meta['diffusion_steps']} sampler steps (few, to keep the
  suite short), DPM-Solver++(2M), guidance {meta['guidance']:g} (two denoiser rows per image), then one VAE decode.
- **Variants run back to back in each repetition**, in an order rotated per repetition: Atelier with its
  defaults, Atelier with `ATELIER_MAX_BATCH=1` (batching off), and the naive server (`bench/naive_server.py`:
  FastAPI + uvicorn, the same weights in PyTorch eager, rebuilt from the committed ONNX graphs and checked
  against onnxruntime to ≤ 1e-4 at start-up, one request at a time behind a lock, DDIM with guidance as one
  2n-row forward per step: the same denoiser work per image). Every server is warmed at many batch sizes
  before measuring (onnxruntime's first run of a new shape is slow). Every Atelier variant runs with
  `ATELIER_MAX_QUEUE_SECONDS=600`: this suite measures what batching does with the requests it is given,
  past the latency knee, so admission is out of the way; section 3c measures admission on the defaults.
- **Ceiling** (`bench/ceiling.py`): the same graphs with the service's session options in an in-process
  onnxruntime loop, no HTTP; swept over batch sizes, then re-measured at the best batch in every repetition.
- **Mixed diffusion** (`bench/suite.py`): {summary['mixed'].get('requests_per_run', 0)} requests per run with steps drawn from
  {meta['mixed_steps']}, Poisson arrivals at {meta['offered_fraction']:g} × the in-process ceiling for that mix; the same
  arrival sequence (seed per repetition) goes to the step-level server (default: queue by request age), the
  step-level servers with `ATELIER_QUEUE_ORDER=remaining` and `arrival`, and a request-level server
  (`ATELIER_DIFFUSION_BATCHING=request`). Throughput = images ÷ (last answer − first arrival).
- **Simulated accelerator** (`bench/suite.py`, `ATELIER_SIMULATED_COST_MS`): every ONNX run is replaced by a
  sleep of fixed + per_row × rows in the batcher's thread; the HTTP path, admission, scheduler, batcher and
  samplers are the real ones. {SIM_USERS_TEXT}
- **Admission** (`bench/admission.py`) on a server with its defaults: 64 concurrent one-image dcgan requests;
  32 closed-loop users of the mixed diffusion workload (refusals, and the peak of the admission gauges);
  one interactive user (diffusion, 25 steps) alone and then beside 8 closed-loop `priority: batch` users
  (8 images of 25 steps each).
"""


def ceiling_section(summary: dict) -> str:
    sweep = summary["ceiling"]["sweep"]
    batches = sorted({int(b) for points in sweep.values() for b in points})
    lines = ["## 1. Ceiling: in-process onnxruntime, best batch", "",
             f"| batch (images) | dcgan img/s | diffusion img/s ({summary['meta']['diffusion_steps']} steps, "
             "2 denoiser rows per image + decode) |", "|---|---|---|"]
    for batch in batches:
        gan = sweep["dcgan"].get(str(batch))
        diffusion = sweep["diffusion"].get(str(batch))
        lines.append(f"| {batch} | {gan:.1f} | {f'{diffusion:.1f}' if diffusion else '– (over 64 rows)'} |")
    best = summary["ceiling"]["best_batch"]
    lines += ["", f"Best batch: dcgan {best['dcgan']}, diffusion {best['diffusion']} images "
              f"({2 * int(best['diffusion'])} denoiser rows). The gain from batch 1 to the best batch is "
              f"{_gain(sweep['dcgan'])}× for dcgan and {_gain(sweep['diffusion'])}× for diffusion: on this CPU a "
              "batch-1 run is already mostly arithmetic, which bounds what any batching can add.", "",
              provenance_line(summary), ""]
    return "\n".join(lines)


def _gain(points: dict) -> str:
    return f"{max(points.values()) / points['1']:.2f}" if "1" in points else "–"


def served_section(summary: dict) -> str:
    lines = ["## 2. Served vs ceiling, batching on vs off, Atelier vs naive", "",
             "![throughput vs concurrency](perf/throughput_vs_concurrency.png)", ""]
    ratios = summary["ratios"]
    for model, points in summary["closed"].items():
        lines += [f"### {model}", "",
                  "| c | ceiling img/s | Atelier img/s | batching off img/s | naive img/s | Atelier rows/run | "
                  "Atelier ÷ ceiling | on ÷ off | Atelier ÷ naive |", "|---|---|---|---|---|---|---|---|---|"]
        for c in _concurrencies(points):
            point = points[c]
            rows = point["atelier"]["rows_per_run"]
            lines.append(
                f"| {c} | {spread_text(point['ceiling']['images_per_s'])} | "
                f"{spread_text(point['atelier']['images_per_s'])} | {spread_text(point['unbatched']['images_per_s'])} | "
                f"{spread_text(point['naive']['images_per_s'])} | {f'{rows:.1f}' if rows else '–'} | "
                f"{ratio_text(ratios['served_over_ceiling'][model][c])} | "
                f"{ratio_text(ratios['batching_on_over_off'][model][c])} | "
                f"{ratio_text(ratios['atelier_over_naive'][model][c])} |")
        lines += ["", "| c | variant | p50 s | p95 s | p99 s | errors | client CPU share |", "|---|---|---|---|---|---|---|"]
        for c in _concurrencies(points):
            for variant in ("atelier", "unbatched", "naive"):
                stats = points[c][variant]
                lines.append(f"| {c} | {variant} | {spread_text(stats['p50_s'], 3)} | {spread_text(stats['p95_s'], 3)} | "
                             f"{spread_text(stats['p99_s'], 3)} | {stats['errors']} | "
                             f"{spread_text(stats['client_cpu_share'], 2)} |")
        lines.append("")
    lines += ["![latency percentiles](perf/latency_percentiles.png)", "",
              "![rows per ONNX run](perf/batch_sizes.png)", "", provenance_line(summary), ""]
    return "\n".join(lines)


MODE_NAMES = {"step": "step-level, queue by age (default)", "step-remaining": "step-level, least remaining first",
              "step-arrival": "step-level, each submission in turn", "request": "request-level (cohorts)"}


def modes_table(modes: dict, over_request: dict) -> list[str]:
    lines = ["| mode | img/s | p50 s | p95 s | p99 s | denoise rows/run | ÷ request img/s | ÷ request p95 | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, stats in modes.items():
        rows, ratios = stats["rows_per_run"], over_request.get(mode, {})
        lines.append(f"| {MODE_NAMES.get(mode, mode)} | {spread_text(stats['images_per_s'], 2)} | "
                     f"{spread_text(stats['p50_s'], 2)} | {spread_text(stats['p95_s'], 2)} | "
                     f"{spread_text(stats['p99_s'], 2)} | {f'{rows:.1f}' if rows else '–'} | "
                     f"{ratio_text(ratios.get('throughput'))} | {ratio_text(ratios.get('p95'))} | {stats['errors']} |")
    return lines


def mixed_section(summary: dict) -> str:
    mixed = summary.get("mixed")
    if not mixed:
        return ""
    lines = ["## 3. Step-level vs request-level batching, mixed diffusion", "",
             f"Offered load: Poisson, {mixed['offered_per_s']:.2f} requests/s ({summary['meta']['offered_fraction']:g} × "
             f"the in-process ceiling of {mixed['ceiling_images_per_s']:.2f} img/s for this mix), "
             f"{mixed['requests_per_run']} requests per run, steps {summary['meta']['mixed_steps']}.", "",
             *modes_table(mixed["modes"], mixed.get("over_request", {}))]
    lines += ["", f"Step ÷ request throughput: **{ratio_text(mixed['step_over_request'])}**; "
              f"p95 step ÷ request: **{ratio_text(mixed['p95_step_over_request'])}** (below 1 = step-level faster).",
              "", provenance_line(summary), ""]
    return "\n".join(lines) + simulated_section(summary) + admission_section(summary)


def simulated_section(summary: dict) -> str:
    sim = summary.get("simulated")
    if not sim:
        return ""
    cost, ratio = sim["cost"], sim["step_over_request"]
    lines = ["", "### 3b. The same comparison on a SIMULATED accelerator (a cost model, not a GPU)", "",
             f"Every ONNX run sleeps **{cost['fixed_ms']:.2f} ms + {cost['per_row_ms']:.4f} ms × rows**: the H100 "
             f"fit of `docs/perf/gpu_h100.json` (cuda_fp32 denoise at batch 1/16/64: {cost['gpu_fixed_ms']:.3f} ms fixed "
             f"+ {cost['gpu_per_row_ms']:.5f} ms per row) run {cost['time_scale']:g}× slower, so that this 2-core "
             "host's Python work per step stays small beside the device time, as it is on a GPU host; scaling both "
             "terms keeps their ratio, which is what decides the comparison. The same cost applies to every model "
             f"function. {sim['users']} closed-loop users of the mixed workload (steps {summary['meta']['mixed_steps']}).",
             "", *modes_table(sim["modes"], {"step": ratio})]
    lines += ["", f"Simulated accelerator, step ÷ request throughput: **{ratio_text(ratio.get('throughput'))}**; "
              f"p95: **{ratio_text(ratio.get('p95'))}**. A finished request's slot in a request-level cohort still "
              "pays the run's fixed cost until the cohort's longest member is done; step-level fills it at once.",
              "", provenance_line(summary), ""]
    return "\n".join(lines)


def admission_section(summary: dict) -> str:
    adm = summary.get("admission")
    if not adm:
        return ""
    burst, mixed, flood = adm["burst"], adm["mixed"], adm["flood"]
    peaks = mixed["peak_gauges_s"]
    lines = ["", "### 3c. Admission and priorities on the defaults (`bench/admission.py`)", "",
             "| load | requests | answered 200 | refused 429 | other | p95 s |", "|---|---|---|---|---|---|",
             f"| {burst['requests']} concurrent one-image dcgan requests | {burst['requests']} | {burst['ok']} | "
             f"{burst['refused']} | {burst['other'] or '–'} | {burst['p95_s']:.3f} |",
             f"| {mixed['users']} closed-loop users, mixed diffusion 10/25/50 steps, {mixed['seconds']:g} s | "
             f"{mixed['requests']} | {mixed['ok']} | {mixed['refused']} | {mixed['other'] or '–'} | {mixed['p95_s']:.3f} |",
             "", f"Peak predicted wait during the mixed load: **{peaks['atelier_predicted_wait_seconds']:.2f} s** "
             f"(pending work {peaks['atelier_pending_work_seconds']:.2f} s), against the default budget "
             f"`ATELIER_MAX_QUEUE_SECONDS` = {adm['settings']['max_queue_seconds']:g} s.", "",
             "| interactive user (diffusion, 25 steps) | p95 s |", "|---|---|",
             f"| alone | {flood['interactive_unloaded_p95_s']:.3f} |",
             f"| beside {flood['batch_clients']} closed-loop batch users (8 images each) | "
             f"{flood['interactive_flooded_p95_s']:.3f} (**{flood['interactive_p95_ratio']:.2f}×**) |",
             "", f"Batch requests meanwhile: {flood['batch_ok']} done (p95 {flood['batch_p95_s']:.2f} s), "
             f"{flood['batch_refused']} refused, other statuses {flood['batch_other'] or 'none'}. Measured once "
             "per run (no repetitions).", "", provenance_line(summary), ""]
    return "\n".join(lines)


def utilisation_section(summary: dict) -> str:
    util = summary.get("utilisation")
    if not util:
        return ""
    lines = ["## 4. Utilisation of the CPU's float32 GEMM peak", "",
             f"Peak: numpy float32 matmul 2048², 2 threads (OpenBLAS), best of 7, best of the start and end of the run: "
             f"**{util['gemm_peak_gflops']:.0f} GFLOP/s**. FLOPs = 2 × multiply-adds of Conv/MatMul/Gemm with shapes "
             "from onnx shape inference at batch 32 (`bench/utilisation.py`); elementwise work is not counted.", "",
             "| graph (in-process, batch 32) | MFLOP per row | rows/s | GFLOP/s | % of peak |", "|---|---|---|---|---|"]
    for function, stats in util["graphs_at_batch_32"].items():
        lines.append(f"| {function} | {stats['mflop_per_row']:.0f} | {stats['rows_per_s']:.0f} | {stats['gflops']:.1f} | "
                     f"{stats['percent_of_peak']:.0f} % |")
    lines += ["", "| model at concurrency 32 | MFLOP per image | variant | img/s | % of peak |", "|---|---|---|---|---|"]
    for model, variants in util["served_at_c32"].items():
        for variant, stats in variants.items():
            lines.append(f"| {model} | {stats['mflop_per_image']:.0f} | {variant} | {stats['images_per_s']:.1f} | "
                         f"{stats['percent_of_peak']:.0f} % |")
    lines += ["", provenance_line(summary), ""]
    return "\n".join(lines)


def tuning_section(summary: dict) -> str:
    tuning = summary.get("tuning")
    if not tuning:
        return "## 5. Tuning\n\nNot run at this scale (`make bench` runs it).\n"
    lines = ["## 5. Tuning: dcgan at concurrency 32, one factor at a time", "",
             "| config | environment | img/s | ÷ defaults | p95 s | rows/run |", "|---|---|---|---|---|---|"]
    for config, stats in tuning.items():
        env = (", ".join(f"`{k}={v}`" for k, v in stats["env"].items()) if stats["env"]
               else "defaults (threads 0 = all cores, max_batch 64, gather 0 ms)")
        rows = stats["rows_per_run"]
        lines.append(f"| {config} | {env} | {spread_text(stats['images_per_s'])} | {ratio_text(stats['over_defaults'])} | "
                     f"{spread_text(stats['p95_s'], 3)} | {f'{rows:.1f}' if rows else '–'} |")
    lines += ["", tuning_verdict(tuning), "", provenance_line(summary), ""]
    return "\n".join(lines)


def tuning_verdict(tuning: dict) -> str:
    """A change is supported only when every repetition agrees (the ratio's whole spread past 1)."""
    better = [c for c, s in tuning.items() if c != "defaults" and s["over_defaults"]["min"] > 1.0]
    worse = [c for c, s in tuning.items() if c != "defaults" and s["over_defaults"]["max"] < 1.0]
    text = "Reading the table: a setting beats the defaults only if its ratio's whole spread is above 1. "
    if better:
        text += f"Consistently faster than the defaults: {', '.join(better)}. "
    else:
        text += "No setting beat the defaults in every repetition, so the table supports keeping them. "
    if worse:
        text += f"Consistently slower: {', '.join(worse)}."
    return text


def findings_section(summary: dict) -> str:
    """Why each missed target was missed, in this run's own numbers."""
    lines = ["## 7. Findings", ""]
    util = summary.get("utilisation", {}).get("served_at_c32", {})
    sweep = summary["ceiling"]["sweep"] if summary.get("ceiling") else {}
    for target in summary["targets"]:
        if target["met"]:
            lines.append(f"- **{target['name']}**: met, {ratio_text(target['ratio'])}.")
            continue
        lines.append(f"- **{target['name']}**: missed, {ratio_text(target['ratio'])}. {_why(target, util, sweep, summary)}")
    return "\n".join(lines) + "\n"


def _why(target: dict, util: dict, sweep: dict, summary: dict) -> str:
    name = target["name"]
    model = "dcgan" if "dcgan" in name else "diffusion"
    if name.startswith("batching"):
        return (f"The in-process ceiling itself gains only {_gain(sweep.get(model, {}))}× from batch 1 to its best "
                "batch: the convolutions of a 32×32 image keep both cores busy at batch 1, so batching removes "
                "per-run overhead (Python, HTTP, a thread hop) but cannot create arithmetic throughput.")
    if name.startswith("Atelier ÷ naive") and model in util:
        naive = util[model]["naive"]["percent_of_peak"]
        ceiling = util[model]["ceiling"]["percent_of_peak"]
        return (f"The naive torch server already runs at {naive:.0f} % of the GEMM peak (PyTorch's oneDNN "
                f"convolutions are as good as onnxruntime's at batch 1), and even the in-process ceiling is at "
                f"{ceiling:.0f} %; 5× the naive throughput would need {5 * naive:.0f} % of the peak.")
    if name.startswith("served"):
        share = summary["closed"]["dcgan"]["32"]["atelier"]["client_cpu_share"]["median"]
        return (f"The load generator shares the {summary['meta']['cores']} cores and used {share:.2f} of a core; "
                "the server's HTTP, JSON and PNG work per image competes with onnxruntime for the same cores, "
                "which the in-process loop does not pay.")
    if name.startswith("step-level") and "simulated" in name:
        sim = summary["simulated"]["modes"]
        return (f"Rows per denoise run: {sim['step']['rows_per_run'] or 0:.1f} step-level vs "
                f"{sim['request']['rows_per_run'] or 0:.1f} request-level (section 3b).")
    if name.startswith("step-level"):
        modes = summary["mixed"]["modes"]
        step, request = modes["step"], modes["request"]
        return (f"Rows per denoise run: {step['rows_per_run'] or 0:.1f} step-level vs "
                f"{request['rows_per_run'] or 0:.1f} request-level. On this CPU a run's cost grows with "
                "its rows (section 1), so the slots a finished request leaves in a request-level cohort cost "
                "nothing and throughput cannot differ much (p50 "
                f"{step['p50_s']['median']:.2f} s vs {request['p50_s']['median']:.2f} s, p95 "
                f"{step['p95_s']['median']:.2f} s vs {request['p95_s']['median']:.2f} s).")
    if name.startswith("interactive"):
        flood = summary["admission"]["flood"]
        return (f"Unloaded p95 {flood['interactive_unloaded_p95_s']:.3f} s, under the flood "
                f"{flood['interactive_flooded_p95_s']:.3f} s; batch requests done: {flood['batch_ok']}.")
    return ""


GPU_RESULTS = Path(__file__).resolve().parent.parent / "docs" / "perf" / "gpu_h100.json"
GPU_FUNCTIONS = ("dcgan.generate", "diffusion.denoise", "vae.decode", "vae.encode", "text.embed")


def gpu_section(results_path: Path = GPU_RESULTS) -> str:
    """The served suite needs a GPU machine for its whole run; what was measured on one is
    `bench/gpu_check.py`'s in-process check (docs/perf/gpu_h100.json), shown here beside the CPU."""
    head = "## 6. GPU\n\nThe served suite above ran on the CPU only: this suite was not run on a GPU.\n"
    if not results_path.exists():
        return head
    measured = json.loads(results_path.read_text())
    variants = measured["variants"]
    lines = [head, "What was measured on a GPU is the in-process check `bench/gpu_check.py` (onnxruntime-gpu "
             f"{measured['onnxruntime']}, Python {measured['python']}, one NVIDIA H100, commit `67400d1`; raw: "
             "`docs/perf/gpu_h100.json`): rows/s per model function at batch 1 and 64, and the gain batching "
             "gives there. `cpu_fp32` in that file is the H100 host's CPU (16 cores), not this machine.", "",
             "| function | " + " | ".join(f"{v} b1 | {v} b64 | {v} gain" for v in variants) + " |",
             "|---|" + "---|---|---|" * len(variants)]
    for function in GPU_FUNCTIONS:
        cells = []
        for variant in variants.values():
            rows = variant["rows_per_s"][function]
            cells += [f"{rows['1']:,.0f}", f"{rows['64']:,.0f}", f"{rows['64'] / rows['1']:.1f}×"]
        lines.append(f"| {function} | " + " | ".join(cells) + " |")
    fp16 = variants.get("cuda_fp16", {}).get("max_abs_vs_cpu_fp32", {})
    if fp16:
        lines += ["", "fp16 graphs (derived at load on CUDA, `ATELIER_FP16=auto`): max abs difference vs the CPU "
                  "fp32 output " + ", ".join(f"{f} {d:.3g}" for f, d in fp16.items()) + "."]
    lines += ["", "On the GPU a denoise run of 64 rows costs about what a run of 1 row does (tens of × more rows/s), "
              "so there batching is the whole game and the batching targets above are a GPU property this CPU "
              "cannot show (section 1: ≤ 2× from batching here). Served GPU throughput: not measured (the "
              "session's device time was spent on this check)."]
    return "\n".join(lines) + "\n"


def performance_markdown(summary: dict) -> str:
    sections = [header(summary), targets_section(summary), method_section(summary), ceiling_section(summary),
                served_section(summary) if summary.get("closed") else "", mixed_section(summary),
                utilisation_section(summary), tuning_section(summary), gpu_section(), findings_section(summary)]
    return "\n".join(section for section in sections if section)


def write(summary: dict, docs: Path) -> Path:
    """Render PERFORMANCE.md, perf/*.png and perf/summary.json under `docs`; returns the page."""
    perf = docs / "perf"
    perf.mkdir(parents=True, exist_ok=True)
    (perf / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if summary.get("closed"):
        plots.plot_throughput(summary, perf / "throughput_vs_concurrency.png")
        plots.plot_batch_sizes(summary, perf / "batch_sizes.png")
    plots.plot_latency(summary, perf / "latency_percentiles.png")
    page = docs / "PERFORMANCE.md"
    page.write_text(performance_markdown(summary))
    return page

"""One command to load-test a served Atelier: Locust headless against URL for a bounded time, CSV and HTML
reports, then the SLO gate (loadtests/slo.yaml). Exit status: 0 every SLO met, 1 an SLO missed (the
table names the route and the figure), 2 the load did not run.

    .venv/bin/python -m loadtests.run http://127.0.0.1:3000                      # steady, 6 users, 60 s
    .venv/bin/python -m loadtests.run http://127.0.0.1:3000 --shape spike --users 4 --run-time 5m
    .venv/bin/python -m loadtests.run https://atelier.example.com --grpc-port 443 --tags json oip-grpc
    .venv/bin/python -m loadtests.run --check loadtests/reports/<run>/stats --profile overload

Traffic goes to URL and to --grpc-port on URL's host, nowhere else: Locust runs with a locustfile from
this folder, no web UI, and OpenTelemetry export off; LOCUST_* variables and config files cannot change
the host, because --host is always given on the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from loadtests import report, slo

log = logging.getLogger("loadtests")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHAPES = ("steady", "ramp", "spike")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", help="the service's HTTP base URL: scheme, host and port")
    parser.add_argument("--check", metavar="CSV_PREFIX", help="only gate an earlier run's CSVs (no load)")
    load = parser.add_argument_group("load")
    load.add_argument("--shape", choices=SHAPES, default="steady",
                      help="steady: --users throughout; ramp: 1 to --users over 80%% of the run; spike: --users, "
                           "4x for a quarter of the run, back to --users")
    load.add_argument("--users", type=int, default=6, help="users (the spike's base); default 6")
    load.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second; default 2")
    load.add_argument("--run-time", default="60s", help="bound on the run, Locust's format (30s, 5m); default 60s")
    load.add_argument("--tags", nargs="*", default=[], help="only these protocols/tasks: json openai img2img "
                                                            "oip-http oip-grpc batch")
    load.add_argument("--exclude-tags", nargs="*", default=[])
    load.add_argument("--mix", default="", help="the users to run and their weights, e.g. gan=2,diffusion=3,"
                                                "openai=2,oip-http=1,oip-grpc=1,batch=1 (the default)")
    load.add_argument("--steps", default="10,20,30", help="diffusion step counts requests draw from")
    load.add_argument("--pace", type=float, default=0.0,
                      help="tasks per second per user (arrival-rate test); 0 = closed loop with think times")
    load.add_argument("--priority", choices=("auto", "on", "off"), default="auto",
                      help="send Atelier's priority field; auto = when the server's OpenAPI schema has it")
    load.add_argument("--grpc-port", type=int, default=8001, help="OIP gRPC port on URL's host; default 8001")
    gate = parser.add_argument_group("gate and reports")
    gate.add_argument("--slo", type=Path, default=slo.SLO_FILE, help="SLO file; default loadtests/slo.yaml")
    gate.add_argument("--profile", help="SLO profile; default 'overload' for the spike shape, else 'default'")
    gate.add_argument("--out", type=Path, help="report folder; default loadtests/reports/<UTC time>-<shape>")
    args = parser.parse_args(argv)
    if not args.url and not args.check:
        parser.error("give the URL to load, or --check CSV_PREFIX")
    args.profile = args.profile or ("overload" if args.shape == "spike" else "default")
    return args


def server_has_priority(url: str) -> bool:
    """Whether the JSON API takes `priority` (the admission-by-predicted-wait release): the request schema
    of POST /v1/generate in the server's own /openapi.json names it."""
    with urllib.request.urlopen(url.rstrip("/") + "/openapi.json", timeout=30) as answer:
        schema = json.load(answer)
    body = schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    return "priority" in body.get("properties", {})


def locust_command(args: argparse.Namespace, prefix: Path, priority: bool) -> list[str]:
    command = [sys.executable, "-m", "locust", "--headless", "--only-summary",
               "-f", f"{HERE / 'locustfile.py'},{HERE / 'shapes' / (args.shape + '.py')}",
               "--host", args.url, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
               "--run-time", args.run_time, "--stop-timeout", "30",
               "--csv", str(prefix), "--csv-full-history", "--html", str(prefix.parent / "report.html"),
               "--exit-code-on-error", "0",  # failures are the gate's to judge; non-zero = Locust itself broke
               "--atelier-steps", args.steps, "--atelier-pace", str(args.pace),
               "--atelier-priority", "on" if priority else "off", "--atelier-grpc-port", str(args.grpc_port)]
    command += ["--atelier-mix", args.mix] if args.mix else []
    command += ["--tags", *args.tags] if args.tags else []
    command += ["--exclude-tags", *args.exclude_tags] if args.exclude_tags else []
    return command


def locust_env() -> dict[str, str]:
    """The caller's environment without LOCUST_* settings (the command line says everything) and with
    OpenTelemetry export off, so the run talks to the service and nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env.update(OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none",
               OTEL_LOGS_EXPORTER="none", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


def gate(prefix: Path, profile_name: str, slo_path: Path) -> tuple[bool, str]:
    profile = slo.load_profile(profile_name, slo_path)
    run = slo.read_run(prefix)
    checks = slo.evaluate(run, profile)
    return all(c.ok for c in checks), slo.render(checks, profile, run)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.check:
        ok, table = gate(Path(args.check), args.profile, args.slo)
        print(table)
        return 0 if ok else 1
    priority = server_has_priority(args.url) if args.priority == "auto" else args.priority == "on"
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = args.out or HERE / "reports" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{args.shape}"
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "stats"
    command = locust_command(args, prefix, priority)
    log.info("load: %s, priority field %s; reports in %s", args.url, "sent" if priority else "not sent", out)
    began = time.monotonic()
    finished = subprocess.run(command, cwd=ROOT, env=locust_env(), stdin=subprocess.DEVNULL)
    if finished.returncode != 0 or not Path(f"{prefix}_stats.csv").exists():
        log.error("locust exited with %d and no complete stats: the load did not run", finished.returncode)
        return 2
    ok, table = gate(prefix, args.profile, args.slo)
    (out / "slo.txt").write_text(table + "\n")
    report.write_summary(out, {
        "date": started, "command": f"`python -m loadtests.run {shlex.join(sys.argv[1:])}`",
        "target": f"{args.url} (gRPC port {args.grpc_port}); shape {args.shape}, {args.users} users"
                  + (f" paced at {args.pace} tasks/s each" if args.pace else ", think times")
                  + f", run time {args.run_time} ({time.monotonic() - began:.0f} s wall), priority field "
                  + ("sent" if priority else "not sent") + f", SLO profile {args.profile}"}, command[1:], table)
    print(table)
    log.info("reports: %s (report.html, summary.md, slo.txt, stats_*.csv)", out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Load tests for a served Atelier (Locust): users for every protocol (locustfile.py, grpc_client.py),
load shapes (shapes/), versioned SLOs (slo.yaml) and their gate (slo.py), and one command that runs
them all against a URL (run.py). See docs/LOADTESTS.md.

    .venv/bin/python -m loadtests.run http://127.0.0.1:3000 --run-time 30s
"""

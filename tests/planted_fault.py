"""Atelier with one fault planted, for tests of what an unexpected exception does to an answer: a request
whose prompt is FAULT_PROMPT raises RuntimeError inside the core (in `ServingCore.check`, which every route
and transport calls), where no handler expects it. Every other request is served as usual.

    BENTOML_DO_NOT_TRACK=True .venv/bin/bentoml serve tests.planted_fault:Atelier --port 3000

The fault is planted when `bentoml serve` looks the service up, not on import: a test imports this module
for FAULT_PROMPT without loading the service (its gRPC protos would clash with tritonclient's).
"""

from __future__ import annotations

FAULT_PROMPT = "plant an unexpected error"


def __getattr__(name: str):
    if name != "Atelier":
        raise AttributeError(name)
    from service.api import Atelier
    from service.server import ServingCore

    served_check = ServingCore.check
    if not getattr(served_check, "planted", False):
        def check_or_fail(self: ServingCore, request) -> None:
            if request.prompt == FAULT_PROMPT:
                raise RuntimeError("planted fault: an internal error no handler expects")
            served_check(self, request)

        check_or_fail.planted = True
        ServingCore.check = check_or_fail
    return Atelier

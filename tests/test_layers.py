"""The layers of `service/` import downwards only (DESIGN.md, STYLE.md rule 18), read from the source.

config/errors/metrics/logs -> manifest/fp16/rules -> registry/batcher/engine -> samplers/pipelines/
uploads -> server (the application core) -> transports -> api (the composition root). An import of a
higher layer from a lower one, of `service.api` from anywhere, or a cycle between two modules fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parent.parent / "service"

# module -> layer; a module may import only modules of a strictly lower layer (its own package's
# __init__ and the generated protobuf code are leaves, outside the walk)
LAYERS = {
    "config": 0, "errors": 0, "logs": 0, "metrics": 0,
    "manifest": 1, "fp16": 1, "rules": 1, "credentials": 1, "tiles": 1, "genomes": 1.5,
    "registry": 2, "batcher": 2, "engine": 3,
    "samplers": 4, "uploads": 4, "style": 4.5, "pipelines": 5, "creative": 5.2,
    "admission": 5.5, "server": 6,
    "transports.oip_edits": 6.5,
    "transports.context": 7, "transports.bodies": 7, "transports.oip": 7, "transports.streaming": 7.5,
    "transports.json_api": 8, "transports.oip_http": 8, "transports.oip_grpc": 8, "transports.openai_images": 8,
    "transports.creative_api": 8.5, "transports.assist_api": 8.5, "transports.style_api": 8.5,
    "transports.credentials_api": 8, "transports.playground": 8,
    "transports.http_app": 9,
    "api": 10,
}


def service_modules() -> dict[str, Path]:
    modules = {}
    for path in SERVICE.rglob("*.py"):
        relative = path.relative_to(SERVICE).with_suffix("")
        if relative.name == "__init__" or relative.parts[0] == "protos":
            continue
        modules[".".join(relative.parts)] = path
    return modules


def imports_of(path: Path) -> set[str]:
    """The `service.*` modules a file imports (at the top or inside functions), relative to `service`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from service import a, b` imports the modules a and b; `from service.x import y` imports x
            names = ([f"{node.module}.{alias.name}" for alias in node.names] if node.module in ("service",
                     "service.transports") else [node.module])
        else:
            continue
        found.update(name.removeprefix("service.") for name in names if name.startswith("service."))
    return {name for name in found if not name.startswith("protos")}


MODULES = service_modules()
GRAPH = {module: imports_of(path) for module, path in MODULES.items()}


def test_every_service_module_has_a_layer():
    assert sorted(MODULES) == sorted(LAYERS), "a module was added or removed: give it a layer here and in DESIGN.md"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_lower_layers(module):
    upward = {name for name in GRAPH[module] if LAYERS.get(name, -1) >= LAYERS[module]}
    assert not upward, f"service/{module} imports {sorted(upward)} from its own layer or above"


def test_nothing_imports_the_composition_root():
    importers = sorted(module for module, names in GRAPH.items() if "api" in names)
    assert not importers, f"{importers} import service.api"


def test_no_two_service_modules_import_each_other():
    cycles = sorted((a, b) for a, names in GRAPH.items() for b in names if a < b and a in GRAPH.get(b, ()))
    assert not cycles


def test_the_walk_sees_both_import_forms(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from service import pipelines, rules\nimport service.api\n"
                      "def f():\n    from service.transports.oip import infer\n")
    assert imports_of(sample) == {"pipelines", "rules", "api", "transports.oip"}

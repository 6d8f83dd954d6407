"""Atelier's online world: onnxruntime only, never torch. `bentoml serve service:Atelier`."""


def __getattr__(name: str):
    # lazy, so `import service.samplers` does not pull in BentoML and the whole web stack
    if name == "Atelier":
        from service.api import Atelier

        return Atelier
    raise AttributeError(name)

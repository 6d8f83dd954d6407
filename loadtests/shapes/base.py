"""The Locust side of the shapes: reads the common options and asks a pure function of shapes/__init__.py.
`abstract = True` keeps Locust from taking this base class for a shape of its own."""

from __future__ import annotations

from locust import LoadTestShape

from loadtests.shapes import Tick


class AtelierShape(LoadTestShape):
    abstract = True
    use_common_options = True  # --users, --spawn-rate and --run-time size the shape

    def tick(self) -> Tick:
        options = self.runner.environment.parsed_options
        if not options.run_time:
            raise ValueError(f"{type(self).__name__} needs --run-time: the shape is laid out over the run")
        return self.profile(self.get_run_time(), options.num_users, options.spawn_rate, options.run_time)

    @staticmethod
    def profile(elapsed: float, users: int, spawn_rate: float, run_time: float) -> Tick:
        raise NotImplementedError

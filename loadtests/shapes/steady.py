"""The steady shape, `loadtests.shapes.steady`:

    locust -f loadtests/locustfile.py,loadtests/shapes/steady.py --run-time 60s ...
"""

from loadtests import shapes
from loadtests.shapes.base import AtelierShape


class Steady(AtelierShape):
    profile = staticmethod(shapes.steady)

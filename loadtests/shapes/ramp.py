"""The ramp shape, `loadtests.shapes.ramp`:

    locust -f loadtests/locustfile.py,loadtests/shapes/ramp.py --run-time 60s ...
"""

from loadtests import shapes
from loadtests.shapes.base import AtelierShape


class Ramp(AtelierShape):
    profile = staticmethod(shapes.ramp)

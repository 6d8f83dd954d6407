"""The spike shape, `loadtests.shapes.spike`:

    locust -f loadtests/locustfile.py,loadtests/shapes/spike.py --run-time 60s ...
"""

from loadtests import shapes
from loadtests.shapes.base import AtelierShape


class Spike(AtelierShape):
    profile = staticmethod(shapes.spike)

"""ot_gen: train generative networks by optimal-transport matching.

A generator maps prior samples to data; each round pairs generated points with real
points by an optimal assignment and regresses every generated point onto its partner.
"""

__version__ = "0.1.0"

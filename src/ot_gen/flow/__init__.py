"""Flow matching on OT pairs: a velocity field trained on straight paths between prior
points and the reals a matcher pairs them with, sampled by integrating an ODE; and a
one-step generator distilled from such a flow (`FlowTeacher`)."""

from ot_gen.flow.mode import Flow
from ot_gen.flow.teacher import FlowTeacher
from ot_gen.flow.unet import UNetFlowGenerator
from ot_gen.flow.velocity import FlowGenerator

__all__ = ["Flow", "FlowGenerator", "FlowTeacher", "UNetFlowGenerator"]

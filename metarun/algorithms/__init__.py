"""Meta-learning algorithms: one file per method on the shared interface of base.py."""

from metarun.algorithms.anil import ANIL
from metarun.algorithms.base import Algorithm, StepOutput
from metarun.algorithms.maml import MAML
from metarun.algorithms.protonet import ProtoNet

__all__ = ["ANIL", "Algorithm", "MAML", "ProtoNet", "StepOutput"]

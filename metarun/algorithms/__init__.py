"""Meta-learning algorithms: one file per method on the shared interface of base.py (ANIL and Meta-SGD
are options of MAML: algo.adapt=head, algo.learn_inner_lr=per_weight)."""

from metarun.algorithms.base import Algorithm, StepOutput
from metarun.algorithms.baseline import Baseline
from metarun.algorithms.imp import IMP
from metarun.algorithms.maml import MAML
from metarun.algorithms.mann import MANN
from metarun.algorithms.matchingnet import MatchingNet
from metarun.algorithms.metalstm import MetaLSTM
from metarun.algorithms.pretrain import Pretrain
from metarun.algorithms.protonet import ProtoNet
from metarun.algorithms.relationnet import RelationNet
from metarun.algorithms.reptile import Reptile
from metarun.algorithms.siamese import Siamese
from metarun.algorithms.snail import SNAIL

__all__ = [
    "Algorithm", "Baseline", "IMP", "MAML", "MANN", "MatchingNet", "MetaLSTM", "Pretrain", "ProtoNet", "RelationNet", "Reptile",
    "SNAIL", "Siamese", "StepOutput",
]

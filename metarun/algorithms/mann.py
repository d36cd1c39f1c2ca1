"""Memory-augmented neural network (Santoro et al. 2016, "Meta-Learning with Memory-Augmented
Neural Networks", ICML), and the LSTM it is compared with (the same network without a memory).

An LSTM controller reads each step's embedding with the previous step's label and the previous
reads; read heads address an external memory by content (cosine similarity), and writes go by
least-recently-used access (LRUA): to the slot last read, or to a least-used one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarun.algorithms.base import Algorithm, StepOutput, classification, classify_queries, embed_episodes
from metarun.algorithms.sequences import check_protocol, classify_sequence, labels_one_step_late, shuffle_support
from metarun.compute import float32
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.tasks import Task

# The memory's state: memory [B, slots, size], usage [B, slots], read weights [B, heads, slots], reads [B, heads * size].
MemoryState = tuple[Tensor, Tensor, Tensor, Tensor]

# What a head writes: "add", its own add vector a_t = tanh(W_a h_t), as the public reference codes
# (tristandeleu/ntm-one-shot, snowkylin/ntm); "key", its read key k_t, as eq. 8 of the paper reads.
# Writing the key, each step's read meets the key it has just written (cosine 1), and on Omniglot
# MANN then learns no faster than the LSTM: validation 30.2% after 2,000 steps of
# experiment=mann_omniglot_5wseq against the add vector's 61.6% (reading before writing: 30.0%).
WRITES = ("add", "key")


class LRUAMemory(nn.Module):
    """`slots` x `size` memory with `heads` read heads (the paper's 128 x 40, 4 heads), usage decay `gamma`.

    At step t, with key k_t = tanh(W_k h_t), gate alpha_t = W_g h_t and written vector v_t of each
    head (a_t = tanh(W_a h_t), or k_t under write="key", see WRITES):
      w^w_t = sigmoid(alpha_t) w^r_{t-1} + (1 - sigmoid(alpha_t)) w^lu_{t-1}     (eq. 7)
      M_t   = M_{t-1}, with the least-used slot zeroed, + sum over heads of w^w_t v_t^T   (eq. 8)
      w^r_t = softmax(cosine(k_t, M_t(i)) over the slots i)   (eqs. 2-3);   r_t = w^r_t M_t (eq. 4)
      w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t   (eq. 5, summed over the heads)
    w^lu_{t-1} marks the `heads` least-used slots of w^u_{t-1} (eq. 6); as in the reference
    implementations, head j writes to the j-th least used, so each head's write weights sum to one.
    """

    def __init__(self, controller_size: int, slots: int = 128, size: int = 40, heads: int = 4, gamma: float = 0.95,
                 write: str = "add"):
        super().__init__()
        if write not in WRITES:
            raise MetarunError(f"algo.write={write!r} is not known; use add (a head's own add vector) or key (its read key)")
        self.slots, self.size, self.heads, self.gamma = slots, size, heads, gamma
        self.key = nn.Linear(controller_size, heads * size)
        self.gate = nn.Linear(controller_size, heads)
        self.add = nn.Linear(controller_size, heads * size) if write == "add" else None
        self.read_size = heads * size

    def initial(self, like: Tensor) -> MemoryState:
        """The empty memory of a batch of len(like) sequences, in like's dtype and device."""
        batch = len(like)
        memory = like.new_full((batch, self.slots, self.size), 1e-6)  # not zero: cosines need a norm
        return memory, like.new_zeros(batch, self.slots), like.new_zeros(batch, self.heads, self.slots), like.new_zeros(batch, self.read_size)

    def forward(self, hidden: Tensor, state: MemoryState) -> MemoryState:
        memory, usage, last_read, _ = state
        keys = torch.tanh(self.key(hidden)).view(-1, self.heads, self.size)  # [B, H, D]
        gate = torch.sigmoid(self.gate(hidden)).unsqueeze(-1)  # [B, H, 1]
        least_used = usage.topk(self.heads, dim=-1, largest=False).indices  # [B, H], the least used first
        writes = write_weights(gate, last_read, least_used, self.slots)
        memory = memory * (1 - F.one_hot(least_used[:, 0], self.slots).to(memory.dtype)).unsqueeze(-1)
        written = keys if self.add is None else torch.tanh(self.add(hidden)).view_as(keys)
        memory = memory + writes.transpose(1, 2) @ written  # [B, slots, D]
        reads = content_weights(keys, memory)  # [B, H, slots]
        usage = self.gamma * usage + reads.sum(dim=1) + writes.sum(dim=1)
        return memory, usage, reads, (reads @ memory).flatten(1)


def write_weights(gate: Tensor, last_read: Tensor, least_used: Tensor, slots: int) -> Tensor:
    """LRUA's write weights [B, H, slots]: the gate's share to the slots last read, the rest to
    head j's least-used slot least_used[:, j]."""
    return gate * last_read + (1 - gate) * F.one_hot(least_used, slots).to(gate.dtype)


def content_weights(keys: Tensor, memory: Tensor) -> Tensor:
    """Read weights [B, H, slots]: a softmax over the slots of their cosine similarity to each head's key."""
    return (F.normalize(keys, dim=-1) @ F.normalize(memory, dim=-1).transpose(1, 2)).softmax(dim=-1)


class MANN(Algorithm):
    """The LSTM controller (`controller_size` units) with an LRUA memory and a linear classifier of
    [h_t, r_t]; with slots=0, the paper's LSTM baseline: the classifier reads h_t alone.

    protocol "standard" (N-way K-shot episodes): the support set is read as a sequence (shuffled in
    training), then each query is read as one more step after it, with the last support label, and
    classified; no query sees another. "sequence": every step of the sequence is classified and
    trained on, and evaluation also reports the accuracy at each presentation of a class.
    """

    reads_sequences = True

    def __init__(self, backbone: nn.Module, ways: int, task: Task | None = None, protocol: str = "standard",
                 instances: int = 10, controller_size: int = 200, slots: int = 128, slot_size: int = 40,
                 read_heads: int = 4, gamma: float = 0.95, write: str = "add"):
        super().__init__()
        self.task = classification(task, "mann")
        self.sequence, self.instances = check_protocol(protocol), instances
        self.backbone, self.ways = backbone, ways
        self.memory = LRUAMemory(controller_size, slots, slot_size, read_heads, gamma, write) if slots else None
        reads = self.memory.read_size if self.memory else 0
        self.controller = nn.LSTMCell(backbone.out_features + ways + reads, controller_size)
        self.head = nn.Linear(controller_size + reads, ways)

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        if self.sequence:
            _, images = embed_episodes(self.backbone, batch)  # [T, L, F]: the sequence is the query set
            return classify_sequence(self.read(images, batch.query_y), batch.query_y, self.task, self.instances, train)
        if train:
            batch = shuffle_support(batch)
        support, query = embed_episodes(self.backbone, batch)
        return classify_queries(self.read(support, batch.support_y, query), batch.query_y, self.task)

    def read(self, images: Tensor, labels: Tensor, queries: Tensor | None = None) -> Tensor:
        """Class scores of each step of sequences images [T, L, F] with labels [T, L]: [T, L, N];
        or, given queries [T, M, F], of each query read after the whole sequence: [T, M, N]."""
        tasks, length, _ = images.shape
        with float32(images.device):  # the recurrence and the cosines need the bits, whatever the autocast
            inputs = torch.cat([images, labels_one_step_late(labels, self.ways, images.dtype)], dim=-1)
            state = self.initial(images)
            outputs = []
            for t in range(length):
                out, state = self.cell(inputs[:, t], state)
                outputs.append(out)
            if queries is None:
                return self.head(torch.stack(outputs, dim=1))
            asked = queries.shape[1]
            last_label = F.one_hot(labels[:, -1], self.ways).to(images.dtype)  # the label the queries' step brings
            query_inputs = torch.cat([queries, last_label.unsqueeze(1).expand(-1, asked, -1)], dim=-1).flatten(0, 1)
            out, _ = self.cell(query_inputs, tuple(part.repeat_interleave(asked, dim=0) for part in state))
            return self.head(out).view(tasks, asked, self.ways)

    def initial(self, like: Tensor) -> tuple[Tensor, ...]:
        """The state before the first step of len(like) sequences: (h, c) and the memory's."""
        size = self.controller.hidden_size
        controller = (like.new_zeros(len(like), size), like.new_zeros(len(like), size))
        return controller + (self.memory.initial(like) if self.memory else ())

    def cell(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One step: the controller reads x with the previous reads, then the memory is written and read."""
        (h, c), memory = state[:2], state[2:]
        if self.memory is None:
            h, c = self.controller(x, (h, c))
            return h, (h, c)
        h, c = self.controller(torch.cat([x, memory[3]], dim=-1), (h, c))
        memory = self.memory(h, memory)
        return torch.cat([h, memory[3]], dim=-1), (h, c, *memory)

"""Matching, Relation and Siamese networks, and the Baseline / Baseline++ pre-train then fine-tune methods."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metarun.algorithms import Baseline, MatchingNet, RelationNet, Siamese
from metarun.algorithms.baseline import EpisodeHeads
from metarun.algorithms.siamese import pair_labels
from metarun.errors import MetarunError
from metarun.models import Conv4
from metarun.tasks import Classification
from tests.helpers import compose_run, float_batch, tiny_conv


def test_one_shot_matching_predicts_the_support_image_of_highest_cosine_similarity():
    batch = float_batch(tasks=4, ways=5, shots=1, queries=3)
    algorithm = MatchingNet(tiny_conv()).eval()
    with torch.no_grad():
        log_probs = algorithm.log_probabilities(batch)
        support = algorithm.backbone(batch.support_x.flatten(0, 1)).view(4, 5, -1)
        query = algorithm.backbone(batch.query_x.flatten(0, 1)).view(4, 15, -1)
    nearest = F.cosine_similarity(query[:, :, None], support[:, None], dim=-1).argmax(-1)  # [T, N*Q]
    assert torch.equal(log_probs.argmax(-1), batch.support_y.gather(1, nearest))
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(4, 15))


def test_support_cosine_attention_is_the_softmax_of_queries_dotted_with_unit_support_embeddings():
    batch = float_batch(tasks=2, ways=3, shots=2, queries=2)
    algorithm = MatchingNet(tiny_conv(), similarity="support_cosine").eval()
    with torch.no_grad():
        log_probs = algorithm.log_probabilities(batch)
        support = algorithm.backbone(batch.support_x.flatten(0, 1)).view(2, 6, -1)
        query = algorithm.backbone(batch.query_x.flatten(0, 1)).view(2, 6, -1)
    attention = (query @ (support / support.norm(dim=-1, keepdim=True)).transpose(1, 2)).softmax(-1)  # [T, M, S]
    expected = torch.stack([attention[..., batch.support_y[0] == c].sum(-1) for c in range(3)], dim=-1)
    torch.testing.assert_close(log_probs.exp(), expected)
    symmetric = MatchingNet(tiny_conv()).eval()
    with torch.no_grad():
        assert not torch.allclose(symmetric.log_probabilities(batch), log_probs)
    with pytest.raises(MetarunError, match="algo.similarity='dot' is not known"):
        MatchingNet(tiny_conv(), similarity="dot")


def test_full_context_embeddings_change_the_embeddings_and_keep_their_shapes():
    batch = float_batch(tasks=2)
    plain, fce = MatchingNet(tiny_conv()), MatchingNet(tiny_conv(), full_context_embeddings=True)
    support, query = torch.randn(2, 6, plain.backbone.out_features), torch.randn(2, 6, plain.backbone.out_features)
    in_context = fce.fce(support, query)
    assert [t.shape for t in in_context] == [support.shape, query.shape]
    assert not torch.allclose(in_context[0], support) and not torch.allclose(in_context[1], query)
    assert plain.log_probabilities(batch).shape == fce.log_probabilities(batch).shape == (2, 6, 3)
    fce.step(batch, train=True).objective.backward()
    assert fce.fce.query_cell.weight_ih.grad.abs().sum() > 0


def test_baseline_pretrains_a_classifier_of_every_training_class_on_the_global_class_ids():
    batch = float_batch(tasks=2, ways=3)
    batch.classes = torch.tensor([[7, 2, 9], [0, 11, 4]])
    algorithm = Baseline(tiny_conv(), task=Classification(classes=12))
    assert algorithm.classifier.weight.shape[1] == 12
    support, query = algorithm._embed(batch)
    logits = algorithm.classifier(torch.cat([support, query], 1))  # [T, M, 12]
    labels = batch.classes.gather(1, torch.cat([batch.support_y, batch.query_y], 1))
    expected = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)
    torch.testing.assert_close(algorithm.step(batch, train=True).metrics["loss"], expected.detach())


@pytest.mark.parametrize("head, finetune", [("linear", "head"), ("cosine", "head"), ("linear", "all")])
def test_fine_tuning_at_evaluation_leaves_the_backbone_unchanged_and_fits_the_support_set(head, finetune):
    batch = float_batch(tasks=3, ways=3, shots=2)
    algorithm = Baseline(tiny_conv(), task=Classification(classes=12), head=head, finetune_lr=0.1, finetune=finetune).eval()
    before = {name: value.clone() for name, value in algorithm.state_dict().items()}
    support_as_query = type(batch)(batch.support_x, batch.support_y, batch.support_x, batch.support_y, batch.classes)
    losses = []
    for epochs in (0, 100):
        algorithm.finetune_epochs = epochs
        with torch.no_grad():
            losses.append(algorithm.step(support_as_query, train=False).metrics["loss"])
    assert all(torch.equal(value, before[name]) for name, value in algorithm.state_dict().items())
    assert (losses[1] < losses[0]).all()  # the new heads learned the support set


def test_fine_tuning_the_backbone_too_changes_the_episodes_features():
    batch = float_batch(tasks=2, ways=3, shots=2)
    scores = {}
    for finetune in ("head", "all"):
        torch.manual_seed(0)
        algorithm = Baseline(tiny_conv(), task=Classification(classes=12), finetune_lr=0.1, finetune_epochs=20, finetune=finetune).eval()
        with torch.no_grad():
            scores[finetune] = algorithm.step(batch, train=False).predictions[0]
    assert scores["all"].shape == scores["head"].shape == (2, batch.query_y.shape[1], 3)
    assert not torch.allclose(scores["all"], scores["head"])
    with pytest.raises(MetarunError, match="algo.finetune='body' is not known"):
        Baseline(tiny_conv(), task=Classification(classes=12), finetune="body")


def test_baseline_plus_plus_logits_are_scaled_cosines():
    head = EpisodeHeads("cosine", features=8, classes=5, scale=10.0, episodes=2)
    features = torch.randn(2, 4, 8)
    expected = 10.0 * F.cosine_similarity(features[:, :, None], head.weight[:, None], dim=-1)
    torch.testing.assert_close(head(features), expected)
    assert head.log_scale.requires_grad  # the scale is learned


def test_relation_scores_are_the_module_on_query_and_summed_class_maps_and_every_part_learns():
    batch = float_batch(tasks=2, ways=3, shots=2, queries=2)
    torch.manual_seed(0)
    algorithm = RelationNet(Conv4((1, 8, 8), filters=4, blocks=4, pooled_blocks=2), filters=4)
    assert algorithm.backbone.out_shape == (4, 2, 2)
    algorithm.eval()  # running statistics: one pair at a time scores as in the batch
    logits = algorithm.relation_logits(batch)
    assert logits.shape == (2, 6, 3)
    # Reference, written out for task 1, query 4, class 2: the module on [query map, sum of the class's support maps].
    t, m, n = 1, 4, 2
    maps = lambda x: algorithm.backbone(x).view(-1, *algorithm.backbone.out_shape)  # noqa: E731
    class_map = maps(batch.support_x[t][batch.support_y[t] == n]).sum(0)
    pair = torch.cat([maps(batch.query_x[t][m : m + 1])[0], class_map])[None]
    torch.testing.assert_close(logits[t, m, n], algorithm.relation(pair).flatten()[0].float())
    algorithm.train()
    output = algorithm.step(batch, train=True)
    # The paper's loss: squared error of the sigmoid scores against one-hot targets, summed over classes.
    targets = F.one_hot(batch.query_y, 3).float()
    expected = (algorithm.relation_logits(batch).sigmoid() - targets).pow(2).sum(-1).mean()
    torch.testing.assert_close(output.objective, expected)
    output.objective.backward()
    assert all(p.grad is not None for p in algorithm.parameters())


def test_relation_mse_loss_compares_the_scores_with_one_hot_targets():
    batch = float_batch(tasks=1, ways=3, shots=1, queries=1)
    algorithm = RelationNet(tiny_conv(), filters=4)
    scores = algorithm.relation_logits(batch).sigmoid()
    expected = (scores - F.one_hot(batch.query_y, 3)).pow(2).sum(-1).mean()
    torch.testing.assert_close(algorithm.step(batch, train=True).metrics["loss"], expected.detach().view(1))


def test_siamese_pairs_are_labelled_same_class_and_the_distance_is_symmetric():
    labels = pair_labels(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 0, 1]]))
    assert labels.tolist() == [[[1, 1, 0], [0, 0, 1], [0, 0, 1]]]
    algorithm = Siamese(tiny_conv())
    a, b = torch.randn(5, algorithm.backbone.out_features), torch.randn(5, algorithm.backbone.out_features)
    torch.testing.assert_close(algorithm.similarity_logits(a, b), algorithm.similarity_logits(b, a))
    batch = float_batch(tasks=2, ways=3, shots=2, queries=2)
    assert algorithm.pair_logits(batch).shape == (2, 6, 6)
    output = algorithm.step(batch, train=True)
    output.objective.backward()
    assert output.metrics["acc"].shape == (2,) and algorithm.distance.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size,side", [(28, 5), (84, 19), (32, 6)])
def test_the_relation_embedding_pads_only_its_last_two_convolutions_as_the_papers_code(size, side):
    cfg, _ = compose_run(["algo=relationnet", "backbone=relationnet_embedding", f"data.image_size={size}"])
    embedding = Conv4((1, size, size), **{k: v for k, v in cfg.backbone.items() if k not in ("_target_", "weights", "freeze")})
    assert embedding.out_shape == (64, side, side)
    assert embedding(torch.randn(2, 1, size, size)).shape == (2, 64 * side * side)
    if size == 28:  # the code's Omniglot relation module: 5x5 pairs pooled to 1x1, then 64 -> 8 -> 1
        assert RelationNet(embedding).relation.score[1].in_features == 64
    with pytest.raises(MetarunError, match="leaves no map of 4x4 images"):
        Conv4((1, 4, 4), blocks=4, pooled_blocks=2, unpadded_blocks=2)

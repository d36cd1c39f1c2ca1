"""Backbones beyond Conv4: ResNet-12 with DropBlock, torchvision ResNets, local weights and freezing."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from metarun.build import build_algorithm, build_backbone, train
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.models import ResNet12, TorchvisionResNet
from metarun.models.norm import BatchNorm2d
from metarun.models.pretrained import Frozen, load_weights
from metarun.models.resnet12 import DropBlock
from metarun.tasks import Classification
from tests.helpers import compose_run

SMALL = [8, 8, 16, 16]


@pytest.mark.parametrize("pool,size,features", [("avg", 84, 16), ("flatten", 84, 16 * 5 * 5), ("flatten", 32, 16 * 2 * 2)])
def test_resnet12_output_matches_out_features(pool, size, features):
    net = ResNet12((3, size, size), channels=SMALL, pool=pool)
    assert net.out_features == features
    assert net(torch.randn(2, 3, size, size)).shape == (2, features)


def test_resnet12_default_is_the_64_160_320_640_variant():
    net = ResNet12((3, 84, 84))
    assert net.out_features == 640 and [b.body[0].out_channels for b in net.blocks] == [64, 160, 320, 640]


def test_dropblock_drops_about_its_rate_in_blocks_and_only_in_training():
    drop = DropBlock(drop_rate=0.1, block_size=3)
    x = torch.ones(64, 4, 11, 11)
    assert torch.equal(drop.eval()(x), x)
    out = drop.train()(x)
    dropped = out.eq(0).float().mean().item()
    assert 0.05 < dropped < 0.15
    assert out.eq(0).all(dim=1).equal(out.eq(0).any(dim=1))  # one mask for every channel of an image
    assert out.sum().item() == pytest.approx(x.sum().item(), rel=0.05)  # rescaled to keep the mean


def test_conv4_takes_one_width_per_block_from_the_command_line():
    # R2D2's 64-96-128-256 embedding, narrowed; Relation Networks reads the last width from out_shape
    cfg, choices = compose_run(["algo=relationnet", "backbone=relationnet_embedding", "backbone.filters=[4,6,8,10]", "algo.filters=4"])
    algorithm = build_algorithm(cfg, (1, 28, 28), Classification(), torch.device("cpu"), choices)
    assert [block[0].out_channels for block in algorithm.backbone.blocks] == [4, 6, 8, 10]
    assert algorithm.backbone.out_shape == (10, 5, 5) and algorithm.relation.blocks[0][0].in_channels == 20
    cfg, _ = compose_run(["backbone.filters=[4,6]"])
    with pytest.raises(MetarunError, match=r"backbone.filters=\[4, 6\] names 2 widths for 4 blocks"):
        build_backbone(cfg.backbone, (1, 28, 28))


def test_torchvision_resnet_small_input_stem_and_metarun_batch_norm():
    net = TorchvisionResNet((3, 32, 32), depth=18)
    assert net.out_features == 512 and net(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert net.net.conv1.kernel_size == (3, 3) and isinstance(net.net.maxpool, torch.nn.Identity)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(m, BatchNorm2d) for m in norms)
    assert TorchvisionResNet((3, 84, 84), depth=50, small_input="auto").out_features == 2048


def test_torchvision_weights_file_loads_into_the_full_size_resnet(tmp_path):
    reference = models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")  # as torchvision's ImageNet file
    net = TorchvisionResNet((3, 224, 224), depth=18, small_input=False)
    load_weights(net, str(tmp_path / "resnet18.pth"))
    assert torch.equal(net.net.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert torch.equal(net.net.bn1.running_var, reference.bn1.running_var)


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    (b"not a state dict", "cannot be read"),
    ({"conv.weight": torch.zeros(3)}, "matches only 0 of"),
])
def test_bad_weights_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(MetarunError, match=message):
        load_weights(ResNet12((3, 32, 32), channels=SMALL), str(path))


def test_weights_of_another_input_shape_name_the_tensor(tmp_path):
    torch.save(ResNet12((1, 32, 32), channels=SMALL).state_dict(), tmp_path / "grey.pt")
    with pytest.raises(MetarunError, match="blocks.0.body.0.weight has shape"):
        load_weights(ResNet12((3, 32, 32), channels=SMALL), str(tmp_path / "grey.pt"))


def test_a_frozen_backbone_gets_no_gradients_and_keeps_its_batch_norm_statistics():
    frozen = Frozen(ResNet12((3, 32, 32), channels=SMALL)).train()
    before = frozen.backbone.blocks[0].body[1].running_mean.clone()
    frozen(torch.randn(4, 3, 32, 32) + 3)
    assert torch.equal(frozen.backbone.blocks[0].body[1].running_mean, before)
    assert not any(p.requires_grad for p in frozen.parameters())


SMALL_RESNET12 = ["backbone=resnet12", "backbone.channels=[8,8,16,16]", "data.image_size=16"]
TINY_EPISODES = ["trainer.steps=1", "trainer.eval_every=1", "trainer.val_episodes=2", "trainer.test_episodes=2",
                 "episode.queries=2", "episode.train_queries=2"]


@pytest.mark.parametrize("algo", ["maml", "protonet", "baselinepp", "relationnet"])
@pytest.mark.parametrize("backbone", [SMALL_RESNET12, ["backbone=resnet18", "data.image_size=8"]])
def test_every_backbone_runs_with_every_algorithm_family(smoke_cfg, tmp_path, algo, backbone):
    cfg, choices = smoke_cfg(f"algo={algo}", *backbone, *TINY_EPISODES)
    assert 0 <= train(cfg, tmp_path, choices)["test"]["acc"] <= 1


def test_weights_and_freeze_from_the_config(smoke_cfg, tmp_path):
    net = ResNet12((1, 16, 16), channels=[8, 8, 16, 16])
    torch.save(net.state_dict(), tmp_path / "start.pt")
    cfg, choices = smoke_cfg("algo=baseline", *SMALL_RESNET12, *TINY_EPISODES, f"backbone.weights={tmp_path / 'start.pt'}",
                             "backbone.freeze=true")
    train(cfg, tmp_path / "run", choices)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["algorithm"]
    kept = {k.removeprefix("backbone.backbone."): v for k, v in saved.items() if k.startswith("backbone.backbone.")}
    assert kept and all(torch.equal(kept[k], v) for k, v in net.state_dict().items())


def test_freezing_the_only_trained_part_is_refused(smoke_cfg, tmp_path):
    cfg, choices = smoke_cfg("algo=protonet", "backbone.freeze=true")
    with pytest.raises(MetarunError, match="nothing to train"):
        train(cfg, tmp_path, choices)


# Parameter counts without a classifier, and the published figure each should match.
# (count, how exact the published figure is, source)
PUBLISHED = {
    "conv4": (113_088, 0, "Conv4-64 on RGB: 4 x [3x3 conv, batch norm] = 113,088"),
    "resnet12": (12.4e6, 0.05e6, "Lee et al. 2019 (MetaOptNet): 12.4M, given to 0.1M"),
    "resnet18": (11_689_512 - 513_000, 0, "torchvision: 11,689,512 with its 1000-way fc (513,000)"),
    "resnet34": (21_797_672 - 513_000, 0, "torchvision: 21,797,672 with its 1000-way fc (513,000)"),
    "resnet50": (25_557_032 - 2_049_000, 0, "torchvision: 25,557,032 with its 1000-way fc (2,049,000)"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_published_ones(name):
    cfg, _ = compose_run([f"backbone={name}"])
    backbone = build_backbone(cfg.backbone, (3, 224, 224) if name.startswith("resnet") and name != "resnet12" else (3, 84, 84))
    count = sum(p.numel() for p in backbone.parameters())
    expected, rounding, source = PUBLISHED[name]
    assert abs(count - expected) <= rounding, source


@pytest.mark.slow  # a second-order step through 21-24M parameters: 10-20 s each on a CPU
@pytest.mark.parametrize("name", ["resnet34", "resnet50"])
@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_the_large_resnets_take_a_maml_and_a_protonet_step(name, algo):
    cfg, choices = compose_run([f"backbone={name}", f"algo={algo}"])
    algorithm = build_algorithm(cfg, (3, 8, 8), Classification(), torch.device("cpu"), choices)
    labels = torch.arange(5).repeat(2, 1)
    batch = EpisodeBatch(torch.randn(2, 5, 3, 8, 8), labels, torch.randn(2, 5, 3, 8, 8), labels, labels)
    algorithm.step(batch, train=True).objective.backward()
    assert all(p.grad is not None for p in algorithm.parameters() if p.requires_grad)

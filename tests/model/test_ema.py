"""The generator's EMA: TensorFlow's warm-up, torch's AveragedModel state, a lean update."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ot_gen.model.ema import GeneratorEMA, _Average


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def _train_a_little(net: nn.Module) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net(torch.randn(32, 2))  # batch-norm statistics and num_batches_tracked move too


def test_the_average_follows_the_warm_up_formula_and_torchs_averaged_model():
    net, ema = _net(), GeneratorEMA(decay=0.9)
    ours = _Average(net, ema._average_all)
    theirs = AveragedModel(net, use_buffers=True, multi_avg_fn=lambda a, c, n: ema._average_all(a, c, int(n)))
    by_hand = None
    for n in range(30):
        _train_a_little(net)
        ours.update_parameters(net)
        theirs.update_parameters(net)
        current = copy.deepcopy(net.state_dict())
        if by_hand is None:
            by_hand = current
        else:
            keep = min(0.9, (1 + n) / (10 + n))
            by_hand = {k: (keep * v + (1 - keep) * current[k]).to(v.dtype) for k, v in by_hand.items()}
    assert int(ours.n_averaged) == 30 and ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key]), key
    for key, value in ours.module.state_dict().items():
        torch.testing.assert_close(value, by_hand[key], msg=key)
    assert ours.module[1].num_batches_tracked.dtype == torch.long  # the integer buffer, rounded down
    assert ours.module[1].num_batches_tracked < net[1].num_batches_tracked

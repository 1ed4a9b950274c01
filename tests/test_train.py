"""Losses against direct formulas, batched augmentations, SPQ training on digits, checkpoint + resume."""

import json
import math
import subprocess
import sys

import pytest
import torch

from sqret import losses
from sqret.augment import random_flip, random_resized_crop, two_views
from sqret.methods import SPQ
from sqret.models import SmallCNN
from sqret.train import TrainConfig, digits_images, train


def _nt_xent_loop(a, b, tau):
    """SimCLR's definition, one anchor at a time."""
    z = torch.cat([a, b])
    z = z / z.norm(dim=1, keepdim=True)
    n, B = z.shape[0], a.shape[0]
    total = 0.0
    for i in range(n):
        j = (i + B) % n
        num = math.exp(float(z[i] @ z[j]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n) if k != i)
        total += -math.log(num / den)
    return total / n


def test_nt_xent_and_spq_loss_against_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    assert losses.nt_xent(a, b, 0.5).item() == pytest.approx(_nt_xent_loop(a, b, 0.5), rel=1e-9)
    za, zb = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    want = _nt_xent_loop(a, zb, 0.3) + _nt_xent_loop(b, za, 0.3)
    assert losses.cross_quantized_contrastive(a, za, b, zb, 0.3).item() == pytest.approx(want, rel=1e-9)


def test_codeword_diversity_is_negative_entropy_of_the_batch_mean():
    p = torch.softmax(torch.randn(7, 3, 4, dtype=torch.float64), -1)
    pbar = p.mean(0)
    want = sum(float((pbar[m] * pbar[m].log()).sum()) for m in range(3)) / 3
    assert losses.codeword_diversity(p).item() == pytest.approx(want, rel=1e-12)
    uniform = torch.full((5, 2, 8), 1 / 8, dtype=torch.float64)
    assert losses.codeword_diversity(uniform).item() == pytest.approx(-math.log(8))


def test_augmentations_are_per_sample_and_keep_shapes():
    x = torch.rand(16, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    y = random_resized_crop(x, generator=g)
    assert y.shape == x.shape and not torch.allclose(y[0] - x[0], y[1] - x[1])
    f = random_flip(x, p=1.0)
    assert torch.equal(f, x.flip(-1))
    a, b = two_views(x, generator=g)
    assert a.shape == b.shape == x.shape and not torch.equal(a, b)


def _tiny():
    torch.manual_seed(0)
    return SPQ(SmallCNN(1, dim=64, width=8), bits=16)  # M = 4 codebooks of 16 codewords


def test_spq_trains_on_digits_and_beats_chance():
    data = digits_images()
    result = train(_tiny(), data, TrainConfig(epochs=2, batch_size=128, lr=1e-3, progress=False))
    assert result["mAP@100"] > 0.3  # chance is about 0.1 for 10 balanced classes


def test_checkpoint_and_resume_reproduce_uninterrupted_training(tmp_path):
    data = digits_images()
    straight = _tiny()
    train(straight, data, TrainConfig(epochs=2, lr=1e-3, progress=False))
    resumed = _tiny()
    ckpt = str(tmp_path / "c.pt")
    train(resumed, data, TrainConfig(epochs=1, lr=1e-3, checkpoint=ckpt, progress=False, log=str(tmp_path / "l")))
    again = _tiny()  # a fresh process would start from a new model
    train(again, data, TrainConfig(epochs=2, lr=1e-3, checkpoint=ckpt, resume=True, progress=False,
                                   log=str(tmp_path / "l")))
    for (name, a), (_, b) in zip(straight.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    lines = [json.loads(s) for s in open(tmp_path / "l")]
    assert [r.get("epoch") for r in lines if "epoch" in r] == [1, 2]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_tiny(), data, TrainConfig(epochs=1, checkpoint=str(tmp_path / "none.pt"), resume=True))


def test_bad_recipe_and_cli():
    with pytest.raises(ValueError, match="multiple of log2"):
        SPQ(SmallCNN(), bits=30)
    out = subprocess.run([sys.executable, "-m", "sqret", "train", "--epochs", "1", "--bits", "16"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "mAP@100" in json.loads(out.stdout.strip().splitlines()[-1])

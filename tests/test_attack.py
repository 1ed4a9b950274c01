"""PQ-AG: the PGD attack stays within its budget, lowers mAP on a trained digits model (white box and
transferred), never reads the target's gradients in the black-box path; adversarial training; clear errors."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from sqret.attack import attack_retrieval, code_probs, pgd, same_input
from sqret.data import load_digits_images
from sqret.data.images import to_float
from sqret.methods import build_method
from sqret.train import TrainConfig, train


@pytest.fixture(scope="module")
def digits():
    return load_digits_images()


def _trained(digits, name="spq", seed=0, **cfg):
    torch.manual_seed(seed)
    m = build_method(name, 16, "small", 1, 8, 10, width=8)
    train(m, digits, TrainConfig(epochs=2, batch_size=64, lr=3e-3, progress=False, seed=seed, **cfg))
    return m


@pytest.fixture(scope="module")
def target(digits):
    return _trained(digits)


@pytest.fixture(scope="module")
def surrogate(digits):
    return _trained(digits, seed=1)


def test_pgd_stays_within_budget_and_touches_nothing_else(target, digits):
    x = digits.queries[:40]
    target.train()
    grads_before = [p.grad for p in target.parameters()]
    adv = pgd(target, x, eps=8 / 255, steps=5, generator=torch.Generator().manual_seed(0))
    clean = to_float(x)
    assert adv.shape == clean.shape and adv.dtype == torch.float32
    assert (adv - clean).abs().max() <= 8 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert target.training  # restored
    assert all(a is b for a, b in zip(grads_before, [p.grad for p in target.parameters()], strict=True))
    with torch.no_grad():
        p0, p1 = code_probs(target.eval(), clean), code_probs(target, adv)
    assert (p0 * torch.log(p1.clamp_min(1e-12))).sum(-1).mean() < (p0 * torch.log(p0.clamp_min(1e-12))).sum(-1).mean()
    assert torch.equal(pgd(target, x, eps=0, steps=3), clean)


def test_the_attack_lowers_map_white_box_and_transferred(target, surrogate, digits):
    white = attack_retrieval(target, digits, eps=16 / 255, steps=10, map_at=100)
    clean, attacked = white["mAP@100 clean"], white["mAP@100 attacked"]
    assert clean > 0.4 and attacked < clean - 0.05, white
    assert white["top-10 changed"] > 0.3 and white["max |delta|"] <= 16 / 255 + 1e-6
    black = attack_retrieval(target, digits, eps=16 / 255, steps=10, map_at=100, surrogate=surrogate)
    assert black["mAP@100 clean"] == clean and black["attack"] == "transfer (black box)"
    assert black["mAP@100 attacked"] < clean, black  # transferred: weaker than white box, still harmful
    assert black["mAP@100 attacked"] >= attacked - 0.05


class _NoGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise AssertionError("the target's gradients were read")


def test_the_black_box_path_never_reads_the_targets_gradients(surrogate, digits):
    target = _trained(digits, seed=2)
    features = target.features
    target.features = lambda x: _NoGradient.apply(features(x))
    small = dataclasses.replace(digits, queries=digits.queries[:30], query_labels=digits.query_labels[:30])
    out = attack_retrieval(target, small, eps=8 / 255, steps=3, surrogate=surrogate)
    assert 0 <= out["mAP@100 attacked"] <= 1
    with pytest.raises(AssertionError, match="gradients were read"):
        attack_retrieval(target, small, eps=8 / 255, steps=3)  # white box needs them


def test_bad_arguments_are_clear_errors(target, digits):
    x = digits.queries[:4]
    with pytest.raises(ValueError, match="eps must be"):
        pgd(target, x, eps=-0.1)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        pgd(target, x, eps=0.1, steps=0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        pgd(target, x[0], eps=0.1)
    other = build_method("spq", 16, "small", 1, 28, 10, width=8)
    with pytest.raises(ValueError, match="surrogate takes 1 x 28 px"):
        same_input(target, other)
    with pytest.raises(ValueError, match="adv_eps must be"):
        TrainConfig(adv_eps=-1)


def test_adversarial_training_runs_and_resists_better(digits):
    plain = _trained(digits, seed=3)
    robust = _trained(digits, seed=3, adv_eps=16 / 255, adv_steps=2)
    a = attack_retrieval(plain, digits, eps=16 / 255, steps=5)
    b = attack_retrieval(robust, digits, eps=16 / 255, steps=5)
    assert b["mAP@100 clean"] > 0.3, b
    drop = lambda r: r["mAP@100 clean"] - r["mAP@100 attacked"]  # noqa: E731
    assert drop(b) < drop(a), (a, b)


def test_cli_attack(tmp_path):
    ckpt = tmp_path / "spq.pt"
    run = [sys.executable, "-m", "sqret"]
    out = subprocess.run(run + ["train", "--epochs", "1", "--bits", "16", "--width", "8", "--checkpoint", str(ckpt),
                                "--adv-eps", "4/255", "--adv-steps", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(run + ["attack", str(ckpt), "--eps", "8/255", "--steps", "2", "--surrogate", str(ckpt)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert {"mAP@100 clean", "mAP@100 attacked", "top-10 changed"} <= set(res) and res["eps"] == pytest.approx(8 / 255)
    for bad, msg in ((["--eps", "-1"], "--eps"), (["--eps", "8/0"], "fraction"), (["--steps", "0"], "--steps")):
        p = subprocess.run(run + ["attack", str(ckpt)] + bad, capture_output=True, text=True)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = subprocess.run(run + ["attack", str(ckpt), "--surrogate", str(tmp_path / "none.pt")], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "--surrogate" in p.stderr and "Traceback" not in p.stderr

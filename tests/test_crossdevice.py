"""Cross-device negatives (MoPQ's differentiable cross-device sampling) and the MoPQ recipe: the Multinoulli
contrastive loss against a direct formula, 2 gloo processes equal to one process on the global batch, a
short training run, the CLI flags."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from negatives_cases import CASES, batch, model

from sqret import losses
from sqret.checkpoint import load_checkpoint
from sqret.data import load_digits_images
from sqret.methods import build_method
from sqret.methods.mopq import same_label_partners
from sqret.train import TrainConfig, train

HERE = Path(__file__).parent


def _direct_mcl(q, keys, tau, labels=None):
    total = 0.0
    for i in range(q.shape[0]):
        cand = [j for j in range(keys.shape[0]) if j == i or labels is None or labels[j] != labels[i]]
        scores = {j: math.exp(float(q[i] @ keys[j]) / tau) for j in cand}
        total += -math.log(scores[i] / sum(scores.values()))
    return total / q.shape[0]


def test_multinoulli_contrastive_against_a_direct_formula():
    a, b, labels = batch()
    for tau in (1.0, 0.3):
        assert losses.multinoulli_contrastive(a, b, tau).item() == pytest.approx(_direct_mcl(a, b, tau), rel=1e-10)
        got = losses.multinoulli_contrastive(a, b, tau, labels=labels).item()
        assert got == pytest.approx(_direct_mcl(a, b, tau, labels), rel=1e-10)


def test_one_process_cross_device_is_the_plain_loss():
    a, b, labels = batch()
    for name, fn in CASES.items():
        assert torch.equal(fn(a, b, labels, True), fn(a, b, labels, False)), name


def test_two_gloo_ranks_equal_one_process_on_the_global_batch(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = subprocess.run(torchrun + [str(HERE / "dist_negatives.py"), str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)})
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = torch.load(tmp_path / "negatives.pt")
    a, b, labels = batch()
    for name, fn in CASES.items():
        lin = model()
        loss = fn(lin(a), lin(b), labels, False)
        loss.backward()
        assert ranks[name]["loss"].item() == pytest.approx(loss.item(), rel=1e-9), name
        for got, want in zip(ranks[name]["grads"], [p.grad for p in lin.parameters()], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=name)
        # and it is not the per-rank loss (which would see half the negatives)
        half = fn(model()(a[:4]), model()(b[:4]), labels[:4], False)
        assert abs(half.item() - loss.item()) > 1e-3, name


def test_same_label_partners():
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    p = same_label_partners(labels)
    assert torch.equal(labels[p], labels)
    assert p.tolist() == [2, 4, 5, 3, 1, 0]  # the next of its label, cyclically; alone: itself


@pytest.mark.parametrize("pairs", ["views", "labels"])
def test_mopq_trains_on_digits_and_beats_chance(pairs):
    torch.manual_seed(0)
    method = build_method("mopq", 16, "small", 1, 8, 10, width=8, pairs=pairs)
    result = train(method, load_digits_images(), TrainConfig(epochs=2, batch_size=64, lr=3e-3, progress=False))
    assert result["bits"] == 16 and result["mAP@100"] > 0.3, result  # chance is about 0.1
    with pytest.raises(ValueError, match="pairs must be one of"):
        build_method("mopq", 16, "small", 1, 8, 10, width=8, pairs="triplets")


def test_cli_cross_device_negatives_and_pairs(tmp_path):
    run = [sys.executable, "-m", "sqret", "train", "--epochs", "1", "--bits", "16", "--width", "8"]
    out = subprocess.run(run + ["--method", "mopq", "--pairs", "labels", "--cross-device-negatives",
                                "--checkpoint", str(tmp_path / "m.pt")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["bits"] == 16
    spec = load_checkpoint(tmp_path / "m.pt")["spec"]
    assert spec["pairs"] == "labels" and spec["cross_device_negatives"] is True
    bad = subprocess.run(run + ["--method", "dpq", "--cross-device-negatives"], capture_output=True, text=True)
    assert bad.returncode == 2 and "has no contrastive loss" in bad.stderr
    bad = subprocess.run(run + ["--method", "spq", "--pairs", "labels"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--pairs is an option of --method mopq" in bad.stderr

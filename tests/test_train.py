"""Losses against direct formulas, batched augmentations, schedules, every method's training on digits,
checkpoint + resume, data-parallel training over real torchrun processes, the train / eval CLI."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sqret import losses
from sqret.augment import random_flip, random_resized_crop, two_views
from sqret.data import load_digits_images
from sqret.methods import DPQ, METHODS, SPQ, Method, build_method
from sqret.methods.base import pq_shape
from sqret.models import SmallCNN
from sqret.nn import ProductQuantizer
from sqret.train import TrainConfig, lr_factor, train


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



def _debiased_loop(a, b, tau, prior, memory=None):
    z = torch.cat([a, b])
    z = z / z.norm(dim=1, keepdim=True)
    mem = [] if memory is None else list(memory / memory.norm(dim=1, keepdim=True))
    n, B = z.shape[0], a.shape[0]
    total = 0.0
    for i in range(n):
        j = (i + B) % n
        P = math.exp(float(z[i] @ z[j]) / tau)
        negs = [math.exp(float(z[i] @ z[k]) / tau) for k in range(n) if k not in (i, j)]
        negs += [math.exp(float(z[i] @ m) / tau) for m in mem]
        N = len(negs)
        Ng = max((sum(negs) - N * prior * P) / (1 - prior), N * math.exp(-1 / tau))
        total += -math.log(P / (P + Ng))
    return total / n


def test_debiased_contrastive_against_the_direct_formula():
    g = torch.Generator().manual_seed(1)
    a, b, m = (torch.randn(s, 6, generator=g, dtype=torch.float64) for s in (5, 5, 7))
    for prior in (0.0, 0.1, 0.3):
        for mem in (None, m):
            got = losses.debiased_contrastive(a, b, 0.4, prior, mem).item()
            assert got == pytest.approx(_debiased_loop(a, b, 0.4, prior, mem), rel=1e-9)
    assert losses.debiased_contrastive(a, b, 0.5, 0.0).item() == pytest.approx(_nt_xent_loop(a, b, 0.5), rel=1e-9)
    # a tiny temperature must not overflow
    assert torch.isfinite(losses.debiased_contrastive(a.float(), b.float(), 0.01, 0.1, m.float()))


def test_consistent_contrastive_against_the_direct_formula():
    g = torch.Generator().manual_seed(2)
    ua, ub = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)

    n = lambda v: v / v.norm()  # noqa: E731

    def dist(anchor, i):
        negs = [n(ua[j]) for j in range(5) if j != i] + [n(ub[j]) for j in range(5) if j != i]
        s = [math.exp(float(n(anchor) @ v) / 0.2) for v in negs]
        return [v / sum(s) for v in s]

    want = 0.0
    for i in range(5):
        p, q = dist(ua[i], i), dist(ub[i], i)
        want += 0.5 * sum(pi * math.log(pi / qi) + qi * math.log(qi / pi) for pi, qi in zip(p, q, strict=False))
    assert losses.consistent_contrastive(ua, ub, 0.2).item() == pytest.approx(want / 5, rel=1e-9)
    assert losses.consistent_contrastive(ua, ua, 0.2).item() == pytest.approx(0, abs=1e-12)  # identical views
    ua.requires_grad_(True)
    losses.consistent_contrastive(ua, ub).backward()
    assert torch.isfinite(ua.grad).all()


def test_part_neighbour_consistency_against_the_direct_formula():
    g = torch.Generator().manual_seed(3)
    B, M, d, k, tau = 6, 2, 3, 2, 0.5
    sa, sb = (torch.randn(B, M, d, generator=g, dtype=torch.float64) for _ in range(2))
    n = lambda v: v / v.norm()  # noqa: E731

    def one_way(x, y):
        total = 0.0
        for m in range(M):
            for i in range(B):
                sims = [float(n(y[i, m]) @ n(y[j, m])) for j in range(B)]
                neigh = sorted((j for j in range(B) if j != i), key=lambda j: -sims[j])[:k]
                pos = [i] + neigh
                logits = [float(n(x[i, m]) @ n(y[j, m])) / tau for j in range(B)]
                lse = math.log(sum(math.exp(v) for v in logits))
                total += -sum(logits[p] - lse for p in pos) / len(pos)
        return total / (M * B)

    want = (one_way(sa, sb) + one_way(sb, sa)) / 2
    assert losses.part_neighbour_consistency(sa, sb, tau, k).item() == pytest.approx(want, rel=1e-9)
    many = losses.part_neighbour_consistency(sa, sb, tau, 100)  # k is clamped to the B - 1 other samples
    assert many.item() == pytest.approx(losses.part_neighbour_consistency(sa, sb, tau, B - 1).item(), rel=1e-12)


def test_regularizers_against_direct_formulas():
    g = torch.Generator().manual_seed(4)
    p = torch.softmax(torch.randn(4, 3, 5, generator=g, dtype=torch.float64), -1)
    want = -sum(float((p[b, m] * p[b, m].log()).sum()) for b in range(4) for m in range(3)) / 12
    assert losses.assignment_entropy(p).item() == pytest.approx(want, rel=1e-12)
    C = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    cs = [float(C[m, i] @ C[m, j] / C[m, i].norm() / C[m, j].norm())
          for m in range(2) for i in range(4) for j in range(4)]
    assert losses.codeword_similarity(C).item() == pytest.approx(sum(cs) / len(cs), rel=1e-12)
    x, y, c = torch.randn(5, 3, generator=g), torch.tensor([0, 2, 1, 2, 0]), torch.randn(3, 3, generator=g)
    want = sum(float(((x[i] - c[y[i]]) ** 2).sum()) for i in range(5)) / 5
    assert losses.center_loss(x, y, c).item() == pytest.approx(want, rel=1e-6)


def test_augmentation_recipe_is_seeded_per_sample_and_in_range():
    from sqret.augment import Augment, random_blur, random_grayscale

    x = torch.rand(12, 3, 16, 16)
    a1 = Augment()(x, torch.Generator().manual_seed(5))
    a2 = Augment()(x, torch.Generator().manual_seed(5))
    assert torch.equal(a1, a2) and a1.shape == x.shape and not torch.equal(a1, x)
    assert a1.min() >= 0 and a1.max() <= 1
    gray = random_grayscale(x, p=1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    assert torch.equal(random_grayscale(x, p=0.0), x)
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(random_blur(flat, p=1.0), flat)  # blur keeps constants (normalised kernel)
    blurred = random_blur(x, p=1.0, sigma=(1.5, 1.5))
    assert blurred.var() < x.var()


def test_lr_schedule_warmup_and_cosine():
    assert lr_factor(0, 100, None, 0.0) == 1.0
    assert lr_factor(0, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, "cosine", 0.1) == pytest.approx(0.5)
    assert lr_factor(99, 100, "cosine", 0.0) < 0.001
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, "step", 0.0)


def _tiny(name="spq", bits=16):
    torch.manual_seed(0)
    return build_method(name, bits, "small", 1, 8, 10, width=8)


@pytest.fixture(scope="module")
def digits():
    return load_digits_images()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_two_epochs_on_digits_and_beats_chance(name, digits):
    method = _tiny(name)
    result = train(method, digits, TrainConfig(epochs=2, batch_size=64, lr=3e-3, progress=False, val_every=1))
    assert result["bits"] == 16
    assert result["mAP@100"] > 0.4, result  # chance is about 0.1 for 10 balanced classes


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", ["spq", "mecoq", "sscq", "mopq", "phpq"])
def test_checkpoint_and_resume_reproduce_uninterrupted_training(tmp_path, digits, name):
    def fresh():
        m = _tiny(name)
        if name == "mecoq":
            m.memory_from_epoch = 1  # the code memory (buffers) must survive the checkpoint too
        return m

    cfg = dict(epochs=3, lr=1e-3, progress=False, batch_size=256, log=str(tmp_path / "l"))
    straight = fresh()
    train(straight, digits, TrainConfig(**{**cfg, "log": None}))
    ckpt = str(tmp_path / "c.pt")
    interrupted = fresh()
    stop = interrupted.start_epoch

    def crash_at_epoch_2(epoch):
        if epoch == 2:
            raise _Interrupt  # as if the machine went down in the third epoch
        stop(epoch)

    interrupted.start_epoch = crash_at_epoch_2
    with pytest.raises(_Interrupt):
        train(interrupted, digits, TrainConfig(checkpoint=ckpt, every=2, **cfg))
    again = fresh()  # a new process starts from a new model and the epoch-2 checkpoint
    train(again, digits, TrainConfig(checkpoint=ckpt, resume=True, **cfg))
    for (key, a), (_, b) in zip(straight.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    lines = [json.loads(s) for s in open(tmp_path / "l")]
    assert [r.get("epoch") for r in lines if "epoch" in r] == [1, 2, 3]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_tiny(), digits, TrainConfig(epochs=1, checkpoint=str(tmp_path / "none.pt"), resume=True))


def test_mecoq_code_memory_is_a_ring_of_soft_codes(digits):
    m = _tiny("mecoq")
    m.memory = torch.zeros(5, m.M, m.pq.K)
    m.train()
    m.start_epoch(10)
    x = torch.rand(4, 1, 8, 8)
    m.loss(x, x.flip(-1))
    assert int(m.memory_size) == 4 and int(m.memory_next) == 4
    m.loss(x, x.flip(-1))
    assert int(m.memory_size) == 5 and int(m.memory_next) == 3
    assert torch.allclose(m.memory.sum(-1), torch.ones(5, m.M), atol=1e-5)  # rows are distributions


def test_dpq_prefix_codes_serve_every_length(digits):
    m = _tiny("dpq", bits=32)
    train(m, digits, TrainConfig(epochs=3, lr=3e-3, progress=False))
    from sqret.train import embed

    db = embed(m, digits.database)
    codes = m.encode(db)
    assert codes.shape == (len(db), 4)
    err = [((m.rq.decode(codes[:, :lv]) - db) ** 2).sum(1).mean().item() for lv in range(1, 5)]
    assert all(a > b for a, b in zip(err, err[1:], strict=False)), err  # each level refines the previous ones
    index = m.index(2)
    index.add_codes(codes)
    _, ids = index.search(embed(m, digits.queries[:3]), 5)
    brute = torch.cdist(embed(m, digits.queries[:3]), m.rq.decode(codes[:, :2])).topk(5, largest=False).indices
    assert torch.equal(ids, brute)


class _Tiny(Method):
    """A recipe in a few lines: what the Method base asks of a new one."""

    defaults = {"optimizer": "adamw", "lr": 1e-3}

    def __init__(self, backbone, *, bits=16, K=16, dsub=4):
        super().__init__()
        self.backbone = backbone
        self.pq = ProductQuantizer(pq_shape(bits, K) * dsub, pq_shape(bits, K), K, mode="soft", kmeans_init=False)

    @classmethod
    def feature_dim(cls, *, bits, K=16, dsub=4, **_):
        return pq_shape(bits, K) * dsub

    def features(self, x):
        return self.backbone(x)

    def loss(self, xa, xb, labels=None):
        fa, fb = self.features(xa), self.features(xb)
        return losses.nt_xent(self.pq(fa), self.pq(fb), 0.5)


def test_a_new_recipe_is_one_class_and_one_registry_line(digits, monkeypatch):
    monkeypatch.setitem(METHODS, "tiny", _Tiny)
    torch.manual_seed(0)
    m = build_method("tiny", 16, "small", 1, 8, 10, width=8, dsub=2)
    assert m.defaults["schedule"] is None and m.defaults["optimizer"] == "adamw"  # the base's keys filled in
    assert m.code_bits == 16 and not m.progressive and m.spec["dsub"] == 2
    result = train(m, digits, TrainConfig(epochs=1, batch_size=64, progress=False))
    assert result["bits"] == 16 and result["mAP@100"] > 0.15, result  # chance is about 0.1


def test_the_method_contract_is_checked():
    with pytest.raises(TypeError, match="optimizer 'lamb' is not one of"):
        type("Bad", (Method,), {"defaults": {"optimizer": "lamb"}})
    with pytest.raises(TypeError, match="schedule 'step' is not one of"):
        type("Bad", (Method,), {"defaults": {"schedule": "step"}})
    with pytest.raises(TypeError, match="Bad must define feature_dim, loss"):
        type("Bad", (Method,), {"features": lambda self, x: x})
    with pytest.raises(TypeError, match="positional"):
        SPQ(SmallCNN(), 32)  # keyword-only after the backbone
    assert DPQ.progressive and not SPQ.progressive
    assert build_method("dpq", 16, "small", 1, 8, 7, width=8).classifier.out_features == 7  # build_args
    old = build_method("spq", 16, "small", 1, 8, 10, width=8, sub_dim=4)  # a checkpoint's spec before dsub
    assert old.spec["dsub"] == 4 and "sub_dim" not in old.spec and old.pq.dim == 16


def test_bad_recipe_and_inputs(digits):
    with pytest.raises(ValueError, match="multiple of log2"):
        SPQ(SmallCNN(), bits=30)
    with pytest.raises(ValueError, match="unknown method"):
        build_method("nope")
    with pytest.raises(ValueError, match="larger than"):
        train(_tiny(), digits, TrainConfig(epochs=1, batch_size=10_000, progress=False))


HERE = Path(__file__).parent


@pytest.mark.parametrize("recipe", [["sscq"], ["mopq", "cross"]], ids=["sscq", "mopq-cross-device-negatives"])
def test_two_rank_torchrun_training_keeps_the_ranks_identical(tmp_path, recipe):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = subprocess.run(torchrun + [str(HERE / "dist_train.py"), str(tmp_path), *recipe], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    s0, s1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    init = torch.load(tmp_path / "init.pt")
    assert s0["world"] == s1["world"] == 2
    for key in s0["model"]:
        assert torch.equal(s0["model"][key], s1["model"][key]), key
    moved = [k for k in init if init[k].is_floating_point() and not torch.equal(init[k], s0["model"][k])]
    assert moved, "training changed nothing"
    assert s0["result"] == s1["result"] and s0["result"]["mAP@100"] > 0.2


def test_cli_train_and_eval(tmp_path):
    ckpt = tmp_path / "dpq.pt"
    log = tmp_path / "log.jsonl"
    out = subprocess.run([sys.executable, "-m", "sqret", "train", "--method", "dpq", "--epochs", "2", "--bits", "16",
                          "--lr", "3e-3", "--checkpoint", str(ckpt), "--map-at", "100", "--log", str(log),
                          "--val-every", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    trained = json.loads(out.stdout.strip().splitlines()[-1])
    gallery = tmp_path / "gallery.png"
    out = subprocess.run([sys.executable, "-m", "sqret", "eval", str(ckpt), "--map-at", "100", "--all-lengths",
                          "--pr", "4", "--gallery", str(gallery)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ev = json.loads(out.stdout)
    assert ev["gallery"] == str(gallery) and gallery.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = tmp_path / "curves.png"
    out = subprocess.run([sys.executable, "-m", "sqret", "curves", str(log), "--out", str(curves)], capture_output=True,
                         text=True)
    assert out.returncode == 0 and curves.read_bytes()[:4] == b"\x89PNG", out.stderr
    out = subprocess.run([sys.executable, "-m", "sqret", "curves", str(ckpt)], capture_output=True, text=True)
    assert out.returncode != 0 and "line 1 is not JSON" in out.stderr and "Traceback" not in out.stderr
    assert ev["16 bits"]["mAP@100"] == pytest.approx(trained["mAP@100"], abs=1e-6)  # the same model, reloaded
    assert set(ev) >= {"8 bits", "16 bits"} and len(ev["16 bits"]["pr_curve"]["recall"]) == 4
    assert ev["16 bits"]["pr_curve"]["recall"][-1] == pytest.approx(1.0)
    out = subprocess.run([sys.executable, "-m", "sqret", "eval", str(tmp_path / "missing.pt")], capture_output=True,
                         text=True)
    assert out.returncode != 0 and "missing.pt" in out.stderr


def test_cli_train_defaults_on_digits_reproduce_the_readme():
    """`sqret train --method spq --dataset digits --bits 32` with no other flag: the README's budget (30
    epochs, lr 1e-3, the demo's split), its metric (mAP@100) and its figure (0.95), one line per epoch."""
    out = subprocess.run([sys.executable, "-m", "sqret", "train", "--method", "spq", "--dataset", "digits", "--bits",
                          "32"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epochs) == 30 and epochs[-1].startswith("epoch 30/30  loss ") and " lr " in epochs[-1]
    result = json.loads(lines[-1])
    assert result["epochs"] == 30 and result["mAP@100"] > 0.9


@pytest.mark.parametrize("name", sorted(METHODS))
def test_losses_run_under_bfloat16_autocast(name):
    """The AMP path (autocast to bfloat16 on GPUs) exercised on the CPU: the quantizers compute in their
    codebooks' float32, the loss is finite and every parameter gets a finite gradient."""
    method = _tiny(name)
    method.train()
    x = torch.rand(32, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.loss(x, x.flip(-1), torch.arange(32) % 10)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in method.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert method.pq.codebooks.grad is not None if hasattr(method, "pq") else method.rq.codebooks.grad is not None


def test_train_size_is_a_random_subset_of_class_sorted_data(digits):
    """Datasets such as CIFAR-10 come sorted by class: a budget subset must still hold every class."""
    from sqret.data import ImageSplit

    order = digits.train_labels.argsort(stable=True)
    sorted_split = ImageSplit(digits.train[order], digits.train_labels[order], digits.database, digits.database_labels,
                              digits.queries, digits.query_labels, digits.val, digits.val_labels, "sorted digits")
    seen = []
    method = _tiny("dpq")
    loss = method.loss
    method.loss = lambda xa, xb, labels: (seen.append(labels.clone()), loss(xa, xb, labels))[1]
    train(method, sorted_split, TrainConfig(epochs=1, batch_size=64, train_size=320, progress=False))
    labels = torch.cat(seen)
    assert len(labels) == 320 and labels.unique().numel() == 10

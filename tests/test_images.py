"""Image datasets (IDX, CIFAR pickles, ImageFolder trees and archives, the real MNIST and CIFAR-10 files),
their retrieval splits, the backbones, and the label metrics (precision@k, PR curve, symmetric distance)."""

import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from sqret import ops
from sqret.data import images as im
from sqret.eval import mean_average_precision, precision_at_k, precision_recall_curve
from sqret.index import PQIndex, ResidualIndex
from sqret.models import BACKBONES, SmallCNN, build_backbone, resnet18_cifar


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SQRET_CACHE", str(tmp_path / "cache"))


def _idx(array: np.ndarray, code: int) -> bytes:
    head = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_read_idx_types_gzip_and_errors(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(a, 0x08))
    assert np.array_equal(im.read_idx(tmp_path / "a"), a)
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    (tmp_path / "f.gz").write_bytes(gzip.compress(_idx(f, 0x0D)))
    assert np.array_equal(im.read_idx(tmp_path / "f.gz"), f)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="bad magic"):
        im.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx(a, 0x08)[:-5])
    with pytest.raises(ValueError, match="truncated"):
        im.read_idx(tmp_path / "short")


def test_splits_are_disjoint_and_per_class():
    labels = torch.arange(10).repeat_interleave(30)
    images = torch.arange(300).reshape(300, 1, 1, 1)
    s = im.split_by_class(images, labels, 5, 3, seed=1)
    for part, lab, count in ((s.queries, s.query_labels, 5), (s.val, s.val_labels, 3)):
        assert torch.equal(lab.bincount(), torch.full((10,), count))
        assert torch.equal(labels[part.flatten()], lab)
    ids = [set(t.flatten().tolist()) for t in (s.queries, s.val, s.database)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert sum(map(len, ids)) == 300 and s.train is s.database
    with pytest.raises(ValueError, match="fewer than"):
        im.split_by_class(images, labels, 31)
    t = im.split_train_test(images, labels, images[:100] + 1000, labels[:100], None, 2)
    assert len(t.queries) == 100 and len(t.val) == 20 and len(t.database) == 280
    assert not set(t.val.flatten().tolist()) & set(t.database.flatten().tolist())


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_directory_and_archive_decode_exactly(tmp_path):
    rng = np.random.default_rng(0)
    want = {}
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "ant"):
            for i in range(n):
                arr = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                p = tmp_path / "tree" / split / cls / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(_png(arr))
                want[(split, cls, i)] = arr
    with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "tree", arcname="tree")  # a single top folder, as archives often have
    for source in (tmp_path / "tree", tmp_path / "tree.tar.gz"):
        got = im.read_image_folder(source, progress=False)
        assert list(got["classes"]) == ["ant", "cat"]  # sorted class names
        assert got["train"].shape == (8, 3, 6, 5) and got["test"].shape == (4, 3, 6, 5)
        keys = [("test", "ant", 0), ("test", "ant", 1), ("test", "cat", 0), ("test", "cat", 1)]
        for img, label, key in zip(got["test"], got["test_labels"], keys, strict=True):
            assert label == (key[1] == "cat") and np.array_equal(img.transpose(1, 2, 0), want[key])
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 2  # one per source, reused on the next load
    again = im.read_image_folder(tmp_path / "tree", progress=False)
    assert np.array_equal(again["train"], got["train"])
    resized = im.load_folder(tmp_path / "tree", size=(4, 4), queries_per_class=1, progress=False)
    assert resized.shape == (3, 4, 4) and len(resized.queries) == 2
    with pytest.raises(FileNotFoundError):
        im.read_image_folder(tmp_path / "nothing")


def test_cifar_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name, n in [(f"data_batch_{i}", 20) for i in range(1, 6)] + [("test_batch", 20)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(root / name, "wb") as f:
            pickle.dump({"data": data, "labels": list(np.arange(n) % 10)}, f)
    s = im.load_cifar10(tmp_path, queries_per_class=1, val_per_class=1)
    assert s.shape == (3, 32, 32) and len(s.database) == 90 and len(s.queries) == 10 and len(s.val) == 10
    with open(root / "test_batch", "rb") as f:
        first = pickle.load(f, encoding="latin1")["data"][0]
    assert any(np.array_equal(q.numpy().reshape(-1), first) for q in s.queries)


def test_real_mnist_and_cifar10(data_dir):
    if not (data_dir / "mnist").exists() or not (data_dir / "cifar10-jpeg.tar.gz").exists():
        pytest.skip(f"MNIST / CIFAR-10 not in {data_dir} (see ../shared/data/README.md)")
    m = im.load_mnist(data_dir / "mnist")
    assert m.shape == (1, 28, 28) and m.database.dtype == torch.uint8
    assert len(m.database) + len(m.queries) + len(m.val) == 10_000 and len(m.queries) == 1000
    c = im.load_cifar10(data_dir / "cifar10-jpeg.tar.gz", progress=False)
    assert c.shape == (3, 32, 32) and len(c.queries) == 10_000 and len(c.database) == 49_000 and len(c.val) == 1000
    assert torch.equal(c.query_labels.bincount(), torch.full((10,), 1000))
    means = im.to_float(c.database[::20]).mean((0, 2, 3))
    assert torch.allclose(means, torch.tensor([0.49, 0.48, 0.45]), atol=0.03)  # CIFAR-10's channel means


def test_backbones_shapes_and_local_weights(tmp_path):
    x = torch.rand(2, 3, 32, 32)
    for size, c in ((8, 1), (28, 1), (32, 3)):
        assert SmallCNN(c, 24, 8, size)(torch.rand(2, c, size, size)).shape == (2, 24)
    net = resnet18_cifar(16)
    assert net(x).shape == (2, 16) and net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, torch.nn.Identity)
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, tmp_path / "w.pt")
    again = resnet18_cifar(16, weights=tmp_path / "w.pt")
    assert not torch.equal(again.fc.weight, net.fc.weight)  # the classifier is not taken from the file
    net.eval(), again.eval()
    assert torch.allclose(net.layer4(net.layer3(net.layer2(net.layer1(net.relu(net.bn1(net.conv1(x))))))),
                          again.layer4(again.layer3(again.layer2(again.layer1(again.relu(again.bn1(again.conv1(x))))))))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises((ValueError, RuntimeError)):
        resnet18_cifar(16, weights=tmp_path / "bad.pt")
    assert build_backbone("resnet50", 12).eval()(torch.rand(1, 3, 64, 64)).shape == (1, 12)
    assert "vgg16" in BACKBONES
    with pytest.raises(ValueError, match="RGB"):
        build_backbone("resnet50", 12, in_channels=1)


def test_precision_at_k_and_pr_curve_against_loops():
    g = torch.Generator().manual_seed(0)
    ql, dl = torch.randint(0, 3, (7,), generator=g), torch.randint(0, 3, (40,), generator=g)
    ranked = torch.stack([torch.randperm(40, generator=g) for _ in range(7)])
    rel = (dl[ranked] == ql[:, None]).float()
    assert precision_at_k(ql, dl, ranked, 10) == pytest.approx(rel[:, :10].mean().item())
    cut, prec, rec = precision_recall_curve(ql, dl, ranked, 4)
    assert cut.tolist() == [10, 20, 30, 40]
    for c, p, r in zip(cut.tolist(), prec.tolist(), rec.tolist(), strict=False):
        assert p == pytest.approx(rel[:, :c].sum(1).div(c).mean().item())
        assert r == pytest.approx((rel[:, :c].sum(1) / rel.sum(1)).mean().item())
    assert rec[-1].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fewer than"):
        precision_at_k(ql, dl, ranked[:, :5], 10)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_symmetric_distance_search_against_brute_force(metric):
    g = torch.Generator().manual_seed(1)
    C = torch.randn(4, 16, 3, generator=g)
    x, q = torch.randn(300, 12, generator=g), torch.randn(9, 12, generator=g)
    index = PQIndex.from_codebooks(C, metric)
    index.add(x)
    D, I = index.search(q, 7, symmetric=True)
    xr, qr = ops.decode(index.codes(), C), ops.decode(ops.encode(q, C, metric), C)
    brute = (qr @ xr.T) if metric == "ip" else torch.cdist(qr.double(), xr.double()).pow(2).float()
    want = brute.gather(1, I)
    assert torch.allclose(D, want, rtol=1e-4, atol=1e-4)
    best = brute.topk(7, largest=metric == "ip").values
    assert torch.allclose(D, best, rtol=1e-4, atol=1e-4)
    T = ops.codeword_tables(C, metric)
    assert T.shape == (4, 16, 16)
    if metric == "l2":
        assert torch.allclose(T.diagonal(dim1=1, dim2=2), torch.zeros(4, 16), atol=1e-5)


def test_residual_index_search_and_symmetric():
    g = torch.Generator().manual_seed(2)
    C = torch.randn(3, 16, 6, generator=g)
    x, q = torch.randn(200, 6, generator=g), torch.randn(5, 6, generator=g)
    index = ResidualIndex(C)
    index.add(x, ids=torch.arange(200) + 1000)
    xr = index.decode(index.encode(x))
    assert ((xr - x) ** 2).sum() < (x**2).sum()
    D, I = index.search(q, 4)
    want = torch.cdist(q.double(), xr.double()).pow(2)
    vals, pos = want.topk(4, largest=False)
    assert torch.equal(I, pos + 1000) and torch.allclose(D.double(), vals, rtol=1e-4)
    D, I = index.search(q, 300)
    assert (I[:, 200:] == -1).all() and torch.isinf(D[:, 200:]).all()
    short = ResidualIndex(C, levels=1)
    short.add_codes(index.encode(x))  # longer codes: their prefix
    assert short.search(q, 3)[1].shape == (5, 3)
    assert mean_average_precision(torch.zeros(5, dtype=torch.long), torch.zeros(1200, dtype=torch.long),
                                  index.search(q, 10, symmetric=True)[1] - 1000) == pytest.approx(1.0)

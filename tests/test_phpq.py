"""PHPQ: the partial-attention quantizer against a direct formula (and only the attended codewords get
gradients), the pyramid hybrid pooling over each backbone's stages, training on digits and on an ImageFolder
through the CLI, bad arguments."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sqret.methods import build_method
from sqret.methods.phpq import partial_attention
from sqret.models import build_backbone, stage_maps


def test_partial_attention_against_a_direct_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 12, generator=g, dtype=torch.float64, requires_grad=True)
    C = torch.randn(3, 10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z = partial_attention(x, C, 0.7, 4)
    want = torch.empty(6, 12, dtype=torch.float64)
    for b in range(6):
        for m in range(3):
            xm = x[b, 4 * m:4 * m + 4].detach()
            d = ((xm - C[m].detach()) ** 2).sum(-1)
            near = torch.argsort(d)[:4]
            w = torch.softmax(-d[near] / 0.7, 0)
            want[b, 4 * m:4 * m + 4] = (w[:, None] * C[m, near].detach()).sum(0)
    torch.testing.assert_close(z.detach(), want, rtol=1e-12, atol=1e-12)
    z.square().sum().backward()
    attended = torch.zeros(3, 10, dtype=torch.bool)
    for b in range(6):
        for m in range(3):
            d = ((x[b, 4 * m:4 * m + 4].detach() - C[m].detach()) ** 2).sum(-1)
            attended[m, torch.argsort(d)[:4]] = True
    assert torch.equal(C.grad.abs().sum(-1) > 0, attended)  # exactly zero for the codewords no sample attended
    assert torch.autograd.gradcheck(lambda a, c: partial_attention(a, c, 0.7, 4), (x, C))


@pytest.mark.parametrize("name,c,size,stages", [("small", 1, 8, 2), ("small", 3, 32, 3), ("resnet18", 3, 32, 4)])
def test_stage_maps_and_pyramid_features(name, c, size, stages):
    net = build_backbone(name, 64, c, size, width=8)
    maps = stage_maps(net.eval(), torch.rand(2, c, size, size))
    assert len(maps) == stages and all(m.dim() == 4 for m in maps)
    assert [m.shape[-1] for m in maps] == sorted((m.shape[-1] for m in maps), reverse=True)  # shallow to deep
    method = build_method("phpq", 32, name, c, size, 10, width=8)
    assert method.features(torch.rand(3, c, size, size)).shape == (3, 64)
    assert method.stages == min(3, stages)


def test_bad_arguments():
    with pytest.raises(ValueError, match="attention must be an int >= 1"):
        build_method("phpq", 16, "small", 1, 8, 10, width=8, attention=0)
    with pytest.raises(ValueError, match=r"stages must be in \[1, 2\]"):
        build_method("phpq", 16, "small", 1, 8, 10, width=8, stages=3)


def _png(arr):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_phpq_trains_on_an_image_folder_through_the_cli(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 100)):  # the folder protocol takes 100 queries per class
        for k, cls in enumerate(("ant", "bee", "cat")):
            for i in range(n):
                arr = np.full((16, 16, 3), 40 + 80 * k, np.uint8) + rng.integers(0, 30, (16, 16, 3), dtype=np.uint8)
                p = tmp_path / "tree" / split / cls / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(_png(arr))
    ckpt = tmp_path / "phpq.pt"
    run = [sys.executable, "-m", "sqret", "train", "--method", "phpq", "--dataset", "folder", "--data",
           str(tmp_path / "tree"), "--bits", "16", "--epochs", "3", "--batch-size", "24", "--width", "8",
           "--map-at", "20", "--checkpoint", str(ckpt)]
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["mAP@20"] > 0.5, result  # chance is a third
    ev = subprocess.run([sys.executable, "-m", "sqret", "eval", str(ckpt), "--map-at", "10"], capture_output=True,
                        text=True)
    assert ev.returncode == 0, ev.stderr

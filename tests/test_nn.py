"""sqret.nn.ProductQuantizer: modes, gradients, k-means init, export to PQIndex, errors."""

import pytest
import torch

from sqret import ops
from sqret.index import PQIndex
from sqret.nn import ProductQuantizer


def test_soft_hard_and_straight_through():
    x = torch.randn(300, 32, requires_grad=True)
    soft = ProductQuantizer(32, M=4, K=16, tau=0.3, mode="soft")
    z = soft(x)
    assert z.shape == x.shape and bool(soft.initialized)  # k-means init on the first batch
    gx, gc = torch.autograd.grad(z.square().sum(), (x, soft.codebooks))
    assert gx.abs().sum() > 0 and gc.abs().sum() > 0

    hard = ProductQuantizer(32, M=4, K=16, mode="hard", kmeans_init=False)
    zh = hard(x)
    assert torch.equal(zh, ops.decode(ops.encode(x.detach(), hard.codebooks.detach()), hard.codebooks.detach()))
    gx_hard, gc_hard = torch.autograd.grad(zh.sum(), (x, hard.codebooks), allow_unused=True)
    assert gx_hard is None and gc_hard.abs().sum() > 0  # hard: the codebooks learn, x gets nothing

    st = ProductQuantizer(32, M=4, K=16, tau=0.3, mode="st", kmeans_init=False)
    with torch.no_grad():
        st.codebooks.copy_(soft.codebooks)
    soft.eval()
    zs = st(x)
    assert torch.allclose(zs, ops.decode(st.encode(x), st.codebooks), atol=1e-6)  # forward: hard
    g_st = torch.autograd.grad((zs * torch.arange(32.0)).sum(), x)[0]
    g_soft = torch.autograd.grad((soft(x) * torch.arange(32.0)).sum(), x)[0]
    torch.testing.assert_close(g_st, g_soft)  # backward: soft


def test_kmeans_init_fits_the_data_and_export_to_index():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(16, 32, generator=g) * 4
    x = centers[torch.randint(0, 16, (2000,), generator=g)] + 0.05 * torch.randn(2000, 32, generator=g)
    pq = ProductQuantizer(32, M=4, K=16, mode="hard")
    z = pq(x)
    assert (z - x).square().sum(1).mean() < 0.1 * x.square().sum(1).mean()
    index = PQIndex.from_quantizer(pq)
    index.add_codes(pq.encode(x))
    D, I = index.search(x[:10], 1)
    assert torch.allclose(ops.decode(index.codes()[I[:, 0]], pq.codebooks.detach()), z[:10].detach())


def test_cosine_metric_uses_normalised_codewords():
    pq = ProductQuantizer(16, M=2, K=16, metric="cos", mode="hard", kmeans_init=False)
    z = pq(torch.randn(5, 16))
    assert torch.allclose(z.view(5, 2, 8).norm(dim=-1), torch.ones(5, 2), atol=1e-5)
    assert PQIndex.from_quantizer(pq).metric == "ip"


def test_errors():
    with pytest.raises(ValueError, match="not divisible"):
        ProductQuantizer(30, M=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        ProductQuantizer(32, M=4, mode="gumbel")
    with pytest.raises(ValueError, match="tau must be"):
        ProductQuantizer(32, M=4, tau=0)
    with pytest.raises(ValueError, match="at least K = 256"):
        ProductQuantizer(32, M=4)(torch.randn(10, 32))

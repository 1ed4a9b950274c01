"""opcheck on every op, gradcheck of the differentiable ones, gradients against an independent formula."""

import pytest
import torch

from sqret import ops

OPS = torch.ops.sqret


def _inputs(dtype=torch.float64, B=5, M=3, K=6, d=4, grad=True):
    x = torch.randn(B, M * d, dtype=dtype, requires_grad=grad)
    C = torch.randn(M, K, d, dtype=dtype, requires_grad=grad)
    return x, C


@pytest.mark.parametrize("metric", ops.METRICS)
def test_opcheck_soft_ops(metric):
    x, C = _inputs(torch.float32)
    torch.library.opcheck(OPS.soft_quantize.default, (x, C, 0.5, metric))
    torch.library.opcheck(OPS.assign_probs.default, (x, C, 0.5, metric))
    g = torch.randn(5, 12)
    torch.library.opcheck(OPS.soft_quantize_backward.default, (g, x.detach(), C.detach(), 0.5, metric))
    gp = torch.randn(5, 3, 6)
    torch.library.opcheck(OPS.assign_probs_backward.default, (gp, x.detach(), C.detach(), 0.5, metric))
    torch.library.opcheck(OPS.encode.default, (x.detach(), C.detach(), metric))
    torch.library.opcheck(OPS.build_lut.default, (x.detach(), C.detach(), metric, None))


def test_opcheck_decode_and_adc_topk():
    C = torch.randn(3, 16, 4, requires_grad=True)
    codes = torch.randint(0, 16, (9, 3), dtype=torch.uint8)
    torch.library.opcheck(OPS.decode.default, (codes, C, False))
    torch.library.opcheck(OPS.decode.default, (ops.pack4(codes), C, True))
    torch.library.opcheck(OPS.decode_backward.default, (torch.randn(9, 12), codes, C.detach(), False))
    lut = torch.randn(4, 3, 16)
    torch.library.opcheck(OPS.adc_topk.default, (lut, codes, 5, False, False))
    torch.library.opcheck(OPS.adc_topk.default, (lut, ops.pack4(codes), 12, True, True))
    torch.library.opcheck(OPS.build_lut.default, (torch.randn(4, 12), C.detach(), "l2_sqrt", torch.float16))


@pytest.mark.parametrize("metric", ops.METRICS)
def test_gradcheck_soft_quantize_and_assign_probs(metric):
    x, C = _inputs()
    assert torch.autograd.gradcheck(lambda a, b: ops.soft_quantize(a, b, 0.7, metric), (x, C))
    assert torch.autograd.gradcheck(lambda a, b: ops.assign_probs(a, b, 0.7, metric), (x, C))


def test_gradcheck_decode():
    C = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    codes = torch.randint(0, 5, (7, 3), dtype=torch.uint8)
    assert torch.autograd.gradcheck(lambda c: ops.decode(codes, c), (C,))


def _direct_soft_quantize(x, C, tau, metric):
    """An independent float64 formulation: explicit differences, no expansion, plain autograd."""
    B, (M, _, d) = x.shape[0], C.shape
    xs = x.view(B, M, 1, d)
    if metric == "l2":
        s = -((xs - C.unsqueeze(0)) ** 2).sum(-1)
        Cw = C
    else:
        if metric == "cos":
            xs = xs / xs.norm(dim=-1, keepdim=True)
            C = C / C.norm(dim=-1, keepdim=True)
        s = (xs * C.unsqueeze(0)).sum(-1)
        Cw = C
    p = torch.softmax(s / tau, dim=-1)
    return torch.einsum("bmk,mkd->bmd", p, Cw).reshape(B, M * d)


@pytest.mark.parametrize("metric", ops.METRICS)
def test_gradients_against_independent_formula(metric):
    """float32 op gradients at a larger size against float64 autograd of a direct formula."""
    x, C = _inputs(torch.float32, B=301, M=5, K=37, d=7)
    g = torch.randn(301, 35)
    gx, gC = torch.autograd.grad(ops.soft_quantize(x, C, 0.4, metric), (x, C), g)
    x64, C64 = x.detach().double().requires_grad_(), C.detach().double().requires_grad_()
    ex, eC = torch.autograd.grad(_direct_soft_quantize(x64, C64, 0.4, metric), (x64, C64), g.double())
    for a, b in ((gx, ex), (gC, eC)):
        assert ((a.double() - b).norm() / b.norm()).item() < 1e-4


def test_backward_is_chunked(monkeypatch):
    """Chunked recomputation gives the same gradients as one chunk."""
    from sqret.ops import reference

    x, C = _inputs(torch.float64, B=50)
    full = torch.autograd.grad(ops.soft_quantize(x, C, 0.5).square().sum(), (x, C))
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 40)  # 2 rows per chunk
    chunked = torch.autograd.grad(ops.soft_quantize(x, C, 0.5).square().sum(), (x, C))
    for a, b in zip(full, chunked, strict=True):
        torch.testing.assert_close(a, b)


def test_torch_compile_fullgraph_forward_backward():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(10, 12)
            self.codebooks = torch.nn.Parameter(torch.randn(3, 8, 4))

        def forward(self, x):
            return ops.soft_quantize(self.proj(x), self.codebooks, 0.5, "l2")

    model = Tiny()
    x = torch.randn(6, 10)
    eager = torch.autograd.grad(model(x).square().sum(), (model.proj.weight, model.codebooks))
    compiled = torch.compile(model, fullgraph=True)
    z = compiled(x)
    torch.testing.assert_close(z, model(x))
    got = torch.autograd.grad(z.square().sum(), (model.proj.weight, model.codebooks))
    for a, b in zip(got, eager, strict=True):
        torch.testing.assert_close(a, b)

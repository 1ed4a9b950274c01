"""Bad input gives a clear ValueError / TypeError that names the argument."""

import numpy as np
import pytest
import torch

from sqret import ops

x, C = torch.randn(4, 12), torch.randn(3, 8, 4)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: ops.soft_quantize(torch.randn(4, 10), C), ValueError, r"x has d = 10 .* d = M \* dsub = 12"),
        (lambda: ops.soft_quantize(x.double()[None], C), ValueError, "x must be 2-D"),
        (lambda: ops.soft_quantize(x.int(), C), TypeError, "x must have dtype"),
        (lambda: ops.soft_quantize(x, C[0]), ValueError, "codebooks must be 3-D"),
        (lambda: ops.soft_quantize(x, C, 0.0), ValueError, "tau must be a finite number > 0"),
        (lambda: ops.soft_quantize(x, C, float("nan")), ValueError, "tau"),
        (lambda: ops.soft_quantize(x, C, 1.0, "hamming"), ValueError, "metric must be one of"),
        (lambda: ops.soft_quantize(x.to("meta"), C), ValueError, "one device"),
        (lambda: ops.soft_quantize(x.numpy(), C), TypeError, "x must be a torch.Tensor"),
        (lambda: ops.assign_probs(x, torch.randn(3, 0, 4)), ValueError, "K, dsub >= 1"),
        (lambda: ops.encode(x, C, "l2_sqrt"), ValueError, "metric"),
        (lambda: ops.build_lut(torch.randn(2, 11), C), ValueError, "queries has d = 11"),
        (lambda: ops.decode(torch.randint(0, 8, (5, 2), dtype=torch.uint8), C), ValueError, r"codes must be \[N, M = 3\]"),
        (lambda: ops.decode(torch.randint(0, 8, (5, 3)).float(), C), TypeError, "codes must have dtype"),
        (lambda: ops.decode(torch.full((5, 3), 8, dtype=torch.uint8), C), ValueError, r"codes must lie in \[0, K = 8\)"),
        (lambda: ops.decode(torch.full((5, 3), -1, dtype=torch.int32), C), ValueError, "found values in"),
        (lambda: ops.adc_topk(torch.randn(2, 3, 8), torch.zeros(5, 3, dtype=torch.uint8), 0), ValueError, "k must be >= 1"),
        (lambda: ops.adc_topk(torch.randn(2, 3, 8), torch.zeros(5, 3, dtype=torch.uint8), 2.0), TypeError, "k must be an int"),
        (lambda: ops.adc_topk(torch.randn(2, 3, 8), torch.full((5, 3), 9, dtype=torch.int16), 2), ValueError, "codes must lie"),
        (lambda: ops.adc_topk(torch.randn(2, 3, 8), torch.zeros(5, 2, dtype=torch.uint8), 2, packed=True), ValueError, "need K = 16"),
        (lambda: ops.adc_topk(torch.randn(2, 3, 16), torch.zeros(5, 3, dtype=torch.int16), 2, packed=True), TypeError, "must be uint8"),
        (lambda: ops.adc_topk(torch.randn(2, 3, 16), torch.zeros(5, 3, dtype=torch.uint8), 2, packed=True), ValueError, r"\[N, 2\]"),
        (lambda: ops.adc_topk(torch.full((2, 3, 8), float("nan")), torch.zeros(5, 3, dtype=torch.uint8), 2), ValueError, "lut contains NaN"),
        (lambda: ops.adc_topk(torch.randn(2, 3, 8), [torch.zeros(5, 4, dtype=torch.uint8)], 2), ValueError, r"codes must be \[N, M = 3\]"),
        (lambda: ops.adc_topk(torch.randn(2, 3, 8), ["nope"], 2), TypeError, "codes chunk 0 must be"),
        (lambda: ops.adc_topk(torch.randn(2, 3, 8), torch.zeros(5, 3, dtype=torch.uint8), 2, ids=np.arange(4)), ValueError, r"ids must be int64 \[N = 5\]"),
    ],
)
def test_clear_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_check_finite_option():
    bad = x.clone()
    bad[1, 2] = float("inf")
    ops.soft_quantize(bad, C)  # unchecked by default: no error
    for call in (
        lambda: ops.soft_quantize(bad, C, check_finite=True),
        lambda: ops.assign_probs(bad, C, check_finite=True),
        lambda: ops.encode(bad, C, check_finite=True),
        lambda: ops.build_lut(bad, C, check_finite=True),
    ):
        with pytest.raises(ValueError, match="x contains NaN or inf|queries contains NaN or inf"):
            call()
    with pytest.raises(ValueError, match="lut contains NaN or inf"):
        ops.adc_topk(torch.full((1, 3, 8), float("inf")), torch.zeros(4, 3, dtype=torch.uint8), 1, check_finite=True)


def test_empty_inputs_give_empty_results():
    e = torch.randn(0, 12)
    assert ops.soft_quantize(e, C).shape == (0, 12)
    assert ops.assign_probs(e, C).shape == (0, 3, 8)
    assert ops.encode(e, C).shape == (0, 3)
    assert ops.build_lut(e, C).shape == (0, 3, 8)
    assert ops.decode(torch.zeros(0, 3, dtype=torch.uint8), C).shape == (0, 12)
    z = ops.soft_quantize(e.requires_grad_(), C.requires_grad_())
    z.sum().backward()
    assert e.grad.shape == (0, 12)

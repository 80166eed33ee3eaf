"""The real-size training benchmark's two instruments, on inputs whose answer is known by hand: the bytes autograd
saves (benchmarks/bench_training.py SavedBytes) and a peak RSS restarted after loading (benchmarks/rss.py)."""
from __future__ import annotations

import sys

import pytest
import torch

from benchmarks.bench_training import SavedBytes
from benchmarks.rss import peak_rss_bytes, reset_peak, status_bytes


def test_saved_bytes_counts_the_saved_activations_once_and_not_the_weights():
    """y = relu(x Wᵀ), W trainable, x not: the matmul saves x (for W's gradient), relu saves its output; the weight
    the matmul also holds is a parameter and is not counted. 64x1000 + 64x2000 fp32 = 768,000 bytes; a second use
    of the same x adds nothing."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(1000, 2000, bias=False)
    x = torch.randn(64, 1000)
    saved = SavedBytes(lin.parameters())
    with saved.hooks():
        loss = torch.relu(lin(x)).sum() + (lin(x) * 0).sum()
    assert saved.total == (64 * 1000 + 64 * 2000) * 4      # ``* 0`` by a Python number saves no tensor
    loss.backward()                        # the hooks hand back the tensors unchanged
    assert lin.weight.grad is not None and lin.weight.grad.shape == (2000, 1000)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")
def test_reset_peak_forgets_the_loading_peak():
    big = torch.ones(64 * 2 ** 20)         # 256 MiB, touched
    del big
    before = peak_rss_bytes()
    assert reset_peak()
    after = peak_rss_bytes()
    assert after <= status_bytes("VmRSS") + 16 * 2 ** 20
    assert before - after > 200 * 2 ** 20

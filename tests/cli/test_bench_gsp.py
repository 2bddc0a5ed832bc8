"""A tiny-size smoke run of `labkit bench gsp` (numbers are not asserted, only their kind)."""

from __future__ import annotations

import math

import torch

from labkit.cli import bench_gsp


def test_plain_reference_solver_agrees_with_ours():
    c = 2 * torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    from labkit.methods.gsp import gsp_transport

    r1, p1 = gsp_transport(c, 0.3, 5.0, iters=1000)
    r2, p2 = bench_gsp.plain_transport(c, 0.3, 5.0, 1000)
    torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(r1, r2)


def test_bench_smoke(capsys):
    res = bench_gsp.main(["--tiny", "--repeats", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "speed-up" in out and "share" in out
    for key in ("transport_speedup", "transport_speedup_alone", "backward_speedup_vs_unrolled",
                "memory_ratio_vs_unrolled", "memory_ratio_vs_authors100",
                "backward_speedup_vs_authorsconverged", "layer_share_of_resnet_step",
                "plan_max_diff"):
        assert math.isfinite(res[key]) and res[key] >= 0
    assert res["plan_max_diff"] < 1e-5
    # the implicit backward keeps only the outputs, the unrolled 100-step loop much more
    assert res["memory_ratio_vs_unrolled100"] > 1


def test_fixed_point_iterations_is_the_first_step_within_tolerance():
    c = 2 * torch.rand(4, 6, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu, gamma, tol = 0.4, 5.0, 1e-8
    steps = bench_gsp.fixed_point_iterations(c, mu, gamma, tol)

    def mass_error(iters):
        rho, _ = bench_gsp._plain_forward(c, mu, gamma, iters)
        return float(((1 - rho.sum(-1)).log() - math.log(mu)).abs().max())

    assert 1 < steps < 10_000
    assert mass_error(steps) <= tol < mass_error(steps - 1)

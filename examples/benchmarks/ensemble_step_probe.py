"""One training step of a vectorized K-member NSF ensemble against one NSF, by width.

Issue 14 asks that a K = 5 ensemble epoch cost at most 1.5x one member's. This probe
times the step alone (forward, backward, fused Adam) on a fixed batch, so that data
handling does not dilute the ratio; ``calibration_defaults.py --epoch-timing`` times whole
epochs.

Run: taskset -c 0 python examples/benchmarks/ensemble_step_probe.py --threads 1 [--ops]
"""

from __future__ import annotations

import argparse
import time

import torch

from sbiflow.estimators.ensemble import EnsembleEstimator
from sbiflow.estimators.flows import FlowEstimator
from sbiflow.training import _adam


def step_ms(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, steps: int) -> float:
    """Median milliseconds of one optimizer step on ``(a, b)`` over ``steps`` steps."""
    optimizer = _adam(model, 1e-3)
    times = []
    for i in range(steps + 10):
        start = time.perf_counter()
        optimizer.zero_grad()
        model.loss(a, b).mean().backward()
        optimizer.step()
        if i >= 10:  # warm-up
            times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def ops_per_step(
    model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, steps: int = 20
) -> float:
    """Operator calls torch's profiler records in one optimizer step (dispatch overhead)."""
    from torch.profiler import ProfilerActivity, profile

    optimizer = _adam(model, 1e-3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            optimizer.zero_grad()
            model.loss(a, b).mean().backward()
            optimizer.step()
    return sum(event.count for event in prof.key_averages()) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 50])
    parser.add_argument("--members", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ops", action="store_true", help="also count operator calls per step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = torch.randn(args.batch, args.dim)
    a = b + 0.5 * torch.randn(args.batch, args.dim)
    shapes = ((args.dim,), (args.dim,))
    print(f"# one step, batch {args.batch}, dim {args.dim}, {args.threads} thread(s)")
    members = " | ".join(f"K = {k} (ms, ratio)" for k in args.members)
    print(f"| hidden | one NSF (ms) | {members} |")
    print("|---" * (2 + len(args.members)) + "|")
    for width in args.widths:
        one = FlowEstimator("nsf", *shapes, hidden_features=width)
        one.standardize_from(a, b)
        base = step_ms(one, a, b, args.steps)
        cells = []
        for k in args.members:
            ensemble = EnsembleEstimator(*shapes, num_members=k, hidden_features=width)
            ensemble.standardize_from(a, b)
            ms = step_ms(ensemble, a, b, args.steps)
            cells.append(f"{ms:.1f} ({ms / base:.2f}x)")
        print(f"| {width} | {base:.1f} | " + " | ".join(cells) + " |")
        if args.ops:
            ensemble = EnsembleEstimator(
                *shapes, num_members=max(args.members), hidden_features=width
            )
            ensemble.standardize_from(a, b)
            print(
                f"#   operator calls per step, hidden {width}: one NSF "
                f"{ops_per_step(one, a, b):.0f}, K = {max(args.members)} "
                f"{ops_per_step(ensemble, a, b):.0f}"
            )


if __name__ == "__main__":
    main()

"""What the analytic suite's decision target asks of a classifier's log K accuracy.

Issue 12 item 1 asks decision agreement >= 99.5% at |log K| = 3 on 10^4 held-out datasets.
How hard that is depends on how many datasets lie near the threshold. For every case of
``model_comparison_analytic.py`` (the same test datasets: same seeds), this prints the share
of exact log K within 0.05 and 0.1 nats of |log K| = 3 and the decision agreement that an
unbiased Gaussian error of sigma nats would give (mean of 20 draws). Closed-form only, a few
seconds; no classifier is trained.

    python examples/benchmarks/model_comparison_decision_margin.py \\
        --out docs/results/model_comparison_decision_margin.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, report  # noqa: E402
from model_comparison_analytic import CASES, DECISION, decision, test_datasets  # noqa: E402

SIGMAS = (0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
DRAWS = 20


def exact_log_k(case: str, n_test: int, seed: int) -> torch.Tensor:
    """Exact log K of every model pair on the analytic benchmark's test datasets."""
    models = CASES[case]()
    x = torch.cat(list(test_datasets(models, n_test, seed).values()))
    log_z = {name: m.log_evidence(x) for name, m in models.items()}
    return torch.cat([log_z[a] - log_z[b] for a, b in itertools.combinations(models, 2)]).double()


def agreement_with_noise(exact: torch.Tensor, sigma: float, generator: torch.Generator) -> float:
    """Mean decision agreement of exact + N(0, sigma^2) with exact over DRAWS draws."""
    shares = []
    for _ in range(DRAWS):
        noisy = exact + sigma * torch.randn(exact.shape, generator=generator, dtype=exact.dtype)
        shares.append(float((decision(noisy) == decision(exact)).double().mean()))
    return sum(shares) / len(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    print(f"# model_comparison_decision_margin on {machine()}", flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    runs, rows = [], []
    for case in args.cases:
        exact = exact_log_k(case, args.n_test, args.seed)
        margin = (exact.abs() - DECISION).abs()
        result = {
            "case": case,
            "n_pairs_datasets": int(exact.shape[0]),
            "share_within_0.05": float((margin < 0.05).double().mean()),
            "share_within_0.1": float((margin < 0.1).double().mean()),
            "agreement": {str(s): agreement_with_noise(exact, s, generator) for s in SIGMAS},
        }
        runs.append(result)
        rows.append(
            [
                case,
                f"{result['share_within_0.05']:.4f} / {result['share_within_0.1']:.4f}",
                *(f"{result['agreement'][str(s)]:.4f}" for s in SIGMAS),
            ]
        )
    header = ["case", "share within 0.05 / 0.1 of 3", *(f"σ = {s}" for s in SIGMAS)]
    print("\ndecision agreement at 3 of exact log K + N(0, σ²) (target ≥ 0.995)")
    report(header, rows, args.out, args, runs)


if __name__ == "__main__":
    main()

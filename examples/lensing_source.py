"""Reconstruct a strongly lensed source galaxy with a learned score prior (issue 11).

``simulators/lensing.py`` gives the forward model y = A z + n: a singular isothermal
ellipsoid plus shear ray-traced onto a 32 x 32 source grid, a Gaussian PSF, a 48 x 48 image
and pixel noise 0.05 (peak S/N 10-30). The prior is ``sbiflow.ScorePrior((32, 32))`` (not
periodic: its Gaussian baseline is the full sample covariance) trained on
``source_galaxies`` draws.

- Baseline: the Wiener filter with the training sources' sample mean and covariance as the
  prior (the best linear estimate under that Gaussian prior).
- Posterior: ``sbiflow.DiffusionPosterior(prior, LinearGaussianLikelihood(A, noise))``.

One figure (truth source / lensed data / Wiener filter / posterior mean / two samples /
per-pixel std / residual of the mean) goes to ``--out``, and a short table is printed.

    taskset -c 1 python examples/lensing_source.py --out lensing_source.png
    python examples/lensing_source.py --quick --out /tmp/quick.png   # < 60 s, tiny
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import sbiflow
from sbiflow.diffusion import gaussian_posterior
from simulators.lensing import make_problem, source_galaxies

# full run: ~4 min of training and < 1 min of sampling on one core
FULL = {
    "n_train": 8_000,
    "max_epochs": 4,
    "batch_size": 128,
    "channels": (16, 32),
    "samples": 100,
    "steps": 16,
    "cg_iterations": 4,
}
QUICK = {
    "n_train": 400,
    "max_epochs": 1,
    "batch_size": None,
    "channels": (8, 16),
    "samples": 8,
    "steps": 6,
    "cg_iterations": 2,
}
NOISE_STD = 0.05  # make_problem's default


def training_sources(n: int, seed: int = 0) -> torch.Tensor:
    """Source galaxies ``(n, 32, 32)`` float32 from a seed no test problem uses."""
    return torch.as_tensor(source_galaxies(n, rng=np.random.default_rng(seed)))


def train_prior(z: torch.Tensor, max_epochs: int, channels, batch_size=None):
    """A (non-periodic) ScorePrior fitted to sources ``z``."""
    prior = sbiflow.ScorePrior(tuple(z.shape[1:]), channels=tuple(channels))
    return prior.fit(z, max_epochs=max_epochs, batch_size=batch_size, progress=False)


def sample_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (float64) of rows of ``z``."""
    rows = z.reshape(z.shape[0], -1).double()
    mean = rows.mean(dim=0)
    centred = rows - mean
    return mean, centred.T @ centred / (rows.shape[0] - 1)


def rank_coverage(samples: torch.Tensor, truth: torch.Tensor, levels) -> list[float]:
    """Share of elements whose truth lies in the central interval of ``samples`` (by rank)."""
    n = samples.shape[0]
    rank = (samples < truth.unsqueeze(0)).sum(dim=0).double()
    u = (rank + 0.5) / (n + 1)
    return [float(((u - 0.5).abs() <= level / 2).double().mean()) for level in levels]


def gaussian_coverage(mean, std, truth, levels) -> list[float]:
    """Coverage of central intervals of independent Gaussian marginals."""
    z = ((truth - mean) / std).abs()
    normal = torch.distributions.Normal(0.0, 1.0)
    return [
        float((z <= normal.icdf(torch.tensor(0.5 + level / 2))).double().mean()) for level in levels
    ]


def figure(path, truth, image, wiener, samples, title="") -> None:
    """Truth / data / Wiener filter / posterior mean / two samples / std / residual."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, std = samples.mean(0), samples.std(0)
    top = float(truth.max())
    panels = [
        ("true source", truth, "magma", (0, top)),
        ("lensed data", image, "magma", (None, None)),
        ("Wiener filter", wiener, "magma", (0, top)),
        ("posterior mean", mean, "magma", (0, top)),
        ("posterior sample 1", samples[0], "magma", (0, top)),
        ("posterior sample 2", samples[1], "magma", (0, top)),
        ("posterior std", std, "viridis", (0, None)),
        ("mean - truth", mean - truth, "RdBu_r", (-0.3 * top, 0.3 * top)),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    for ax, (name, img, cmap, (lo, hi)) in zip(axes.flat, panels, strict=True):
        im = ax.imshow(np.asarray(img), origin="lower", cmap=cmap, vmin=lo, vmax=hi)
        if name in ("posterior std", "mean - truth", "lensed data"):
            fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[list[str]]) -> str:
    """A markdown table with the header of the printed summary."""
    header = ["estimate", "MSE (1e-3)", "68% cov", "95% cov", "mean std (1e-2)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="lensing_source.png", help="figure path")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (< 60 s, for tests)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the lens system")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    start = time.perf_counter()

    train = training_sources(cfg["n_train"])
    prior = train_prior(train, cfg["max_epochs"], cfg["channels"], cfg["batch_size"])
    fit_s = time.perf_counter() - start
    lens, a, truth, y, noise = make_problem(10_000 + args.seed, noise_std=NOISE_STD)

    mu, cov = sample_moments(train)
    wf_mean, wf_cov = gaussian_posterior(y, a, noise, cov, mu)
    wf_std = wf_cov.diagonal().clamp_min(0).sqrt()

    post = sbiflow.DiffusionPosterior(
        prior,
        sbiflow.LinearGaussianLikelihood(a, noise),
        steps=cfg["steps"],
        cg_iterations=cfg["cg_iterations"],
        progress=False,
    )
    t0 = time.perf_counter()
    samples = post.sample(cfg["samples"], y=y, seed=args.seed).double()  # (S, 32, 32)
    sample_s = time.perf_counter() - t0

    flat_truth = truth.reshape(-1)
    flat = samples.reshape(len(samples), -1)
    levels = (0.68, 0.95)
    cov_wf = gaussian_coverage(wf_mean, wf_std.clamp_min(1e-12), flat_truth, levels)
    cov_dp = rank_coverage(flat, flat_truth, levels)
    rows = [
        [
            "Wiener filter (training covariance)",
            f"{1e3 * float(((wf_mean - flat_truth) ** 2).mean()):.3f}",
            f"{cov_wf[0]:.2f}",
            f"{cov_wf[1]:.2f}",
            f"{1e2 * float(wf_std.mean()):.2f}",
        ],
        [
            "diffusion posterior mean",
            f"{1e3 * float(((flat.mean(0) - flat_truth) ** 2).mean()):.3f}",
            f"{cov_dp[0]:.2f}",
            f"{cov_dp[1]:.2f}",
            f"{1e2 * float(flat.std(0).mean()):.2f}",
        ],
    ]
    title = (
        f'SIE theta_E = {lens.theta_e:.2f}", q = {lens.q:.2f}; noise {noise:g}; '
        f"{cfg['samples']} samples, MMPS cg {cfg['cg_iterations']}, {cfg['steps']} steps"
    )
    image = y.reshape(48, 48)
    figure(args.out, truth, image, wf_mean.reshape(truth.shape), samples, title)
    quick = " (quick)" if args.quick else ""
    print(f"# lensed source reconstruction{quick}: lens seed {args.seed}")
    print(
        f"# prior: {cfg['n_train']} sources, {cfg['max_epochs']} epochs, U-Net "
        f"{cfg['channels']}: {fit_s:.1f} s; {cfg['samples']} samples ({cfg['steps']} steps, "
        f"cg {cfg['cg_iterations']}): {sample_s:.1f} s"
    )
    print(table(rows))
    print(f"# figure: {args.out}; total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

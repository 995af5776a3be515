"""Draw the result figures of the physics simulator pages (docs/{collider,dwarf,...}.md).

Each figure shows a reference observation next to what its exact likelihood says about it:
the reference posterior of the simulator (emcee on ``log_likelihood``), or for lensing the
closed-form Gaussian posterior mean (the Wiener filter). Small budgets, fixed seeds; about
a minute on one core:

    taskset -c 1 python docs/figures/make_figures.py            # all four
    python docs/figures/make_figures.py collider dwarf           # some
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import simulators  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
N_POSTERIOR = 4000  # reference posterior samples per figure


def _scatter(ax, samples, i, j, truth, names):
    """A 2-D marginal of posterior samples with the true parameters."""
    ax.scatter(samples[:, i], samples[:, j], s=1, alpha=0.25, color="tab:blue", rasterized=True)
    ax.axvline(truth[i], color="k", lw=0.8)
    ax.axhline(truth[j], color="k", lw=0.8)
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])


def collider(path: str) -> None:
    """Observation 1 with its expected counts, and the exact posterior of (m_X, mu)."""
    sim = simulators.get("collider")
    x_o, truth = sim.observation(1), sim.true_parameters(1)
    edges = sim.bin_edges
    centres = np.sqrt(edges[1:] * edges[:-1])
    nu = sim.expected_counts(truth[None])[0].numpy()
    nu_bkg = sim.expected_counts(torch.cat([truth[:1], torch.zeros(1), truth[2:]])[None])[0]
    post = sim.reference_posterior(x_o, N_POSTERIOR, seed=0).numpy()

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    ax = axes[0]
    ax.errorbar(centres, x_o.numpy(), yerr=np.sqrt(x_o.numpy()), fmt="k.", label="observation 1")
    ax.stairs(nu, edges, color="tab:red", label=r"$\nu_k(\theta_{true})$")
    ax.stairs(nu_bkg.numpy(), edges, color="tab:gray", ls="--", label=r"background ($\mu=0$)")
    ax.set_yscale("log")
    ax.set_xlabel(r"reconstructed mass $m_d$ [TeV]")
    ax.set_ylabel("events per bin")
    ax.legend(fontsize=8)
    names = [r"$m_X$ [TeV]", r"$\mu$", r"$p_2$", r"$s_\sigma$"]
    _scatter(axes[1], post, 0, 1, truth.numpy(), names)
    _scatter(axes[2], post, 2, 3, truth.numpy(), names)
    axes[1].set_title("exact-likelihood posterior", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dwarf(path: str) -> None:
    """Observation 1's stars, the posterior band of sigma_los(R), and gamma against beta."""
    sim = simulators.get("dwarf")
    x_o, truth = sim.observation(1), sim.true_parameters(1)
    stars = x_o[x_o[:, 3] > 0].numpy()
    post = sim.reference_posterior(x_o, N_POSTERIOR, seed=0).numpy()
    R = np.geomspace(0.02, 2.5, 60)
    draws = sim.sigma_los(post[:: max(1, len(post) // 500)], R)  # (500, 60)
    band = np.quantile(draws, [0.05, 0.5, 0.95], axis=0)
    sigma_true = sim.sigma_los(truth[None].numpy(), R)[0]

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    ax = axes[0]
    ax.errorbar(stars[:, 0], stars[:, 1], yerr=stars[:, 2], fmt="k.", ms=3, lw=0.5)
    ax.plot(R, 2 * sigma_true, color="tab:red", label=r"$\pm 2\sigma_{los}(R;\theta_{true})$")
    ax.plot(R, -2 * sigma_true, color="tab:red")
    ax.set_xscale("log")
    ax.set_xlabel("projected radius R [kpc]")
    ax.set_ylabel("line-of-sight velocity v [km/s]")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.fill_between(R, band[0], band[2], color="tab:blue", alpha=0.3, label="posterior 90%")
    ax.plot(R, band[1], color="tab:blue", label="posterior median")
    ax.plot(R, sigma_true, color="k", ls="--", label="truth")
    ax.set_xscale("log")
    ax.set_xlabel("projected radius R [kpc]")
    ax.set_ylabel(r"$\sigma_{los}$ [km/s]")
    ax.legend(fontsize=8)
    names = [r"$\log_{10}\rho_s$", r"$\log_{10} r_s$", r"$\gamma$", r"$\beta$"]
    _scatter(axes[2], post, 2, 3, truth.numpy(), names)
    axes[2].set_title("exact-likelihood posterior", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def galaxy_field(path: str) -> None:
    """The Gaussian variant's observation 1, its power spectrum, and the exact posterior."""
    sim = simulators.get("galaxy_field", exact=True)
    x_o, truth = sim.observation(1), sim.true_parameters(1)
    post = sim.reference_posterior(x_o, N_POSTERIOR, seed=0).numpy()
    n = x_o.shape[-1]
    power = np.abs(np.fft.fft2(x_o.numpy() - sim.mean_count)) ** 2 / n**2
    kf = 2 * np.pi / sim.box_size
    kx = np.fft.fftfreq(n, 1.0 / n) * kf
    kk = np.hypot(*np.meshgrid(kx, kx, indexing="ij"))
    bins = np.linspace(kf, kk.max(), 12)
    which = np.digitize(kk.ravel(), bins)
    centres, measured = [], []
    for b in range(1, len(bins)):
        sel = which == b
        if sel.any():
            centres.append(kk.ravel()[sel].mean())
            measured.append(power.ravel()[sel].mean())
    k = np.geomspace(kf, kk.max(), 100)
    # Expected |Y_k|^2 / N^2: n̄² b² p_k + n̄, with p_k = P(k) / (depth ℓ²).
    cell = sim.box_size / n
    p_k = sim.power_spectrum(truth[None], torch.as_tensor(k))[0].numpy() / (sim.depth * cell**2)
    expected = sim.mean_count**2 * sim.bias**2 * p_k + sim.mean_count

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    image = axes[0].imshow(x_o.numpy(), origin="lower", cmap="viridis")
    fig.colorbar(image, ax=axes[0], label="galaxies per cell")
    axes[0].set_title("observation 1 (Gaussian variant)", fontsize=9)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    ax = axes[1]
    ax.loglog(centres, measured, "k.", label="observation 1")
    ax.loglog(k, expected, color="tab:red", label=r"expected at $\theta_{true}$")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(r"$k$ [h/Mpc]")
    ax.set_ylabel(r"$|Y_k|^2 / N^2$")
    ax.legend(fontsize=8)
    _scatter(axes[2], post, 0, 1, truth.numpy(), [r"$\Omega_m$", r"$\sigma_8$"])
    axes[2].set_title("exact-likelihood posterior", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lensing(path: str) -> None:
    """Source, lensed noisy image, and the Wiener filter (Gaussian posterior mean)."""
    from sbiflow.diffusion.gaussian import wiener_filter
    from simulators.lensing import make_problem, source_galaxies

    problem = make_problem(np.random.default_rng(0))
    train = torch.as_tensor(source_galaxies(4000, rng=1), dtype=torch.float64).flatten(1)
    mean, cov = train.mean(0), torch.cov(train.T) + 1e-6 * torch.eye(train.shape[1])
    z_wf = wiener_filter(torch.as_tensor(problem.y), problem.A, problem.noise_std, cov, mean)
    z_wf = z_wf.reshape(problem.source.shape).numpy()
    source = np.asarray(problem.source)
    vmax = source.max()

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    panels = [
        (source, "true source z (32 × 32, ±1″)", (0, vmax)),
        (np.asarray(problem.image), "observed image y = A z + n (48 × 48, ±2″)", None),
        (z_wf, "Wiener filter (Gaussian-prior posterior mean)", (0, vmax)),
    ]
    for ax, (image, title, limits) in zip(axes, panels, strict=True):
        kw = {} if limits is None else {"vmin": limits[0], "vmax": limits[1]}
        ax.imshow(image, origin="lower", cmap="magma", **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FIGURES = {"collider": collider, "dwarf": dwarf, "galaxy_field": galaxy_field, "lensing": lensing}


def main() -> None:
    """Draw the figures named on the command line (default: all) into this folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"any of {list(FIGURES)} (default: all)")
    names = parser.parse_args().names or list(FIGURES)
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; the figures are {list(FIGURES)}")
    for name in names:
        start = time.process_time()
        FIGURES[name](os.path.join(HERE, f"{name}.png"))
        print(f"{name}.png: {time.process_time() - start:.1f} s of CPU")


if __name__ == "__main__":
    main()

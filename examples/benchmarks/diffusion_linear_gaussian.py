"""Diffusion posterior on linear-Gaussian inverse problems with closed-form posteriors (issue 11).

Suite: a stationary Gaussian field on a periodic grid (D = 8×8 = 64 and 32×32 = 1,024,
squared-exponential covariance of 1.5 pixels, unit marginal variance), observed through
A = a random 70% mask of the field blurred by a Gaussian PSF (σ = 1 pixel), or a dense
random A (M = D/2); noise std 0.1 and 0.01. Per problem: posterior-mean RMS error in
posterior stds, per-dimension std ratio, and the truth's 90% interval coverage.

Parts (``--parts``):
  exact    every configuration with the exact (Gaussian) prior score.
  learned  the configurations at --learned-sides (default D = 64) with a ScorePrior trained
           on 20,000 prior draws (an MLP at D = 64, a periodic U-Net on 32×32 maps).
  azula    side by side with azula's MMPS and DPS (same problems, same number of denoiser
           calls), and the time per denoiser call with one learned network for both.
  nle      a learned likelihood (NLE, 10⁴ simulations) with the exact prior score on 10 iid
           trials of gaussian_linear: C2ST against the analytic posterior.

Run: taskset -c 0 python -u examples/benchmarks/diffusion_linear_gaussian.py \
        --out docs/results/diffusion_linear_gaussian.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json  # noqa: E402

import sbiflow  # noqa: E402
from sbiflow.diffusion import (  # noqa: E402
    DiffusionPosterior,
    FourierCovariance,
    GaussianScorePrior,
    LinearGaussianLikelihood,
    gaussian_posterior,
)

Z90 = 1.6448536269514722


def field_covariance(side: int, length: float = 1.5, nugget: float = 1e-3):
    """Periodic squared-exponential covariance: dense (D, D) and its power per rfft2 mode.

    Built from a positive spectrum (a Gaussian in wavenumber), so it is positive definite
    on the torus; unit marginal variance, ``nugget`` of it white.
    """
    fy = torch.fft.fftfreq(side, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(side, dtype=torch.float64)[None, :]
    spectrum = torch.exp(-0.5 * (2 * math.pi * length) ** 2 * (fx**2 + fy**2))
    row = torch.fft.irfft2(spectrum, s=(side, side))
    row = (1 - nugget) * row / row[0, 0]
    row[0, 0] += nugget
    power = torch.fft.rfft2(row).real
    iy, ix = (
        torch.arange(side * side).div(side, rounding_mode="floor"),
        torch.arange(side * side) % side,
    )
    dense = row[(iy[None, :] - iy[:, None]) % side, (ix[None, :] - ix[:, None]) % side]
    return dense, power


def operator(kind: str, side: int, g: torch.Generator) -> torch.Tensor:
    """The (M, D) forward matrix of one problem."""
    dim = side * side
    if kind == "dense":
        return torch.randn(dim // 2, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    d = torch.arange(side, dtype=torch.float64)
    d = torch.minimum(d, side - d)
    kernel = torch.exp(-0.5 * (d[:, None] ** 2 + d[None, :] ** 2))
    kernel = torch.where(kernel > 1e-6, kernel, 0.0)  # a PSF of finite support (radius 5)
    kernel = kernel / kernel.sum()
    blur = torch.fft.irfft2(
        torch.fft.rfft2(torch.eye(dim, dtype=torch.float64).reshape(dim, side, side))
        * torch.fft.rfft2(kernel),
        s=(side, side),
    ).reshape(dim, dim)  # row i: blurred unit impulse i (symmetric)
    keep = torch.randperm(dim, generator=g)[: int(0.7 * dim)].sort().values
    return torch.where(blur.T[keep].abs() > 1e-12, blur.T[keep], 0.0).to_sparse()


def problems(side: int, kind: str, noise: float, count: int, seed: int):
    cov, power = field_covariance(side)
    chol = torch.linalg.cholesky(cov)
    g = torch.Generator().manual_seed(seed)
    for _ in range(count):
        a = operator(kind, side, g)
        z0 = chol @ torch.randn(side * side, generator=g, dtype=torch.float64)
        y = a @ z0 + noise * torch.randn(a.shape[0], generator=g, dtype=torch.float64)
        mean, post_cov = gaussian_posterior(y, a, noise, cov)
        yield {"A": a, "y": y, "z0": z0, "mean": mean, "std": post_cov.diagonal().sqrt()}


def score(samples: torch.Tensor, p: dict) -> dict:
    s = samples.reshape(samples.shape[0], -1).double()
    mu, sd = s.mean(0), s.std(0)
    ratio = sd / p["std"]
    inside = ((p["z0"] - mu).abs() <= Z90 * sd).double()
    w2 = (((mu - p["mean"]) ** 2 + (sd - p["std"]) ** 2).mean() / (p["std"] ** 2).mean()).sqrt()
    return {
        "mean_rms": float(((mu - p["mean"]) / p["std"]).pow(2).mean().sqrt()),
        "std_ok": float(((ratio > 0.9) & (ratio < 1.1)).double().mean()),
        "std_ok_20": float(((ratio > 0.8) & (ratio < 1.2)).double().mean()),
        "std_ratio_median": float(ratio.median()),
        "coverage90": float(inside.mean()),
        "w2_rel": float(w2),
    }


def aggregate(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def run_exact(args) -> list[dict]:
    out = []
    for side in args.sides:
        _, power = field_covariance(side)
        prior = GaussianScorePrior(
            torch.zeros(side, side),
            FourierCovariance((side, side), power),
            scale=torch.ones(side, side),
        )
        n = args.samples if side <= 8 else args.samples_large
        for kind in ("mask_blur", "dense"):
            for noise in (0.1, 0.01):
                rows, t0 = [], time.perf_counter()
                for i, p in enumerate(problems(side, kind, noise, args.problems, seed=side)):
                    lik = LinearGaussianLikelihood(p["A"], noise)
                    post = DiffusionPosterior(
                        prior, lik, cg_iterations=args.cg, cg_tol=1e-5, progress=False
                    )
                    rows.append(score(post.sample(n, y=p["y"], seed=i), p))
                res = {"D": side * side, "A": kind, "noise": noise, "prior": "exact"}
                res.update(aggregate(rows), seconds=time.perf_counter() - t0)
                print(res, flush=True)
                out.append(res)
    return out


def learned_prior(side: int, args) -> sbiflow.ScorePrior:
    """A ScorePrior fitted to 20,000 prior draws: an MLP on D = 64 vectors, a U-Net on maps.

    The 32×32 field is periodic, so its prior is ``ScorePrior((32, 32), periodic=True)``
    (circular padding, a Fourier baseline fitted to the draws).
    """
    cache = Path(args.prior_cache) if args.prior_cache and side > 8 else None
    if cache is not None and cache.exists():
        return sbiflow.load(cache)
    cov, _ = field_covariance(side)
    chol = torch.linalg.cholesky(cov)
    g = torch.Generator().manual_seed(99)
    draws = (chol @ torch.randn(side * side, 20_000, generator=g, dtype=torch.float64)).T
    torch.manual_seed(0)
    if side <= 8:
        return sbiflow.ScorePrior((side * side,)).fit(draws.float(), progress=False)
    prior = sbiflow.ScorePrior((side, side), periodic=True, channels=tuple(args.unet_channels))
    prior.fit(draws.float().reshape(-1, side, side), max_epochs=args.unet_epochs, progress=False)
    if cache is not None:
        sbiflow.save(prior, cache)
    return prior


def run_learned(args) -> list[dict]:
    out = []
    for side in args.learned_sides:
        t0 = time.perf_counter()
        prior = learned_prior(side, args)
        fit_s = time.perf_counter() - t0
        best = prior.history.best_epoch if prior.history is not None else "(loaded)"
        print(f"learned prior D = {side * side}: fit {fit_s:.0f} s, best epoch {best}", flush=True)
        n = args.samples if side <= 8 else args.samples_large
        for kind in args.kinds:
            for noise in args.noises:
                rows, t0 = [], time.perf_counter()
                for i, p in enumerate(problems(side, kind, noise, args.problems, seed=side)):
                    lik = LinearGaussianLikelihood(p["A"], noise)
                    post = DiffusionPosterior(
                        prior, lik, cg_iterations=args.cg_learned, progress=False
                    )
                    rows.append(score(post.sample(n, y=p["y"], seed=i), p))
                res = {"D": side * side, "A": kind, "noise": noise, "prior": "learned"}
                res.update(aggregate(rows), seconds=time.perf_counter() - t0, fit_seconds=fit_s)
                print(res, flush=True)
                out.append(res)
    return out


def run_azula(args) -> dict:
    from azula.denoise import Denoiser, DiracPosterior, GaussianDenoiser
    from azula.guidance import DPSSampler, MMPSDenoiser
    from azula.linalg.covariance import FullCovariance, IsotropicCovariance
    from azula.noise import VPSchedule
    from azula.sample import DDPMSampler

    side = 8
    cov, power = field_covariance(side)
    evals, evecs = torch.linalg.eigh(cov)
    ours_prior = GaussianScorePrior(
        torch.zeros(side, side),
        FourierCovariance((side, side), power),
        scale=torch.ones(side, side),
    )
    steps = 32  # ours: Heun ODE, 2 denoiser calls per step + 1
    nfe = 2 * steps + 1
    schedule = VPSchedule()
    gauss = GaussianDenoiser(
        torch.zeros(side * side, dtype=torch.float64), FullCovariance(evecs, evals), schedule
    )
    results = {}
    for kind in ("mask_blur", "dense"):
        for noise in (0.1, 0.01):
            acc = {"sbiflow_mmps": [], "azula_mmps": [], "azula_dps": []}
            for i, p in enumerate(problems(side, kind, noise, args.azula_problems, seed=side)):
                a = p["A"].to_dense()
                forward = a.T.clone()

                def apply_a(x, forward=forward):
                    return x @ forward

                lik = LinearGaussianLikelihood(p["A"], noise)
                post = DiffusionPosterior(
                    ours_prior, lik, steps=steps, cg_iterations=args.cg, cg_tol=1e-5, progress=False
                )
                acc["sbiflow_mmps"].append(score(post.sample(args.samples, y=p["y"], seed=i), p))
                torch.manual_seed(i)
                mmps = MMPSDenoiser(
                    gauss,
                    p["y"],
                    apply_a,
                    IsotropicCovariance(torch.tensor(noise**2, dtype=torch.float64)),
                    solver="cg",
                    iterations=args.cg,
                )
                sampler = DDPMSampler(mmps, steps=nfe, silent=True)
                x1 = sampler.init((args.samples, side * side), dtype=torch.float64)
                acc["azula_mmps"].append(score(sampler(x1), p))
                dps = DPSSampler(gauss, p["y"], apply_a, zeta=1.0, steps=nfe, silent=True)
                x1 = dps.init((args.samples, side * side), dtype=torch.float64)
                acc["azula_dps"].append(score(dps(x1), p))
            key = f"{kind}/noise={noise}"
            results[key] = {k: aggregate(v) for k, v in acc.items()}
            print(key, results[key], flush=True)
    # Time per denoiser call with one learned network for both (the D = 64 MLP prior).
    cov_t = cov
    chol = torch.linalg.cholesky(cov_t)
    g = torch.Generator().manual_seed(7)
    draws = (chol @ torch.randn(side * side, 5000, generator=g, dtype=torch.float64)).T.float()
    torch.manual_seed(0)
    prior = sbiflow.ScorePrior((side * side,)).fit(draws, max_epochs=3, progress=False)

    class Wrapped(Denoiser):
        def __init__(self) -> None:
            super().__init__()
            self.schedule = _OurSchedule(prior.sde)

        def forward(self, x_t, t, **kwargs):
            return DiracPosterior(mean=prior.denoise(x_t, t))

    p = next(problems(side, "mask_blur", 0.1, 1, seed=1))
    a = p["A"].to_dense().float()
    y = p["y"].float()
    timing = {}
    for iters in (1, 4):
        lik = LinearGaussianLikelihood(a, 0.1)
        post = DiffusionPosterior(
            prior, lik, steps=steps, cg_iterations=iters, cg_tol=0.0, progress=False
        )
        t0 = time.perf_counter()
        post.sample(args.samples, y=y, seed=0)
        ours = (time.perf_counter() - t0) / nfe
        mm = MMPSDenoiser(
            Wrapped(),
            y,
            lambda x: x @ a.T,
            IsotropicCovariance(torch.tensor(0.01)),
            solver="cg",
            iterations=iters,
        )
        sampler = DDPMSampler(mm, steps=nfe, stop=1e-5, silent=True)
        x1 = sampler.init((args.samples, side * side))
        t0 = time.perf_counter()
        sampler(x1)
        theirs = (time.perf_counter() - t0) / nfe
        timing[f"cg={iters}"] = {
            "sbiflow_ms": 1e3 * ours,
            "azula_ms": 1e3 * theirs,
            "ratio": ours / theirs,
        }
        print("time per denoiser call", iters, timing[f"cg={iters}"], flush=True)
    return {"accuracy": results, "time_per_call": timing, "nfe": nfe}


class _OurSchedule:
    """sbiflow's VP SDE as an azula schedule (alpha = m_t, sigma = s_t)."""

    def __init__(self, sde) -> None:
        self.sde = sde

    def __call__(self, t):
        return self.sde.mean_scale(t), self.sde.std(t)


def run_nle(args) -> dict:
    import simulators
    from sbiflow.diagnostics import c2st

    sim = simulators.get("gaussian_linear")
    theta, x = sbiflow.simulate(sim, 10_000, seed=0, progress=False)
    torch.manual_seed(0)
    nle = sbiflow.NLE(sim.prior).fit(theta, x, progress=False)
    out = []
    for obs in range(3):
        g = torch.Generator().manual_seed(100 + obs)
        theta0 = sim.prior.sample((1,))
        trials = theta0 + math.sqrt(sim.noise_var) * torch.randn(10, 10, generator=g)
        # Exact posterior: prior N(0, 0.1 I), 10 trials with noise 0.1 I.
        precision = 1 / sim.prior_var + 10 / sim.noise_var
        mean = (trials.sum(0) / sim.noise_var) / precision
        reference = mean + torch.randn(10_000, 10, generator=g) / math.sqrt(precision)
        post = DiffusionPosterior(sim.prior, nle, guidance="mmps", progress=False)
        t0 = time.perf_counter()
        samples = post.sample(10_000, y=trials, seed=obs).float()
        seconds = time.perf_counter() - t0
        score_ = c2st(reference, samples)
        out.append({"observation": obs, "c2st": score_, "seconds": seconds})
        print(out[-1], flush=True)
    return {"trials": 10, "runs": out, "c2st_mean": float(np.mean([r["c2st"] for r in out]))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", default=["exact", "learned", "azula", "nle"])
    parser.add_argument("--sides", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--azula-problems", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--samples-large", type=int, default=400)
    parser.add_argument("--cg", type=int, default=64)
    parser.add_argument("--cg-learned", type=int, default=16)
    parser.add_argument("--learned-sides", nargs="+", type=int, default=[8])
    parser.add_argument("--unet-channels", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--unet-epochs", type=int, default=40)
    parser.add_argument(
        "--prior-cache", default=None, help="file: save the 32×32 learned prior, or load it"
    )
    parser.add_argument("--kinds", nargs="+", default=["mask_blur", "dense"])
    parser.add_argument("--noises", nargs="+", type=float, default=[0.1, 0.01])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    payload: dict = {"command": " ".join(sys.argv), "args": vars(args)}
    tables = []
    rows = []
    if "exact" in args.parts:
        payload["exact"] = run_exact(args)
        rows += payload["exact"]
    if "learned" in args.parts:
        payload["learned"] = run_learned(args)
        rows += payload["learned"]
    if rows:
        tables.append(
            markdown_table(
                [
                    "prior",
                    "D",
                    "A",
                    "noise",
                    "mean RMS err (post. std)",
                    "std within 10%",
                    "within 20%",
                    "median std ratio",
                    "90% coverage",
                    "s",
                ],
                [
                    [
                        r["prior"],
                        str(r["D"]),
                        r["A"],
                        str(r["noise"]),
                        f"{r['mean_rms']:.3f}",
                        f"{r['std_ok']:.3f}",
                        f"{r['std_ok_20']:.3f}",
                        f"{r['std_ratio_median']:.3f}",
                        f"{r['coverage90']:.3f}",
                        f"{r['seconds']:.0f}",
                    ]
                    for r in rows
                ],
            )
        )
    if "azula" in args.parts:
        payload["azula"] = run_azula(args)
        acc = payload["azula"]["accuracy"]
        tables.append(
            markdown_table(
                [
                    "case",
                    "W2/σ sbiflow MMPS",
                    "W2/σ azula MMPS",
                    "W2/σ azula DPS",
                    "cov90 sbiflow / azula MMPS / DPS",
                ],
                [
                    [
                        k,
                        f"{v['sbiflow_mmps']['w2_rel']:.3f}",
                        f"{v['azula_mmps']['w2_rel']:.3f}",
                        f"{v['azula_dps']['w2_rel']:.3f}",
                        " / ".join(
                            f"{v[m]['coverage90']:.3f}"
                            for m in ("sbiflow_mmps", "azula_mmps", "azula_dps")
                        ),
                    ]
                    for k, v in acc.items()
                ],
            )
        )
        tables.append(
            markdown_table(
                ["CG iterations", "sbiflow ms/call", "azula ms/call", "ratio"],
                [
                    [k, f"{v['sbiflow_ms']:.2f}", f"{v['azula_ms']:.2f}", f"{v['ratio']:.2f}"]
                    for k, v in payload["azula"]["time_per_call"].items()
                ],
            )
        )
    if "nle" in args.parts:
        payload["nle"] = run_nle(args)
        tables.append(
            markdown_table(
                ["observation", "C2ST", "s"],
                [
                    [str(r["observation"]), f"{r['c2st']:.3f}", f"{r['seconds']:.1f}"]
                    for r in payload["nle"]["runs"]
                ],
            )
        )
    for table in tables:
        print(table, "\n")
    write_json(args.out, payload)


if __name__ == "__main__":
    main()

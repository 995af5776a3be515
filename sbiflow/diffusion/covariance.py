r"""Symmetric positive semi-definite covariances applied through their eigenbasis.

A covariance :math:`C = U \operatorname{diag}(\lambda) U^\top` is used here only through
:math:`U f(\lambda) U^\top r` for a scalar function :math:`f` (the diffused covariance
:math:`m^2 C + \sigma^2 I`, its inverse, its square root), so one interface serves a dense
matrix (:class:`EigenCovariance`, an ``eigh`` once) and a stationary field on a periodic
grid (:class:`FourierCovariance`, diagonal in Fourier space: two FFTs per product, no
``D × D`` matrix at all). Rows are flattened: ``r`` ``(N, D)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["COVARIANCES", "Covariance", "EigenCovariance", "FourierCovariance", "fit_covariance"]

COVARIANCES = ("full", "fourier", "diagonal")
#: Smallest eigenvalue kept, relative to the largest (a sample covariance is often singular).
_MIN_RELATIVE_EIGENVALUE = 1e-6


class Covariance(nn.Module):
    r"""A covariance with eigenvalues ``evals`` applied as :math:`U f(\\lambda) U^\top r`."""

    kind = "base"
    evals: Tensor

    @property
    def dim(self) -> int:
        """D, the size of the rows it acts on."""
        raise NotImplementedError

    def apply(self, r: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        r""":math:`U f(\lambda) U^\top r` for rows ``r`` ``(N, D)``."""
        raise NotImplementedError

    def matmul(self, r: Tensor) -> Tensor:
        r""":math:`C r` for rows ``r`` ``(N, D)``."""
        return self.apply(r, lambda lam: lam)

    def sample(self, n: int, scale: Callable[[Tensor], Tensor], dtype: torch.dtype) -> Tensor:
        r"""Draws of :math:`\mathcal{N}(0, U\,\mathrm{scale}(\lambda)^2 U^\top)`, ``(n, D)``."""
        white = torch.randn(n, self.dim, dtype=dtype, device=self.evals.device)
        return self.apply_half(white, scale)

    def apply_half(self, white: Tensor, scale: Callable[[Tensor], Tensor]) -> Tensor:
        r""":math:`U\,\mathrm{scale}(\lambda)\,\xi` for white rows :math:`\xi` in the eigenbasis."""
        raise NotImplementedError


class EigenCovariance(Covariance):
    """A dense ``(D, D)`` covariance, diagonalized once.

    Args:
        matrix: The covariance ``(D, D)`` (symmetrized; eigenvalues clipped at 1e-6 of the
            largest), or ``None`` with ``dim`` to make room for loading.
        dim: D, when ``matrix`` is ``None``.
    """

    kind = "full"

    def __init__(self, matrix: Tensor | None = None, dim: int | None = None) -> None:
        super().__init__()
        d = matrix.shape[0] if matrix is not None else int(dim)  # type: ignore[arg-type]
        self.register_buffer("evecs", torch.eye(d, dtype=torch.float64))
        self.register_buffer("evals", torch.ones(d, dtype=torch.float64))
        if matrix is not None:
            matrix = matrix.to(torch.float64)
            evals, evecs = torch.linalg.eigh(0.5 * (matrix + matrix.T))
            floor = _MIN_RELATIVE_EIGENVALUE * evals.max().clamp_min(1e-30)
            self.evecs.copy_(evecs)
            self.evals.copy_(evals.clamp_min(floor))

    @property
    def dim(self) -> int:  # noqa: D102
        return self.evals.numel()

    def apply(self, r: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:  # noqa: D102
        u = self.evecs.to(r.dtype)
        return ((r @ u) * fn(self.evals).to(r.dtype)) @ u.T

    def apply_half(self, white: Tensor, scale: Callable[[Tensor], Tensor]) -> Tensor:  # noqa: D102
        return (white * scale(self.evals).to(white.dtype)) @ self.evecs.to(white.dtype).T


class FourierCovariance(Covariance):
    r"""Stationary covariance on a periodic ``(H, W)`` grid: :math:`F^{-1} \mathrm{diag}(P) F`.

    ``P`` is the power per ``rfft2`` mode, :math:`P(k) = \langle |\tilde r(k)|^2 \rangle / (HW)`
    (torch's unnormalized forward FFT), i.e. the Fourier transform of the autocovariance.

    Args:
        shape: The grid ``(H, W)``.
        power: ``(H, W // 2 + 1)`` power per mode (``None``: ones, to be loaded).
    """

    kind = "fourier"

    def __init__(self, shape: tuple[int, int], power: Tensor | None = None) -> None:
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        modes = (self.shape[0], self.shape[1] // 2 + 1)
        self.register_buffer("evals", torch.ones(modes, dtype=torch.float64))
        if power is not None:
            self.evals.copy_(
                power.to(torch.float64).clamp_min(_MIN_RELATIVE_EIGENVALUE * power.max())
            )

    @property
    def dim(self) -> int:  # noqa: D102
        return self.shape[0] * self.shape[1]

    def apply(self, r: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:  # noqa: D102
        maps = r.reshape(-1, *self.shape)
        spec = torch.fft.rfft2(maps) * fn(self.evals).to(r.dtype)
        return torch.fft.irfft2(spec, s=self.shape).reshape(r.shape)

    def apply_half(self, white: Tensor, scale: Callable[[Tensor], Tensor]) -> Tensor:  # noqa: D102
        # White noise in pixel space is white in Fourier space too (the FFT is unitary up to
        # sqrt(HW), which the definition of P absorbs): filter it by scale(P).
        return self.apply(white, scale)


def fit_covariance(kind: str, data: Tensor, shape: tuple[int, ...]) -> Covariance:
    """Estimate a covariance of rows ``data`` ``(N, D)`` (mean already removed).

    Args:
        kind: ``"full"`` (sample covariance), ``"diagonal"`` (variances only) or
            ``"fourier"`` (stationary: mean power per Fourier mode; ``shape`` must be a map).
        data: Centred rows ``(N, D)``.
        shape: The shape of one row before flattening.
    """
    data = data.to(torch.float64)
    n = max(1, data.shape[0] - 1)
    if kind == "full":
        return EigenCovariance(data.T @ data / n)
    if kind == "diagonal":
        return EigenCovariance(torch.diag((data**2).sum(dim=0) / n))
    if kind == "fourier":
        if len(shape) != 2:
            raise ValueError(f"A Fourier covariance needs (H, W) maps, got shape {shape}.")
        spec = torch.fft.rfft2(data.reshape(-1, *shape))
        power = (spec.abs() ** 2).sum(dim=0) / (n * shape[0] * shape[1])
        return FourierCovariance((shape[0], shape[1]), power)
    raise ValueError(f"Unknown covariance {kind!r}; choose one of {COVARIANCES}.")

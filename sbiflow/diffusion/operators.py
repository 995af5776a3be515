r"""Linear forward operators :math:`z \mapsto A z` and Gaussian noise, for :math:`y = A z + n`.

Everything acts on flattened rows: ``z`` ``(N, D)`` and ``y`` ``(N, M)``. A dense or sparse
``(M, D)`` matrix, or a function with (optionally) its adjoint, becomes a
:class:`LinearOperator`; a noise given as a scalar std, an ``(M,)`` std or an ``(M, M)``
covariance becomes a :class:`GaussianNoise`. Both are in the units of ``y`` and ``z``: no
rescaling happens anywhere.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["GaussianNoise", "LinearOperator", "as_operator"]


class LinearOperator:
    r"""A linear map :math:`A: \mathbb{R}^D \to \mathbb{R}^M` with its adjoint :math:`A^\top`.

    Args:
        forward: ``z (N, D) -> (N, M)``, linear in z.
        in_features: D.
        out_features: M.
        adjoint: ``y (N, M) -> (N, D)``; by default the vector-Jacobian product of
            ``forward`` (exact for a linear map; one extra backward pass per call).
        matrix: The dense or sparse ``(M, D)`` matrix, when there is one.
    """

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        in_features: int,
        out_features: int,
        adjoint: Callable[[Tensor], Tensor] | None = None,
        matrix: Tensor | None = None,
    ) -> None:
        self._forward, self._adjoint = forward, adjoint
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.matrix = matrix

    def __call__(self, z: Tensor) -> Tensor:
        """:math:`A z` for rows ``z`` ``(N, D)`` → ``(N, M)``."""
        return self._forward(z)

    def T(self, y: Tensor) -> Tensor:  # noqa: N802 (the transpose, as in linear algebra)
        r""":math:`A^\top y` for rows ``y`` ``(N, M)`` → ``(N, D)``."""
        if self._adjoint is not None:
            return self._adjoint(y)
        with torch.enable_grad():
            z = y.new_zeros(y.shape[0], self.in_features, requires_grad=True)
            (out,) = torch.autograd.grad(self._forward(z), z, y)
        return out

    def dense(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The ``(M, D)`` matrix as a dense tensor (from the rows of :math:`A^T` if needed)."""
        if self.matrix is not None:
            m = self.matrix.to_dense() if self.matrix.layout != torch.strided else self.matrix
            return m.to(dtype)
        eye = torch.eye(self.out_features, dtype=dtype)
        return self.T(eye)

    def to(self, dtype: torch.dtype) -> LinearOperator:
        """The same operator for inputs of ``dtype`` (a stored matrix is cast)."""
        if self.matrix is None or self.matrix.dtype == dtype:
            return self
        return as_operator(self.matrix.to(dtype))


def as_operator(
    A: Tensor | LinearOperator | Callable[[Tensor], Tensor],  # noqa: N803
    in_features: int | None = None,
    out_features: int | None = None,
) -> LinearOperator:
    """Wrap a dense/sparse ``(M, D)`` matrix or a linear function as a :class:`LinearOperator`.

    Args:
        A: The operator. A function must map rows ``(N, D)`` to ``(N, M)``; give its sizes.
        in_features: D, for a function.
        out_features: M, for a function.

    Raises:
        ValueError: If a matrix is not 2-d, holds NaN/inf, or a function's sizes are missing.
    """
    if isinstance(A, LinearOperator):
        return A
    if isinstance(A, Tensor):
        if A.ndim != 2:
            raise ValueError(
                f"A must be an (M, D) matrix, got shape {tuple(A.shape)}; "
                "flatten the data and image dimensions first."
            )
        values = A.values() if A.layout == torch.sparse_coo else A
        if A.layout in (torch.sparse_csr, torch.sparse_csc):
            values = A.values()
        if not torch.isfinite(values).all():
            raise ValueError("A holds NaN or inf entries.")
        rows, cols = A.shape
        if A.layout == torch.strided:
            dense = A
            return LinearOperator(
                lambda z: (z.to(dense.dtype) @ dense.T).to(z.dtype),
                cols,
                rows,
                adjoint=lambda y: (y.to(dense.dtype) @ dense).to(y.dtype),
                matrix=dense,
            )
        # Sparse: CSR for both products (torch's CSR @ dense is 7x faster than COO here).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support.*")
            coo = A.to_sparse_coo().coalesce() if A.layout != torch.sparse_coo else A.coalesce()
            forward, backward = coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()
        return LinearOperator(
            lambda z: (forward @ z.to(forward.dtype).T).T.to(z.dtype),
            cols,
            rows,
            adjoint=lambda y: (backward @ y.to(backward.dtype).T).T.to(y.dtype),
            matrix=coo,
        )
    if callable(A):
        if in_features is None or out_features is None:
            raise ValueError(
                "A function as A needs its sizes: as_operator(f, in_features=D, out_features=M)."
            )
        adjoint = getattr(A, "T", None)
        return LinearOperator(A, in_features, out_features, adjoint=adjoint)
    raise TypeError(
        f"A must be an (M, D) tensor, a LinearOperator or a function, not {type(A).__name__}."
    )


class GaussianNoise:
    r"""Gaussian noise :math:`n \sim \mathcal{N}(0, \Sigma_y)` on ``y`` ``(M,)``, in y's units.

    Args:
        noise: A scalar standard deviation, an ``(M,)`` vector of standard deviations, or an
            ``(M, M)`` covariance matrix.
        out_features: M.

    Raises:
        ValueError: For a non-positive std, a wrong shape or a covariance that is not
            symmetric positive definite.
    """

    def __init__(self, noise: float | Tensor, out_features: int) -> None:
        noise = torch.as_tensor(noise, dtype=torch.float64)
        m = int(out_features)
        if not torch.isfinite(noise).all():
            raise ValueError("The noise holds NaN or inf.")
        self.chol: Tensor | None = None
        if noise.ndim == 0 or (noise.ndim == 1 and noise.shape[0] == m):
            if (noise <= 0).any():
                raise ValueError(
                    f"Noise standard deviations must be positive, got min {noise.min()}."
                )
            self.var = (noise**2).expand(m).clone()
            self.log_det = float(self.var.log().sum())
        elif noise.shape == (m, m):
            if not torch.allclose(noise, noise.T, rtol=1e-6, atol=1e-12):
                raise ValueError("The noise covariance must be symmetric.")
            chol, info = torch.linalg.cholesky_ex(noise)
            if info:
                raise ValueError("The noise covariance is not positive definite.")
            self.chol, self.var = chol, noise.diagonal().clone()
            self.covariance = noise
            self.log_det = float(2.0 * chol.diagonal().log().sum())
        else:
            raise ValueError(
                f"noise must be a scalar std, an ({m},) std vector or an ({m}, {m}) covariance; "
                f"got shape {tuple(noise.shape)}."
            )
        self.out_features = m

    @property
    def diagonal(self) -> bool:
        """Whether the covariance is diagonal."""
        return self.chol is None

    def cov(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma_y v` for rows ``v`` ``(N, M)``."""
        if self.chol is None:
            return v * self.var.to(v)
        return v @ self.covariance.to(v)

    def solve(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma_y^{-1} v` for rows ``v`` ``(N, M)``."""
        if self.chol is None:
            return v / self.var.to(v)
        return torch.cholesky_solve(v.T.to(self.chol), self.chol).T.to(v)

    def matrix(self) -> Tensor:
        r""":math:`\Sigma_y` as a dense ``(M, M)`` float64 matrix."""
        return torch.diag(self.var) if self.chol is None else self.covariance

    def log_prob(self, residual: Tensor) -> Tensor:
        r""":math:`\log \mathcal{N}(r; 0, \Sigma_y)` for residual rows ``(N, M)`` → ``(N,)``."""
        quad = (residual * self.solve(residual)).sum(dim=-1)
        return -0.5 * (quad + self.log_det + self.out_features * math.log(2.0 * math.pi))

"""Neural posterior estimation: q(θ | x) trained on simulations, restricted to the prior."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from tqdm.auto import tqdm

from sbiflow.embeddings import declared_embedding, default_embedding
from sbiflow.estimators import ConditionalEstimator
from sbiflow.inference.balanced import BalancedLoss, supports_balance
from sbiflow.inference.base import NeuralInference
from sbiflow.inference.calibration import CalibrationCheck, check_calibration
from sbiflow.inference.temperature import TemperatureChoice, capped_grid, choose_temperature
from sbiflow.priors import in_support, validate_theta
from sbiflow.store import valid_rows
from sbiflow.training import threads_for

__all__ = ["NPE", "PriorSupportError"]

#: What ``NPE(calibration=...)`` accepts.
CALIBRATION_MODES = ("auto", "check", "off")


def _worse(new: CalibrationCheck | None, old: CalibrationCheck | None) -> bool:
    """Whether ``new`` is less calibrated than ``old``: its worst shortfall is larger."""
    if new is None or old is None:
        return new is None and old is not None
    return new.shortfall > old.shortfall


#: Below this acceptance rate, sampling warns that mass leaks out of the prior.
LOW_ACCEPTANCE = 0.01
#: Below this rate (after enough proposals), sampling gives up: the posterior is broken.
HOPELESS_ACCEPTANCE = 1e-4


class PriorSupportError(RuntimeError):
    """Almost no posterior samples fall inside the prior's support."""


class NPE(NeuralInference):
    r"""Neural posterior estimation: a conditional density :math:`q(\theta \mid x)`.

    Samples are restricted to the prior's support by rejection; ``log_prob`` is renormalized
    for the mass the estimator puts outside it.

    Calibrated by default (``calibration="auto"``): after ``fit``, the expected coverage of
    the posterior's credible regions is checked on the validation split (stored in
    ``self.calibration``, printed by ``sbiflow run``). A flow (``"nsf"``, ``"maf"``) trained
    on fewer than ``SMALL_BUDGET`` simulations — where single flows are overconfident and
    the validation split is too small to correct them — is trained as a vectorized ensemble
    of ``ENSEMBLE_MEMBERS`` flows with the BNPE balance term (``ENSEMBLE_BALANCE``), whose
    members are then widened by the smallest of ``ENSEMBLE_TEMPERATURES`` that restores
    every level on the validation rows (the same rows give the check stored). A flow
    on more simulations is trained alone and then widened, if its coverage falls below a
    nominal level, by the smallest temperature of its base normal that restores every level
    on one half of the validation rows (``sbiflow.inference.temperature``; no retraining);
    the check stored is made on the other half. The temperature goes no higher than
    ``MAX_TEMPERATURE``: a flow that no temperature up to it brings within
    ``RETRAIN_SHORTFALL`` of every level keeps the best of them and is trained again as
    that ensemble (kept if it is calibrated or checks better). A result
    that is still overconfident raises a
    :class:`~sbiflow.inference.calibration.CalibrationWarning` that says what to do.
    A flow with an embedding module of your own gets the temperature too, but never the
    ensemble (its weights cannot be drawn afresh for the members).
    ``docs/calibration.md`` has the measurements behind these choices.

    Args:
        prior: Any ``torch.distributions.Distribution`` over θ with event shape ``(D,)``.
        estimator: Estimator family, one of ``sbiflow.estimators.ESTIMATORS``.
        embedding_net: Network for x (see :class:`~sbiflow.inference.base.NeuralInference`).
        device: Torch device for training and sampling.
        balance: Weight λ of the BNPE balance term (``sbiflow.inference.balanced``; flows
            and ensembles of flows only); ``0`` trains plain NPE. ``None`` (default): 0 for
            one flow, ``ENSEMBLE_BALANCE`` for the ensemble ``calibration="auto"`` trains.
        calibration: ``"auto"`` (above), ``"check"`` (check and warn, never change the
            estimator) or ``"off"``. The check needs an exact density: it runs for flows and
            ensembles.
        simulator: The simulator the training data come from (optional). With
            ``embedding_net="auto"``, the embedding it declares (its ``embedding_net``
            attribute, e.g. the dwarf's ``"kinematic_set"``) is used instead of a guess from
            the shape of x.
        **estimator_options: Passed to the estimator (e.g. ``hidden_features=64``).

    Example:
        >>> import sbiflow
        >>> prior = sbiflow.BoxUniform(-torch.ones(2), torch.ones(2))
        >>> theta = prior.sample((500,))
        >>> x = theta + 0.1 * torch.randn(500, 2)
        >>> npe = sbiflow.NPE(prior).fit(theta, x, max_epochs=2, progress=False)
        >>> npe.sample(100, x=torch.zeros(2)).shape
        torch.Size([100, 2])

    References:
        Automatic posterior transformation for likelihood-free inference
        (Greenberg et al., 2019), arXiv:1905.07488.
    """

    #: BNPE weight used when ``balance=None``.
    DEFAULT_BALANCE = 0.0
    #: Validation simulations the post-fit calibration check uses at most.
    CALIBRATION_SIMULATIONS = 500
    #: Posterior draws per simulation in that check (HPD levels to 1/128: enough for
    #: coverage at 50 / 68 / 95%, whose binomial error on 500 simulations is ≥ 0.01).
    CALIBRATION_DRAWS = 128
    #: Below this many (valid) simulations, ``calibration="auto"`` trains an ensemble.
    SMALL_BUDGET = 5_000
    #: Members of the ensemble ``calibration="auto"`` trains.
    ENSEMBLE_MEMBERS = 5
    #: BNPE weight of that ensemble (unless ``balance`` is given).
    ENSEMBLE_BALANCE = 100.0
    #: Temperatures tried, in order, for that ensemble: the first whose coverage reaches
    #: every level on the validation rows widens all its members (the smallest shortfall if
    #: none does). On 1,000 test simulations at 10³ the untempered ensemble covered 0.52 /
    #: 0.61 / 0.93 on gaussian_mixture; T = 1.15, the one its 100 validation rows chose,
    #: 0.56 / 0.66 / 0.97 (docs/results/calibration_defaults.md, session 13).
    ENSEMBLE_TEMPERATURES = (1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3)
    #: Validation simulations that choose the temperature of a single flow, at most.
    TEMPERATURE_SIMULATIONS = 1_000
    #: Fewer validation simulations than twice this: no temperature (the check only).
    MIN_TEMPERATURE_SIMULATIONS = 10
    #: A flow whose best temperature still leaves coverage this far below a level (on the
    #: rows that chose it) is trained again as the ensemble (the tolerance issue 14 asks of
    #: the defaults; the warning waits for a shortfall beyond chance).
    RETRAIN_SHORTFALL = 0.03
    #: Nor does a flow get a temperature above this where the ensemble can take over: the
    #: search stops here, and a flow still short of a level by more than
    #: ``RETRAIN_SHORTFALL`` gets the ensemble. One that needs more has its shape, not only
    #: its width, off, and widening it costs accuracy (two_moons at 10⁴: T = 1.25 raised
    #: C2ST from 0.536 to 0.603, where the ensemble keeps 0.548; docs/calibration.md).
    MAX_TEMPERATURE = 1.15

    def __init__(
        self,
        prior: Distribution,
        estimator: str = "nsf",
        embedding_net: nn.Module | str | dict[str, Any] | None = "auto",
        device: str = "cpu",
        *,
        balance: float | None = None,
        calibration: str = "auto",
        simulator: Any = None,
        **estimator_options: Any,
    ) -> None:
        if isinstance(embedding_net, str) and embedding_net == "auto":
            embedding_net = declared_embedding(simulator) or "auto"
        # a user's module: its weights, once trained, cannot be drawn again for an ensemble
        self._user_module = isinstance(embedding_net, nn.Module)
        super().__init__(prior, estimator, embedding_net, device, **estimator_options)
        if calibration not in CALIBRATION_MODES:
            raise ValueError(
                f"calibration must be one of {list(CALIBRATION_MODES)}, got {calibration!r}."
            )
        balanceable = supports_balance(estimator, estimator_options)
        balance_given = balance is not None
        balance = float(self.DEFAULT_BALANCE if balance is None else balance)
        if balance < 0 or not math.isfinite(balance):
            raise ValueError(f"balance must be a finite number >= 0, got {balance}.")
        if balance > 0 and not balanceable:
            raise ValueError(
                f"balance needs an estimator with an exact log density (nsf, maf, or an "
                f"ensemble of them); {estimator!r} has none. Use balance=0."
            )
        self.balance = balance
        self._balance_given = balance_given
        self.calibration_mode = calibration if balanceable else "off"
        self.calibration: CalibrationCheck | None = None
        #: The temperature ``calibration="auto"`` chose after the last fit (None: not tempered).
        self.temperature_choice: TemperatureChoice | None = None
        self._temper = self._temper_ensemble = False
        self._requested = (estimator, dict(estimator_options))

    def _roles(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return theta, x

    def _training_module(self, estimator: ConditionalEstimator) -> nn.Module:
        if self.balance > 0:
            return BalancedLoss(estimator, self.prior, self.balance)
        return estimator

    def fit(
        self,
        theta: Tensor | None = None,
        x: Tensor | None = None,
        *,
        store: str | os.PathLike | None = None,
        seed: int | None = 0,
        progress: bool = True,
        **training_options: Any,
    ) -> NPE:
        """Train on simulations; with ``calibration="auto"``, as an ensemble where needed.

        ``self.calibration`` holds the check of the estimator kept.

        Args:
            theta: Parameters, shape ``(N, D)``.
            x: Simulations, shape ``(N, *x_shape)``.
            store: Instead of ``theta`` and ``x``: a finished simulation store, streamed (as
                in :meth:`NeuralInference.fit`).
            seed: Seed for weights, split and batch order (``None``: fresh randomness).
            progress: Show a progress bar.
            **training_options: Fields of ``sbiflow.training.TrainingConfig``
                (``batch_size``, ``learning_rate``, ``max_epochs``, ...).

        Returns:
            ``self``, trained; ``self.history`` holds the losses.
        """
        kind, options = self._requested
        adaptive = self.calibration_mode == "auto" and kind in ("nsf", "maf")
        # an ensemble needs fresh weights for every member: not for a module of the user's
        ensemble_allowed = adaptive and not self._user_module
        self._use_estimator(kind, options)
        data = {"theta": theta, "x": x, "store": store}
        if store is None and theta is not None and x is not None:
            # the rows training will keep (and the errors it would raise, before any training)
            n_valid = int(self._check_training_data(theta, x, quiet=True)[0].shape[0])
        else:
            n_valid = valid_rows(store) if store is not None else 0
        if ensemble_allowed and n_valid < self.SMALL_BUDGET:
            self._use_ensemble(kind, options)
        self._temper = adaptive and self.estimator_kind == kind
        self._temper_ensemble = ensemble_allowed and self.estimator_kind == "ensemble"
        self.temperature_choice = None
        super().fit(**data, seed=seed, progress=progress, **training_options)
        choice = self.temperature_choice
        tempered = self._temper and choice is not None
        if ensemble_allowed and tempered and self._needs_ensemble(choice):
            if progress:
                coverage = " / ".join(f"{c:.2f}" for c in choice.coverage)
                tqdm.write(
                    f"calibration check: coverage {coverage} at 50 / 68 / 95% on "
                    f"{choice.num_simulations} validation simulations needs a temperature of "
                    f"{choice.temperature:.3g}: training an ensemble of "
                    f"{self.ENSEMBLE_MEMBERS} {kind} flows on the same simulations"
                )
            single = (self.estimator, self.history, self.calibration, self.embedding_net)
            self._use_ensemble(kind, options)
            self._temper = self._temper_ensemble = False
            super().fit(**data, seed=seed, progress=progress, **training_options)
            ensemble = self.calibration
            if not (ensemble is not None and ensemble.calibrated) and _worse(ensemble, single[2]):
                self.estimator, self.history, self.calibration, self.embedding_net = single
                self._use_estimator(kind, options)
                self._cache.clear()
        if self.calibration is not None:
            self.calibration.warn_if_overconfident(stacklevel=3)
        return self

    def _needs_ensemble(self, choice: TemperatureChoice) -> bool:
        """Whether a flow's temperature leaves it short or widens it more than it should."""
        return (
            choice.shortfall > self.RETRAIN_SHORTFALL or choice.temperature > self.MAX_TEMPERATURE
        )

    def _use_estimator(self, kind: str, options: dict[str, Any]) -> None:
        self.estimator_kind, self.estimator_options = kind, dict(options)
        if not self._balance_given:
            self.balance = self.DEFAULT_BALANCE

    def _use_ensemble(self, kind: str, options: dict[str, Any]) -> None:
        self.estimator_kind = "ensemble"
        self.estimator_options = {
            "member": kind,
            "num_members": self.ENSEMBLE_MEMBERS,
            **options,
        }
        if not self._balance_given:
            self.balance = self.ENSEMBLE_BALANCE

    def _after_fit(self, theta: Tensor, x: Tensor, progress: bool) -> None:
        self.calibration = None
        if self.calibration_mode == "off" or theta.shape[0] == 0:
            return
        n = theta.shape[0]
        if self._temper_ensemble and n >= 2 * self.MIN_TEMPERATURE_SIMULATIONS:
            rows = slice(0, self.CALIBRATION_SIMULATIONS)
            self.calibration = self._temper_the_ensemble(theta[rows], x[rows], progress)
            return
        if not self._temper or n < 2 * self.MIN_TEMPERATURE_SIMULATIONS:
            rows = slice(0, self.CALIBRATION_SIMULATIONS)
            self.calibration = self.check_calibration(
                theta[rows],
                x[rows],
                num_samples=self.CALIBRATION_DRAWS,
                source="validation simulations",
                warn=False,
            )
            return
        # one half of the validation rows chooses the temperature, the other checks it
        checked = min(self.CALIBRATION_SIMULATIONS, n // 2)
        tuning = slice(checked, checked + self.TEMPERATURE_SIMULATIONS)
        estimator = self._trained()
        # capped where the ensemble can take over (not for a user's module): a flow that
        # reaches no level up to the cap but comes within RETRAIN_SHORTFALL of each is
        # widened only as far as that
        cap = None if self._user_module else self.MAX_TEMPERATURE
        with threads_for(estimator):
            choice = choose_temperature(
                estimator,
                self.prior,
                theta[tuning].to(self.device),
                x[tuning].to(self.device),
                grid=capped_grid(cap),
                within=None if cap is None else self.RETRAIN_SHORTFALL,
            )
        self.temperature_choice = choice
        estimator.set_temperature(choice.temperature)
        self._cache.clear()
        if progress and choice.temperature > 1.0:
            tqdm.write(
                f"calibration: widened the flow by a temperature of {choice.temperature:.3f}, "
                f"chosen on {choice.num_simulations} validation simulations"
            )
        self.calibration = self.check_calibration(
            theta[:checked],
            x[:checked],
            num_samples=self.CALIBRATION_DRAWS,
            source="validation simulations not used to choose the temperature",
            warn=False,
        )

    def _temper_the_ensemble(self, theta: Tensor, x: Tensor, progress: bool) -> CalibrationCheck:
        """Widen the small-budget ensemble by the first temperature that calibrates it.

        The first of ``ENSEMBLE_TEMPERATURES`` whose coverage reaches every level on the
        validation rows ``theta`` ``(B, D)``, ``x`` ``(B, *x_shape)`` is kept (the one of
        smallest shortfall if none does). At a small budget the validation split is too
        small to halve (100 rows at 10³), so the same rows choose T and give the check
        stored, which says so in its source.

        Returns:
            The calibration check at the temperature kept.
        """
        estimator = self._trained()
        best: tuple[float, CalibrationCheck] | None = None
        for temperature in self.ENSEMBLE_TEMPERATURES:
            estimator.set_temperature(temperature)
            self._cache.clear()
            check = self.check_calibration(
                theta,
                x,
                num_samples=self.CALIBRATION_DRAWS,
                source="validation simulations (the same ones chose the ensemble's temperature)",
                warn=False,
            )
            if best is None or check.shortfall < best[1].shortfall:
                best = (temperature, check)
            if check.shortfall <= 0:
                break
        assert best is not None
        temperature, check = best
        estimator.set_temperature(temperature)
        self._cache.clear()
        self.temperature_choice = TemperatureChoice(
            temperature, check.coverage, check.levels, check.num_simulations, check.shortfall <= 0
        )
        if progress and temperature > 1.0:
            tqdm.write(
                f"calibration: widened the ensemble by a temperature of {temperature:.3g}, "
                f"chosen on {check.num_simulations} validation simulations"
            )
        return check

    @property
    def temperature(self) -> float:
        """The base-normal temperature of the flow, or of every ensemble member (1: as trained)."""
        return float(getattr(self._trained(), "temperature", 1.0))

    def check_calibration(
        self,
        theta: Tensor,
        x: Tensor,
        *,
        num_samples: int = 256,
        source: str = "held-out simulations",
        warn: bool = True,
        seed: int = 0,
    ) -> CalibrationCheck:
        """Expected coverage of the posterior's HPD regions on held-out simulations.

        Args:
            theta: Parameters drawn from the prior, ``(B, D)``, not used in training.
            x: Their simulations, ``(B, *x_shape)``.
            num_samples: Posterior draws per simulation.
            source: Where the pairs come from, for the summary.
            warn: Raise a ``CalibrationWarning`` when coverage is below nominal.
            seed: Seed of the posterior draws.

        Returns:
            The check (levels, coverage, ``calibrated``, ``summary()``).
        """
        estimator = self._trained()
        theta = validate_theta(self.prior, theta)
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == 1:
            x = x.unsqueeze(1)
        if x.shape[0] != theta.shape[0] or tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(
                f"theta ({tuple(theta.shape)}) and x ({tuple(x.shape)}) must be B pairs, x "
                f"shaped (B, *{self.x_shape})."
            )
        with torch.random.fork_rng(), threads_for(estimator):
            torch.manual_seed(seed)
            check = check_calibration(
                estimator, self.prior, theta, x, num_samples=num_samples, source=source
            )
        if warn:
            check.warn_if_overconfident(stacklevel=3)
        return check

    def state(self) -> dict[str, Any]:
        """As :meth:`NeuralInference.state`, with the balance weight and the calibration check.

        Returns:
            A dict of tensors and plain types (see ``sbiflow.save``).
        """
        state = super().state()
        state["balance"] = self.balance
        state["calibration"] = None if self.calibration is None else self.calibration.as_dict()
        return state

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        prior: Distribution,
        embedding_net: nn.Module | None = None,
        device: str = "cpu",
    ) -> NPE:
        """Rebuild a trained NPE from :meth:`state` (files from before BNPE: ``balance=0``).

        Args:
            state: What :meth:`state` returned.
            prior: The prior over θ, event shape ``(D,)``.
            embedding_net: A freshly built module, if trained with your own embedding.
            device: Torch device of the rebuilt model.

        Returns:
            The trained NPE, with its calibration check.
        """
        obj = super().from_state(state, prior, embedding_net, device)
        assert isinstance(obj, NPE)
        obj.balance = float(state.get("balance", 0.0))
        calibration = state.get("calibration")
        obj.calibration = None if calibration is None else CalibrationCheck.from_dict(calibration)
        return obj

    def _x_standardizer(self) -> nn.Module:
        return self._trained().b_standardizer

    def _default_embedding(self, b: Tensor) -> nn.Module | None:
        return default_embedding(b)

    @torch.no_grad()
    def sample(
        self, n: int, x: Tensor, *, seed: int | None = None, iid_method: str = "gauss"
    ) -> Tensor:
        """Draw posterior samples inside the prior's support.

        Args:
            n: Number of samples.
            x: One observation, shape ``x_shape`` (or ``(1, *x_shape)``); with
                ``estimator="score"`` also iid trials ``(k, *x_shape)``, whose posterior is
                composed from the single-observation model (``ScoreEstimator.sample_iid``).
            seed: Seed for reproducible samples (``None``: torch's global RNG).
            iid_method: Composition of iid trials, ``"gauss"`` or ``"geffner"``.

        Returns:
            Samples, shape ``(n, D)``.

        Raises:
            PriorSupportError: If fewer than 1 in 10⁴ proposals fall inside the prior.
        """
        estimator = self._trained()
        trials = self._observation(x, allow_trials=hasattr(estimator, "sample_iid"))

        def draw(m: int) -> Tensor:
            if trials.shape[0] > 1:
                return estimator.sample_iid(m, trials, self.prior, method=iid_method)
            return estimator.sample(m, trials[0])

        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            with threads_for(estimator):
                samples, rate = self._rejection_sample(draw, n)
        if rate < LOW_ACCEPTANCE:
            warnings.warn(
                f"Only {rate:.2%} of posterior samples fell inside the prior's support: the "
                "estimator puts most of its mass outside the prior. Is the observation far "
                "from the training simulations?",
                UserWarning,
                stacklevel=2,
            )
        return samples.cpu()

    def _rejection_sample(self, draw: Callable[[int], Tensor], n: int) -> tuple[Tensor, float]:
        kept: list[Tensor] = []
        n_kept, n_proposed, rate = 0, 0, 1.0
        while n_kept < n:
            want = min(int(1.2 * (n - n_kept) / max(rate, 1e-3)) + 16, 100_000)
            proposal = draw(want)
            inside = in_support(self.prior, proposal.cpu())
            kept.append(proposal[inside.to(proposal.device)])
            n_kept += int(inside.sum())
            n_proposed += want
            rate = n_kept / n_proposed
            if n_proposed >= 10_000 and rate < HOPELESS_ACCEPTANCE:
                raise PriorSupportError(
                    f"Only {n_kept} of {n_proposed} posterior samples fell inside the prior's "
                    "support. The estimator is not usable for this observation: it is probably "
                    "far outside the training simulations, or training failed."
                )
        return torch.cat(kept)[:n], rate

    @torch.no_grad()
    def log_prob(
        self, theta: Tensor, x: Tensor, *, normalize: bool = True, num_samples: int = 10_000
    ) -> Tensor:
        r"""Posterior log density :math:`\log q(\theta \mid x_o)` restricted to the prior.

        Args:
            theta: Parameters, shape ``(B, D)``.
            x: One observation, shape ``x_shape``.
            normalize: Renormalize for the estimator's mass outside the prior, estimated
                from ``num_samples`` seeded draws (cached per observation).
            num_samples: Draws for that estimate.

        Returns:
            Log densities ``(B,)``; ``-inf`` outside the prior's support.
        """
        estimator = self._trained()
        theta = validate_theta(self.prior, theta)
        x_o = self._observation(x)
        logq = estimator.log_prob(theta.to(self.device), x_o.expand(theta.shape[0], *x_o.shape[1:]))
        logq = logq.cpu()
        if normalize:
            logq = logq - math.log(self._acceptance_rate(x_o[0], num_samples))
        return torch.where(in_support(self.prior, theta), logq, torch.full_like(logq, -math.inf))

    def _acceptance_rate(self, x_o: Tensor, num_samples: int) -> float:
        key = ("acceptance", x_o.cpu().numpy().tobytes(), num_samples)
        cache = self._cache
        if key not in cache:
            with torch.random.fork_rng():  # a fixed seed: log_prob is a deterministic function
                torch.manual_seed(0)
                proposal = self._trained().sample(num_samples, x_o)
            inside = in_support(self.prior, proposal.cpu())
            cache[key] = max(float(inside.float().mean()), 1.0 / num_samples)
        return cache[key]

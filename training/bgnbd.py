"""BG/NBD (Fader, Hardie & Lee 2005): the customer-base baseline every churn model must beat.

Each customer buys as a Poisson process of rate ``lambda ~ Gamma(r, alpha)`` and, after each
purchase, drops out for good with probability ``p ~ Beta(a, b)``. Four parameters fitted by
maximum likelihood (scipy) on one summary per customer: ``x`` repeat purchases, ``t_x`` the time
of the last purchase and ``T`` the age, both counted from the first purchase (weeks by default).

It needs nothing but the transaction log, so it is the honest baseline for "will this customer buy
again": a feature-rich model that cannot beat it is not worth serving. Pure functions only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.special import gammaln, hyp2f1

SUMMARY_COLUMNS = ("x", "t_x", "T")
DAYS_PER_WEEK = 7.0


class BGNBDFitError(RuntimeError):
    """The likelihood could not be maximised (too few customers, or no repeat purchase)."""


@dataclass(frozen=True)
class BGNBDParameters:
    """Gamma(r, alpha) purchase rates and Beta(a, b) dropout probabilities."""

    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _arrays(*values: object) -> list[np.ndarray]:
    return [np.asarray(value, dtype=np.float64) for value in values]


def log_likelihood(
    params: BGNBDParameters, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """Per-customer log-likelihood (equation 6 of the paper, in log form for stability)."""
    x, t_x, T = _arrays(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    a4 = np.full_like(x, -np.inf)
    a4[repeat] = (
        np.log(a) - np.log(b + x[repeat] - 1.0) - (r + x[repeat]) * np.log(alpha + t_x[repeat])
    )
    return a1 + a2 + np.logaddexp(a3, a4)


def fit_bgnbd(
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
    initial: BGNBDParameters = BGNBDParameters(1.0, 1.0, 1.0, 1.0),
) -> BGNBDParameters:
    """Maximum-likelihood parameters, searched on the log scale so that all four stay positive.

    Raises:
        BGNBDFitError: no customer, no repeat purchase, or the optimiser did not converge.
    """
    x, t_x, T = _arrays(x, t_x, T)
    if len(x) == 0 or not (x > 0).any():
        raise BGNBDFitError(
            f"BG/NBD needs customers with repeat purchases; got {len(x)} customers, "
            f"{int((x > 0).sum())} with a repeat"
        )
    if (t_x > T + 1e-9).any() or (t_x < 0).any():
        raise BGNBDFitError("each customer needs 0 <= t_x <= T (last purchase within the age)")

    def negative_log_likelihood(log_params: np.ndarray) -> float:
        params = BGNBDParameters(*np.exp(log_params))
        value = -float(log_likelihood(params, x, t_x, T).sum())
        return value if np.isfinite(value) else 1e300

    start = np.log([initial.r, initial.alpha, initial.a, initial.b])
    result = optimize.minimize(
        negative_log_likelihood,
        start,
        method="Nelder-Mead",
        options={"xatol": 1e-7, "fatol": 1e-7, "maxiter": 10000, "maxfev": 20000},
    )
    result = optimize.minimize(negative_log_likelihood, result.x, method="L-BFGS-B")
    if not np.isfinite(result.fun) or result.fun >= 1e300:
        raise BGNBDFitError(f"BG/NBD likelihood did not converge: {result.message}")
    return BGNBDParameters(*(float(value) for value in np.exp(result.x)))


def _alive_odds_term(
    params: BGNBDParameters, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """``a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x)`` for x > 0, else 0."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    term = np.zeros_like(x)
    repeat = x > 0
    term[repeat] = (
        a
        / (b + x[repeat] - 1.0)
        * np.exp((r + x[repeat]) * np.log((alpha + T[repeat]) / (alpha + t_x[repeat])))
    )
    return term


def probability_alive(
    params: BGNBDParameters, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """P(still active at T | history). Ranks poorly alone: every one-time buyer gets 1."""
    x, t_x, T = _arrays(x, t_x, T)
    return 1.0 / (1.0 + _alive_odds_term(params, x, t_x, T))


def expected_transactions(
    params: BGNBDParameters, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """Expected purchases in ``(T, T + t]`` given the history (equation 10 of the paper)."""
    x, t_x, T = _arrays(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    ratio = (alpha + T) / (alpha + T + t)
    hypergeometric = hyp2f1(r + x, b + x, a + b + x - 1.0, t / (alpha + T + t))
    numerator = (a + b + x - 1.0) / (a - 1.0) * (1.0 - ratio ** (r + x) * hypergeometric)
    return numerator / (1.0 + _alive_odds_term(params, x, t_x, T))


def probability_any_purchase(
    params: BGNBDParameters, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """P(at least one purchase in ``(T, T + t]``): alive, and the Poisson clock ticks once.

    A customer can only drop out right after a purchase, so an active customer's first purchase
    after T arrives before any dropout; the rate's posterior is Gamma(r + x, alpha + T).
    """
    x, t_x, T = _arrays(x, t_x, T)
    no_purchase_if_alive = ((params.alpha + T) / (params.alpha + T + t)) ** (params.r + x)
    return probability_alive(params, x, t_x, T) * (1.0 - no_purchase_if_alive)


def frequency_recency_summary(
    purchases: pd.DataFrame,
    end: pd.Timestamp,
    customer_column: str = "customer_id",
    time_column: str = "occurred_at",
    unit_days: float = DAYS_PER_WEEK,
) -> pd.DataFrame:
    """``x``, ``t_x``, ``T`` per customer from a transaction log, using purchases ``<= end``.

    Several purchases of one customer on the same calendar day are one purchase occasion (the
    convention of the literature); times are in ``unit_days`` (weeks by default), counted from
    the first purchase. ``end`` is the end of the observation (``T`` is measured to it).
    """
    times = pd.to_datetime(purchases[time_column])
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    end = pd.Timestamp(end)
    if end.tzinfo is not None:
        end = end.tz_convert("UTC").tz_localize(None)
    days = pd.DataFrame(
        {"customer_id": purchases[customer_column].to_numpy(), "day": times.dt.normalize()}
    )
    days = days[days["day"] <= end].drop_duplicates()
    grouped = days.groupby("customer_id")["day"]
    first, last, count = grouped.min(), grouped.max(), grouped.size()
    unit = pd.Timedelta(days=unit_days)
    return pd.DataFrame(
        {
            "x": (count - 1).astype(np.float64),
            "t_x": (last - first) / unit,
            "T": (end.normalize() - first) / unit,
        }
    ).rename_axis("customer_id")


def forecast_rehearsal(
    purchases: pd.DataFrame, cutoffs: list, end: object, unit_days: float = DAYS_PER_WEEK
) -> pd.DataFrame:
    """How far BG/NBD's forecast of total repeat purchases was off inside the observed data.

    For each inner ``cutoff``: BG/NBD fitted on the purchases before it forecasts the repeat
    purchases of those customers from the cutoff to ``end``; the actual count is read from the
    log (same-day purchases merged, returns excluded). A forecast further out can only be
    checked against these ratios: the mean ``ratio`` (actual over forecast) is the correction
    the data supports, and their spread says how much a single forecast can be trusted.

    Args:
        purchases: ``customer_id``, ``occurred_at``, optional ``is_return``.
        cutoffs: inner cutoffs, each before ``end``.
        end: the first instant not observed (the end of the data used for the check).

    Returns:
        One row per cutoff: ``cutoff``, ``horizon`` (in ``unit_days``), ``forecast``,
        ``actual``, ``ratio``. A cutoff where BG/NBD cannot be fitted (or forecasts nothing) is left
        out.
    """
    bought = _purchase_days(purchases)
    end = _naive_utc(end)
    rows = []
    for cutoff in sorted({_naive_utc(cutoff) for cutoff in cutoffs}):
        if cutoff >= end:
            raise ValueError(f"inner cutoff {cutoff} is not before the end {end}")
        before = bought[bought["day"] < cutoff]
        summary = frequency_recency_summary(
            before, cutoff - pd.Timedelta(days=1), time_column="day", unit_days=unit_days
        )
        try:
            params = fit_bgnbd(summary["x"], summary["t_x"], summary["T"])
        except BGNBDFitError:
            continue
        horizon = (end - cutoff) / pd.Timedelta(days=unit_days)
        forecast = float(
            expected_transactions(params, horizon, summary["x"], summary["t_x"], summary["T"]).sum()
        )
        if not np.isfinite(forecast) or forecast <= 0.0:
            continue  # a degenerate fit (too few customers) says nothing about the forecast
        later = bought[(bought["day"] >= cutoff) & (bought["day"] < end)]
        actual = int(later["customer_id"].isin(summary.index).sum())
        rows.append(
            {
                "cutoff": cutoff,
                "horizon": horizon,
                "forecast": forecast,
                "actual": actual,
                "ratio": actual / forecast,
            }
        )
    return pd.DataFrame(rows, columns=["cutoff", "horizon", "forecast", "actual", "ratio"])


def rehearsed_correction(rehearsal: pd.DataFrame, z: float = 2.0) -> float:
    """The factor for a forecast: the mean inner ratio, if it is distinguishable from 1.

    The ratios of :func:`forecast_rehearsal` scatter (overlapping windows, promotions); a mean
    within ``z`` standard errors of 1 is noise, and correcting by it would only move the
    forecast at random, so the factor is then 1 (BG/NBD as fitted).
    """
    ratios = rehearsal["ratio"].to_numpy(np.float64)
    if len(ratios) < 2:
        return 1.0
    mean = float(ratios.mean())
    standard_error = float(ratios.std(ddof=1)) / np.sqrt(len(ratios))
    return mean if abs(mean - 1.0) > z * standard_error else 1.0


def _purchase_days(purchases: pd.DataFrame) -> pd.DataFrame:
    """One row per customer and purchase day (naive UTC), returns excluded.

    ``items``: the day's item count (summed over its purchases; NaN when the log has none).
    """
    times = pd.to_datetime(purchases["occurred_at"])
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    items = (
        pd.to_numeric(purchases["items"], errors="coerce").to_numpy(np.float64)
        if "items" in purchases.columns
        else np.full(len(purchases), np.nan)
    )
    bought = pd.DataFrame(
        {"customer_id": purchases["customer_id"].astype(str), "day": times, "items": items}
    )
    if "is_return" in purchases.columns:
        bought = bought[~purchases["is_return"].eq(True).to_numpy()]  # missing: a purchase
    bought["day"] = bought["day"].dt.normalize()
    days = bought.groupby(["customer_id", "day"], as_index=False, sort=True)["items"]
    return days.sum(min_count=1)


# ---- customer-base features for the classifiers ----------------------------------------------
CUSTOMER_BASE_FEATURES: tuple[str, ...] = (
    "bgnbd_expected_purchases",
    "bgnbd_p_any_purchase",
    "bgnbd_p_alive",
    "repeat_purchases",
    "mean_days_between_purchases",
    "purchase_gap_cv",
    "overdue_ratio",
    "mean_items_per_purchase",
)


def customer_base_features(
    purchases: pd.DataFrame, cutoffs: list, horizon_days: float
) -> pd.DataFrame:
    """Per (customer, cutoff): BG/NBD outputs and inter-purchase regularity, point in time.

    At each cutoff BG/NBD is refitted on the purchases strictly before it (returns excluded),
    so a row uses nothing a model scoring at that cutoff could not know. The outputs condense
    the whole purchase history into what a tree finds hard to learn from RFM counts: the
    expected purchases and the probability of any purchase in the next ``horizon_days`` (keep
    it the same at training and scoring so the feature means the same thing), P(alive), and
    how regular the customer's gaps are (``overdue_ratio``: days since the last purchase over
    the mean gap; above 1 means later than usual). Gap features are NaN for one-time buyers.
    ``mean_items_per_purchase`` (items per purchase day; NaN without an ``items`` column):
    on CDNOW's calibration period it was the one order-size feature that raised the rehearsal
    ROC AUC of the master file (``docs/models.md``).

    Args:
        purchases: ``customer_id``, ``occurred_at`` (naive UTC or tz-aware), optional
            ``is_return`` and ``items``.
        cutoffs: snapshot cutoffs (datetimes, naive UTC or tz-aware).
        horizon_days: the prediction horizon of the expected-purchase features.

    Returns:
        ``customer_id``, ``event_timestamp`` (tz-aware UTC) and :data:`CUSTOMER_BASE_FEATURES`,
        for every customer with a purchase before the cutoff. A cutoff where BG/NBD cannot be
        fitted (nobody bought twice yet) keeps NaN in the three ``bgnbd_`` columns.
    """
    bought = _purchase_days(purchases)
    frames = []
    for cutoff in sorted({_naive_utc(cutoff) for cutoff in cutoffs}):
        before = bought[bought["day"] < cutoff]
        if before.empty:
            continue
        summary = frequency_recency_summary(
            before, cutoff - pd.Timedelta(days=1), time_column="day"
        )
        x, t_x, age = summary["x"], summary["t_x"], summary["T"]
        frame = pd.DataFrame(index=summary.index)
        try:
            params = fit_bgnbd(x, t_x, age)
            weeks = horizon_days / DAYS_PER_WEEK
            frame["bgnbd_expected_purchases"] = expected_transactions(params, weeks, x, t_x, age)
            frame["bgnbd_p_any_purchase"] = probability_any_purchase(params, weeks, x, t_x, age)
            frame["bgnbd_p_alive"] = probability_alive(params, x, t_x, age)
        except BGNBDFitError:
            for name in CUSTOMER_BASE_FEATURES[:3]:
                frame[name] = np.nan
        frame["repeat_purchases"] = x
        mean_gap_days = (t_x * DAYS_PER_WEEK / x).where(x > 0)
        frame["mean_days_between_purchases"] = mean_gap_days
        gaps = before.groupby("customer_id")["day"].diff().dt.days
        spread = gaps.groupby(before["customer_id"]).agg(["std", "mean"])
        frame["purchase_gap_cv"] = (spread["std"] / spread["mean"]).reindex(frame.index)
        days_since_last = (age - t_x) * DAYS_PER_WEEK + 1.0  # ``T`` ends the day before cutoff
        frame["overdue_ratio"] = days_since_last / mean_gap_days.clip(lower=1.0)
        frame["mean_items_per_purchase"] = before.groupby("customer_id")["items"].mean()
        frame["event_timestamp"] = cutoff.tz_localize("UTC")
        frames.append(frame.reset_index())
    columns = ["customer_id", "event_timestamp", *CUSTOMER_BASE_FEATURES]
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=np.float64) for name in columns}).astype(
            {"customer_id": str, "event_timestamp": "datetime64[ns, UTC]"}
        )
    result = pd.concat(frames, ignore_index=True)[columns]
    result["event_timestamp"] = result["event_timestamp"].astype("datetime64[ns, UTC]")
    return result


def _naive_utc(moment: object) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp

"""What a link's loss sequence says beyond its loss rate (sans-I/O): an interval for the rate
that holds for bursty links, and netem's Gilbert-Elliott parameters fitted to the sequence.

Both read the loss-pattern moments the replay window tallies into a link's counters
(hub.counters PATTERN_*): per group, the positions that left the window, how many were lost,
and how many lost pairs at lag 1, lost pairs at lag 2 and lost triples they hold. Each group
collects every PATTERN_GROUPS-th run of PATTERN_BATCH positions, so the groups are samples of
one link spread over the same time, nearly independent when bursts are much shorter than a
run. docs/protocol.md ("Loss intervals and the Gilbert-Elliott fit") argues the choices.
"""

import math

from hub.core.counters import LINK_SLOTS, PATTERN_BATCH, PATTERN_GROUPS, PATTERN_SLOTS, pattern_group

# Two-sided 95% quantile of Student's t with PATTERN_GROUPS - 1 = 7 degrees of freedom: the
# variance comes from 8 group means, so it is itself uncertain.
T95_GROUPS = 2.364624
Z95 = 1.959963984540054
# Below these the fit is not attempted: its moments would be mostly noise.
FIT_MIN_POSITIONS = 10_000
FIT_MIN_LOST = 100


def wilson_interval(successes: float, trials: float, z: float = Z95) -> list:
    """Wilson score interval for a binomial proportion; [0, 1] when there are no trials."""
    if trials <= 0:
        return [0.0, 1.0]
    phat = successes / trials
    denom = 1 + z * z / trials
    centre = (phat + z * z / (2 * trials)) / denom
    half = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _groups(counters) -> list | None:
    if len(counters) < LINK_SLOTS:
        return None  # a device's counters: no pattern moments kept
    return [pattern_group(counters, g) for g in range(PATTERN_GROUPS)]


def loss_interval(counters, lost: int, expected: int, markov_inflation: float) -> tuple[list, str]:
    """95% interval for the loss rate lost/expected, and the method used.

    Losses in bursts are not independent trials, so the binomial (Wilson) interval is widened
    by an inflation factor: the long-run variance of the loss indicator over its binomial
    variance, used as an effective sample size expected / inflation. With every group holding
    at least one run, the factor is measured from the spread of the groups' loss rates,
    whatever process made the losses ("groups"), and t with 7 degrees of freedom replaces z.
    Otherwise (a device, or too little past the window) the simple Gilbert model's
    (1 + rho) / (1 - rho) is all there is ("markov").
    """
    groups = _groups(counters)
    if groups is not None and min(g[0] for g in groups) >= PATTERN_BATCH:
        positions = sum(g[0] for g in groups)
        tallied_lost = sum(g[1] for g in groups)
        if 0 < tallied_lost < positions:
            rate = tallied_lost / positions
            spread = sum((g[1] - rate * g[0]) ** 2 for g in groups) * PATTERN_GROUPS / (PATTERN_GROUPS - 1)
            inflation = max(1.0, spread / positions / (rate * (1 - rate)))
            return wilson_interval(lost / inflation, expected / inflation, T95_GROUPS), "groups"
        if tallied_lost == 0 and lost == 0:
            return wilson_interval(0, expected), "groups"
    inflation = markov_inflation if lost else 1.0
    return wilson_interval(lost / inflation, expected / inflation), "markov"


def _moments_fit(positions, lost, pairs, lag2, triples) -> dict | str:
    """netem's (p, r, 1-h, 1-k) from the moments, or why they admit none.

    For a two-state hidden Markov chain with loss probabilities e_bad > e_good, the loss
    indicator X has mean m = pi_g e_good + pi_b e_bad, autocovariance
    c(n) = pi_g pi_b (e_bad - e_good)^2 lambda^n with lambda = 1 - p - r, and third central
    moment c3(1, 1) = pi_g pi_b (pi_g - pi_b) (e_bad - e_good)^3 lambda^2. Lag 1 and lag 2 give
    lambda and A = pi_g pi_b (e_bad - e_good)^2; the third moment gives
    E = (pi_g - pi_b)(e_bad - e_good); then (e_bad - e_good)^2 = E^2 + 4A and the rest follows.
    """
    m = lost / positions
    p11 = pairs / (positions - 1)
    p101 = lag2 / (positions - 2)
    p111 = triples / (positions - 2)
    c1, c2 = p11 - m * m, p101 - m * m
    if c1 <= 0 or c2 <= 0 or c2 >= c1:
        return "consecutive losses are no more frequent than independent losses would give"
    lam = c2 / c1
    spread = c1 / lam
    third = p111 - m * (2 * p11 + p101) + 2 * m ** 3
    skew = third / (spread * lam * lam)
    gap = math.sqrt(skew * skew + 4 * spread)
    bad_share = (1 - skew / gap) / 2
    loss_good = m - bad_share * gap
    loss_bad = loss_good + gap
    if not 0 < bad_share < 1 or loss_good < -0.05 or loss_bad > 1.05:
        return "the moments fit no two-state model"
    return {"p": bad_share * (1 - lam), "r": (1 - bad_share) * (1 - lam),
            "loss_in_bad": min(1.0, loss_bad), "loss_in_good": max(0.0, loss_good)}


_FITTED = ("p", "r", "loss_in_bad", "loss_in_good")


def ge_fit(counters) -> tuple[dict | None, str | None]:
    """(fit, None) or (None, reason): netem `gemodel p r 1-h 1-k` fitted to a link's losses
    by the method of moments above, with jackknife standard errors (each group left out in
    turn). Only when the data suffice: enough positions and losses, losses clearly in bursts,
    and every leave-one-group-out fit possible too."""
    groups = _groups(counters)
    if groups is None:
        return None, "fitted per link only"
    totals = [sum(g[i] for g in groups) for i in range(PATTERN_SLOTS)]
    positions, lost = totals[0], totals[1]
    if positions < FIT_MIN_POSITIONS or lost < FIT_MIN_LOST:
        return None, (f"too little data: {positions} positions past the replay window with {lost} lost "
                      f"(the fit needs {FIT_MIN_POSITIONS} and {FIT_MIN_LOST})")
    m = lost / positions
    lag1_correlation = (totals[2] / (positions - 1) - m * m) / (m * (1 - m)) if m < 1 else 0.0
    if lag1_correlation < 3 / math.sqrt(positions):
        return None, (f"losses look independent (lag-1 correlation {lag1_correlation:.4f}, within noise): "
                      "a Bernoulli link, whose Gilbert-Elliott states cannot be told apart")
    fit = _moments_fit(*totals)
    if isinstance(fit, str):
        return None, fit
    replicates = []
    for left_out in groups:
        rest = [totals[i] - left_out[i] for i in range(PATTERN_SLOTS)]
        replicate = _moments_fit(*rest) if rest[0] > 2 else "empty"
        if isinstance(replicate, str):
            return None, "too few loss bursts for a stable fit: leaving out one eighth of the data, " + replicate
        replicates.append(replicate)
    k = len(replicates)
    stderr = {}
    for name in _FITTED:
        mean = sum(r[name] for r in replicates) / k
        stderr[name] = math.sqrt((k - 1) / k * sum((r[name] - mean) ** 2 for r in replicates))
    return {**fit, "stderr": stderr, "positions": positions}, None

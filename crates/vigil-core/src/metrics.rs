//! Evaluation metrics for anomaly, out-of-distribution (OOD) and backdoor detectors.
//!
//! # Conventions
//!
//! * **Scores**: higher means *more anomalous / more OOD*.
//! * **Classes**: the anomalous / OOD / triggered class is the **positive** class; the
//!   benign / in-distribution (ID) class is the **negative** class.
//! * **Inputs**: every score metric takes two slices, `negatives` (benign / ID scores) and
//!   `positives` (anomalous / OOD scores). Data stored as `scores + labels` can be split with
//!   [`SplitScores::from_labels`].
//! * **Flagging rule**: an input is flagged (predicted positive) at threshold `t` iff
//!   `score >= t`. All threshold-based metrics use this rule.
//! * **Validity**: scores must be finite. NaN and ±∞ are rejected with
//!   [`MetricsError::NonFiniteScore`] (scikit-learn rejects them too). Empty inputs,
//!   mismatched lengths and rates outside `[0, 1]` are typed errors; nothing here panics on bad
//!   input.
//! * **Ties**: equal scores (including `-0.0 == 0.0`) form one threshold; a tie group is
//!   flagged as a whole or not at all. All metrics handle ties exactly, the way scikit-learn
//!   does.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors returned by the metric functions for invalid input.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MetricsError {
    /// An input that needs at least one element was empty.
    #[error("{what} is empty")]
    Empty {
        /// Name of the empty input.
        what: &'static str,
    },
    /// A score was NaN or infinite.
    #[error("{what}[{index}] is not a finite score ({value})")]
    NonFiniteScore {
        /// Name of the input holding the bad score.
        what: &'static str,
        /// Index of the first bad score.
        index: usize,
        /// The bad value.
        value: f64,
    },
    /// A decision threshold was NaN (±∞ are allowed: they flag everything / nothing).
    #[error("threshold is NaN")]
    NanThreshold,
    /// Two inputs that must be parallel have different lengths.
    #[error("length mismatch: {left_name} has {left} elements but {right_name} has {right}")]
    LengthMismatch {
        /// Name of the first input.
        left_name: &'static str,
        /// Length of the first input.
        left: usize,
        /// Name of the second input.
        right_name: &'static str,
        /// Length of the second input.
        right: usize,
    },
    /// A rate (target TPR/FPR, accuracy, ASR) was NaN or outside `[0, 1]`.
    #[error("{what} = {value} is outside [0, 1]")]
    RateOutOfRange {
        /// Name of the rate.
        what: &'static str,
        /// The offending value.
        value: f64,
    },
}

/// Scores split by class, for callers whose data is `scores + labels`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SplitScores {
    /// Scores of benign / ID inputs (label `false`).
    pub negatives: Vec<f64>,
    /// Scores of anomalous / OOD inputs (label `true`).
    pub positives: Vec<f64>,
}

impl SplitScores {
    /// Splits `scores` by `is_positive` (`true` = anomalous / OOD), keeping order.
    ///
    /// Scores are validated here so that an error reports the index into `scores`. An empty
    /// class is not an error here; the metric functions report it.
    pub fn from_labels(scores: &[f64], is_positive: &[bool]) -> Result<Self, MetricsError> {
        check_same_len("scores", scores.len(), "is_positive", is_positive.len())?;
        check_finite("scores", scores)?;
        let mut split = Self::default();
        for (&score, &positive) in scores.iter().zip(is_positive) {
            if positive {
                split.positives.push(score);
            } else {
                split.negatives.push(score);
            }
        }
        Ok(split)
    }
}

/// How the area under the precision-recall curve is computed.
///
/// The two differ most on ties and small samples: with all scores equal, average precision
/// is the prevalence `P / (P + N)` while the trapezoidal area is `(1 + P / (P + N)) / 2`,
/// because the curve is anchored at `(recall 0, precision 1)` and interpolated linearly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrArea {
    /// Step-wise sum `Σ (R_k − R_{k−1}) · P_k` over distinct thresholds in decreasing order,
    /// exactly scikit-learn's `average_precision_score`.
    AveragePrecision,
    /// Trapezoidal rule over the curve of scikit-learn's `precision_recall_curve`
    /// (starting at `(recall 0, precision 1)`), i.e. `auc(recall, precision)` as used by
    /// HALO, OpenOOD and pytorch-ood.
    Trapezoidal,
}

/// One point of a detector's ROC curve: a threshold and the rates it yields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    /// Decision threshold; inputs with `score >= threshold` are flagged. May be `+∞`
    /// (flags nothing), which `serde_json` serializes as `null`.
    pub threshold: f64,
    /// True positive rate: fraction of positives with `score >= threshold`.
    pub tpr: f64,
    /// False positive rate: fraction of negatives with `score >= threshold`.
    pub fpr: f64,
}

/// The standard OOD-detection summary, as reported by OpenOOD and pytorch-ood.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OodMetrics {
    /// Area under the ROC curve (see [`auroc`]).
    pub auroc: f64,
    /// Trapezoidal AUPR with ID as the positive class and negated scores (see [`aupr_in`]).
    pub aupr_in: f64,
    /// Trapezoidal AUPR with OOD as the positive class (see [`aupr_out`]).
    pub aupr_out: f64,
    /// FPR at 95 % TPR by the exact threshold (see [`fpr_at_tpr`]).
    pub fpr_at_95_tpr: f64,
}

/// Clean accuracy and attack success rate of a (possibly defended) backdoored model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BackdoorRates {
    /// Clean accuracy (ACC), in `[0, 1]`.
    pub acc: f64,
    /// Attack success rate (ASR), in `[0, 1]`.
    pub asr: f64,
}

/// Outcome of one clean test input under a rejecting input detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanOutcome {
    /// The model classifies the input correctly.
    pub correct: bool,
    /// The detector flags (and so rejects) the input.
    pub flagged: bool,
}

/// Outcome of one triggered (poisoned) test input under a rejecting input detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggeredOutcome {
    /// The model predicts the attacker's target class.
    pub hit_target: bool,
    /// The detector flags (and so rejects) the input.
    pub flagged: bool,
}

/// Rates before and after a rejecting input detector, and the resulting DER.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RejectionDer {
    /// ACC and ASR of the undefended model (nothing rejected).
    pub before: BackdoorRates,
    /// ACC and ASR when flagged inputs are rejected (a rejected input counts as neither
    /// correct nor a successful attack).
    pub after: BackdoorRates,
    /// Defense effectiveness rating of `before` → `after`.
    pub der: f64,
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting 1/2.
///
/// Computed exactly from the Mann-Whitney U statistic with average ranks for ties
/// (`U` is accumulated as an integer `2U`), so it equals scikit-learn's `roc_auc_score` (which
/// uses the trapezoidal ROC area, identical for this step curve). All-equal scores give 0.5,
/// perfect separation 1.0, perfect reversal 0.0.
pub fn auroc(negatives: &[f64], positives: &[f64]) -> Result<f64, MetricsError> {
    Ok(TieGroups::new(negatives, positives)?.auroc())
}

/// AUPR-out: area under the precision-recall curve with the anomalous / OOD inputs as the
/// positive class and the scores as given.
pub fn aupr_out(negatives: &[f64], positives: &[f64], area: PrArea) -> Result<f64, MetricsError> {
    Ok(TieGroups::new(negatives, positives)?.aupr(area))
}

/// AUPR-in: area under the precision-recall curve with the benign / ID inputs as the
/// positive class and the scores negated (so that higher means "more ID").
///
/// This is how OpenOOD and pytorch-ood report AUPR-IN; it is AUPR-out with the classes
/// swapped and the score order reversed.
pub fn aupr_in(negatives: &[f64], positives: &[f64], area: PrArea) -> Result<f64, MetricsError> {
    Ok(TieGroups::new(negatives, positives)?.flipped().aupr(area))
}

/// FPR at a target TPR (e.g. 0.95) by the exact threshold, without interpolation.
///
/// See [`operating_point_at_tpr`] for the precise convention; this returns its `fpr`.
pub fn fpr_at_tpr(
    negatives: &[f64],
    positives: &[f64],
    target_tpr: f64,
) -> Result<f64, MetricsError> {
    Ok(operating_point_at_tpr(negatives, positives, target_tpr)?.fpr)
}

/// The operating point reaching a target TPR with the lowest FPR, by the exact threshold.
///
/// Convention: the candidate thresholds are `+∞` followed by every distinct observed score in
/// decreasing order (the points of scikit-learn's `roc_curve(..., drop_intermediate=False)`).
/// The result is the **first** candidate — i.e. the **largest** threshold `t` — with
/// `TPR(t) = |{positives >= t}| / P >= target_tpr`; its FPR is `|{negatives >= t}| / N`.
/// Since FPR only grows as `t` falls, this is the lowest FPR at which the target TPR is met.
/// A tie group is never split, so the achieved TPR may exceed the target. `target_tpr = 0`
/// gives `t = +∞` (TPR 0, FPR 0); `target_tpr = 1` gives `t = min(positives)`.
///
/// The comparison `tp / P >= target_tpr` is done in `f64`, as scikit-learn does.
///
/// Note: scikit-learn's `roc_curve` defaults to `drop_intermediate=True`, which removes
/// collinear points and can skip the first point reaching the target, overstating the FPR
/// (OpenOOD's `fpr[np.argmax(tpr >= 0.95)]` inherits this). pytorch-ood (torchmetrics
/// `binary_roc`) keeps all points and agrees with this function.
pub fn operating_point_at_tpr(
    negatives: &[f64],
    positives: &[f64],
    target_tpr: f64,
) -> Result<OperatingPoint, MetricsError> {
    let target = check_rate("target_tpr", target_tpr)?;
    Ok(TieGroups::new(negatives, positives)?.point_at_tpr(target))
}

/// The ROC curve as `(fpr, tpr)` points: `(0, 0)` at threshold `+∞`, then one point per
/// distinct score in decreasing order, ending at `(1, 1)` (scikit-learn's
/// `roc_curve(..., drop_intermediate=False)`; positives are the anomalous class).
pub fn roc_curve(negatives: &[f64], positives: &[f64]) -> Result<Vec<(f64, f64)>, MetricsError> {
    let groups = TieGroups::new(negatives, positives)?;
    let (n, p) = (groups.n_neg as f64, groups.n_pos as f64);
    let mut points = vec![(0.0, 0.0)];
    points.extend(
        groups
            .cumulative()
            .map(|(fp, tp)| (fp as f64 / n, tp as f64 / p)),
    );
    Ok(points)
}

/// TPR and FPR when inputs with `score >= threshold` are flagged.
///
/// `threshold` may be `±∞` (`-∞` flags everything, `+∞` flags nothing) but not NaN.
pub fn tpr_fpr_at_threshold(
    negatives: &[f64],
    positives: &[f64],
    threshold: f64,
) -> Result<OperatingPoint, MetricsError> {
    let fpr = flag_rate_of("negatives", negatives, threshold)?;
    let tpr = flag_rate_of("positives", positives, threshold)?;
    Ok(OperatingPoint {
        threshold,
        tpr,
        fpr,
    })
}

/// Fraction of `scores` with `score >= threshold` (the flag rate of one class).
pub fn flag_rate(scores: &[f64], threshold: f64) -> Result<f64, MetricsError> {
    flag_rate_of("scores", scores, threshold)
}

/// [`flag_rate`], naming the input `what` in errors.
fn flag_rate_of(what: &'static str, scores: &[f64], threshold: f64) -> Result<f64, MetricsError> {
    check_scores(what, scores)?;
    if threshold.is_nan() {
        return Err(MetricsError::NanThreshold);
    }
    let flagged = scores.iter().filter(|&&s| s >= threshold).count();
    Ok(ratio(flagged, scores.len()))
}

/// A threshold calibrated on benign scores alone for a target false positive rate.
///
/// Returns the threshold `t` whose benign flag rate `|{benign >= t}| / n` is as large as
/// possible without exceeding `target_fpr` (compared in `f64`). Precisely:
///
/// * `t` is the **smallest observed benign score** whose flag rate is `<= target_fpr`, so it
///   is always a benign score value and a tie group is never split: if the ties at the
///   boundary would overshoot the target, the whole group is left unflagged and the achieved
///   rate falls below the target.
/// * If even the highest benign score has a flag rate above the target (in particular for
///   `target_fpr = 0`), `t` is the next `f64` above the maximum benign score: no benign score
///   is flagged, yet anything scoring above every benign input still is.
/// * `target_fpr = 1` gives `t = min(benign)` (everything flagged).
/// * Empty `benign`, non-finite scores and a target outside `[0, 1]` are errors.
pub fn threshold_for_fpr(benign: &[f64], target_fpr: f64) -> Result<f64, MetricsError> {
    check_scores("benign", benign)?;
    let target = check_rate("target_fpr", target_fpr)?;
    let mut sorted = benign.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut threshold = sorted[0].next_up();
    let mut start = 0;
    while start < sorted.len() {
        let value = sorted[start];
        let end = start + sorted[start..].iter().take_while(|&&s| s == value).count();
        if ratio(end, sorted.len()) > target {
            break;
        }
        threshold = value;
        start = end;
    }
    Ok(threshold)
}

/// [`threshold_for_fpr`] on the finite ones of `benign` (a trusted sample alone in its class has
/// no class-level MAD-FA score): what the analyses of a run flag with (`score >= threshold`).
pub fn threshold_for_fpr_of_finite(benign: &[f64], target_fpr: f64) -> Result<f64, MetricsError> {
    let finite: Vec<f64> = benign.iter().copied().filter(|v| v.is_finite()).collect();
    threshold_for_fpr(&finite, target_fpr)
}

/// The randomised part of a threshold (a Neyman-Pearson randomised test): inputs scoring at
/// least `below` but under the threshold are flagged with probability `fraction`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TieBreak {
    /// The highest benign score under the threshold.
    pub below: f64,
    /// Probability of flagging an input in `[below, threshold)`, in `(0, 1]`.
    pub fraction: f64,
}

/// What [`threshold_for_fpr`]'s conservative threshold leaves of `target_fpr` on `benign`,
/// given back by flagging the benign scores just under it at random: `below` is the highest
/// benign score under `threshold`, `fraction = (target_fpr - rate) / share`, with `rate` the
/// flag rate at `threshold` and `share` the fraction of benign scores equal to `below`
/// (capped at 1). The expected benign flag rate is then `target_fpr` exactly. A score that
/// takes few values (SCALE-UP's fraction of 5 scales) may otherwise leave no threshold near
/// the target: if more than 5% of benign inputs share the top value, the conservative
/// threshold flags nothing. `None` when `threshold` already reaches the target or no benign
/// score lies under it.
pub fn tie_break_for_fpr(
    benign: &[f64],
    threshold: f64,
    target_fpr: f64,
) -> Result<Option<TieBreak>, MetricsError> {
    let target = check_rate("target_fpr", target_fpr)?;
    let rate = flag_rate_of("benign", benign, threshold)?;
    let Some(below) = benign
        .iter()
        .copied()
        .filter(|&s| s < threshold)
        .max_by(f64::total_cmp)
    else {
        return Ok(None);
    };
    if rate >= target {
        return Ok(None);
    }
    let share = ratio(benign.iter().filter(|&&s| s == below).count(), benign.len());
    Ok(Some(TieBreak {
        below,
        fraction: ((target - rate) / share).min(1.0),
    }))
}

/// AUROC, trapezoidal AUPR-in / AUPR-out and FPR at 95 % TPR, from one sort of the scores.
///
/// Uses the trapezoidal AUPR so that the numbers match OpenOOD, pytorch-ood and HALO; use
/// [`aupr_in`] / [`aupr_out`] with [`PrArea::AveragePrecision`] for scikit-learn's AP.
pub fn ood_metrics(negatives: &[f64], positives: &[f64]) -> Result<OodMetrics, MetricsError> {
    let groups = TieGroups::new(negatives, positives)?;
    Ok(OodMetrics {
        auroc: groups.auroc(),
        aupr_in: groups.flipped().aupr(PrArea::Trapezoidal),
        aupr_out: groups.aupr(PrArea::Trapezoidal),
        fpr_at_95_tpr: groups.point_at_tpr(0.95).fpr,
    })
}

/// Fraction of predictions equal to their labels (clean accuracy, C-Acc).
pub fn accuracy<T: PartialEq>(predictions: &[T], labels: &[T]) -> Result<f64, MetricsError> {
    match_rate(predictions, "labels", labels)
}

/// Fraction of triggered inputs predicted as their attack target class (ASR).
///
/// `targets[i]` is the target class for input `i` (constant for all-to-one attacks). As in
/// BackdoorBench, the caller should leave out inputs whose true class already is the target.
pub fn attack_success_rate<T: PartialEq>(
    predictions: &[T],
    targets: &[T],
) -> Result<f64, MetricsError> {
    match_rate(predictions, "targets", targets)
}

/// Defense effectiveness rating (BackdoorBench's DER), in `[0, 1]`; higher is better.
///
/// `DER = (max(0, ΔASR) − max(0, ΔACC) + 1) / 2` with `ΔASR = ASR_before − ASR_after` and
/// `ΔACC = ACC_before − ACC_after`: removing the backdoor raises it, losing clean accuracy
/// lowers it, and an idle defense scores 0.5.
///
/// Note: BackdoorBench's `defense_effectiveness_rate` in `utils/metric.py` **adds** the
/// accuracy drop (`+ max(0, acc_bd - acc_defense)`), rewarding lost accuracy; its twin
/// `defense_effectiveness_rate_simplied` has the correct sign and matches this function.
pub fn defense_effectiveness_rating(
    before: BackdoorRates,
    after: BackdoorRates,
) -> Result<f64, MetricsError> {
    check_rate("before.acc", before.acc)?;
    check_rate("before.asr", before.asr)?;
    check_rate("after.acc", after.acc)?;
    check_rate("after.asr", after.asr)?;
    let asr_drop = (before.asr - after.asr).max(0.0);
    let acc_drop = (before.acc - after.acc).max(0.0);
    Ok((asr_drop - acc_drop + 1.0) / 2.0)
}

/// DER of an input detector that rejects every input it flags.
///
/// Before: `ACC = |correct| / |clean|`, `ASR = |hit_target| / |triggered|`.
/// After: `ACC = |correct and not flagged| / |clean|`,
/// `ASR = |hit_target and not flagged| / |triggered|` — a rejected input is neither a correct
/// answer nor a successful attack, and the denominators stay the full sets.
pub fn rejection_der(
    clean: &[CleanOutcome],
    triggered: &[TriggeredOutcome],
) -> Result<RejectionDer, MetricsError> {
    let acc = |keep: fn(&CleanOutcome) -> bool| fraction("clean", clean, keep);
    let asr = |keep: fn(&TriggeredOutcome) -> bool| fraction("triggered", triggered, keep);
    let before = BackdoorRates {
        acc: acc(|o| o.correct)?,
        asr: asr(|o| o.hit_target)?,
    };
    let after = BackdoorRates {
        acc: acc(|o| o.correct && !o.flagged)?,
        asr: asr(|o| o.hit_target && !o.flagged)?,
    };
    let der = defense_effectiveness_rating(before, after)?;
    Ok(RejectionDer { before, after, der })
}

/// Scores of both classes grouped by distinct value, in decreasing score order.
struct TieGroups {
    /// `(negatives, positives)` counts per distinct score, highest score first.
    groups: Vec<(u64, u64)>,
    /// Distinct score of each group (same order as `groups`).
    scores: Vec<f64>,
    /// Total number of negatives.
    n_neg: u64,
    /// Total number of positives.
    n_pos: u64,
}

impl TieGroups {
    /// Validates both classes and groups their scores (one sort, `O(n log n)`).
    fn new(negatives: &[f64], positives: &[f64]) -> Result<Self, MetricsError> {
        check_scores("negatives", negatives)?;
        check_scores("positives", positives)?;
        let negs = negatives.iter().map(|&s| (s, false));
        let mut labelled: Vec<(f64, bool)> =
            negs.chain(positives.iter().map(|&s| (s, true))).collect();
        labelled.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let mut groups: Vec<(u64, u64)> = Vec::new();
        let mut scores: Vec<f64> = Vec::new();
        for (score, positive) in labelled {
            // `total_cmp` orders -0.0 right after 0.0, so `==` merges them into one group.
            if scores.last() != Some(&score) {
                scores.push(score);
                groups.push((0, 0));
            }
            if let Some(group) = groups.last_mut() {
                let count = if positive { &mut group.1 } else { &mut group.0 };
                *count += 1;
            }
        }
        Ok(Self {
            groups,
            scores,
            n_neg: negatives.len() as u64,
            n_pos: positives.len() as u64,
        })
    }

    /// The same data with classes swapped and scores negated (for AUPR-in).
    fn flipped(&self) -> Self {
        Self {
            groups: self.groups.iter().rev().map(|&(n, p)| (p, n)).collect(),
            scores: self.scores.iter().rev().map(|&s| -s).collect(),
            n_neg: self.n_pos,
            n_pos: self.n_neg,
        }
    }

    /// Cumulative `(false positives, true positives)` after each group.
    fn cumulative(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.groups.iter().scan((0, 0), |acc, &(n, p)| {
            *acc = (acc.0 + n, acc.1 + p);
            Some(*acc)
        })
    }

    /// Mann-Whitney AUROC: `2U = Σ_groups p · (2 · negatives_below + n)`.
    fn auroc(&self) -> f64 {
        let mut neg_above: u128 = 0;
        let mut twice_u: u128 = 0;
        for &(n, p) in &self.groups {
            let (n, p) = (u128::from(n), u128::from(p));
            let neg_below = u128::from(self.n_neg) - neg_above - n;
            twice_u += p * (2 * neg_below + n);
            neg_above += n;
        }
        let pairs = 2 * u128::from(self.n_neg) * u128::from(self.n_pos);
        twice_u as f64 / pairs as f64
    }

    /// Area under the precision-recall curve of the positive class.
    fn aupr(&self, area: PrArea) -> f64 {
        let mut total = 0.0;
        let (mut prev_recall, mut prev_precision) = (0.0, 1.0);
        for (fp, tp) in self.cumulative() {
            let recall = tp as f64 / self.n_pos as f64;
            let precision = tp as f64 / (tp + fp) as f64;
            total += match area {
                PrArea::AveragePrecision => (recall - prev_recall) * precision,
                PrArea::Trapezoidal => (recall - prev_recall) * (precision + prev_precision) / 2.0,
            };
            (prev_recall, prev_precision) = (recall, precision);
        }
        total
    }

    /// First ROC point (from threshold `+∞` down) whose TPR reaches `target`.
    fn point_at_tpr(&self, target: f64) -> OperatingPoint {
        let mut point = OperatingPoint {
            threshold: f64::INFINITY,
            tpr: 0.0,
            fpr: 0.0,
        };
        let mut points = self.scores.iter().zip(self.cumulative());
        while point.tpr < target {
            let Some((&threshold, (fp, tp))) = points.next() else {
                break;
            };
            point = OperatingPoint {
                threshold,
                tpr: tp as f64 / self.n_pos as f64,
                fpr: fp as f64 / self.n_neg as f64,
            };
        }
        point
    }
}

/// `count / total` as `f64` (callers guarantee `total > 0`).
fn ratio(count: usize, total: usize) -> f64 {
    count as f64 / total as f64
}

/// Fraction of `items` satisfying `keep`; errors if `items` is empty.
fn fraction<T>(what: &'static str, items: &[T], keep: fn(&T) -> bool) -> Result<f64, MetricsError> {
    if items.is_empty() {
        return Err(MetricsError::Empty { what });
    }
    Ok(ratio(
        items.iter().filter(|&item| keep(item)).count(),
        items.len(),
    ))
}

/// Fraction of positions where `predictions` and `reference` agree.
fn match_rate<T: PartialEq>(
    predictions: &[T],
    reference_name: &'static str,
    reference: &[T],
) -> Result<f64, MetricsError> {
    check_same_len(
        "predictions",
        predictions.len(),
        reference_name,
        reference.len(),
    )?;
    if predictions.is_empty() {
        return Err(MetricsError::Empty {
            what: "predictions",
        });
    }
    let hits = predictions
        .iter()
        .zip(reference)
        .filter(|(a, b)| a == b)
        .count();
    Ok(ratio(hits, predictions.len()))
}

/// Errors unless `scores` is non-empty and all finite.
fn check_scores(what: &'static str, scores: &[f64]) -> Result<(), MetricsError> {
    if scores.is_empty() {
        return Err(MetricsError::Empty { what });
    }
    check_finite(what, scores)
}

/// Errors on the first non-finite score.
fn check_finite(what: &'static str, scores: &[f64]) -> Result<(), MetricsError> {
    match scores.iter().position(|s| !s.is_finite()) {
        Some(index) => Err(MetricsError::NonFiniteScore {
            what,
            index,
            value: scores[index],
        }),
        None => Ok(()),
    }
}

/// Returns `value` if it lies in `[0, 1]` (NaN does not).
fn check_rate(what: &'static str, value: f64) -> Result<f64, MetricsError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(MetricsError::RateOutOfRange { what, value })
    }
}

/// Errors unless two parallel inputs have the same length.
fn check_same_len(
    left_name: &'static str,
    left: usize,
    right_name: &'static str,
    right: usize,
) -> Result<(), MetricsError> {
    if left == right {
        Ok(())
    } else {
        Err(MetricsError::LengthMismatch {
            left_name,
            left,
            right_name,
            right,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Reference values were computed independently with scikit-learn 1.9.1 and numpy 2.4.6
    //! (Python 3.11) using this helper, and printed with `repr(float(v))`:
    //!
    //! ```python
    //! import numpy as np
    //! from sklearn.metrics import (roc_auc_score, average_precision_score,
    //!                              precision_recall_curve, roc_curve, auc)
    //!
    //! def ref(neg, pos, k=0.95):
    //!     y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    //!     s = np.r_[neg, pos].astype(float)
    //!     p_out, r_out, _ = precision_recall_curve(y, s)
    //!     p_in, r_in, _ = precision_recall_curve(1 - y, -s)
    //!     fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    //!     i = np.argmax(tpr >= k)
    //!     return dict(auroc=roc_auc_score(y, s),
    //!                 ap_out=average_precision_score(y, s),
    //!                 ap_in=average_precision_score(1 - y, -s),
    //!                 aupr_out=auc(r_out, p_out), aupr_in=auc(r_in, p_in),
    //!                 fpr=fpr[i], tpr=tpr[i], thr=thr[i])
    //! ```

    use super::*;

    const TOL: f64 = 1e-12;

    fn close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= TOL,
            "actual {actual:?} != expected {expected:?}"
        );
    }

    /// The values `ref(neg, pos, k)` returns, in the same order.
    struct Ref {
        auroc: f64,
        ap_out: f64,
        ap_in: f64,
        aupr_out: f64,
        aupr_in: f64,
        fpr: f64,
        tpr: f64,
        thr: f64,
    }

    fn check(neg: &[f64], pos: &[f64], k: f64, r: &Ref) {
        close(auroc(neg, pos).unwrap(), r.auroc);
        close(
            aupr_out(neg, pos, PrArea::AveragePrecision).unwrap(),
            r.ap_out,
        );
        close(
            aupr_in(neg, pos, PrArea::AveragePrecision).unwrap(),
            r.ap_in,
        );
        close(aupr_out(neg, pos, PrArea::Trapezoidal).unwrap(), r.aupr_out);
        close(aupr_in(neg, pos, PrArea::Trapezoidal).unwrap(), r.aupr_in);
        let point = operating_point_at_tpr(neg, pos, k).unwrap();
        close(point.fpr, r.fpr);
        close(point.tpr, r.tpr);
        assert_eq!(point.threshold, r.thr);
        close(fpr_at_tpr(neg, pos, k).unwrap(), r.fpr);
        // The operating point is reproduced by the flagging rule `score >= threshold`.
        assert_eq!(
            tpr_fpr_at_threshold(neg, pos, point.threshold).unwrap(),
            point
        );
        // Swapping the classes and negating the scores mirrors every area.
        let neg_flipped: Vec<f64> = pos.iter().map(|s| -s).collect();
        let pos_flipped: Vec<f64> = neg.iter().map(|s| -s).collect();
        close(auroc(&neg_flipped, &pos_flipped).unwrap(), r.auroc);
        close(
            aupr_out(&neg_flipped, &pos_flipped, PrArea::Trapezoidal).unwrap(),
            r.aupr_in,
        );
        close(auroc(pos, neg).unwrap(), 1.0 - r.auroc);
    }

    // ref([0.1, 0.3, 0.3, 0.5, 0.7], [0.3, 0.5, 0.5, 0.9, 0.2, 0.7])
    // -> auroc 0.65, ap_out 0.6925925925925925, ap_in 0.6399999999999999,
    //    aupr_out 0.7259259259259259, aupr_in 0.6300000000000001, fpr 0.8, tpr 1.0, thr 0.2
    const TIES_NEG: [f64; 5] = [0.1, 0.3, 0.3, 0.5, 0.7];
    const TIES_POS: [f64; 6] = [0.3, 0.5, 0.5, 0.9, 0.2, 0.7];

    #[test]
    fn small_case_with_ties_matches_sklearn() {
        let r = Ref {
            auroc: 0.65,
            ap_out: 0.6925925925925925,
            ap_in: 0.6399999999999999,
            aupr_out: 0.7259259259259259,
            aupr_in: 0.6300000000000001,
            fpr: 0.8,
            tpr: 1.0,
            thr: 0.2,
        };
        check(&TIES_NEG, &TIES_POS, 0.95, &r);
    }

    // rng = np.random.default_rng(42)
    // neg = np.round(rng.normal(0.0, 1.0, 30), 3); pos = np.round(rng.normal(1.0, 1.0, 25), 3)
    // ref(neg, pos)
    // -> auroc 0.8453333333333334, ap_out 0.8550857782594627, ap_in 0.8649511722016098,
    //    aupr_out 0.8524929983897389, aupr_in 0.8619726476008814,
    //    fpr 0.4666666666666667, tpr 0.96, thr 0.16
    const RAND_NEG: [f64; 30] = [
        0.305, -1.04, 0.75, 0.941, -1.951, -1.302, 0.128, -0.316, -0.017, -0.853, 0.879, 0.778,
        0.066, 1.127, 0.468, -0.859, 0.369, -0.959, 0.878, -0.05, -0.185, -0.681, 1.223, -0.155,
        -0.428, -0.352, 0.532, 0.365, 0.413, 0.431,
    ];
    #[allow(clippy::approx_constant, reason = "3.142 is a random draw, not pi")]
    const RAND_POS: [f64; 25] = [
        3.142, 0.594, 0.488, 0.186, 1.616, 2.129, 0.886, 0.16, 0.176, 1.651, 1.743, 1.543, 0.334,
        1.232, 1.117, 1.219, 1.871, 1.224, 1.679, 1.068, 1.289, 1.631, -0.457, 0.68, 0.53,
    ];

    #[test]
    fn random_scores_match_sklearn() {
        let r = Ref {
            auroc: 0.8453333333333334,
            ap_out: 0.8550857782594627,
            ap_in: 0.8649511722016098,
            aupr_out: 0.8524929983897389,
            aupr_in: 0.8619726476008814,
            fpr: 0.4666666666666667,
            tpr: 0.96,
            thr: 0.16,
        };
        check(&RAND_NEG, &RAND_POS, 0.95, &r);
    }

    // rng = np.random.default_rng(7)
    // negt = np.round(rng.normal(0.0, 1.0, 40), 1); post = np.round(rng.normal(0.8, 1.0, 40), 1)
    // (many ties, and both 0.0 and -0.0, which sklearn treats as one threshold)
    const TIED_NEG: [f64; 40] = [
        0.0, 0.3, -0.3, -0.9, -0.5, -1.0, 0.1, 1.3, -0.5, -0.6, 0.5, 0.4, 0.1, -0.9, -0.0, 0.7,
        -1.3, -0.5, -1.9, -1.3, -1.8, -0.2, -1.3, 0.3, 0.2, -0.2, -2.5, -0.5, -0.0, 0.1, -1.5,
        -0.5, -1.0, -0.8, 1.1, -0.8, -0.0, 0.9, -0.6, -0.1,
    ];
    const TIED_POS: [f64; 40] = [
        0.9, 0.9, -0.4, 0.9, 2.2, -0.7, 1.7, 0.9, 0.2, 2.8, 1.6, -0.4, 0.9, 1.4, 0.6, 1.5, 0.7,
        1.5, 2.2, 0.1, 1.0, 0.3, 0.9, -0.4, 0.2, 0.6, 1.7, 1.9, -0.5, 0.0, 1.4, -1.2, 0.3, 0.7,
        2.1, 1.5, 0.5, 0.4, 0.5, 2.3,
    ];

    #[test]
    fn random_tied_scores_match_sklearn() {
        // ref(negt, post)
        // -> auroc 0.8471874999999999, ap_out 0.8578469404951408, ap_in 0.8374193091189465,
        //    aupr_out 0.8613588497369122, aupr_in 0.8382972687404102,
        //    fpr 0.625, tpr 0.95, thr -0.5
        let r = Ref {
            auroc: 0.8471874999999999,
            ap_out: 0.8578469404951408,
            ap_in: 0.8374193091189465,
            aupr_out: 0.8613588497369122,
            aupr_in: 0.8382972687404102,
            fpr: 0.625,
            tpr: 0.95,
            thr: -0.5,
        };
        check(&TIED_NEG, &TIED_POS, 0.95, &r);
        // ref(negt, post, 0.9) -> fpr 0.5, tpr 0.925, thr -0.4 (areas as above)
        let r90 = Ref {
            fpr: 0.5,
            tpr: 0.925,
            thr: -0.4,
            ..r
        };
        check(&TIED_NEG, &TIED_POS, 0.9, &r90);
    }

    #[test]
    fn ood_metrics_bundles_trapezoidal_aupr_and_fpr95() {
        // ref(negt, post) as in `random_tied_scores_match_sklearn`.
        let m = ood_metrics(&TIED_NEG, &TIED_POS).unwrap();
        close(m.auroc, 0.8471874999999999);
        close(m.aupr_in, 0.8382972687404102);
        close(m.aupr_out, 0.8613588497369122);
        close(m.fpr_at_95_tpr, 0.625);
        // ref(neg, pos) for the default_rng(42) data.
        let m = ood_metrics(&RAND_NEG, &RAND_POS).unwrap();
        close(m.auroc, 0.8453333333333334);
        close(m.aupr_in, 0.8619726476008814);
        close(m.aupr_out, 0.8524929983897389);
        close(m.fpr_at_95_tpr, 0.4666666666666667);
    }

    #[test]
    fn degenerate_inputs_match_sklearn() {
        // (neg, pos, ref(neg, pos)); each comment lists auroc, ap_out, ap_in, aupr_out,
        // aupr_in, fpr, tpr, thr in that order.
        let cases: [(&[f64], &[f64], Ref); 6] = [
            // ref([0.5]*4, [0.5]*3)
            // -> 0.5, 0.42857142857142855, 0.5714285714285714, 0.7142857142857143,
            //    0.7857142857142857, 1.0, 1.0, 0.5
            (
                &[0.5; 4],
                &[0.5; 3],
                Ref {
                    auroc: 0.5,
                    ap_out: 0.42857142857142855,
                    ap_in: 0.5714285714285714,
                    aupr_out: 0.7142857142857143,
                    aupr_in: 0.7857142857142857,
                    fpr: 1.0,
                    tpr: 1.0,
                    thr: 0.5,
                },
            ),
            // ref([0.2], [0.8]) -> 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.8
            (
                &[0.2],
                &[0.8],
                Ref {
                    auroc: 1.0,
                    ap_out: 1.0,
                    ap_in: 1.0,
                    aupr_out: 1.0,
                    aupr_in: 1.0,
                    fpr: 0.0,
                    tpr: 1.0,
                    thr: 0.8,
                },
            ),
            // ref([0.8], [0.2]) -> 0.0, 0.5, 0.5, 0.25, 0.25, 1.0, 1.0, 0.2
            (
                &[0.8],
                &[0.2],
                Ref {
                    auroc: 0.0,
                    ap_out: 0.5,
                    ap_in: 0.5,
                    aupr_out: 0.25,
                    aupr_in: 0.25,
                    fpr: 1.0,
                    tpr: 1.0,
                    thr: 0.2,
                },
            ),
            // ref([0.5], [0.5]) -> 0.5, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 0.5
            (
                &[0.5],
                &[0.5],
                Ref {
                    auroc: 0.5,
                    ap_out: 0.5,
                    ap_in: 0.5,
                    aupr_out: 0.75,
                    aupr_in: 0.75,
                    fpr: 1.0,
                    tpr: 1.0,
                    thr: 0.5,
                },
            ),
            // ref([0.1, 0.2, 0.3], [0.4, 0.5]) -> 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.4
            (
                &[0.1, 0.2, 0.3],
                &[0.4, 0.5],
                Ref {
                    auroc: 1.0,
                    ap_out: 1.0,
                    ap_in: 1.0,
                    aupr_out: 1.0,
                    aupr_in: 1.0,
                    fpr: 0.0,
                    tpr: 1.0,
                    thr: 0.4,
                },
            ),
            // ref([0.4, 0.5], [0.1, 0.2, 0.3])
            // -> 0.0, 0.4777777777777778, 0.325, 0.37777777777777777, 0.225, 1.0, 1.0, 0.1
            (
                &[0.4, 0.5],
                &[0.1, 0.2, 0.3],
                Ref {
                    auroc: 0.0,
                    ap_out: 0.4777777777777778,
                    ap_in: 0.325,
                    aupr_out: 0.37777777777777777,
                    aupr_in: 0.225,
                    fpr: 1.0,
                    tpr: 1.0,
                    thr: 0.1,
                },
            ),
        ];
        for (neg, pos, r) in &cases {
            check(neg, pos, 0.95, r);
        }
    }

    #[test]
    fn fpr95_crossing_inside_a_tie_group_flags_the_whole_group() {
        // 18 positives above everything; the last 2 positives tie with 3 negatives at 0.0,
        // so TPR jumps from 0.9 to 1.0 at threshold 0.0 and all 3 tied negatives count.
        // ref([0.0, 0.0, 0.0, -1.0, -2.0, 0.5], [float(i) for i in range(1, 19)] + [0.0, 0.0])
        // -> auroc 0.9583333333333334, ap_out 0.9833333333333336, ap_in 0.8154761904761904,
        //    aupr_out 0.9890350877192986, aupr_in 0.8839285714285714,
        //    fpr 0.6666666666666666, tpr 1.0, thr 0.0
        let neg = [0.0, 0.0, 0.0, -1.0, -2.0, 0.5];
        let mut pos: Vec<f64> = (1..19).map(f64::from).collect();
        pos.extend([0.0, 0.0]);
        let r = Ref {
            auroc: 0.9583333333333334,
            ap_out: 0.9833333333333336,
            ap_in: 0.8154761904761904,
            aupr_out: 0.9890350877192986,
            aupr_in: 0.8839285714285714,
            fpr: 0.6666666666666666,
            tpr: 1.0,
            thr: 0.0,
        };
        check(&neg, &pos, 0.95, &r);
    }

    #[test]
    fn fpr95_is_exact_not_roc_curve_drop_intermediate() {
        // neg = [0.5, 0.4, 0.0, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7]
        // pos = [float(i) for i in range(1, 19)] + [0.5, 0.4]
        // y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]; s = np.r_[neg, pos]
        // for di in (False, True):
        //     fpr, tpr, thr = roc_curve(y, s, drop_intermediate=di)
        //     i = np.argmax(tpr >= 0.95); print(di, fpr[i], tpr[i], thr[i])
        // -> False 0.1 0.95 0.5
        // -> True 0.2 1.0 0.4   (sklearn's default drops the collinear point at 0.5)
        let neg = [0.5, 0.4, 0.0, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7];
        let mut pos: Vec<f64> = (1..19).map(f64::from).collect();
        pos.extend([0.5, 0.4]);
        let point = operating_point_at_tpr(&neg, &pos, 0.95).unwrap();
        assert_eq!(
            point,
            OperatingPoint {
                threshold: 0.5,
                tpr: 0.95,
                fpr: 0.1
            }
        );
    }

    #[test]
    fn target_tpr_edges() {
        // Target 0 is the (+inf, TPR 0, FPR 0) point that starts sklearn's roc_curve.
        let p0 = operating_point_at_tpr(&TIES_NEG, &TIES_POS, 0.0).unwrap();
        assert_eq!(
            p0,
            OperatingPoint {
                threshold: f64::INFINITY,
                tpr: 0.0,
                fpr: 0.0
            }
        );
        // Target 1 is the lowest positive score, 0.2, flagging 4 of the 5 negatives.
        let p1 = operating_point_at_tpr(&TIES_NEG, &TIES_POS, 1.0).unwrap();
        assert_eq!(
            p1,
            OperatingPoint {
                threshold: 0.2,
                tpr: 1.0,
                fpr: 0.8
            }
        );
    }

    #[test]
    fn tpr_fpr_at_threshold_matches_sklearn_confusion_matrix() {
        // neg = [0.1, 0.3, 0.3, 0.5, 0.7]; pos = [0.3, 0.5, 0.5, 0.9, 0.2, 0.7]
        // y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]; s = np.r_[neg, pos]
        // for t in (0.3, 0.5, 0.0, 1.0, 0.7):
        //     tn, fp, fn, tp = confusion_matrix(y, s >= t, labels=[0, 1]).ravel()
        //     print(t, tp / (tp + fn), fp / (fp + tn))
        let expected = [
            (0.3, 0.8333333333333334, 0.8),
            (0.5, 0.6666666666666666, 0.4),
            (0.0, 1.0, 1.0),
            (1.0, 0.0, 0.0),
            (0.7, 0.3333333333333333, 0.2),
        ];
        for (t, tpr, fpr) in expected {
            let point = tpr_fpr_at_threshold(&TIES_NEG, &TIES_POS, t).unwrap();
            assert_eq!(point.threshold, t);
            close(point.tpr, tpr);
            close(point.fpr, fpr);
        }
        let all = tpr_fpr_at_threshold(&TIES_NEG, &TIES_POS, f64::NEG_INFINITY).unwrap();
        assert_eq!((all.tpr, all.fpr), (1.0, 1.0));
        let none = tpr_fpr_at_threshold(&TIES_NEG, &TIES_POS, f64::INFINITY).unwrap();
        assert_eq!((none.tpr, none.fpr), (0.0, 0.0));
    }

    // Independent brute-force reference for `threshold_for_fpr`:
    //
    // def threshold_for_fpr_ref(benign, target):
    //     b = np.asarray(benign, dtype=float)
    //     ok = [v for v in np.unique(b) if np.mean(b >= v) <= target]
    //     return float(min(ok)) if ok else float(np.nextafter(b.max(), np.inf))

    #[test]
    fn threshold_for_fpr_matches_brute_force_on_tied_scores() {
        // for t in (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.9, 1.0):
        //     th = threshold_for_fpr_ref(negt, t); print(t, th, np.mean(negt >= th))
        let expected = [
            (0.0, 1.3000000000000003, 0.0),
            (0.01, 1.3000000000000003, 0.0),
            (0.05, 1.1, 0.05),
            (0.1, 0.7, 0.1),
            (0.25, 0.2, 0.225),
            (0.5, -0.3, 0.5),
            (0.9, -1.3, 0.9),
            (1.0, -2.5, 1.0),
        ];
        for (target, threshold, achieved) in expected {
            let t = threshold_for_fpr(&TIED_NEG, target).unwrap();
            assert_eq!(t, threshold, "target {target}");
            close(flag_rate(&TIED_NEG, t).unwrap(), achieved);
        }
        assert_eq!(threshold_for_fpr(&TIED_NEG, 0.0).unwrap(), 1.3f64.next_up());
    }

    #[test]
    fn threshold_for_fpr_never_splits_ties() {
        // small = [1.0, 2.0, 2.0, 2.0, 3.0]
        // for t in (0.0, 0.2, 0.5, 0.6, 0.8, 1.0):
        //     th = threshold_for_fpr_ref(small, t); print(t, th, np.mean(np.asarray(small) >= th))
        // -> 3.0000000000000004 0.0 | 3.0 0.2 | 3.0 0.2 | 3.0 0.2 | 2.0 0.8 | 1.0 1.0
        let small = [1.0, 2.0, 2.0, 2.0, 3.0];
        let expected = [
            (0.0, 3.0000000000000004, 0.0),
            (0.2, 3.0, 0.2),
            (0.5, 3.0, 0.2),
            (0.6, 3.0, 0.2),
            (0.8, 2.0, 0.8),
            (1.0, 1.0, 1.0),
        ];
        for (target, threshold, achieved) in expected {
            let t = threshold_for_fpr(&small, target).unwrap();
            assert_eq!(t, threshold, "target {target}");
            close(flag_rate(&small, t).unwrap(), achieved);
        }
        // A single distinct value: only "flag nothing" or "flag everything".
        assert_eq!(threshold_for_fpr(&[4.0; 3], 0.9).unwrap(), 4.0f64.next_up());
        assert_eq!(threshold_for_fpr(&[4.0; 3], 1.0).unwrap(), 4.0);
    }

    #[test]
    fn split_scores_from_labels_gives_the_same_metrics() {
        // The TIES case interleaved; labels True = positive. Same sklearn values as
        // `small_case_with_ties_matches_sklearn` (sklearn is order-invariant).
        let scores = [0.3, 0.1, 0.5, 0.3, 0.5, 0.3, 0.9, 0.5, 0.2, 0.7, 0.7];
        let labels = [
            true, false, true, false, true, false, true, false, true, false, true,
        ];
        let split = SplitScores::from_labels(&scores, &labels).unwrap();
        assert_eq!(split.negatives, [0.1, 0.3, 0.3, 0.5, 0.7]);
        assert_eq!(split.positives, [0.3, 0.5, 0.5, 0.9, 0.2, 0.7]);
        let m = ood_metrics(&split.negatives, &split.positives).unwrap();
        close(m.auroc, 0.65);
        close(m.aupr_in, 0.6300000000000001);
        close(m.aupr_out, 0.7259259259259259);
        close(m.fpr_at_95_tpr, 0.8);
    }

    #[test]
    fn accuracy_and_asr_match_sklearn_accuracy_score() {
        // pred = [0, 1, 2, 2, 1, 0, 3]; lab = [0, 1, 1, 2, 1, 3, 3]
        // accuracy_score(lab, pred) -> 0.7142857142857143
        // accuracy_score([0] * 7, pred) -> 0.2857142857142857
        let pred = [0u32, 1, 2, 2, 1, 0, 3];
        let labels = [0u32, 1, 1, 2, 1, 3, 3];
        close(accuracy(&pred, &labels).unwrap(), 0.7142857142857143);
        close(
            attack_success_rate(&pred, &[0u32; 7]).unwrap(),
            0.2857142857142857,
        );
    }

    // BackdoorBench utils/metric.py, verbatim:
    //
    // def defense_effectiveness_rate_simplied(acc_bd, acc_defnese, asr_bd, asr_defense):
    //     return (max(0, asr_bd - asr_defense) - max(0, acc_bd - acc_defnese) + 1) / 2
    //
    // and its sign-flipped twin `defense_effectiveness_rate`, reduced to rates:
    //
    // def buggy(acc_bd, acc_def, asr_bd, asr_def):
    //     return (max(0, asr_bd - asr_def) + max(0, acc_bd - acc_def) + 1) / 2

    #[test]
    fn der_matches_backdoorbench_simplied() {
        // (acc_bd, acc_def, asr_bd, asr_def) -> simplied, buggy
        // (0.9, 0.85, 0.95, 0.1) -> 0.8999999999999999, 0.95
        // (0.9, 0.92, 0.3, 0.4)  -> 0.5, 0.5
        // (0.93, 0.5, 1.0, 0.0)  -> 0.7849999999999999, 1.215
        let cases = [
            (0.9, 0.85, 0.95, 0.1, 0.8999999999999999),
            (0.9, 0.92, 0.3, 0.4, 0.5),
            (0.93, 0.5, 1.0, 0.0, 0.7849999999999999),
        ];
        for (acc_bd, acc_def, asr_bd, asr_def, der) in cases {
            let before = BackdoorRates {
                acc: acc_bd,
                asr: asr_bd,
            };
            let after = BackdoorRates {
                acc: acc_def,
                asr: asr_def,
            };
            close(defense_effectiveness_rating(before, after).unwrap(), der);
        }
    }

    #[test]
    fn roc_curve_matches_sklearn_with_ties() {
        // from sklearn.metrics import roc_curve
        // y = [0]*5 + [1]*4; s = [0.1,0.4,0.35,0.8,0.4] + [0.9,0.4,0.65,0.8]
        // roc_curve(y, s, drop_intermediate=False)[:2]
        // -> fpr [0, 0, .2, .2, .6, .8, 1], tpr [0, .25, .5, .75, 1, 1, 1]
        let points = roc_curve(&[0.1, 0.4, 0.35, 0.8, 0.4], &[0.9, 0.4, 0.65, 0.8]).unwrap();
        let fpr = [0.0, 0.0, 0.2, 0.2, 0.6, 0.8, 1.0];
        let tpr = [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0];
        assert_eq!(points.len(), fpr.len());
        for ((f, t), (ef, et)) in points.iter().zip(fpr.iter().zip(tpr)) {
            assert!(
                (f - ef).abs() < 1e-12 && (t - et).abs() < 1e-12,
                "{points:?}"
            );
        }
        assert!(roc_curve(&[], &[1.0]).is_err());
    }

    #[test]
    fn tie_breaks_fill_the_target_rate_exactly() {
        // A score with two values, 10% of them high: the conservative threshold (just above 1)
        // flags none; half of the high ones at random reach 5%.
        let mut benign = vec![0.0; 90];
        benign.extend([1.0; 10]);
        let t = threshold_for_fpr(&benign, 0.05).unwrap();
        assert!(t > 1.0);
        let tie = tie_break_for_fpr(&benign, t, 0.05).unwrap().unwrap();
        assert_eq!(tie.below, 1.0);
        assert!((tie.fraction - 0.5).abs() < 1e-12);
        // 100 distinct scores: the 5th highest flags exactly 5%, nothing to add.
        let distinct: Vec<f64> = (0..100).map(f64::from).collect();
        let t = threshold_for_fpr(&distinct, 0.05).unwrap();
        assert_eq!(t, 95.0);
        assert_eq!(tie_break_for_fpr(&distinct, t, 0.05).unwrap(), None);
        // At 5.5%, half of the next score (share 1%) is added.
        let t = threshold_for_fpr(&distinct, 0.055).unwrap();
        let tie = tie_break_for_fpr(&distinct, t, 0.055).unwrap().unwrap();
        assert_eq!(tie.below, 94.0);
        assert!((tie.fraction - 0.5).abs() < 1e-9, "{tie:?}");
        // Nothing under the threshold: nothing to add.
        assert_eq!(tie_break_for_fpr(&[1.0], 1.0, 0.5).unwrap(), None);
    }

    #[test]
    fn rejection_der_counts_rejected_inputs_as_failures() {
        // correct = np.array([1,1,1,1,1,1,1,1,0,0], bool)
        // cflag   = np.array([0,0,0,0,0,0,1,1,1,0], bool)
        // hit     = np.array([1,1,1,1,1,1,1,0], bool)
        // tflag   = np.array([1,1,1,1,1,0,0,1], bool)
        // acc_b, acc_a = correct.mean(), (correct & ~cflag).mean()
        // asr_b, asr_a = hit.mean(), (hit & ~tflag).mean()
        // -> 0.8 0.6 0.875 0.25;
        // defense_effectiveness_rate_simplied(acc_b, acc_a, asr_b, asr_a) -> 0.7124999999999999
        let correct = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
        let cflag = [0, 0, 0, 0, 0, 0, 1, 1, 1, 0];
        let hit = [1, 1, 1, 1, 1, 1, 1, 0];
        let tflag = [1, 1, 1, 1, 1, 0, 0, 1];
        let clean: Vec<CleanOutcome> = correct
            .iter()
            .zip(cflag)
            .map(|(&c, f)| CleanOutcome {
                correct: c == 1,
                flagged: f == 1,
            })
            .collect();
        let triggered: Vec<TriggeredOutcome> = hit
            .iter()
            .zip(tflag)
            .map(|(&h, f)| TriggeredOutcome {
                hit_target: h == 1,
                flagged: f == 1,
            })
            .collect();
        let r = rejection_der(&clean, &triggered).unwrap();
        close(r.before.acc, 0.8);
        close(r.after.acc, 0.6);
        close(r.before.asr, 0.875);
        close(r.after.asr, 0.25);
        close(r.der, 0.7124999999999999);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let empty: [f64; 0] = [];
        assert_eq!(
            auroc(&empty, &[1.0]),
            Err(MetricsError::Empty { what: "negatives" })
        );
        assert_eq!(
            ood_metrics(&[1.0], &empty),
            Err(MetricsError::Empty { what: "positives" })
        );
        let nan = auroc(&[0.0, f64::NAN], &[1.0]).unwrap_err();
        assert!(matches!(
            nan,
            MetricsError::NonFiniteScore {
                what: "negatives",
                index: 1,
                ..
            }
        ));
        assert!(matches!(
            aupr_in(&[0.0], &[f64::INFINITY], PrArea::Trapezoidal),
            Err(MetricsError::NonFiniteScore {
                what: "positives",
                index: 0,
                ..
            })
        ));
        assert_eq!(
            tpr_fpr_at_threshold(&[0.0], &[1.0], f64::NAN),
            Err(MetricsError::NanThreshold)
        );
        for bad in [-0.1, 1.5, f64::NAN] {
            assert!(matches!(
                fpr_at_tpr(&[0.0], &[1.0], bad),
                Err(MetricsError::RateOutOfRange {
                    what: "target_tpr",
                    ..
                })
            ));
            assert!(matches!(
                threshold_for_fpr(&[0.0], bad),
                Err(MetricsError::RateOutOfRange {
                    what: "target_fpr",
                    ..
                })
            ));
        }
        assert_eq!(
            threshold_for_fpr(&empty, 0.1),
            Err(MetricsError::Empty { what: "benign" })
        );
        assert!(matches!(
            SplitScores::from_labels(&[0.0, f64::NAN], &[true, false]),
            Err(MetricsError::NonFiniteScore {
                what: "scores",
                index: 1,
                ..
            })
        ));
        assert_eq!(
            SplitScores::from_labels(&[0.0], &[true, false]),
            Err(MetricsError::LengthMismatch {
                left_name: "scores",
                left: 1,
                right_name: "is_positive",
                right: 2
            })
        );
        assert_eq!(
            accuracy(&[1, 2], &[1]),
            Err(MetricsError::LengthMismatch {
                left_name: "predictions",
                left: 2,
                right_name: "labels",
                right: 1
            })
        );
        assert_eq!(
            attack_success_rate::<u8>(&[], &[]),
            Err(MetricsError::Empty {
                what: "predictions"
            })
        );
        let ok = BackdoorRates { acc: 0.9, asr: 0.9 };
        let bad = BackdoorRates { acc: 0.9, asr: 1.2 };
        assert!(matches!(
            defense_effectiveness_rating(ok, bad),
            Err(MetricsError::RateOutOfRange {
                what: "after.asr",
                ..
            })
        ));
        assert_eq!(
            rejection_der(&[], &[]),
            Err(MetricsError::Empty { what: "clean" })
        );
    }

    #[test]
    fn summary_structs_are_serializable() {
        fn assert_serialize<T: Serialize>() {}
        assert_serialize::<OodMetrics>();
        assert_serialize::<OperatingPoint>();
        assert_serialize::<RejectionDer>();
        // The error message names the input.
        let e = MetricsError::Empty { what: "negatives" };
        assert_eq!(e.to_string(), "negatives is empty");
    }
}

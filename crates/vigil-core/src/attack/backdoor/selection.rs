//! Which training samples a poisoning attack alters, as BackdoorBench chooses them.
//!
//! Followed: SCLBD/BackdoorBench `utils/backdoor_generate_poison_index.py`
//! (`generate_poison_index_from_label_transform` and
//! `generate_single_target_attack_train_poison_index`, commit
//! `3f4b1a92ed6c13e0cd21534df56155cf3ef71f87`), called from `attack/badnet.py` (poison-label)
//! and `attack/sig.py` (`clean_label=True`) at the same commit. What it does with `pratio`:
//!
//! - The number of poisoned samples is always `round(pratio * N)` with `N` the size of the
//!   WHOLE training set, also for clean-label attacks (its log warns: "poisoning ratio is ALWAYS
//!   defined as number of poisoning samples / number of all samples"). Python's `round` rounds
//!   halves to even; so does vigil.
//! - All-to-one, poison-label: the samples are drawn without replacement from ALL samples,
//!   target class included (its comment: "all2one non-clean-label case NO NEED TO AVOID target
//!   class img"); a target-class sample drawn gets the trigger and keeps its label. vigil's
//!   default ([`CandidatePool::BackdoorBench`]) does the same;
//!   [`CandidatePool::NonTargetOnly`] draws only from non-target classes (every poisoned sample
//!   then really has its label flipped), with the count still relative to the whole set.
//! - All-to-all: drawn from all samples.
//! - Clean-label (all-to-one only): drawn from the target-class samples. If the count exceeds
//!   them, BackdoorBench's `np.random.choice(..., replace=False)` raises (despite its log
//!   message about capping); vigil returns [`AttackError::InvalidConfig`]. With the defaults
//!   (CIFAR-10, rate 0.1) the count is 5,000 = the whole target class.
//! - A count of 0 makes BackdoorBench exit in the all-to-one case ("No poison sample
//!   generated"); vigil returns an empty selection (a clean run), which is what a rate of 0
//!   asks for.
//!
//! The random draw itself differs: BackdoorBench uses numpy's global generator, vigil a
//! `StdRng` seeded with the given seed, so the same seed does not pick the same samples as
//! BackdoorBench; counts and candidate pools are identical.

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::{AttackError, LabelMode, TargetRule};
use crate::data::{ImageSet, Label};

/// Name used in the [`AttackError::InvalidConfig`] errors of this module.
const SELECTION: &str = "poison selection";

/// Which samples a poison-label all-to-one attack may draw from. (All-to-all always draws from
/// every sample and clean-label always from the target class.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CandidatePool {
    /// Every sample, target class included (BackdoorBench's behaviour).
    #[default]
    BackdoorBench,
    /// Only samples whose label is not the target.
    NonTargetOnly,
}

/// BackdoorBench's choice of the training samples to poison: `round(rate * train.len())`
/// distinct indices, ascending, drawn with `StdRng::seed_from_u64(seed)`; see the module
/// documentation for the candidate pool of each case. Same as
/// [`select_poison_indices_from_pool`] with [`CandidatePool::BackdoorBench`].
///
/// Fails with [`AttackError::InvalidConfig`] if `rate` is not in `[0, 1]`, the all-to-one
/// target is not a class of `train`, `mode` is clean-label with an all-to-all rule, or the
/// count exceeds the candidates.
pub fn select_poison_indices(
    train: &ImageSet,
    rule: TargetRule,
    mode: LabelMode,
    rate: f64,
    seed: u64,
) -> Result<Vec<usize>, AttackError> {
    select_poison_indices_from_pool(train, rule, mode, rate, seed, CandidatePool::BackdoorBench)
}

/// [`select_poison_indices`] with a choice of candidate pool for poison-label all-to-one
/// attacks (`pool` is ignored in the other cases).
pub fn select_poison_indices_from_pool(
    train: &ImageSet,
    rule: TargetRule,
    mode: LabelMode,
    rate: f64,
    seed: u64,
    pool: CandidatePool,
) -> Result<Vec<usize>, AttackError> {
    let count = poison_count(train.len(), rate)?;
    let candidates = candidate_indices(train, rule, mode, pool)?;
    if count > candidates.len() {
        return Err(invalid(format!(
            "rate {rate} asks for {count} of {} samples but only {} are candidates ({})",
            train.len(),
            candidates.len(),
            describe_pool(rule, mode, pool)
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut chosen: Vec<usize> = rand::seq::index::sample(&mut rng, candidates.len(), count)
        .into_iter()
        .map(|position| candidates[position])
        .collect();
    chosen.sort_unstable();
    Ok(chosen)
}

/// `round(rate * total)` with halves to even (Python's `round`), after checking the rate.
pub(crate) fn poison_count(total: usize, rate: f64) -> Result<usize, AttackError> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(invalid(format!("poisoning rate {rate} is not in [0, 1]")));
    }
    Ok((rate * total as f64).round_ties_even() as usize)
}

/// The indices a selection may draw from, ascending.
fn candidate_indices(
    train: &ImageSet,
    rule: TargetRule,
    mode: LabelMode,
    pool: CandidatePool,
) -> Result<Vec<usize>, AttackError> {
    let all = || (0..train.len()).collect::<Vec<_>>();
    let with_label = |keep: &dyn Fn(Label) -> bool| -> Vec<usize> {
        (0..train.len())
            .filter(|&index| keep(train.label(index)))
            .collect()
    };
    match (rule, mode) {
        (TargetRule::Untargeted, _) => Err(invalid(
            "a backdoor needs a target rule (all-to-one or all-to-all), not untargeted".to_string(),
        )),
        (TargetRule::AllToAll, LabelMode::CleanLabel) => Err(invalid(
            "a clean-label attack needs an all-to-one target (BackdoorBench supports clean-label \
             only for all-to-one)"
                .to_string(),
        )),
        (TargetRule::AllToAll, LabelMode::PoisonLabel) => Ok(all()),
        (TargetRule::AllToOne { target }, _) if usize::from(target) >= train.num_classes() => {
            Err(invalid(format!(
                "target class {target} does not exist ({} classes)",
                train.num_classes()
            )))
        }
        (TargetRule::AllToOne { target }, LabelMode::CleanLabel) => {
            Ok(with_label(&|label| label == target))
        }
        (TargetRule::AllToOne { target }, LabelMode::PoisonLabel) => match pool {
            CandidatePool::BackdoorBench => Ok(all()),
            CandidatePool::NonTargetOnly => Ok(with_label(&|label| label != target)),
        },
    }
}

/// Human-readable description of the candidate pool, for errors.
fn describe_pool(rule: TargetRule, mode: LabelMode, pool: CandidatePool) -> &'static str {
    match (rule, mode, pool) {
        (TargetRule::AllToOne { .. }, LabelMode::CleanLabel, _) => "target-class samples",
        (TargetRule::AllToOne { .. }, LabelMode::PoisonLabel, CandidatePool::NonTargetOnly) => {
            "non-target-class samples"
        }
        _ => "all samples",
    }
}

/// An [`AttackError::InvalidConfig`] of the selection.
fn invalid(reason: String) -> AttackError {
    AttackError::InvalidConfig {
        attack: SELECTION.to_string(),
        reason,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::ImageShape;

    /// `per_class` images of each of `classes` classes, labels interleaved (0, 1, 2, 0, ...),
    /// 1x2x2 images filled with their index / 1000.
    pub(crate) fn labelled_set(classes: usize, per_class: usize) -> ImageSet {
        let count = classes * per_class;
        let labels: Vec<Label> = (0..count).map(|i| (i % classes) as Label).collect();
        let shape = ImageShape::new(1, 2, 2);
        let pixels = (0..count)
            .flat_map(|i| std::iter::repeat_n(i as f32 / 1000.0, shape.num_values()))
            .collect();
        let names = (0..classes).map(|c| format!("c{c}")).collect();
        ImageSet::new(pixels, labels, shape, names, "labelled").unwrap()
    }

    const ALL_TO_ONE_0: TargetRule = TargetRule::AllToOne { target: 0 };

    #[test]
    fn count_is_rate_times_whole_set() {
        let train = labelled_set(10, 50); // 500 samples
        for (rule, mode) in [
            (ALL_TO_ONE_0, LabelMode::PoisonLabel),
            (TargetRule::AllToAll, LabelMode::PoisonLabel),
            (ALL_TO_ONE_0, LabelMode::CleanLabel),
        ] {
            let chosen = select_poison_indices(&train, rule, mode, 0.1, 3).unwrap();
            assert_eq!(chosen.len(), 50, "{rule:?} {mode:?}");
            assert!(chosen.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }

    #[test]
    fn count_rounds_half_to_even_like_python() {
        // round(0.25 * 10) = round(2.5) = 2 and round(0.35 * 10) = round(3.5) = 4 in Python.
        assert_eq!(poison_count(10, 0.25).unwrap(), 2);
        assert_eq!(poison_count(10, 0.35).unwrap(), 4);
        assert_eq!(poison_count(50_000, 0.1).unwrap(), 5_000);
        assert_eq!(poison_count(7, 0.0).unwrap(), 0);
        assert_eq!(poison_count(7, 1.0).unwrap(), 7);
    }

    #[test]
    fn poison_label_all_to_one_draws_from_every_class_by_default() {
        let train = labelled_set(2, 100);
        let chosen =
            select_poison_indices(&train, ALL_TO_ONE_0, LabelMode::PoisonLabel, 0.5, 1).unwrap();
        assert_eq!(chosen.len(), 100);
        assert!(chosen.iter().any(|&i| train.label(i) == 0));
        assert!(chosen.iter().any(|&i| train.label(i) == 1));
    }

    #[test]
    fn non_target_pool_never_draws_the_target_class() {
        let train = labelled_set(4, 50);
        let rule = TargetRule::AllToOne { target: 2 };
        let chosen = select_poison_indices_from_pool(
            &train,
            rule,
            LabelMode::PoisonLabel,
            0.3,
            9,
            CandidatePool::NonTargetOnly,
        )
        .unwrap();
        assert_eq!(chosen.len(), 60);
        assert!(chosen.iter().all(|&i| train.label(i) != 2));
        let too_many = select_poison_indices_from_pool(
            &train,
            rule,
            LabelMode::PoisonLabel,
            0.8,
            9,
            CandidatePool::NonTargetOnly,
        );
        assert!(matches!(too_many, Err(AttackError::InvalidConfig { .. })));
    }

    #[test]
    fn clean_label_draws_only_the_target_class() {
        let train = labelled_set(10, 30);
        let rule = TargetRule::AllToOne { target: 3 };
        let chosen = select_poison_indices(&train, rule, LabelMode::CleanLabel, 0.1, 5).unwrap();
        assert_eq!(chosen.len(), 30);
        assert!(chosen.iter().all(|&i| train.label(i) == 3));
    }

    #[test]
    fn clean_label_rejects_more_than_the_target_class_holds() {
        let train = labelled_set(10, 30);
        let err = select_poison_indices(&train, ALL_TO_ONE_0, LabelMode::CleanLabel, 0.11, 5)
            .unwrap_err();
        assert!(matches!(err, AttackError::InvalidConfig { .. }));
        assert!(err.to_string().contains("target-class"), "{err}");
    }

    #[test]
    fn clean_label_all_to_all_is_rejected() {
        let train = labelled_set(3, 10);
        let err =
            select_poison_indices(&train, TargetRule::AllToAll, LabelMode::CleanLabel, 0.1, 0);
        assert!(matches!(err, Err(AttackError::InvalidConfig { .. })));
    }

    #[test]
    fn rate_and_target_are_validated() {
        let train = labelled_set(3, 10);
        for rate in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let result =
                select_poison_indices(&train, ALL_TO_ONE_0, LabelMode::PoisonLabel, rate, 0);
            assert!(
                matches!(result, Err(AttackError::InvalidConfig { .. })),
                "{rate}"
            );
        }
        let bad_target = TargetRule::AllToOne { target: 3 };
        let result = select_poison_indices(&train, bad_target, LabelMode::PoisonLabel, 0.1, 0);
        assert!(matches!(result, Err(AttackError::InvalidConfig { .. })));
        // An input attack's rule names no target: a backdoor cannot use it.
        for mode in [LabelMode::PoisonLabel, LabelMode::CleanLabel] {
            let result = select_poison_indices(&train, TargetRule::Untargeted, mode, 0.1, 0);
            assert!(
                matches!(&result, Err(AttackError::InvalidConfig { reason, .. }) if reason.contains("untargeted")),
                "{result:?}"
            );
        }
    }

    #[test]
    fn selection_is_deterministic_and_seed_sensitive() {
        let train = labelled_set(10, 100);
        let pick = |seed| {
            select_poison_indices(
                &train,
                TargetRule::AllToAll,
                LabelMode::PoisonLabel,
                0.1,
                seed,
            )
            .unwrap()
        };
        assert_eq!(pick(42), pick(42));
        assert_ne!(pick(42), pick(43));
    }

    #[test]
    fn full_and_empty_rates() {
        let train = labelled_set(2, 5);
        let all =
            select_poison_indices(&train, TargetRule::AllToAll, LabelMode::PoisonLabel, 1.0, 0)
                .unwrap();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let none =
            select_poison_indices(&train, ALL_TO_ONE_0, LabelMode::PoisonLabel, 0.0, 0).unwrap();
        assert!(none.is_empty());
    }
}

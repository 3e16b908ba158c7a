//! Mounting an attack on a dataset and measuring a model against it.

use burn::tensor::Device;

use super::{
    AttackError, BackdoorAttack, PoisonKind, PoisonPlan, TargetRule, TriggeredTestSet,
    poison_training_set, triggered_test_set,
};
use crate::data::ImageSet;
use crate::inference::evaluate;
use crate::models::{BnMode, Classifier};

/// The data of a backdoor experiment: the poisoned training set, the plan that made it, and the
/// triggered test set on which attack success is measured.
#[derive(Debug, Clone)]
pub struct PoisonedData {
    /// Training set with the planned samples altered and relabelled.
    pub train: ImageSet,
    /// Which samples were altered, and how.
    pub plan: PoisonPlan,
    /// Triggered test images (labels = the attacker's targets).
    pub backdoor_test: TriggeredTestSet,
    /// The second backdoor's plan, when two are planted ([`poison_two`]).
    pub second_plan: Option<PoisonPlan>,
}

impl PoisonedData {
    /// Number of samples carrying the trigger.
    pub fn triggered_count(&self) -> usize {
        self.count(PoisonKind::Triggered)
    }

    /// Number of samples carrying a noise trigger.
    pub fn noise_count(&self) -> usize {
        self.count(PoisonKind::Noise)
    }

    fn count(&self, kind: PoisonKind) -> usize {
        self.plan
            .samples
            .iter()
            .chain(self.second_plan.iter().flat_map(|p| &p.samples))
            .filter(|s| s.kind == kind)
            .count()
    }
}

/// Plans the poisoning of `train` and builds the poisoned training and triggered test sets.
pub fn poison(
    attack: &dyn BackdoorAttack,
    train: &ImageSet,
    test: &ImageSet,
    rule: TargetRule,
    rate: f64,
    seed: u64,
) -> Result<PoisonedData, AttackError> {
    if let TargetRule::AllToOne { target } = rule
        && usize::from(target) >= train.num_classes()
    {
        return Err(AttackError::InvalidConfig {
            attack: attack.name().to_string(),
            reason: format!(
                "target class {target} does not exist ({} classes)",
                train.num_classes()
            ),
        });
    }
    let plan = attack.plan(train, rule, rate, seed)?;
    Ok(PoisonedData {
        train: poison_training_set(train, attack, &plan)?,
        backdoor_test: triggered_test_set(test, attack, rule)?,
        plan,
        second_plan: None,
    })
}

/// Added to the record's seed for the second backdoor's plan and trigger, so the two draw
/// different samples.
pub const SECOND_SEED_OFFSET: u64 = 1;

/// Plants two backdoors in one training set (several mechanisms in one model): `first` as
/// [`poison`] plants it, then `second` with its own rule on top. The second's plan is drawn
/// with seed `seed + SECOND_SEED_OFFSET` at the same rate and drops the samples the first
/// already altered, so it poisons slightly fewer (the counts are reported). The triggered test
/// set holds the first's images, then the second's ([`TriggeredTestSet::mechanisms`] 0 and 1).
pub fn poison_two(
    (first, first_rule): (&dyn BackdoorAttack, TargetRule),
    (second, second_rule): (&dyn BackdoorAttack, TargetRule),
    train: &ImageSet,
    test: &ImageSet,
    rate: f64,
    seed: u64,
) -> Result<PoisonedData, AttackError> {
    let mut data = poison(first, train, test, first_rule, rate, seed)?;
    let second_data = poison(
        second,
        train,
        test,
        second_rule,
        rate,
        seed.wrapping_add(SECOND_SEED_OFFSET),
    )?;
    let mut taken = vec![false; train.len()];
    for sample in &data.plan.samples {
        taken[sample.index] = true;
    }
    let mut plan = second_data.plan;
    plan.samples.retain(|sample| !taken[sample.index]);
    data.train = poison_training_set(&data.train, second, &plan)?;
    data.backdoor_test
        .append_mechanism(&second_data.backdoor_test, 1)?;
    data.second_plan = Some(plan);
    Ok(data)
}

/// Clean accuracy on `clean_test` and attack success rate (fraction of triggered images
/// classified as their target) on `backdoor_test`.
pub fn measure(
    classifier: &Classifier,
    clean_test: &ImageSet,
    backdoor_test: &TriggeredTestSet,
    batch_size: usize,
    device: &Device,
) -> (f64, f64) {
    let clean = evaluate(
        classifier,
        clean_test,
        None,
        batch_size,
        BnMode::Eval,
        device,
    );
    let triggered = evaluate(
        classifier,
        &backdoor_test.images,
        None,
        batch_size,
        BnMode::Eval,
        device,
    );
    (clean.accuracy(), triggered.accuracy())
}

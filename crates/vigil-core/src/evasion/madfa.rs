//! An attacker who knows MAD-FA: triggered inputs pushed, within an L-infinity ball, to couple
//! with the trusted samples while the backdoor keeps working (issue 27's adaptive attack).
//!
//! **The attacker's knowledge** (white box, the strongest attacker): the model, the trusted
//! set, the score and its threshold rule, and the defender's chains themselves (their
//! displacements: the same sampler settings and seed). It attacks MAD-FA's score through
//! linearised traces ([`crate::madfa::input_gradient`]): projected sign-gradient descent on
//! `s(x) + keep * l(x)`, where `s` is the anomaly score and `l` the trace loss of the backdoor's
//! target (so the input stays in the target class), in the ball `|x - x0|_inf <= eps` around
//! the triggered input `x0`, clipped to `[0, 1]`, step `2.5 eps / steps`, no random start. The
//! kept iterate is the one of least score among those w* still puts in the target class (the
//! start if none). The defender scores with the same linearised traces, so before and after are
//! measured on one footing.

use std::time::Instant;

use burn::tensor::Device;

use super::{DetectionShift, EvasionConfig, EvasionEvent, shift};
use crate::madfa::MadError;
use crate::madfa::chain::{ChainConfig, ChainOutcome, TraceForm, TraceInputs, run_chain};
use crate::madfa::input_gradient::LinearisedScorer;
use crate::madfa::task::MadTask;
use crate::models::Classifier;
use crate::progress::Progress;

/// Attacks one triggered input (see the module): returns the kept iterate and whether w* puts
/// it in `target`.
pub fn evade_one(
    scorer: &LinearisedScorer,
    original: &[f32],
    target: i64,
    config: &EvasionConfig,
) -> Result<(Vec<f32>, bool), MadError> {
    let eps = config.eps as f32;
    let alpha = (2.5 * config.eps / config.steps as f64) as f32;
    let mut x = original.to_vec();
    let mut best: Option<(f64, Vec<f32>)> = None;
    for step in 0..=config.steps {
        // The last iterate is only scored: no step follows it.
        let last = step == config.steps;
        let (score, gradient) = if last {
            (scorer.score(&x, target, config.score)?, Vec::new())
        } else {
            scorer.objective_and_gradient(&x, target, config.score, config.keep)?
        };
        if scorer.predict(&x)? == target && best.as_ref().is_none_or(|(b, _)| score < *b) {
            best = Some((score, x.clone()));
        }
        for ((xi, &g), &x0) in x.iter_mut().zip(&gradient).zip(original) {
            let moved = *xi - alpha * g.signum() * f32::from(g != 0.0);
            *xi = moved.clamp(x0 - eps, x0 + eps).clamp(0.0, 1.0);
        }
    }
    Ok(match best {
        Some((_, x)) => (x, true),
        None => (original.to_vec(), false),
    })
}

/// Runs the chains `chains` (indices) of `chain`, linearised, around `w_star` on `task`, then
/// scores the clean test inputs and the triggered ones `chosen` (test indices), attacks those
/// (see the module) and scores them again. Returns the shift and the attacked images
/// (`[n, c, h, w]` flattened).
#[allow(clippy::too_many_arguments)]
pub fn evade(
    w_star: &Classifier,
    task: &MadTask,
    chosen: &[usize],
    chain: &ChainConfig,
    chains: &[usize],
    config: &EvasionConfig,
    device: &Device,
    progress: &mut impl Progress<EvasionEvent>,
) -> Result<(DetectionShift, Vec<f32>), MadError> {
    let started = Instant::now();
    let linearised = ChainConfig {
        traces: TraceForm::Linearised,
        ..chain.clone()
    };
    let inputs = TraceInputs::new(w_star, task, linearised.trace_batch_size, device)?;
    let mut displacements = Vec::new();
    for (done, &c) in chains.iter().enumerate() {
        let outcome = run_chain(
            w_star,
            &task.sampling,
            &inputs,
            &linearised,
            c,
            None,
            device,
            &mut crate::progress::Quiet,
            None,
        )?;
        let ChainOutcome::Finished(values, _) = outcome else {
            return Err(MadError::Data("a chain stopped before its end".into()));
        };
        displacements.extend(values);
        progress.report(EvasionEvent::Sampled {
            chain: done + 1,
            chains: chains.len(),
        });
    }
    let trusted_labels = inputs.labels[..inputs.n_trusted].to_vec();
    let test_labels = &inputs.labels[inputs.n_trusted..];
    let scorer = LinearisedScorer::new(
        w_star,
        displacements,
        &task.trusted,
        trusted_labels,
        chain.loss,
        device,
    )?;

    let clean = super::clean_inputs(task);
    let total = clean.len() + chosen.len();
    let mut scores = Vec::with_capacity(total);
    for (done, &i) in clean.iter().chain(chosen).enumerate() {
        progress.report(EvasionEvent::Scored { done, total });
        scores.push(scorer.score(task.test.image(i), test_labels[i], config.score)?);
    }
    let before = scores.split_off(clean.len());

    let mut attacked = Vec::new();
    let mut after = Vec::with_capacity(chosen.len());
    let mut still_target = 0;
    for (done, &i) in chosen.iter().enumerate() {
        let (x, in_target) = evade_one(&scorer, task.test.image(i), test_labels[i], config)?;
        still_target += usize::from(in_target);
        after.push(scorer.score(&x, test_labels[i], config.score)?);
        attacked.extend(x);
        progress.report(EvasionEvent::Attacked {
            done: done + 1,
            total: chosen.len(),
        });
    }
    let measured = shift(
        "madfa",
        scorer.trusted_scores(config.score),
        (&scores, &before, &after),
        still_target,
        (task, chosen, &attacked),
        config.fpr,
        started.elapsed().as_secs_f64(),
    )
    .map_err(|e| MadError::Data(e.to_string()))?;
    Ok((measured, attacked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::madfa::input_gradient::tests::fixture;

    #[test]
    fn an_attacked_input_scores_lower_stays_in_the_ball_and_in_the_target_class() {
        let (scorer, x, _) = fixture();
        let target = scorer.predict(&x).unwrap();
        let config = EvasionConfig {
            eps: 0.05,
            steps: 10,
            ..EvasionConfig::defaults()
        };
        let before = scorer.score(&x, target, config.score).unwrap();
        let (attacked, in_target) = evade_one(&scorer, &x, target, &config).unwrap();
        assert!(in_target);
        assert_eq!(scorer.predict(&attacked).unwrap(), target);
        let after = scorer.score(&attacked, target, config.score).unwrap();
        assert!(after < before, "score {before} -> {after}");
        for (a, b) in attacked.iter().zip(&x) {
            assert!((a - b).abs() <= 0.05 + 1e-6 && (0.0..=1.0).contains(a));
        }
        // Settings out of range are refused.
        for bad in [
            EvasionConfig { eps: 0.0, ..config },
            EvasionConfig { steps: 0, ..config },
            EvasionConfig {
                keep: f64::NAN,
                ..config
            },
            EvasionConfig { fpr: 1.0, ..config },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}

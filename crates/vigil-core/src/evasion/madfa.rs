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
use crate::detect::madfa::{Madfa, MadfaSettings};
use crate::detect::{FitData, FittedDetector, ScoreTable};
use crate::madfa::MadError;
use crate::madfa::chain::{ChainConfig, TraceForm};
use crate::madfa::input_gradient::{InputScore, LinearisedScorer};
use crate::madfa::task::MadTask;
use crate::models::Classifier;
use crate::progress::Progress;

/// Where [`pgd_on_scores`] pushes an input's score, and which class it must keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreGoal {
    /// Raise the score (an ID input made to look anomalous) instead of lowering it.
    pub raise: bool,
    /// The class w* must keep predicting for an iterate to count, and the label of the traces;
    /// `None`: any class counts, and each iterate is traced with w*'s prediction for it (what
    /// the defender would trace it with).
    pub class: Option<i64>,
    /// Weight of the trace loss at w* of `class` in the objective (keeps the class; with
    /// `class` only).
    pub keep: f64,
}

/// Projected sign-gradient steps on MAD-FA's linearised score `which` of several inputs in
/// lockstep, one goal each (`steps` steps of `2.5 eps / steps` in the L-inf ball of radius
/// `eps` around each original, clipped to `[0, 1]`, no random start); each step's products
/// with the chains' displacements are made once for all the inputs. Returns per input the
/// best iterate that counts (least score, or greatest when raising; the start if none
/// counts), its score, and whether any counted.
pub fn pgd_on_scores(
    scorer: &LinearisedScorer,
    originals: &[&[f32]],
    (eps, steps): (f64, usize),
    which: InputScore,
    goals: &[ScoreGoal],
) -> Result<Vec<(Vec<f32>, f64, bool)>, MadError> {
    if originals.len() != goals.len() {
        return Err(MadError::InvalidConfig(format!(
            "{} inputs with {} goals",
            originals.len(),
            goals.len()
        )));
    }
    let alpha = (2.5 * eps / steps as f64) as f32;
    let eps = eps as f32;
    let mut xs: Vec<Vec<f32>> = originals.iter().map(|x| x.to_vec()).collect();
    let mut best: Vec<Option<(f64, Vec<f32>)>> = vec![None; xs.len()];
    for step in 0..=steps {
        let predicted: Vec<i64> = xs
            .iter()
            .map(|x| scorer.predict(x))
            .collect::<Result<_, _>>()?;
        let labels: Vec<i64> = goals
            .iter()
            .zip(&predicted)
            .map(|(goal, &p)| goal.class.unwrap_or(p))
            .collect();
        let inputs: Vec<(&[f32], i64)> = xs
            .iter()
            .map(|x| x.as_slice())
            .zip(labels.iter().copied())
            .collect();
        // The last iterate is only scored: no step follows it.
        let scored: Vec<(f64, Vec<f32>)> = if step == steps {
            scorer
                .scores(&inputs, which)?
                .into_iter()
                .map(|s| (s, Vec::new()))
                .collect()
        } else {
            // The class-keeping loss counts only for a goal with a class.
            let keep: Vec<f64> = goals
                .iter()
                .map(|goal| if goal.class.is_some() { goal.keep } else { 0.0 })
                .collect();
            scorer.objectives_and_gradients(&inputs, which, &keep)?
        };
        for (j, (score, gradient)) in scored.into_iter().enumerate() {
            let goal = &goals[j];
            let better = |b: f64| if goal.raise { score > b } else { score < b };
            if predicted[j] == labels[j] && best[j].as_ref().is_none_or(|(b, _)| better(*b)) {
                best[j] = Some((score, xs[j].clone()));
            }
            let direction: f32 = if goal.raise { 1.0 } else { -1.0 };
            for ((xi, &g), &x0) in xs[j].iter_mut().zip(&gradient).zip(originals[j]) {
                let moved = *xi + direction * alpha * g.signum() * f32::from(g != 0.0);
                *xi = moved.clamp(x0 - eps, x0 + eps).clamp(0.0, 1.0);
            }
        }
    }
    best.into_iter()
        .zip(originals.iter().zip(goals))
        .map(|(kept, (&original, goal))| {
            Ok(match kept {
                Some((score, x)) => (x, score, true),
                None => {
                    let label = match goal.class {
                        Some(class) => class,
                        None => scorer.predict(original)?,
                    };
                    let score = scorer.score(original, label, which)?;
                    (original.to_vec(), score, false)
                }
            })
        })
        .collect()
}

/// MAD-FA as the defender runs it, on the inputs [`evade`] attacked: exact traces of chains of
/// the run's settings drawn with `seed`, which the attacker did not know, so the attack must
/// transfer from the attacker's linearised copy of the run's chains to fresh exact ones. Scores
/// the clean test inputs, the originals `chosen` and `attacked` (`[n, c, h, w]` flattened)
/// along one walk; thresholds from the trusted samples' leave-one-out scores.
#[allow(clippy::too_many_arguments)]
pub fn score_on_fresh_chains(
    w_star: &Classifier,
    task: &MadTask,
    chosen: &[usize],
    attacked: &[f32],
    still_target: usize,
    (chain, chains, seed): (&ChainConfig, usize, u64),
    config: &EvasionConfig,
    device: &Device,
) -> Result<DetectionShift, super::EvasionError> {
    let started = Instant::now();
    let clean = task.test.subset(&super::clean_inputs(task));
    let originals = task.test.subset(chosen);
    let mut moved = originals.clone();
    let values = originals.shape().num_values();
    if attacked.len() != chosen.len() * values {
        return Err(MadError::Data(format!(
            "{} attacked values for {} inputs of {values}",
            attacked.len(),
            chosen.len()
        ))
        .into());
    }
    for (j, x) in attacked.chunks_exact(values).enumerate() {
        moved.image_mut(j).copy_from_slice(x);
    }
    let settings = MadfaSettings {
        calibrate: false,
        chain: ChainConfig {
            traces: TraceForm::Exact,
            ..chain.clone()
        },
        chains,
        ..MadfaSettings::default()
    };
    let fitted = Madfa::new(settings)?.fit_madfa(&FitData {
        model: w_star,
        trusted: &task.trusted,
        sampling: &task.sampling,
        batch_size: chain.trace_batch_size,
        seed,
        device,
    })?;
    let (tables, trusted) =
        fitted.score_sets_and_trusted(w_star, &[&clean, &originals, &moved], device)?;
    let column = config.score.column();
    let of = |table: &ScoreTable| -> Result<Vec<f64>, super::EvasionError> {
        Ok(table
            .column(column)
            .ok_or_else(|| MadError::Data(format!("MAD-FA gave no column {column}")))?
            .to_vec())
    };
    let trusted = trusted.ok_or_else(|| MadError::Data("no trusted scores".into()))?;
    let shift = shift(
        &format!("madfa, exact traces of fresh chains (seed {seed})"),
        &of(&trusted)?,
        (&of(&tables[0])?, &of(&tables[1])?, &of(&tables[2])?),
        still_target,
        (task, chosen, attacked),
        config.fpr,
        started.elapsed().as_secs_f64(),
    )
    .map_err(|e| MadError::Data(e.to_string()))?;
    Ok(shift)
}

/// Inputs scored and attacked together (each step streams the displacements once for them).
const LOCKSTEP: usize = 16;

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
    let (scorer, test_labels) =
        LinearisedScorer::from_chains(w_star, task, chain, chains, device, |done| {
            progress.report(EvasionEvent::Sampled {
                chain: done,
                chains: chains.len(),
            })
        })?;
    let test_labels = &test_labels;

    let clean = super::clean_inputs(task);
    let total = clean.len() + chosen.len();
    let mut scores = Vec::with_capacity(total);
    let all: Vec<usize> = clean.iter().chain(chosen).copied().collect();
    for (done, part) in all.chunks(LOCKSTEP).enumerate() {
        progress.report(EvasionEvent::Scored {
            done: done * LOCKSTEP,
            total,
        });
        let inputs: Vec<(&[f32], i64)> = part
            .iter()
            .map(|&i| (task.test.image(i), test_labels[i]))
            .collect();
        scores.extend(scorer.scores(&inputs, config.score)?);
    }
    let before = scores.split_off(clean.len());

    let mut attacked = Vec::new();
    let mut after = Vec::with_capacity(chosen.len());
    let mut still_target = 0;
    for part in chosen.chunks(LOCKSTEP) {
        let originals: Vec<&[f32]> = part.iter().map(|&i| task.test.image(i)).collect();
        let goals: Vec<ScoreGoal> = part
            .iter()
            .map(|&i| ScoreGoal {
                raise: false,
                class: Some(test_labels[i]),
                keep: config.keep,
            })
            .collect();
        let results = pgd_on_scores(
            &scorer,
            &originals,
            (config.eps, config.steps),
            config.score,
            &goals,
        )?;
        for (x, score, in_target) in results {
            still_target += usize::from(in_target);
            after.push(score);
            attacked.extend(x);
        }
        progress.report(EvasionEvent::Attacked {
            done: after.len(),
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
        let goal = ScoreGoal {
            raise: false,
            class: Some(target),
            keep: config.keep,
        };
        let (attacked, _, in_target) = pgd_on_scores(
            &scorer,
            &[&x],
            (config.eps, config.steps),
            config.score,
            &[goal],
        )
        .unwrap()
        .remove(0);
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

    #[test]
    fn inputs_attacked_together_move_as_each_alone_and_only_their_way() {
        let (scorer, x, trusted) = fixture();
        let originals: Vec<&[f32]> = vec![&x, trusted.image(1)];
        let goals = [
            ScoreGoal {
                raise: true,
                class: None,
                keep: 0.0,
            },
            ScoreGoal {
                raise: false,
                class: None,
                keep: 0.0,
            },
        ];
        let which = InputScore::ClcPlusClassCcc;
        let together = pgd_on_scores(&scorer, &originals, (0.05, 4), which, &goals).unwrap();
        for ((original, goal), (attacked, score, counted)) in
            originals.iter().zip(&goals).zip(&together)
        {
            // Any class counts: the start at least.
            assert!(counted);
            let start = scorer
                .score(original, scorer.predict(original).unwrap(), which)
                .unwrap();
            if goal.raise {
                assert!(*score >= start, "{score} < {start}");
            } else {
                assert!(*score <= start, "{score} > {start}");
            }
            let (alone, alone_score, _) =
                pgd_on_scores(&scorer, &[original], (0.05, 4), which, &[*goal])
                    .unwrap()
                    .remove(0);
            assert!((score - alone_score).abs() < 1e-4 * (1.0 + score.abs()));
            for (a, b) in attacked.iter().zip(&alone) {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
        // One goal per input.
        assert!(pgd_on_scores(&scorer, &originals, (0.05, 4), which, &goals[..1]).is_err());
    }
}

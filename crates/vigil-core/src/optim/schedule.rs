//! Learning-rate (and momentum) schedules, stepped once per optimiser step.

use serde::{Deserialize, Serialize};

/// A schedule's choice of learning rate and momentum for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepHyper {
    /// Learning rate.
    pub lr: f64,
    /// Momentum, `None` where the schedule leaves it to the optimiser config.
    pub momentum: Option<f64>,
}

/// How the learning rate moves over training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Schedule {
    /// The same learning rate throughout.
    Constant {
        /// Learning rate.
        lr: f64,
    },
    /// PyTorch `OneCycleLR` with cosine annealing (two phases): warm up from `max_lr /
    /// div_factor` to `max_lr` over `pct_start` of the steps, then anneal to `initial /
    /// final_div_factor`; momentum cycles inversely between `max_momentum` and `base_momentum`.
    OneCycle {
        /// Peak learning rate.
        max_lr: f64,
        /// Fraction of steps spent warming up (PyTorch default 0.3; HALO uses 0.25).
        pct_start: f64,
        /// `initial_lr = max_lr / div_factor` (PyTorch default 25).
        div_factor: f64,
        /// `min_lr = initial_lr / final_div_factor` (PyTorch default 1e4).
        final_div_factor: f64,
        /// Momentum at the learning-rate peak (PyTorch default 0.85).
        base_momentum: f64,
        /// Momentum at the start and end (PyTorch default 0.95).
        max_momentum: f64,
        /// Whether momentum is cycled at all (PyTorch `cycle_momentum`, default true).
        cycle_momentum: bool,
    },
    /// PyTorch `MultiStepLR`: `lr * gamma^k` after the k-th milestone epoch.
    Step {
        /// Initial learning rate.
        lr: f64,
        /// Epochs at which the rate is multiplied by `gamma`.
        milestones: Vec<usize>,
        /// Multiplier.
        gamma: f64,
    },
}

impl Schedule {
    /// One-cycle with PyTorch's defaults except `max_lr` and `pct_start`.
    pub fn one_cycle(max_lr: f64, pct_start: f64) -> Self {
        Schedule::OneCycle {
            max_lr,
            pct_start,
            div_factor: 25.0,
            final_div_factor: 1e4,
            base_momentum: 0.85,
            max_momentum: 0.95,
            cycle_momentum: true,
        }
    }

    /// Hyper-parameters for `step` (0-based) of `total_steps`, with `steps_per_epoch` steps per
    /// epoch. Steps past the end keep the final values.
    pub fn at(&self, step: usize, total_steps: usize, steps_per_epoch: usize) -> StepHyper {
        match self {
            Schedule::Constant { lr } => StepHyper {
                lr: *lr,
                momentum: None,
            },
            Schedule::Step {
                lr,
                milestones,
                gamma,
            } => {
                let epoch = step / steps_per_epoch.max(1);
                let k = milestones.iter().filter(|m| **m <= epoch).count();
                StepHyper {
                    lr: lr * gamma.powi(k as i32),
                    momentum: None,
                }
            }
            Schedule::OneCycle {
                max_lr,
                pct_start,
                div_factor,
                final_div_factor,
                base_momentum,
                max_momentum,
                cycle_momentum,
            } => {
                let initial = max_lr / div_factor;
                let min_lr = initial / final_div_factor;
                // PyTorch: phase ends at step pct_start * total - 1, then total - 1.
                let warm_end = pct_start * total_steps as f64 - 1.0;
                let last = total_steps as f64 - 1.0;
                let s = (step as f64).min(last);
                let (lr, momentum) = if s <= warm_end {
                    let pct = if warm_end > 0.0 { s / warm_end } else { 1.0 };
                    (
                        anneal_cos(initial, *max_lr, pct),
                        anneal_cos(*max_momentum, *base_momentum, pct),
                    )
                } else {
                    let span = last - warm_end;
                    let pct = if span > 0.0 {
                        (s - warm_end) / span
                    } else {
                        1.0
                    };
                    (
                        anneal_cos(*max_lr, min_lr, pct),
                        anneal_cos(*base_momentum, *max_momentum, pct),
                    )
                };
                StepHyper {
                    lr,
                    momentum: cycle_momentum.then_some(momentum),
                }
            }
        }
    }
}

/// Cosine interpolation from `start` (pct 0) to `end` (pct 1), as PyTorch's `_annealing_cos`.
pub fn anneal_cos(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // PyTorch's OneCycleLR (total_steps=10, pct_start=0.25) ends its phases at steps
    // 0.25*10-1 = 1.5 and 9; the expected values are that closed form, evaluated here.
    #[test]
    fn one_cycle_follows_pytorch_phases() {
        let s = Schedule::one_cycle(0.21, 0.25);
        let first = s.at(0, 10, 5);
        assert!((first.lr - 0.21 / 25.0).abs() < 1e-12);
        assert!((first.momentum.unwrap() - 0.95).abs() < 1e-12);
        // Step 1 is 1/1.5 of the way through the warm-up.
        let pct = 1.0 / 1.5;
        let expect = 0.21 + (0.0084 - 0.21) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0);
        assert!((s.at(1, 10, 5).lr - expect).abs() < 1e-12);
        let last = s.at(9, 10, 5);
        assert!((last.lr - 0.0084 / 1e4).abs() < 1e-15);
        assert!((last.momentum.unwrap() - 0.95).abs() < 1e-12);
        // The peak lies between steps 1 and 2; no step exceeds max_lr.
        assert!((0..10).all(|i| s.at(i, 10, 5).lr <= 0.21 + 1e-12));
    }

    // Recorded from PyTorch 2.15:
    //   p = torch.zeros(1, requires_grad=True)
    //   opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    //   s = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.21, total_steps=10, pct_start=0.25)
    //   for _ in range(10):
    //       g = opt.param_groups[0]; print(g['lr'], g['momentum']); opt.step(); s.step()
    const TORCH_ONE_CYCLE: [(f64, f64); 10] = [
        (0.00839999999999999, 0.95),
        (0.15959999999999996, 0.875),
        (0.2077055072550573, 0.8510926199633096),
        (0.18994686462223184, 0.8595491502812526),
        (0.15750021, 0.875),
        (0.11597586474114904, 0.8947735768366173),
        (0.07255376537776817, 0.9154508497187474),
        (0.03474198736717459, 0.9334565303179428),
        (0.009078530636619108, 0.94567727288213),
        (8.399999999999999e-07, 0.95),
    ];

    #[test]
    fn one_cycle_matches_pytorch_step_by_step() {
        let s = Schedule::one_cycle(0.21, 0.25);
        for (step, (lr, momentum)) in TORCH_ONE_CYCLE.iter().enumerate() {
            let got = s.at(step, 10, 5);
            assert!(
                (got.lr - lr).abs() < 1e-12,
                "step {step}: lr {} vs {lr}",
                got.lr
            );
            let m = got.momentum.unwrap();
            assert!(
                (m - momentum).abs() < 1e-12,
                "step {step}: momentum {m} vs {momentum}"
            );
        }
    }

    #[test]
    fn step_schedule_multiplies_at_milestones() {
        let s = Schedule::Step {
            lr: 0.1,
            milestones: vec![2, 4],
            gamma: 0.1,
        };
        assert!((s.at(0, 60, 10).lr - 0.1).abs() < 1e-12);
        assert!((s.at(19, 60, 10).lr - 0.1).abs() < 1e-12);
        assert!((s.at(20, 60, 10).lr - 0.01).abs() < 1e-12);
        assert!((s.at(45, 60, 10).lr - 0.001).abs() < 1e-12);
    }

    #[test]
    fn anneal_cos_endpoints_and_midpoint() {
        assert_eq!(anneal_cos(1.0, 0.0, 0.0), 1.0);
        assert!(anneal_cos(1.0, 0.0, 1.0).abs() < 1e-15);
        assert!((anneal_cos(1.0, 0.0, 0.5) - 0.5).abs() < 1e-15);
    }
}

use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;

use super::energy::energy_of_logits;
use super::mahalanobis::invert_spd;
use super::msp::msp_of_logits;
use super::*;
use crate::attack::test_data::{tiny_cnn_spec, two_class_8x8};
use crate::device::default_device;

fn logits() -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, -1.0, 0.5, 0.0], [2, 3]),
        &default_device(),
    )
}

fn host(t: Tensor<1>) -> Vec<f64> {
    t.into_data().iter::<f32>().map(f64::from).collect()
}

fn lse(row: &[f64]) -> f64 {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

#[test]
fn logit_scores_match_their_formulas() {
    let rows = [[1.0f64, 2.0, 3.0], [-1.0, 0.5, 0.0]];
    let msp = host(msp_of_logits(logits()));
    let energy = host(energy_of_logits(logits(), 1.0));
    let energy_t2 = host(energy_of_logits(logits(), 2.0));
    for (r, row) in rows.iter().enumerate() {
        let top = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let want_msp = -(top - lse(row)).exp();
        assert!(
            (msp[r] - want_msp).abs() < 1e-6,
            "msp {r}: {} vs {want_msp}",
            msp[r]
        );
        assert!((energy[r] + lse(row)).abs() < 1e-5, "energy {r}");
        let halved: Vec<f64> = row.iter().map(|v| v / 2.0).collect();
        assert!(
            (energy_t2[r] + 2.0 * lse(&halved)).abs() < 1e-5,
            "energy T=2 {r}"
        );
    }
    // Row 0 is the confident one: lower (more ID) on every score.
    assert!(msp[0] < msp[1] && energy[0] < energy[1]);
}

#[test]
fn cholesky_inverse_matches_the_hand_inverse() {
    // [[4, 2], [2, 3]]^-1 = [[3, -2], [-2, 4]] / 8.
    let inv = invert_spd(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
    for (g, w) in inv.iter().zip([0.375, -0.25, -0.25, 0.5]) {
        assert!((g - w).abs() < 1e-12, "{inv:?}");
    }
    assert!(invert_spd(&[1.0, 2.0, 2.0, 1.0], 2).is_none(), "indefinite");
}

#[test]
fn mahalanobis_is_the_distance_to_the_closest_class_mean() {
    // Two classes of four points at (+-1, +-1) around (1, 1) and (11, 11): identity covariance.
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (c, centre) in [(0usize, 1.0f64), (1, 11.0)] {
        for (dx, dy) in [(-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0)] {
            features.extend([centre + dx, centre + dy]);
            labels.push(c);
        }
    }
    let mut score = Mahalanobis::new(8);
    let query = Tensor::<2>::from_data(
        TensorData::new(vec![1.0f32, 1.0, 4.0, 1.0, 6.0, 6.0], [3, 2]),
        &default_device(),
    );
    assert!(matches!(
        score.score_features(query.clone()),
        Err(OodError::NotFitted(_))
    ));
    score
        .fit_features(&features, 2, &labels, &default_device())
        .unwrap();
    let got = host(score.score_features(query).unwrap());
    for (g, w) in got.iter().zip([0.0, 9.0, 50.0]) {
        assert!((g - w).abs() < 1e-3 * w.max(1.0), "{got:?}");
    }
    let empty_class =
        score.fit_features(&features, 2, &[0, 0, 0, 0, 2, 2, 2, 2], &default_device());
    assert!(matches!(empty_class, Err(OodError::Fit { .. })));
}

/// Features sharing a large offset (as a language model's residual stream does) score as
/// they do without it: float32's `f P f - 2 f P mu + mu P mu` cancelled to garbage (negative
/// distances) before the fit centred them.
#[test]
fn a_large_common_offset_does_not_change_mahalanobis_distances() {
    let (n, dim) = (60, 4);
    let base: Vec<f64> = (0..n * dim)
        .map(|i| ((i * 37 % 101) as f64 / 13.0).sin() * (1.0 + (i % dim) as f64 * 0.01))
        .collect();
    let offset = |x: &[f64], by: f64| x.iter().map(|v| v + by).collect::<Vec<f64>>();
    let device = default_device();
    let query = |by: f64| {
        let rows: Vec<f32> = offset(&base[..8 * dim], by)
            .iter()
            .map(|&v| v as f32)
            .collect();
        Tensor::<2>::from_data(TensorData::new(rows, [8, dim]), &device)
    };
    let labels = vec![0usize; n];
    let mut plain = Mahalanobis::new(8);
    plain.fit_features(&base, dim, &labels, &device).unwrap();
    let want = host(plain.score_features(query(0.0)).unwrap());
    let mut shifted = Mahalanobis::new(8);
    shifted
        .fit_features(&offset(&base, 300.0), dim, &labels, &device)
        .unwrap();
    let got = host(shifted.score_features(query(300.0)).unwrap());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            *g >= 0.0 && (g - w).abs() < 1e-2 * w.max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn scores_of_a_set_follow_the_model_and_feed_the_metrics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let device = default_device();
    let model = crate::models::test_util::host_seeded(tiny_cnn_spec(), &mut rng, &device);
    let set = two_class_8x8(10, |i| ((i * 31) % 97) as f32 / 96.0);
    let all = score_set(&MaxLogit, &model, &set, 3, &device).unwrap();
    let x = crate::data::batch(&set, &(0..10).collect::<Vec<_>>(), &device).images;
    let logits = model.forward(x.clone(), crate::models::BnMode::Eval);
    let top: Vec<f64> = logits
        .into_data()
        .iter::<f32>()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|r| -f64::from(r[0].max(r[1])))
        .collect();
    for (a, b) in all.iter().zip(&top) {
        assert!((a - b).abs() < 1e-6);
    }
    let mut maha = Mahalanobis::new(4);
    maha.fit(&model, &set, &device).unwrap();
    assert_eq!(
        score_set(&maha, &model, &set, 4, &device).unwrap().len(),
        10
    );
    // OOD positive: perfectly separated scores give AUROC 1 and FPR@95 0.
    let m = evaluate(&[0.0, 1.0, 2.0], &[3.0, 4.0, 5.0]).unwrap();
    assert_eq!((m.auroc, m.fpr_at_95_tpr), (1.0, 0.0));
}

#[test]
fn odin_without_perturbation_is_tempered_msp_and_its_step_raises_confidence() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let device = default_device();
    let model = crate::models::test_util::host_seeded(tiny_cnn_spec(), &mut rng, &device);
    let set = two_class_8x8(6, |i| ((i * 13) % 89) as f32 / 88.0);
    let x = crate::data::batch(&set, &(0..6).collect::<Vec<_>>(), &device).images;
    let plain = Odin {
        temperature: 10.0,
        eps: 0.0,
    };
    let logits = model
        .forward(x.clone(), crate::models::BnMode::Eval)
        .div_scalar(10.0);
    let want = host(msp_of_logits(logits));
    let got = host(plain.score(&model, x.clone()).unwrap());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    let stepped = host(
        Odin {
            temperature: 10.0,
            eps: 1e-3,
        }
        .score(&model, x)
        .unwrap(),
    );
    for (s, p) in stepped.iter().zip(&got) {
        assert!(
            s <= p,
            "the perturbation should raise the top softmax score: {s} > {p}"
        );
    }
}

#[test]
fn knn_is_the_distance_to_the_kth_normalised_neighbour_and_differentiable() {
    // Bank: unit vectors at 0, 90 and 180 degrees (after normalisation).
    let bank = [2.0, 0.0, 0.0, 3.0, -1.0, 0.0];
    let mut knn = Knn::new(2, 4);
    knn.fit_features(&bank, 2, &default_device()).unwrap();
    // Query at 0 degrees: distances 0, sqrt(2), 2; the 2nd nearest is sqrt(2).
    let device = default_device().autodiff();
    let q =
        Tensor::<2>::from_data(TensorData::new(vec![5.0f32, 0.0], [1, 2]), &device).require_grad();
    let s = knn.score_features(q.clone()).unwrap();
    let got = host(s.clone().without_autodiff());
    assert!((got[0] - 2f64.sqrt()).abs() < 1e-5, "{got:?}");
    let grads = s.sum().backward();
    assert!(
        q.grad(&grads).is_some(),
        "the score should be differentiable in the features"
    );
    assert!(
        Knn::new(4, 4)
            .fit_features(&bank, 2, &default_device())
            .is_err(),
        "k beyond the bank"
    );
}

#[test]
fn react_clips_features_then_scores_the_energy_of_the_head() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let device = default_device();
    let model = crate::models::test_util::host_seeded(tiny_cnn_spec(), &mut rng, &device);
    let set = two_class_8x8(6, |i| ((i * 17) % 83) as f32 / 82.0);
    let x = crate::data::batch(&set, &(0..6).collect::<Vec<_>>(), &device).images;
    // Clipping at the largest activation changes nothing: ReAct is then the plain energy score.
    let mut unclipped = React::new(1.0, 4);
    unclipped.fit(&model, &set, &device).unwrap();
    let logits = model.forward(x.clone(), crate::models::BnMode::Eval);
    let want = host(energy_of_logits(logits, 1.0));
    let got = host(unclipped.score(&model, x.clone()).unwrap());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
    }
    // At the median, the head sees min(f, c): recomputed here on the host in f64.
    let mut react = React::new(0.5, 4);
    react.fit(&model, &set, &device).unwrap();
    let c = react.threshold().unwrap();
    let f: Vec<f64> = model
        .features(x.clone(), crate::models::BnMode::Eval)
        .into_data()
        .iter::<f32>()
        .map(f64::from)
        .collect();
    let w: Vec<f64> = model
        .network
        .head_weight()
        .into_data()
        .iter::<f32>()
        .map(f64::from)
        .collect();
    let b: Vec<f64> = model
        .network
        .head_bias()
        .unwrap()
        .into_data()
        .iter::<f32>()
        .map(f64::from)
        .collect();
    let (d, k) = (f.len() / 6, b.len());
    let got = host(react.score(&model, x).unwrap());
    for i in 0..6 {
        let z: Vec<f64> = (0..k)
            .map(|j| {
                b[j] + (0..d)
                    .map(|t| f[i * d + t].min(c) * w[t * k + j])
                    .sum::<f64>()
            })
            .collect();
        assert!(
            (got[i] + lse(&z)).abs() < 1e-4,
            "sample {i}: {} vs {}",
            got[i],
            -lse(&z)
        );
    }
    assert!(React::new(1.5, 4).fit_activations(&[1.0]).is_err());
}

#[test]
fn every_score_kind_builds_the_score_of_its_name_and_parses_back() {
    for kind in ScoreKind::ALL {
        assert_eq!(kind.build(8).name(), kind.name());
        assert_eq!(kind.name().parse::<ScoreKind>(), Ok(kind));
    }
    assert!("nonsense".parse::<ScoreKind>().is_err());
}

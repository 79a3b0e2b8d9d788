//! Closed forms and invariances of the sliced distances, on fixed cases and as property tests.

mod common;

use burn::tensor::{DType, Tensor};
use common::*;
use lacoot::device::default_device;
use lacoot::ot::{
    Ascent, DirectionSampler, Directions, max_sliced_wasserstein, point_cloud, sliced_wasserstein,
};
use proptest::prelude::*;

fn directions(dim: usize, count: usize, seed: u64) -> Directions {
    DirectionSampler::new(seed)
        .sample(dim, count, &default_device(), DType::F64)
        .unwrap()
}

fn cloud(values: &[f64], points: usize, dim: usize) -> Tensor<2> {
    matrix(values.to_vec(), points, dim, &default_device())
}

/// Both distances of `(x, y)` along `dirs`: (SW_p, MSW_p, per-direction W_p^p).
fn distances(x: &Tensor<2>, y: &Tensor<2>, dirs: &Directions, p: f64) -> (f64, f64, Vec<f64>) {
    let sliced = sliced_wasserstein(x.clone(), y.clone(), dirs, p).unwrap();
    let max_sliced = max_sliced_wasserstein(x.clone(), y.clone(), dirs, p, None).unwrap();
    (
        sliced.distance,
        max_sliced.distance,
        max_sliced.per_direction,
    )
}

#[test]
fn a_translation_costs_its_projection_along_every_direction() {
    let (n, d) = (9, 4);
    let shift = [0.5, -2.0, 1.0, 3.0];
    let x: Vec<f64> = (0..n * d).map(|k| ((k * 37) % 11) as f64 - 5.0).collect();
    let y: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(k, v)| v + shift[k % d])
        .collect();
    let dirs = directions(d, 8, 3);
    let rows = values(dirs.rows());
    for p in [1.0, 2.0, 3.0] {
        let (sw, msw, per_direction) = distances(&cloud(&x, n, d), &cloud(&y, n, d), &dirs, p);
        let expected: Vec<f64> = rows
            .chunks(d)
            .map(|theta| {
                theta
                    .iter()
                    .zip(shift)
                    .map(|(t, c)| t * c)
                    .sum::<f64>()
                    .abs()
                    .powf(p)
            })
            .collect();
        for (got, want) in per_direction.iter().zip(&expected) {
            assert_close(
                *got,
                *want,
                1e-12,
                1e-12,
                "per-direction cost of a translation",
            );
        }
        let mean = expected.iter().sum::<f64>() / expected.len() as f64;
        let max = expected.iter().cloned().fold(0.0, f64::max);
        assert_close(sw, mean.powf(1.0 / p), 1e-12, 1e-12, "sliced");
        assert_close(msw, max.powf(1.0 / p), 1e-12, 1e-12, "max-sliced");
    }
}

#[test]
fn one_dimensional_gaussians_follow_the_location_scale_formula() {
    // Two samples of N(μ, σ²) built from the same standard draws z: the monotone coupling pairs equal
    // ranks, so W_2^2 = mean((Δμ + Δσ z_i)^2) exactly; for a large sample (symmetric, so mean z = 0)
    // this tends to the Gaussian closed form Δμ² + Δσ².
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(9);
    let half: Vec<f64> = (0..50_000)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let z: Vec<f64> = half.iter().flat_map(|v| [*v, -*v]).collect();
    let n = z.len();
    let (mu1, s1, mu2, s2) = (1.0, 2.0, -0.5, 0.5);
    let x: Vec<f64> = z.iter().map(|z| mu1 + s1 * z).collect();
    let y: Vec<f64> = z.iter().map(|z| mu2 + s2 * z).collect();
    let line = Directions::from_rows(cloud(&[1.0], 1, 1)).unwrap();
    let (sw, msw, _) = distances(&cloud(&x, n, 1), &cloud(&y, n, 1), &line, 2.0);
    let exact: f64 = z
        .iter()
        .map(|z| ((mu1 - mu2) + (s1 - s2) * z).powi(2))
        .sum::<f64>()
        / n as f64;
    assert_close(sw * sw, exact, 1e-10, 0.0, "empirical");
    assert_eq!(sw, msw);
    let gaussian = (mu1 - mu2).powi(2) + (s1 - s2).powi(2);
    assert_close(sw * sw, gaussian, 1e-2, 0.0, "Gaussian limit");
}

#[test]
fn a_cloud_against_itself_repeated_is_at_distance_zero() {
    let (n, d) = (7, 3);
    let x: Vec<f64> = (0..n * d).map(|k| (k as f64 * 0.73).sin()).collect();
    let twice: Vec<f64> = x.iter().chain(x.iter()).cloned().collect();
    let (sw, msw, _) = distances(
        &cloud(&x, n, d),
        &cloud(&twice, 2 * n, d),
        &directions(d, 10, 1),
        2.0,
    );
    assert!(sw < 1e-14 && msw < 1e-14, "{sw} {msw}");
}

#[test]
fn feature_maps_are_flattened_per_sample() {
    let device = default_device();
    let maps = Tensor::<4>::from_data(
        burn::tensor::TensorData::new(
            (0..2 * 3 * 2 * 2).map(|v| v as f64).collect::<Vec<_>>(),
            [2, 3, 2, 2],
        ),
        (&device, DType::F64),
    );
    let points = point_cloud(maps);
    assert_eq!(points.dims(), [2, 12]);
    assert_eq!(values(points)[12], 12.0);
    assert_eq!(
        point_cloud(Tensor::<1>::from_data([1.0, 2.0, 3.0], &device)).dims(),
        [3, 1]
    );
}

#[test]
fn ascent_recovers_the_direction_of_a_translation() {
    // y = x + 3·e_0 in R^32: MSW_2 = 3, attained along e_0. Ten random directions see only a fraction
    // of it; the refined direction must reach it.
    let (n, d) = (16, 32);
    let x: Vec<f64> = (0..n * d)
        .map(|k| ((k * 7919) % 101) as f64 / 50.0 - 1.0)
        .collect();
    let y: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(k, v)| if k % d == 0 { v + 3.0 } else { *v })
        .collect();
    let dirs = directions(d, 10, 5);
    let refined = max_sliced_wasserstein(
        cloud(&x, n, d),
        cloud(&y, n, d),
        &dirs,
        2.0,
        Some(Ascent::new(40)),
    )
    .unwrap();
    let random_max = refined.per_direction[refined.argmax].sqrt();
    assert!(
        random_max < 2.5,
        "random directions should not find the shift ({random_max})"
    );
    assert_close(refined.distance, 3.0, 1e-4, 0.0, "refined max-sliced");
    let direction = values(refined.direction);
    assert!(direction[0].abs() > 0.9999, "direction {direction:?}");
}

/// A strategy for two small clouds in the same space and a direction seed.
fn clouds() -> impl Strategy<Value = (usize, usize, usize, Vec<f64>, Vec<f64>, u64)> {
    (1usize..7, 1usize..7, 1usize..5).prop_flat_map(|(n, m, d)| {
        (
            Just(n),
            Just(m),
            Just(d),
            prop::collection::vec(-10.0f64..10.0, n * d),
            prop::collection::vec(-10.0f64..10.0, m * d),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn distances_are_symmetric_nonnegative_and_ordered((n, m, d, x, y, seed) in clouds(), p in 1.0f64..4.0) {
        let dirs = directions(d, 5, seed);
        let (sw_xy, msw_xy, _) = distances(&cloud(&x, n, d), &cloud(&y, m, d), &dirs, p);
        let (sw_yx, msw_yx, _) = distances(&cloud(&y, m, d), &cloud(&x, n, d), &dirs, p);
        prop_assert!(sw_xy >= 0.0 && msw_xy >= 0.0);
        prop_assert!(sw_xy <= msw_xy * (1.0 + 1e-12) + 1e-12);
        prop_assert!((sw_xy - sw_yx).abs() <= 1e-9 * sw_xy.max(1.0));
        prop_assert!((msw_xy - msw_yx).abs() <= 1e-9 * msw_xy.max(1.0));
    }

    #[test]
    fn distances_ignore_the_order_of_points((n, m, d, x, y, seed) in clouds(), rotate in 0usize..7) {
        let dirs = directions(d, 5, seed);
        let shift = rotate % n;
        let mut rows: Vec<&[f64]> = x.chunks(d).collect();
        rows.rotate_left(shift);
        rows.reverse();
        let permuted: Vec<f64> = rows.concat();
        let (sw, msw, per) = distances(&cloud(&x, n, d), &cloud(&y, m, d), &dirs, 2.0);
        let (sw_p, msw_p, per_p) = distances(&cloud(&permuted, n, d), &cloud(&y, m, d), &dirs, 2.0);
        prop_assert!((sw - sw_p).abs() <= 1e-9 * sw.max(1.0));
        prop_assert!((msw - msw_p).abs() <= 1e-9 * msw.max(1.0));
        for (a, b) in per.iter().zip(&per_p) {
            prop_assert!((a - b).abs() <= 1e-9 * a.max(1.0));
        }
    }

    #[test]
    fn scaling_both_clouds_scales_the_distances((n, m, d, x, y, seed) in clouds(), a in -5.0f64..5.0, p in 1.0f64..3.0) {
        let dirs = directions(d, 5, seed);
        let scale = |v: &[f64]| v.iter().map(|e| a * e).collect::<Vec<_>>();
        let (sw, msw, _) = distances(&cloud(&x, n, d), &cloud(&y, m, d), &dirs, p);
        let (sw_a, msw_a, _) = distances(&cloud(&scale(&x), n, d), &cloud(&scale(&y), m, d), &dirs, p);
        prop_assert!((sw_a - a.abs() * sw).abs() <= 1e-9 * sw_a.max(1.0));
        prop_assert!((msw_a - a.abs() * msw).abs() <= 1e-9 * msw_a.max(1.0));
    }

    #[test]
    fn identical_clouds_are_at_distance_zero((n, _m, d, x, _y, seed) in clouds()) {
        let (sw, msw, per) = distances(&cloud(&x, n, d), &cloud(&x, n, d), &directions(d, 4, seed), 2.0);
        prop_assert_eq!(sw, 0.0);
        prop_assert_eq!(msw, 0.0);
        prop_assert!(per.iter().all(|&c| c == 0.0));
    }

    #[test]
    fn ascent_never_returns_less_than_the_random_max((n, m, d, x, y, seed) in clouds(), steps in 1usize..8, p in 1.0f64..3.0) {
        let dirs = directions(d, 4, seed);
        let result = max_sliced_wasserstein(cloud(&x, n, d), cloud(&y, m, d), &dirs, p, Some(Ascent::new(steps))).unwrap();
        let random_max = result.per_direction[result.argmax];
        prop_assert!(result.cost >= random_max, "{} < {}", result.cost, random_max);
        prop_assert_eq!(result.distance, result.cost.powf(1.0 / p));
        let norm: f64 = values(result.direction).iter().map(|v| v * v).sum::<f64>().sqrt();
        prop_assert!((norm - 1.0).abs() < 1e-9);
    }
}

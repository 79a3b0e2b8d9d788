//! Finite-difference checks of the distances' gradients with respect to both clouds.

mod common;

use burn::tensor::Tensor;
use common::*;
use lacoot::device::{autodiff_device, default_device};
use lacoot::ot::{DirectionSampler, Directions, max_sliced_wasserstein, sliced_wasserstein};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution, StandardNormal};

/// Random Gaussian values (no ties, so every distance is differentiable at them).
fn gaussian(count: usize, seed: u64) -> Vec<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..count)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect()
}

/// Compares the autodiff gradient of `distance` at `(x, y)` with central differences, element by
/// element, for both clouds.
fn check_gradients(
    distance: impl Fn(Tensor<2>, Tensor<2>) -> Tensor<1>,
    (n, m, d): (usize, usize, usize),
    seed: u64,
) {
    let x = gaussian(n * d, seed);
    let y: Vec<f64> = gaussian(m * d, seed + 1)
        .iter()
        .map(|v| v.max(0.0) + 0.1 * v)
        .collect();
    let ad = autodiff_device();
    let x_tracked = matrix(x.clone(), n, d, &ad).require_grad();
    let y_tracked = matrix(y.clone(), m, d, &ad).require_grad();
    let grads = distance(x_tracked.clone(), y_tracked.clone()).backward();
    let analytic_x = values(x_tracked.grad(&grads).expect("x receives a gradient"));
    let analytic_y = values(y_tracked.grad(&grads).expect("y receives a gradient"));

    let plain = default_device();
    let at = |x: &[f64], y: &[f64]| {
        scalar(distance(
            matrix(x.to_vec(), n, d, &plain),
            matrix(y.to_vec(), m, d, &plain),
        ))
    };
    let h = 1e-6;
    for (cloud, analytic) in [("x", &analytic_x), ("y", &analytic_y)] {
        let base = if cloud == "x" { &x } else { &y };
        for k in 0..base.len() {
            let (mut plus, mut minus) = (base.clone(), base.clone());
            plus[k] += h;
            minus[k] -= h;
            let numeric = if cloud == "x" {
                (at(&plus, &y) - at(&minus, &y)) / (2.0 * h)
            } else {
                (at(&x, &plus) - at(&x, &minus)) / (2.0 * h)
            };
            let what = format!("d/d{cloud}[{k}] (n={n}, m={m}, d={d})");
            assert_close(analytic[k], numeric, 1e-5, 1e-3, &what);
        }
    }
}

fn directions(dim: usize, count: usize, seed: u64) -> Directions {
    DirectionSampler::new(seed)
        .sample(dim, count, &default_device(), burn::tensor::DType::F64)
        .unwrap()
}

#[test]
fn sliced_gradient_matches_finite_differences() {
    for (shape, p) in [
        ((6, 6, 4), 2.0),
        ((5, 8, 3), 2.0),
        ((6, 6, 3), 3.0),
        ((7, 4, 3), 1.5),
    ] {
        let dirs = directions(shape.2, 7, 1);
        check_gradients(
            |x, y| sliced_wasserstein(x, y, &dirs, p).unwrap().value,
            shape,
            10,
        );
    }
}

#[test]
fn max_sliced_gradient_matches_finite_differences() {
    for (shape, p) in [
        ((6, 6, 4), 2.0),
        ((5, 8, 3), 2.0),
        ((6, 6, 3), 3.0),
        ((7, 4, 3), 1.5),
    ] {
        let dirs = directions(shape.2, 9, 2);
        check_gradients(
            |x, y| max_sliced_wasserstein(x, y, &dirs, p, None).unwrap().value,
            shape,
            20,
        );
    }
}

#[test]
fn an_identity_block_gets_zero_gradient_not_nan() {
    let ad = autodiff_device();
    let cloud = gaussian(8 * 5, 3);
    let dirs = directions(5, 6, 4);
    for p in [2.0, 3.0] {
        let x = matrix(cloud.clone(), 8, 5, &ad).require_grad();
        let y = matrix(cloud.clone(), 8, 5, &ad).require_grad();
        let sliced = sliced_wasserstein(x.clone(), y.clone(), &dirs, p).unwrap();
        let max_sliced = max_sliced_wasserstein(x.clone(), y.clone(), &dirs, p, None).unwrap();
        assert_eq!(sliced.distance, 0.0);
        assert_eq!(max_sliced.distance, 0.0);
        let total = sliced.value + max_sliced.value;
        let grads = total.backward();
        for g in values(x.grad(&grads).unwrap())
            .into_iter()
            .chain(values(y.grad(&grads).unwrap()))
        {
            assert_eq!(g, 0.0, "p = {p}");
        }
    }
}

#[test]
fn max_sliced_gradient_touches_only_the_winning_direction() {
    // d(MSW_2)/dx_i = (1/n) (x_i·θ − y_σ(i)·θ) θ / MSW_2: every row of the gradient is parallel to θ.
    let ad = autodiff_device();
    let (n, d) = (10, 6);
    let x = matrix(gaussian(n * d, 5), n, d, &ad).require_grad();
    let y = matrix(gaussian(n * d, 6), n, d, &ad).require_grad();
    let dirs = directions(d, 12, 7);
    let result = max_sliced_wasserstein(x.clone(), y, &dirs, 2.0, None).unwrap();
    let theta = values(result.direction.clone());
    let grads = result.value.backward();
    let gradient = values(x.grad(&grads).unwrap());
    for row in gradient.chunks(d) {
        let along: f64 = row.iter().zip(&theta).map(|(g, t)| g * t).sum();
        for (g, t) in row.iter().zip(&theta) {
            assert!(
                (g - along * t).abs() < 1e-12,
                "gradient row not parallel to θ"
            );
        }
    }
}

/// Sampled directions are stored as drawn with their normalising factors; the same directions given
/// as explicit unit columns must give the same distances, winner and gradients.
#[test]
fn sampled_directions_match_their_explicit_unit_columns() {
    let (n, m, d) = (9, 7, 40);
    let sampled = DirectionSampler::new(3)
        .sample(d, 70, &default_device(), burn::tensor::DType::F64)
        .unwrap();
    let explicit = Directions::from_columns(sampled.columns()).unwrap();
    let (x, y) = (gaussian(n * d, 11), gaussian(m * d, 12));
    let ad = autodiff_device();
    let run = |directions: &Directions| {
        let x_tracked = matrix(x.clone(), n, d, &ad).require_grad();
        let y_tracked = matrix(y.clone(), m, d, &ad).require_grad();
        let max =
            max_sliced_wasserstein(x_tracked.clone(), y_tracked.clone(), directions, 2.0, None)
                .unwrap();
        let grads = max.value.backward();
        let sliced = sliced_wasserstein(
            matrix(x.clone(), n, d, &ad),
            matrix(y.clone(), m, d, &ad),
            directions,
            2.0,
        )
        .unwrap();
        let mut gradient = values(x_tracked.grad(&grads).unwrap());
        gradient.extend(values(y_tracked.grad(&grads).unwrap()));
        (max.distance, max.argmax, sliced.distance, gradient)
    };
    let (a, b) = (run(&sampled), run(&explicit));
    assert_eq!(a.1, b.1, "same winning direction");
    assert_close(a.0, b.0, 1e-12, 0.0, "max-sliced");
    assert_close(a.2, b.2, 1e-12, 0.0, "sliced");
    for (k, (ga, gb)) in a.3.iter().zip(&b.3).enumerate() {
        assert_close(*ga, *gb, 1e-10, 1e-12, &format!("gradient {k}"));
    }
}

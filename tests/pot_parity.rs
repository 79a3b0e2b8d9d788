//! Parity with POT 0.9.7 (`ot.sliced`): values computed outside the project, in float64.

mod common;

use burn::tensor::DType;
use common::*;
use lacoot::device::default_device;
use lacoot::ot::{Directions, max_sliced_wasserstein, sliced_wasserstein};

const RELATIVE: f64 = 1e-5;

#[test]
fn pot_cases_agree_in_f64_and_f32() {
    let device = default_device();
    for case in ["case0", "case1", "case2", "case3"] {
        let dir = local_fixtures().join("ot").join(case);
        let expected = read_json(&dir.join("expected.json"));
        for dtype in [DType::F64, DType::F32] {
            // f32 loses about 7 digits on d = 4100 dot products; f64 must match to 1e-5.
            let tolerance = if dtype == DType::F64 { RELATIVE } else { 1e-4 };
            let x = read_matrix(&dir.join("x.npy"), &device).cast(dtype);
            let y = read_matrix(&dir.join("y.npy"), &device).cast(dtype);
            let theta = read_matrix(&dir.join("theta.npy"), &device).cast(dtype);
            let directions = Directions::from_columns(theta).unwrap();
            let what = format!("{case} {dtype:?}");

            let sliced = sliced_wasserstein(x.clone(), y.clone(), &directions, 2.0).unwrap();
            let max_sliced = max_sliced_wasserstein(x, y, &directions, 2.0, None).unwrap();

            let sw = expected["sliced_w2"].as_f64().unwrap();
            let msw = expected["max_sliced_w2"].as_f64().unwrap();
            assert_close(
                sliced.distance,
                sw,
                tolerance,
                0.0,
                &format!("{what} sliced"),
            );
            assert_close(scalar(sliced.value), sw, tolerance, 0.0, &what);
            assert_close(
                max_sliced.distance,
                msw,
                tolerance,
                0.0,
                &format!("{what} max"),
            );
            assert_close(scalar(max_sliced.value), msw, tolerance, 0.0, &what);
            assert_eq!(
                max_sliced.argmax as u64,
                expected["argmax_direction"].as_u64().unwrap(),
                "{what}"
            );
            let per_direction = expected["per_direction_w2_squared"].as_array().unwrap();
            assert_eq!(max_sliced.per_direction.len(), per_direction.len());
            for (got, want) in max_sliced.per_direction.iter().zip(per_direction) {
                assert_close(*got, want.as_f64().unwrap(), tolerance, 1e-12, &what);
            }
        }
    }
}

#[test]
fn unequal_cloud_sizes_agree_with_pot_for_several_orders() {
    let device = default_device();
    let dir = local_fixtures().join("ot_unequal");
    let expected = read_json(&dir.join("expected.json"));
    let x = read_matrix(&dir.join("x.npy"), &device);
    let y = read_matrix(&dir.join("y.npy"), &device);
    assert_ne!(x.dims()[0], y.dims()[0]);
    let directions =
        Directions::from_columns(read_matrix(&dir.join("theta.npy"), &device)).unwrap();
    for p in [1u32, 2, 3] {
        let want = &expected[format!("p{p}")];
        let p = f64::from(p);
        let sliced = sliced_wasserstein(x.clone(), y.clone(), &directions, p).unwrap();
        let max_sliced =
            max_sliced_wasserstein(x.clone(), y.clone(), &directions, p, None).unwrap();
        let what = format!("n != m, p = {p}");
        assert_close(
            sliced.distance,
            want["sliced"].as_f64().unwrap(),
            RELATIVE,
            0.0,
            &what,
        );
        assert_close(
            max_sliced.distance,
            want["max_sliced"].as_f64().unwrap(),
            RELATIVE,
            0.0,
            &what,
        );
        assert_eq!(
            max_sliced.argmax as u64,
            want["argmax_direction"].as_u64().unwrap()
        );
        for (got, want) in max_sliced
            .per_direction
            .iter()
            .zip(want["per_direction_wp_p"].as_array().unwrap())
        {
            assert_close(*got, want.as_f64().unwrap(), RELATIVE, 1e-12, &what);
        }
    }
}

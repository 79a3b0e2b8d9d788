//! `lacoot distance`: sliced and max-sliced Wasserstein distances between two point clouds.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use lacoot::arrays::HostArray;
use lacoot::device::default_device;
use lacoot::ot::{
    self, Ascent, AscentStop, DirectionSampler, Directions, max_sliced_wasserstein,
    sliced_wasserstein,
};
use serde_json::json;

/// Sliced and max-sliced Wasserstein distances between two point clouds stored in files.
///
/// The sliced distance takes the mean over directions, the max-sliced the maximum, as POT's
/// `ot.sliced` defines them.
///
/// Each file is a `.npy` or `.safetensors` array of f32 or f64. The first axis indexes the points;
/// the other axes are flattened, so a batch of feature maps [n, C, H, W] is n points in R^(C·H·W).
/// The clouds may have different numbers of points (uniform weights). Computation keeps the files'
/// precision.
///
/// Example: lacoot distance --x before.npy --y after.npy --num-projections 500 --seed 1 --json
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct DistanceArgs {
    /// The first point cloud (.npy or .safetensors).
    #[arg(long, value_name = "FILE")]
    x: PathBuf,

    /// The second point cloud (.npy or .safetensors).
    #[arg(long, value_name = "FILE")]
    y: PathBuf,

    /// The tensor to read from --x when it is a .safetensors file holding several.
    #[arg(long, value_name = "NAME")]
    x_tensor: Option<String>,

    /// The tensor to read from --y when it is a .safetensors file holding several.
    #[arg(long, value_name = "NAME")]
    y_tensor: Option<String>,

    /// Projection directions as a [d, L] matrix with one unit vector per column (POT's layout),
    /// instead of random ones.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["num_projections", "seed"])]
    projections: Option<PathBuf>,

    /// How many random directions to draw, uniformly on the unit sphere.
    #[arg(long, value_name = "L", default_value_t = ot::DEFAULT_NUM_PROJECTIONS)]
    num_projections: usize,

    /// Seed of the random directions: the same seed gives the same directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// The order p of the Wasserstein distance (p >= 1).
    #[arg(long, default_value_t = ot::DEFAULT_P)]
    p: f64,

    /// Refine the max-sliced direction with this many steps of gradient ascent on the sphere; the
    /// result is never below the best random direction's.
    #[arg(long, value_name = "STEPS", default_value_t = 0)]
    optimise: usize,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Reads the clouds and directions, computes both distances, prints them.
pub fn run(args: &DistanceArgs) -> Result<()> {
    let device = default_device();
    if !(args.p.is_finite() && args.p >= 1.0) {
        bail!("--p must be a finite number >= 1, not {}", args.p);
    }
    ot::check_num_projections(args.num_projections).map_err(anyhow::Error::msg)?;
    let read = |path: &std::path::Path, tensor: Option<&str>| -> Result<HostArray> {
        let array = HostArray::read(path, tensor)?;
        if !array.all_finite() {
            bail!(
                "{}: holds NaN or infinite values; distances need finite points",
                path.display()
            );
        }
        Ok(array)
    };
    let x = read(&args.x, args.x_tensor.as_deref())?.into_point_cloud(&device)?;
    let y = read(&args.y, args.y_tensor.as_deref())?.into_point_cloud(&device)?;
    let [_, dim] = x.dims();
    let directions = match &args.projections {
        Some(path) => {
            let columns = HostArray::read(path, None)?.into_matrix(&device)?;
            Directions::from_columns(columns).with_context(|| path.display().to_string())?
        }
        None => DirectionSampler::new(args.seed).sample(
            dim,
            args.num_projections,
            &device,
            x.dtype(),
        )?,
    };
    tracing::info!(
        x = ?x.dims(), y = ?y.dims(), directions = directions.count(), p = args.p,
        "computing sliced distances"
    );
    let ascent = (args.optimise > 0).then(|| Ascent::new(args.optimise));
    let sliced = sliced_wasserstein(x.clone(), y.clone(), &directions, args.p)?;
    let max_sliced = max_sliced_wasserstein(x, y, &directions, args.p, ascent)?;
    let random_max = max_sliced.per_direction[max_sliced.argmax].powf(1.0 / args.p);

    let order = if args.p == 2.0 {
        "2".to_string()
    } else {
        "p".to_string()
    };
    if args.json {
        let mut report = json!({
            "p": args.p,
            "num_projections": directions.count(),
            format!("sliced_w{order}"): sliced.distance,
            format!("max_sliced_w{order}"): max_sliced.distance,
            "argmax_direction": max_sliced.argmax,
            "per_direction": max_sliced.per_direction,
        });
        if let Some(outcome) = max_sliced.ascent {
            report["ascent_steps_asked"] = json!(args.optimise);
            report["ascent_steps"] = json!(outcome.steps_taken);
            report["ascent_stopped"] = json!(outcome.stopped);
            report[format!("random_max_sliced_w{order}")] = json!(random_max);
        }
        println!("{report}");
    } else {
        let name = if args.p == 2.0 {
            "W2".to_string()
        } else {
            format!("W{}", args.p)
        };
        println!("sliced {name}      {:.10}", sliced.distance);
        println!(
            "max-sliced {name}  {:.10}  (direction {} of {})",
            max_sliced.distance,
            max_sliced.argmax,
            directions.count()
        );
        if let Some(outcome) = max_sliced.ascent {
            println!(
                "  refined by {} of {} ascent steps ({}) from the best random direction's {:.10} (+{:.2} %)",
                outcome.steps_taken,
                args.optimise,
                match outcome.stopped {
                    AscentStop::AllSteps => "all taken",
                    AscentStop::NoImprovement => "stopped at a local maximum",
                    AscentStop::FlatGradient => "stopped: the gradient vanished",
                },
                random_max,
                100.0 * (max_sliced.distance / random_max - 1.0)
            );
        }
    }
    Ok(())
}

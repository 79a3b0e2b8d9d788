//! Runs that survive crashes: `lacoot train` killed with SIGKILL at many moments resumes to exactly
//! the metrics of an uninterrupted run; Ctrl-C stops after saving; the same seed gives the same
//! numbers whatever the thread count; resume and re-run say what to do.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lacoot::data::idx::encode_idx;

/// A 10-class IDX data set of 32x32 images (large enough that the first stage's feature maps,
/// 16 x 16 x 16 = 4096 values, are split into pieces by the projection kernels).
fn write_data(root: &Path) {
    for (split, per_class) in [("train", 8), ("t10k", 4)] {
        let count = per_class * 10;
        let mut pixels = Vec::with_capacity(count * 1024);
        for i in 0..count {
            let class = i % 10;
            for y in 0..32 {
                for x in 0..32 {
                    let bright = (y / 8 * 4 + x / 8) % 10 == class;
                    let noise = ((i * 31 + y * 7 + x * 13) % 50) as u8;
                    pixels.push(if bright { 180 + noise } else { noise });
                }
            }
        }
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        std::fs::write(
            root.join(format!("{split}-images-idx3-ubyte")),
            encode_idx(&[count, 32, 32], &pixels),
        )
        .unwrap();
        std::fs::write(
            root.join(format!("{split}-labels-idx1-ubyte")),
            encode_idx(&[count], &labels),
        )
        .unwrap();
    }
}

fn train_args(data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    [
        "train",
        "--data",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--width",
        "16",
        "--epochs",
        &epochs.to_string(),
        "--batch-size",
        "20",
        "--num-projections",
        "6",
        "--lambda",
        "1",
        "--validation-fraction",
        "0.25",
        "--crop-padding",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("lacoot")
}

fn spawn(args: &[String]) -> Child {
    Command::new(binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run_ok(args: &[String], threads: Option<usize>) -> String {
    let mut command = Command::new(binary());
    command.args(args);
    if let Some(threads) = threads {
        command.env("RAYON_NUM_THREADS", threads.to_string());
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{args:?}: {stderr}");
    stderr
}

/// The lines of `metrics.jsonl` without the wall-clock fields, each checked to be valid JSON.
fn timeless_metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", run.display()));
            let object = value.as_object_mut().unwrap();
            object.remove("seconds");
            object.remove("images_per_second");
            value
        })
        .collect()
}

fn best_epoch_of(checkpoint: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint.join("state.json")).unwrap()).unwrap();
    state["best_epoch"].as_u64().unwrap()
}

/// Waits until `moment` holds for the run (or the process ends), then kills it with SIGKILL.
fn kill_when(mut child: Child, moment: &dyn Fn(Duration) -> bool) {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if moment(started.elapsed()) {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let _ = child.kill();
    child.wait().unwrap();
}

/// When to kill a run: from its folder and the time since it started.
type Moment = dyn Fn(&Path, Duration) -> bool;

#[test]
fn a_run_killed_at_any_moment_resumes_to_the_uninterrupted_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let epochs = 3;
    let straight = tmp.path().join("straight");
    let started = Instant::now();
    run_ok(&train_args(tmp.path(), &straight, epochs), None);
    let duration = started.elapsed();
    let expected = timeless_metrics(&straight);
    assert_eq!(expected.len(), epochs);

    let metric_lines = |run: &Path| {
        std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
    };
    let mut moments: Vec<(String, Box<Moment>)> = Vec::new();
    for tenth in 1..=9 {
        let at = duration * tenth / 10;
        moments.push((
            format!("{tenth}/10 of the run"),
            Box::new(move |_, t| t >= at),
        ));
    }
    for staged in ["checkpoints.tmp", "checkpoints.old"] {
        moments.push((
            format!("while {staged} exists (mid-checkpoint)"),
            Box::new(move |run: &Path, _| run.join(staged).exists()),
        ));
    }
    for lines in 1..=2 {
        moments.push((
            format!("right after epoch line {lines}"),
            Box::new(move |run: &Path, _| metric_lines(run) >= lines),
        ));
    }
    for (index, (name, moment)) in moments.iter().enumerate() {
        let run = tmp.path().join(format!("killed-{index}"));
        let child = spawn(&train_args(tmp.path(), &run, epochs));
        kill_when(child, &|elapsed| moment(&run, elapsed));
        // Whatever the moment, what is on disk is consistent: complete lines, and best no later
        // than last.
        if run.join("metrics.jsonl").exists() {
            timeless_metrics(&run);
        }
        let mut resume = train_args(tmp.path(), &run, epochs);
        resume.push("--resume".into());
        if run.join("config.json").exists() {
            run_ok(&resume, None);
        } else {
            // Killed before the run existed: a plain start is what a user would do.
            run_ok(&train_args(tmp.path(), &run, epochs), None);
        }
        assert_eq!(timeless_metrics(&run), expected, "killed {name}");
        let checkpoints = run.join("checkpoints");
        assert_eq!(
            best_epoch_of(&checkpoints.join("last")),
            best_epoch_of(&checkpoints.join("best")),
            "killed {name}"
        );
        assert!(!checkpoints.with_file_name("checkpoints.old").exists());
    }
}

#[test]
fn ctrl_c_stops_after_saving_and_says_how_to_resume() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let run = tmp.path().join("run");
    let child = spawn(&train_args(tmp.path(), &run, 3));
    let started = Instant::now();
    while !run.join("config.json").exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted after epoch 1 of 3") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert_eq!(timeless_metrics(&run).len(), 1);
    let mut resume = train_args(tmp.path(), &run, 3);
    resume.push("--resume".into());
    run_ok(&resume, None);
    assert_eq!(timeless_metrics(&run).len(), 3);
}

#[test]
fn the_same_seed_gives_the_same_metrics_whatever_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let runs: Vec<Vec<serde_json::Value>> = [1, 2, 3]
        .into_iter()
        .map(|threads| {
            let run = tmp.path().join(format!("threads-{threads}"));
            run_ok(&train_args(tmp.path(), &run, 2), Some(threads));
            timeless_metrics(&run)
        })
        .collect();
    assert!(runs[0][0]["regulariser"].as_f64().unwrap() > 0.0);
    assert_eq!(runs[0], runs[1], "1 thread against 2");
    assert_eq!(runs[0], runs[2], "1 thread against 3");
}

#[test]
fn resume_rerun_and_force_say_what_they_do() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let run = tmp.path().join("run");
    let args = train_args(tmp.path(), &run, 1);
    run_ok(&args, None);

    // A plain re-run refuses and names both ways forward.
    let output = Command::new(binary()).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("already holds a run (1 epochs done)")
            && stderr.contains("--resume")
            && stderr.contains("--force"),
        "{stderr}"
    );

    // A flag that contradicts the record is refused; --epochs extends the run and is recorded.
    let mut contradicting = args.clone();
    contradicting.extend(["--resume", "--lr", "0.5"].map(String::from));
    let output = Command::new(binary())
        .args(&contradicting)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("--lr contradicts the settings recorded"),
        "{stderr}"
    );
    let mut extended = train_args(tmp.path(), &run, 2);
    extended.push("--resume".into());
    run_ok(&extended, None);
    assert_eq!(timeless_metrics(&run).len(), 2);
    let config = common::read_json(&run.join("config.json"));
    assert_eq!(config["config"]["epochs"], 2);
    assert_eq!(config["changes"][0], "epochs 1 -> 2 after epoch 1");

    // A cut line in metrics.jsonl is repaired from the checkpoint on resume.
    let metrics = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(&metrics, &text[..text.len() - 40]).unwrap();
    let stderr = run_ok(&extended, None);
    assert!(stderr.contains("repaired from the checkpoint"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), text);

    // --force replaces the run.
    let mut forced = args.clone();
    forced.push("--force".into());
    run_ok(&forced, None);
    assert_eq!(timeless_metrics(&run).len(), 1);
    assert!(
        common::read_json(&run.join("config.json"))["changes"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A run stopped before its first epoch resumes from the start.
    let fresh = tmp.path().join("fresh");
    let child = spawn(&train_args(tmp.path(), &fresh, 1));
    kill_when(child, &|_| fresh.join("config.json").exists());
    if fresh.join("config.json").exists() && !fresh.join("checkpoints").exists() {
        let mut resume = train_args(tmp.path(), &fresh, 1);
        resume.push("--resume".into());
        run_ok(&resume, None);
        assert_eq!(timeless_metrics(&fresh).len(), 1);
    }
}

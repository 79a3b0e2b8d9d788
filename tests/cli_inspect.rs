//! `lacoot inspect`: the paper's totals, the saving of a removal, and clear errors.

use assert_cmd::Command;

fn inspect(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("lacoot")
        .unwrap()
        .arg("inspect")
        .args(args)
        .output()
        .unwrap()
}

fn inspect_json(args: &[&str]) -> serde_json::Value {
    let output = inspect(&[args, &["--json"]].concat());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_paper_totals_and_the_removed_share() {
    let text = String::from_utf8(inspect(&[]).stdout).unwrap();
    assert!(
        text.contains("140.19 M MACs (conv + linear + attention, per image)"),
        "{text}"
    );
    assert!(text.contains("11173962 parameters"));

    let full = inspect_json(&[]);
    let paper = inspect_json(&["--remove", "layer1.1,layer2.1,layer3.1,layer4.1"]);
    assert_eq!(full["total"]["macs"], 140_186_624);
    assert_eq!(paper["total"]["macs"], 64_689_152);
    // MACs and parameters drop by exactly the removed blocks' share.
    let removed: Vec<&serde_json::Value> = full["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["name"].as_str().unwrap().ends_with(".1"))
        .collect();
    let sum = |key: &str| {
        removed
            .iter()
            .map(|b| b[key].as_u64().unwrap())
            .sum::<u64>()
    };
    for key in ["macs", "parameters", "norm_pool_macs"] {
        assert_eq!(
            full["total"][key].as_u64().unwrap() - paper["total"][key].as_u64().unwrap(),
            sum(key),
            "{key}"
        );
    }
    let text =
        String::from_utf8(inspect(&["--remove", "layer1.1,layer2.1,layer3.1,layer4.1"]).stdout)
            .unwrap();
    assert!(
        text.contains("64.69 M MACs") && text.contains("removed"),
        "{text}"
    );
}

#[test]
fn other_variants_and_errors() {
    let small = inspect_json(&[
        "--in-channels",
        "1",
        "--input",
        "28",
        "--width",
        "16",
        "--model",
        "resnet34",
    ]);
    assert_eq!(small["blocks"].as_array().unwrap().len(), 16);
    for (args, needle) in [
        (vec!["--remove", "layer2.0"], "only shape-preserving blocks"),
        (vec!["--remove", "layer9.9"], "unknown block 'layer9.9'"),
        (
            vec!["--input", "0"],
            "input size must be between 4 and 4096",
        ),
        (
            vec!["--input", "4294967296"],
            "input size must be between 4 and 4096",
        ),
        (
            vec!["--width", "100000"],
            "width must be between 1 and 1024",
        ),
        (vec!["--classes", "1"], "classes must be between 2"),
    ] {
        let output = inspect(&args);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(needle) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

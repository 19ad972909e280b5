//! `ami2 doctor` end to end: the binary starts the real Legion runtime with no LD_LIBRARY_PATH
//! (its rpath finds the private library folder), runs tasks and a region round trip, and reports.

mod common;

use common::ami2;
use serde_json::Value;

#[test]
fn doctor_reports_the_runtime_and_a_correct_round_trip() {
    let out = ami2(&["doctor", "--json", "--points", "5000", "--", "-ll:cpu", "1", "-ll:util", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "doctor failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    assert_eq!(report["legion_version"], legion_sys::RUNTIME_VERSION);
    assert_eq!(report["address_spaces"], 1);
    let args: Vec<&str> = report["legion_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..4], ["-ll:cpu", "1", "-ll:util", "1"]);
    let processors = report["processors"].as_array().unwrap();
    let cpus = processors.iter().filter(|p| p["kind"] == "Cpu").count();
    assert_eq!(cpus, 1, "-ll:cpu 1 gives one CPU processor: {processors:?}");
    assert!(processors.iter().any(|p| p["kind"] == "Utility"));
    assert!(report["memories"].as_array().unwrap().iter().any(|m| m["kind"] == "System"));
    assert_eq!(report["single_launch_processor"]["kind"], "Cpu");
    assert_eq!(report["index_points"], 4);
    assert_eq!(report["region_points"], 5000);
    let expected: f64 = (0..5000).map(|p| p as f64 * 0.5).sum();
    assert_eq!(report["region_expected_sum"].as_f64(), Some(expected));
    assert_eq!(report["region_read_sum"].as_f64(), Some(expected));
}

#[test]
fn doctor_prints_a_readable_report() {
    let out = ami2(&["doctor", "--points", "100"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Legion {}", legion_sys::RUNTIME_VERSION)), "{text}");
    assert!(text.contains("region round trip: 100 points"), "{text}");
    assert!(text.contains("(ok)"), "{text}");
}

#[test]
fn doctor_refuses_bad_arguments_before_starting_legion() {
    let out = ami2(&["doctor", "--points", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--points must be at least 1"));
}

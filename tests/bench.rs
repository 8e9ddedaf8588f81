//! `convnext-edge bench` end to end on the shipped model: JSON fields present and consistent,
//! failures marked without stopping the sweep.

mod common;

use std::process::Command;

fn bench(args: &[&str]) -> (bool, serde_json::Value, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_convnext-edge"))
        .arg("bench")
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let json = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (o.status.success(), json, stderr)
}

/// Two inferences of the shipped int8 model on one thread, with `extra` options.
fn short_digits_run(extra: &[&str]) -> (bool, serde_json::Value, String) {
    let model = "models/digits/convnext_digits_int8.onnx";
    let mut args = vec![
        "--model",
        model,
        "--threads",
        "1",
        "--iters",
        "2",
        "--json",
        "-",
    ];
    args.extend(extra);
    bench(&args)
}

#[test]
fn json_report_is_complete_and_consistent() {
    let (ok, v, err) = bench(&[
        "--model",
        "models/digits/convnext_digits_int8.onnx",
        "--threads",
        "1",
        "--iters",
        "15",
        "--warmup",
        "2",
        "--batch",
        "2",
        "--json",
        "-",
    ]);
    assert!(ok, "{err}");
    assert_eq!(v["schema"], "convnext-edge-bench");
    assert_eq!(v["schema_version"], 1);
    assert!(v["machine"]["cpu_model"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(v["machine"]["logical_cpus"].as_u64().unwrap() >= 1);
    let r = &v["results"][0];
    assert_eq!(r["status"], "ok");
    assert_eq!(r["precision"], "int8");
    assert_eq!(
        (
            r["threads"].as_u64(),
            r["batch"].as_u64(),
            r["runs"].as_u64()
        ),
        (Some(1), Some(2), Some(15))
    );
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {r}"));
    assert!(f("load_ms") > 0.0 && f("first_ms") > 0.0);
    assert!(f("min_ms") <= f("p50_ms") && f("p50_ms") <= f("p90_ms"));
    assert!(f("p90_ms") <= f("p99_ms") && f("p99_ms") <= f("max_ms"));
    assert!(f("min_ms") <= f("mean_ms") && f("mean_ms") <= f("max_ms"));
    let expected_ips = 2.0 * 1000.0 / f("mean_ms");
    assert!((f("throughput_ips") - expected_ips).abs() < 1e-6 * expected_ips);
    assert_eq!(f("ratio_p50"), 1.0);
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
    assert_eq!(r["input_size"], serde_json::json!([32, 32]));
    assert!(!r["kernels"].as_array().unwrap().is_empty());
}

#[test]
fn failed_configurations_are_marked_and_the_rest_runs() {
    let (ok, v, _) = bench(&[
        "--model",
        "models/digits/convnext_digits_f16.onnx",
        "--model",
        "tests/data/bad/tabular_regressor.onnx",
        "--precision",
        "f32,int8",
        "--threads",
        "1,0",
        "--iters",
        "3",
        "--warmup",
        "0",
        "--json",
        "-",
    ]);
    assert!(!ok, "a sweep with failures exits non-zero");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 8);
    let status: Vec<(&str, &str)> = results
        .iter()
        .map(|r| (r["label"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(status[0], ("convnext_digits_f16.onnx f32 1thr", "ok"));
    assert!(status[1..].iter().all(|s| s.1 == "failed"), "{status:?}");
    let error = |i: usize| results[i]["error"].as_str().unwrap();
    assert!(error(1).contains("at least 1"), "{}", error(1));
    assert!(error(2).contains("needs a quantized file"), "{}", error(2));
    assert!(error(4).contains("not an image classifier"), "{}", error(4));
    assert!(results[1].get("p50_ms").is_none());
    assert!(results[0]["p50_ms"].as_f64().is_some());
}

#[test]
fn pipeline_mode_times_each_stage() {
    let (ok, v, err) = bench(&[
        "--model",
        "models/digits/convnext_digits_f32.onnx",
        "--pipeline",
        "models/digits/samples/8.png",
        "--threads",
        "1",
        "--iters",
        "5",
        "--warmup",
        "1",
        "--json",
        "-",
    ]);
    assert!(ok, "{err}");
    let r = &v["results"][0];
    let stages = r["stages"].as_object().unwrap();
    let names: Vec<&str> = stages.keys().map(String::as_str).collect();
    assert_eq!(names, ["decode", "infer", "preprocess", "topk"]);
    let sum_of_means: f64 = stages
        .values()
        .map(|s| s["mean_ms"].as_f64().unwrap())
        .sum();
    assert!((sum_of_means - r["mean_ms"].as_f64().unwrap()).abs() < 1e-6);
    assert_eq!(
        v["settings"]["pipeline_image"],
        "models/digits/samples/8.png"
    );
}

#[test]
fn cpus_must_exist() {
    let (ok, v, _) = bench(&[
        "--model",
        "models/digits/convnext_digits_int8.onnx",
        "--cpus",
        "0,4095",
        "--iters",
        "2",
        "--json",
        "-",
    ]);
    assert!(!ok);
    assert!(v["results"][0]["error"]
        .as_str()
        .unwrap()
        .contains("CPU 4095"));
    let (ok, v, err) = short_digits_run(&["--cpus", "0"]);
    assert!(ok, "{err}");
    assert_eq!(v["results"][0]["cpus"], serde_json::json!([0]));
}

/// A quantized model whose products run on float says so in the report: here forced with
/// `--float-only`; on its own, on a CPU with int8 kernels, it runs them all on integer ones.
#[test]
fn products_left_on_float_are_a_warning() {
    let run = |extra: &[&str]| {
        let (ok, v, err) = short_digits_run(extra);
        assert!(ok, "{err}");
        v["results"][0]["warnings"].to_string()
    };
    let warnings = run(&["--float-only"]);
    assert!(
        warnings.contains("int8 products run on float"),
        "{warnings}"
    );
    assert!(warnings.contains("--float-only"), "{warnings}");
    if convnext_edge::IntegerPath::Auto.enabled() {
        let warnings = run(&[]);
        assert!(!warnings.contains("int8 products"), "{warnings}");
    }
}

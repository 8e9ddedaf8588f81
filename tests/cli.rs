//! The `convnext-edge` binary: each subcommand on real files, and every kind of bad input
//! giving a clear error that names the file, a non-zero exit, no panic and no partial output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convnext-edge"))
        .args(args)
        .args(["--threads", "1"])
        .current_dir(root())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with a message naming `file` and containing `what`, without panicking.
fn assert_clean_failure(o: &Output, file: &str, what: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        stdout(o)
    );
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(file), "error does not name {file}: {err}");
    assert!(
        err.to_lowercase().contains(&what.to_lowercase()),
        "error does not say {what:?}: {err}"
    );
}

const DIGITS_INT8: &str = "models/digits/convnext_digits_int8.onnx";

#[test]
fn classify_prints_top_k() {
    let o = bin(&[
        "classify",
        "--model",
        DIGITS_INT8,
        "--top",
        "2",
        "models/digits/samples/4.png",
        "models/digits/samples/9.png",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].starts_with("models/digits/samples/4.png"));
    assert!(lines[1].trim_end().ends_with(" 4"), "{out}");
    assert!(lines[4].trim_end().ends_with(" 9"), "{out}");
}

#[test]
fn classify_json_has_the_documented_fields() {
    let o = bin(&[
        "classify",
        "--model",
        DIGITS_INT8,
        "--json",
        "--top",
        "3",
        "models/digits/samples/2.png",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["image"], "models/digits/samples/2.png");
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0]["index"], 2);
    assert_eq!(top[0]["label"], "2");
    let p0 = top[0]["prob"].as_f64().unwrap();
    assert!(p0 > 0.5 && p0 <= 1.0 && top[1]["prob"].as_f64().unwrap() <= p0);
    assert!(top[0]["logit"].is_number());
    assert!(v["latency_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn classify_with_labels_file_and_preset() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("words.txt");
    let words = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    std::fs::write(&labels, words.join("\n")).unwrap();
    let o = bin(&[
        "classify",
        "--model",
        DIGITS_INT8,
        "--labels",
        labels.to_str().unwrap(),
        "--preprocess",
        "squash",
        "--top",
        "1",
        "models/digits/samples/6.png",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("six"), "{}", stdout(&o));
}

#[test]
fn run_writes_the_same_logits_as_onnxruntime() {
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "timm_v1_f16")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("y.npy");
    let fx = |p: &str| fixtures_dir().join(p).to_str().unwrap().to_owned();
    let o = bin(&[
        "run",
        "--model",
        &fx(&f.model),
        "--input",
        &fx(&f.input),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = f32s(&convnext_edge::npy::read(&out).unwrap());
    let reference = f32s(&convnext_edge::npy::read(&fixtures_dir().join(&f.reference)).unwrap());
    compare("f16", &ours, &reference, 10).unwrap();
}

#[test]
fn info_reports_variant_precision_and_kernels() {
    let o = bin(&[
        "info",
        "--model",
        "models/fixtures/atto_224_qdq_pc_u8.onnx",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["variant"]["name"], "atto");
    assert_eq!(v["variant"]["depths"], serde_json::json!([2, 2, 6, 2]));
    assert_eq!(v["precision"], "int8");
    assert_eq!(v["quantization"]["format"], "QDQ");
    assert_eq!(v["quantization"]["weights"], "per-channel");
    assert_eq!(v["dynamic_axes"], serde_json::json!(["batch"]));
    assert_eq!(v["classes"], 1000);
    let params = v["parameters"].as_u64().unwrap();
    assert!((3_600_000..3_900_000).contains(&params), "{params}");
    let gmacs = v["macs"].as_f64().unwrap() / 1e9;
    assert!((0.5..0.65).contains(&gmacs), "{gmacs}");
    assert!(!v["kernels"].as_array().unwrap().is_empty());

    let o = bin(&["info", "--model", "models/fixtures/hf_v2_dynamo_op18.onnx"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("ConvNeXt V2 custom depths [1, 1, 2, 1] dims [16, 32, 64, 128]"),
        "{text}"
    );
    assert!(text.contains("opset 18"), "{text}");
    let o = bin(&["info", "--model", "models/fixtures/timm_v1_qop_pc_u8.onnx"]);
    assert!(
        stdout(&o).contains("QOperator") && stdout(&o).contains("QGemm x1"),
        "{}",
        stdout(&o)
    );
}

fn temp_copy(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn truncated_and_random_onnx_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(root().join(DIGITS_INT8)).unwrap();
    let truncated = temp_copy(dir.path(), "truncated.onnx", &bytes[..bytes.len() / 2]);
    let o = bin(&[
        "classify",
        "--model",
        truncated.to_str().unwrap(),
        "models/digits/samples/1.png",
    ]);
    assert_clean_failure(&o, "truncated.onnx", "not a valid ONNX model");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let random = temp_copy(dir.path(), "random.onnx", &noise);
    let o = bin(&["info", "--model", random.to_str().unwrap()]);
    assert_clean_failure(&o, "random.onnx", "not a valid ONNX model");
    let o = bin(&["info", "--model", "does/not/exist.onnx"]);
    assert_clean_failure(&o, "does/not/exist.onnx", "No such file");
}

#[test]
fn models_that_are_not_classifiers_are_refused() {
    let o = bin(&["info", "--model", "tests/data/bad/tabular_regressor.onnx"]);
    assert_clean_failure(&o, "tabular_regressor.onnx", "not an image classifier");
    let o = bin(&[
        "classify",
        "--model",
        "tests/data/bad/segmenter.onnx",
        "models/digits/samples/1.png",
    ]);
    assert_clean_failure(&o, "segmenter.onnx", "not an image classifier");
}

#[test]
fn bad_npy_gives_an_error_and_no_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.npy");
    let out_s = out.to_str().unwrap();
    let model = "models/digits/convnext_digits_f32.onnx";
    let run = |input: &str| bin(&["run", "--model", model, "--input", input, "--output", out_s]);
    let o = run("tests/data/bad/wrong_shape.npy");
    assert_clean_failure(&o, "convnext_digits_f32.onnx", "[N, 3, 32, 32]");
    assert!(stderr(&o).contains("31"), "{}", stderr(&o));
    let o = run("tests/data/bad/int64_input.npy");
    assert_clean_failure(&o, "int64_input.npy", "<i8");
    let junk = temp_copy(dir.path(), "junk.npy", b"\x93NUMPY\x01\x00\xff\xff");
    let o = run(junk.to_str().unwrap());
    assert_clean_failure(&o, "junk.npy", "truncated");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only junk.npy may exist"
    );
}

#[test]
fn missing_or_corrupt_images_are_reported_and_the_rest_classified() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = temp_copy(
        dir.path(),
        "corrupt.png",
        b"\x89PNG\r\n\x1a\nthis is not a png",
    );
    let o = bin(&[
        "classify",
        "--model",
        DIGITS_INT8,
        "--top",
        "1",
        corrupt.to_str().unwrap(),
        "models/digits/samples/5.png",
        "missing.jpg",
    ]);
    assert_clean_failure(&o, "corrupt.png", "cannot read image");
    assert!(stderr(&o).contains("missing.jpg"), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("samples/5.png"),
        "the good image is still classified"
    );
}

#[test]
fn label_file_of_wrong_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let labels = temp_copy(dir.path(), "three.txt", b"a\nb\nc\n");
    let o = bin(&[
        "classify",
        "--model",
        DIGITS_INT8,
        "--labels",
        labels.to_str().unwrap(),
        "models/digits/samples/1.png",
    ]);
    assert_clean_failure(
        &o,
        "three.txt",
        "has 3 labels but the model has 10 output classes",
    );
}

#[test]
fn bad_options_are_refused() {
    let o = bin(&[
        "classify",
        "--model",
        DIGITS_INT8,
        "--preprocess",
        "fancy",
        "models/digits/samples/1.png",
    ]);
    assert_clean_failure(&o, "fancy", "unknown preprocessing preset");
    let o = Command::new(env!("CARGO_BIN_EXE_convnext-edge"))
        .args(["info", "--model", DIGITS_INT8, "--threads", "0"])
        .current_dir(root())
        .output()
        .unwrap();
    assert_clean_failure(&o, "thread", "at least 1");
}

#[test]
fn profile_lists_op_types_and_nodes() {
    let o = bin(&["profile", "--model", DIGITS_INT8, "--runs", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ops = v["ops"].as_array().unwrap();
    let share: f64 = ops.iter().map(|o| o["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-6, "{share}");
    assert!(v["nodes"].as_array().unwrap().len() >= ops.len());
    let o = bin(&[
        "profile",
        "--model",
        DIGITS_INT8,
        "--runs",
        "1",
        "--top",
        "3",
    ]);
    assert!(
        stdout(&o).contains("op type") && stdout(&o).contains("Quantize"),
        "{}",
        stdout(&o)
    );
}

/// `convnext-edge camera --model <digits int8> ARGS...`
fn camera(args: &[&str]) -> Output {
    bin(&[&["camera", "--model", DIGITS_INT8], args].concat())
}

#[test]
fn camera_classifies_a_recording_and_prints_jsonl_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let o = camera(&[
        "--source",
        "replay:tests/data/camera/digits.mjpeg",
        "--fps",
        "0",
        "--top",
        "1",
        "--sink",
        "jsonl:-",
        "--stats",
        stats.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let labels: Vec<String> = stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["top"][0]["label"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(labels, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stats).unwrap()).unwrap();
    assert_eq!(s["processed"], 10);
    assert_eq!(s["corrupt"], 0);
    assert!(stderr(&o).contains("10 frames processed"), "{}", stderr(&o));
}

#[test]
fn camera_refuses_bad_sources_and_sinks_clearly() {
    let o = camera(&["--source", "v4l2:/dev/video97"]);
    assert_clean_failure(&o, "/dev/video97", "no such device");
    let o = camera(&["--source", "files:/nonexistent/*.jpg"]);
    assert_clean_failure(&o, "/nonexistent/*.jpg", "no files match");
    let o = camera(&["--source", "test", "--sink", "fb:/dev/fb7"]);
    assert_clean_failure(&o, "fb7", "virtual_size");
    let o = camera(&["--source", "test", "--size", "640", "--frames", "1"]);
    assert_clean_failure(&o, "640", "WxH");
    let o = camera(&["--source", "pipe:-", "--format", "nv12"]);
    assert_clean_failure(&o, "pipe:-", "--size");
}

#[test]
fn camera_skips_unreadable_images_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("models/digits/samples/4.png"),
        dir.path().join("a.png"),
    )
    .unwrap();
    std::fs::write(dir.path().join("b.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    std::fs::copy(
        root().join("models/digits/samples/6.png"),
        dir.path().join("c.png"),
    )
    .unwrap();
    let o = camera(&[
        "--source",
        &format!("files:{}", dir.path().display()),
        "--top",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 2, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains(" ms  4 ") && lines[1].contains(" ms  6 "),
        "{out}"
    );
    let err = stderr(&o);
    assert!(err.contains("b.png") && err.contains("skipped"), "{err}");
    assert!(err.contains("1 corrupt"), "{err}");
}

/// `classify -v` warns when a quantized model runs products on float; without `-v` it does not.
#[test]
fn classify_verbose_warns_of_products_on_float() {
    let args = [
        "classify",
        "--float-only",
        "--model",
        "models/digits/convnext_digits_int8.onnx",
        "models/digits/samples/7.png",
    ];
    let quiet = bin(&args);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(
        !stderr(&quiet).contains("int8 products"),
        "{}",
        stderr(&quiet)
    );
    let verbose = bin(&[&["-v"][..], &args[..]].concat());
    assert!(verbose.status.success(), "{}", stderr(&verbose));
    let err = stderr(&verbose);
    assert!(
        err.contains("warning:") && err.contains("int8 products run on float"),
        "{err}"
    );
}

//! Resource limits: inputs that claim enormous sizes are refused with a clear error before
//! memory is committed to them. Regression tests for fuzzing finds live here too.

mod common;

use std::path::Path;

use convnext_edge::camera::{self, ErrorKind, SourceOptions};
use convnext_edge::{Error, LoadOptions, Model};
use prost::Message;
use tract_onnx::pb;

fn digits_proto() -> pb::ModelProto {
    let bytes =
        std::fs::read(common::root().join("models/digits/convnext_digits_f32.onnx")).unwrap();
    pb::ModelProto::decode(&*bytes).unwrap()
}

fn load(proto: &pb::ModelProto, options: &LoadOptions) -> Result<Model, Error> {
    Model::from_bytes(Path::new("hostile.onnx"), &proto.encode_to_vec(), options)
}

#[test]
fn a_model_declaring_an_enormous_tensor_is_refused_before_allocation() {
    let mut proto = digits_proto();
    let graph = proto.graph.as_mut().unwrap();
    graph.initializer.push(pb::TensorProto {
        name: "huge".into(),
        dims: vec![100_000, 100_000],
        data_type: 1,
        ..Default::default()
    });
    let e = load(&proto, &LoadOptions::threads(1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hostile.onnx") && e.contains("\"huge\"") && e.contains("limit"),
        "{e}"
    );

    // The limit is configurable: a small one refuses the model's own weights.
    let e = load(
        &digits_proto(),
        &LoadOptions {
            max_tensor_bytes: Some(1024),
            ..LoadOptions::threads(1)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("over the 1024-byte limit"), "{e}");
}

#[test]
fn a_tensor_whose_bytes_do_not_match_its_shape_is_refused() {
    let mut proto = digits_proto();
    let t = proto
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| !t.raw_data.is_empty())
        .unwrap();
    t.dims[0] *= 1000;
    let e = load(&proto, &LoadOptions::threads(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("but holds"), "{e}");
}

#[test]
fn an_enormous_input_size_is_refused() {
    let mut proto = digits_proto();
    let input = &mut proto.graph.as_mut().unwrap().input[0];
    let Some(pb::type_proto::Value::TensorType(tt)) = input.r#type.as_mut().unwrap().value.as_mut()
    else {
        panic!("tensor input")
    };
    for d in &mut tt.shape.as_mut().unwrap().dim[2..] {
        d.value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(60_000));
    }
    let e = load(&proto, &LoadOptions::threads(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("60000x60000") && e.contains("limit"), "{e}");
    let e = Model::load(
        &common::root().join("models/digits/convnext_digits_f32.onnx"),
        &LoadOptions {
            input_size: Some(60_000),
            ..LoadOptions::threads(1)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("limit"), "{e}");
}

/// A real JPEG whose frame header claims 60000x60000 pixels.
fn giant_jpeg() -> Vec<u8> {
    let mut jpeg = std::fs::read(common::root().join("tests/data/camera/frame.jpg")).unwrap();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    jpeg
}

#[test]
fn an_image_claiming_60000x60000_pixels_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("giant.jpg");
    std::fs::write(&path, giant_jpeg()).unwrap();
    let e = convnext_edge::preprocess::decode(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("giant.jpg"), "{e}");
    let e = camera::convert::decode_jpeg(&giant_jpeg()).unwrap_err();
    assert!(e.contains("bad JPEG frame"), "{e}");
}

#[test]
fn a_stream_that_never_ends_its_frame_is_cut_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endless.mjpeg");
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02];
    bytes.resize(300_000, 0x11);
    std::fs::write(&path, &bytes).unwrap();
    let opts = SourceOptions {
        fps: Some(0.0),
        max_frame_bytes: 100_000,
        ..Default::default()
    };
    let mut source = camera::open(&format!("replay:{}", path.display()), &opts).unwrap();
    let e = source.next_frame().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Corrupt);
    assert!(e.to_string().contains("100000 bytes"), "{e}");
}

/// Found by `fuzz/fuzz_targets/cli_lists.rs`: a CPU range to a huge number made `--cpus`
/// allocate a set of every number up to it (a 28 s timeout under the fuzzer, then out of memory).
#[test]
fn fuzz_regression_cpu_ranges_to_huge_numbers_are_refused_at_once() {
    use convnext_edge::machine::parse_cpu_list;
    let t = std::time::Instant::now();
    let e = parse_cpu_list("0-333333333333,6").unwrap_err();
    assert!(e.contains("0-8191"), "{e}");
    assert!(parse_cpu_list("0-18446744073709551615").is_err());
    assert_eq!(parse_cpu_list("8190-8191").unwrap(), [8190, 8191]);
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
}

/// Found by `fuzz/fuzz_targets/labels.rs`: `Labels::name` panicked on an index past the end.
#[test]
fn fuzz_regression_a_label_past_the_end_is_a_placeholder() {
    let labels = convnext_edge::Labels::default_for(None, 2);
    assert_eq!(labels.name(1), "class 1");
    assert_eq!(labels.name(2), "?");
    let e = convnext_edge::Labels::from_bytes(Path::new("empty.txt"), b"", 1).unwrap_err();
    assert!(e.to_string().contains("empty.txt"), "{e}");
}

/// Found by `fuzz/fuzz_targets/onnx_load.rs`: a LayerNormalization with axis −2⁴⁹ made tract's
/// shape inference loop up to it (a timeout under the fuzzer).
#[test]
fn fuzz_regression_an_absurd_axis_is_refused() {
    let mut proto = digits_proto();
    let graph = proto.graph.as_mut().unwrap();
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "LayerNormalization")
        .expect("the digits model has a LayerNormalization");
    let axis = node
        .attribute
        .iter_mut()
        .find(|a| a.name == "axis")
        .unwrap();
    axis.i = -562_949_953_421_313;
    let e = load(&proto, &LoadOptions::threads(1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hostile.onnx") && e.contains("axis = -562949953421313 is out of range"),
        "{e}"
    );
}

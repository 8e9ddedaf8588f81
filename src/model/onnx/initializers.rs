//! The model's large initializers handed to tract's parser one at a time, so that loading does
//! not hold every weight twice (once in the protobuf, once as tract's tensors).
//!
//! tract's parser copies each initializer's bytes into a tensor of its own and leaves the
//! protobuf whole until the caller drops it. Here each large initializer's bytes move out of
//! the protobuf before parsing, and the initializer is marked as ONNX external data, located in
//! the model file itself at an offset that is its index in a [`Handover`]. tract asks its data
//! resolver for such bytes; ours hands over (moves) the initializer's buffer, which tract drops
//! once its tensor is made. Real external data (a `.onnx.data` file beside the model) goes to
//! tract's own resolver.
//!
//! tract internals used (tract-onnx 0.23.9): `Onnx::provider` and the `ModelDataResolver` it
//! calls with the canonical path, offset and length of each external tensor, and tract's check
//! that the location is an existing file inside the model's directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::data_resolver::{MmapDataResolver, ModelDataResolver};
use tract_onnx::pb::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Initializers smaller than this stay in the protobuf: the scales and zero points, which
/// are many and small.
const MIN_BYTES: usize = 64 * 1024;

/// The buffers moved out of a model's initializers, for tract's parser to take one by one.
pub(crate) struct Handover {
    model: PathBuf,
    buffers: Mutex<Vec<Option<Vec<u8>>>>,
}

impl Handover {
    /// Moves the bytes of `proto`'s large initializers out, leaving each marked as external
    /// data in `path` (the model file, which must exist: tract checks the location). `None`
    /// when `path` is not a file whose name can be such a location.
    pub(crate) fn take(proto: &mut ModelProto, path: &Path) -> Option<Arc<Handover>> {
        let model = path.canonicalize().ok().filter(|p| p.is_file())?;
        let name = path.file_name()?.to_str()?.to_owned();
        let graph = proto.graph.as_mut()?;
        let mut buffers = vec![];
        for t in graph.initializer.iter_mut() {
            if t.raw_data.len() < MIN_BYTES {
                continue;
            }
            let entry = |key: &str, value: String| StringStringEntryProto {
                key: key.into(),
                value,
            };
            t.external_data = vec![
                entry("location", name.clone()),
                entry("offset", buffers.len().to_string()),
                entry("length", t.raw_data.len().to_string()),
            ];
            t.data_location = Some(DataLocation::External as i32);
            buffers.push(Some(std::mem::take(&mut t.raw_data)));
        }
        Some(Arc::new(Handover {
            model,
            buffers: Mutex::new(buffers),
        }))
    }
}

impl ModelDataResolver for Handover {
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        p: &Path,
        offset: usize,
        length: Option<usize>,
    ) -> TractResult<()> {
        if p != self.model {
            return MmapDataResolver.read_bytes_from_path(buf, p, offset, length);
        }
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = buffers
            .get_mut(offset)
            .and_then(Option::take)
            .with_context(|| format!("initializer {offset} asked for twice, or never moved"))?;
        ensure!(
            length.is_none_or(|l| l == bytes.len()),
            "initializer {offset}: {} bytes, asked for {length:?}",
            bytes.len()
        );
        *buf = bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{GraphProto, TensorProto};

    #[test]
    fn large_initializers_are_handed_over_once_and_small_ones_stay() {
        let tensor = |name: &str, len: usize| TensorProto {
            name: name.into(),
            raw_data: (0..len).map(|i| i as u8).collect(),
            ..Default::default()
        };
        let mut proto = ModelProto {
            graph: Some(GraphProto {
                initializer: vec![tensor("scale", 4), tensor("w", MIN_BYTES)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/fixtures/atto_224_qdq_pc_u8.onnx"
        ));
        let handover = Handover::take(&mut proto, path).unwrap();
        let [scale, w] = &proto.graph.as_ref().unwrap().initializer[..] else {
            panic!("two initializers")
        };
        assert_eq!((scale.raw_data.len(), scale.data_location), (4, None));
        assert!(w.raw_data.is_empty());
        assert_eq!(w.data_location, Some(DataLocation::External as i32));
        assert_eq!(w.external_data[0].value, "atto_224_qdq_pc_u8.onnx");

        let model = path.canonicalize().unwrap();
        let mut buf = vec![];
        handover
            .read_bytes_from_path(&mut buf, &model, 0, Some(MIN_BYTES))
            .unwrap();
        assert_eq!(buf, tensor("w", MIN_BYTES).raw_data);
        assert!(handover
            .read_bytes_from_path(&mut vec![], &model, 0, None)
            .is_err());
        // Another file is real external data, read from the file.
        let data = model.with_file_name("atto_224_qdq_pc_u8.ort.npy");
        let mut head = vec![];
        handover
            .read_bytes_from_path(&mut head, &data, 1, Some(5))
            .unwrap();
        assert_eq!(head, b"NUMPY");
        assert!(Handover::take(&mut proto, Path::new("no/such/model.onnx")).is_none());
    }
}

//! Minimal `.npy` reader and writer for raw tensors (`convnext-edge run`).
//!
//! Reads little-endian C-order `float32` and `float16` arrays (format versions 1–3), which is
//! what `numpy.save` writes for model inputs; writes `float32`. Anything else is refused with
//! the reason, never guessed at.

use std::io::Write;
use std::path::Path;

use half::f16;
use tract_onnx::prelude::Tensor;

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` file into a tensor of its own dtype (f32 or f16).
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("x.npy");
/// let t = tract_onnx::prelude::Tensor::from_shape(&[2, 2], &[1f32, 2., 3., 4.]).unwrap();
/// convnext_edge::npy::write_f32(&path, &t).unwrap();
/// assert_eq!(convnext_edge::npy::read(&path).unwrap(), t);
/// ```
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes).map_err(|reason| Error::Npy {
        path: path.to_owned(),
        reason,
    })
}

/// Parses `.npy` bytes; the error is a human-readable reason.
pub fn parse(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing NUMPY magic header".into());
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported format version {v}")),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or("header is truncated")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let fortran = dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape = parse_shape(header)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("shape is too large")?;
    let data = &bytes[start + header_len..];
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let elem = match descr {
        "<f4" => 4,
        "<f2" => 2,
        other => {
            return Err(format!(
                "dtype {other} not supported (need float32 or float16)"
            ))
        }
    };
    if Some(data.len()) != count.checked_mul(elem) {
        return Err(format!(
            "data is {} bytes, shape {shape:?} of {descr} needs {}",
            data.len(),
            count.saturating_mul(elem)
        ));
    }
    let tensor = if elem == 4 {
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::from_shape(&shape, &v)
    } else {
        let v: Vec<f16> = data
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect();
        Tensor::from_shape(&shape, &v)
    };
    tensor.map_err(|e| e.to_string())
}

/// The text after `'key':` up to the next top-level comma or closing brace.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}':"))? + key.len() + 3;
    let rest = &header[at..];
    let end = if rest.trim_start().starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(&rest[..end])
}

fn parse_shape(header: &str) -> std::result::Result<Vec<usize>, String> {
    let raw = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let inner = raw.trim().trim_start_matches('(').trim_end_matches(')');
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry {s:?}"))
        })
        .collect()
}

/// Writes an f32 tensor as `.npy`, atomically: the file appears complete or not at all.
pub fn write_f32(path: &Path, tensor: &Tensor) -> Result<()> {
    let view = tensor
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::Shape {
            what: path.display().to_string(),
            expected: "f32 tensor".into(),
            got: e.to_string(),
        })?;
    let shape: Vec<String> = tensor.shape().iter().map(|d| d.to_string()).collect();
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.extend(std::iter::repeat_n(' ', pad % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + view.len() * 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in view.iter() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_atomically(path, &bytes)
}

/// Writes through a temporary file in the same directory, then renames it into place.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(parse(b"hello world, not numpy").is_err());
        let t = Tensor::from_shape(&[3], &[1f32, 2., 3.]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.npy");
        write_f32(&p, &t).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(parse(&bytes).unwrap(), t);
        let err = parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.contains("needs 12"), "{err}");
    }

    fn npy_bytes(descr: &str, payload: &[u8]) -> Vec<u8> {
        let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}");
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn reads_f16_and_refuses_other_dtypes() {
        let payload: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let t = parse(&npy_bytes("<f2", &payload)).unwrap();
        assert_eq!(
            t.to_plain_array_view::<f16>().unwrap().as_slice().unwrap(),
            &[f16::from_f32(1.5), f16::from_f32(-2.0)]
        );
        let err = parse(&npy_bytes("<i2", &payload)).unwrap_err();
        assert!(err.contains("<i2"), "{err}");
    }
}

//! Image preprocessing equal to how ConvNeXt models are evaluated in Python.
//!
//! Each preset reproduces one library's evaluation transform on a PIL image:
//!
//! | preset | resize | filter | crop |
//! |---|---|---|---|
//! | `timm` | shorter side → ⌊S / crop_pct⌋ | bicubic | centre S, offset rounded half-even |
//! | `torchvision` | shorter side → round(S / crop_pct) (236 for S = 224) | bilinear | as timm |
//! | `hf` | S < 384: shorter side → ⌊S / crop_pct⌋, else S×S | bicubic | centre S, offset floored |
//! | `squash` | S×S, aspect ratio not kept | bicubic | none |
//!
//! then `x / 255`, minus mean, over std (ImageNet statistics). The long side becomes
//! ⌊S' · long / short⌋ as in torchvision and transformers. Resizing is antialiased convolution
//! like PIL's, done as two passes in PIL's order (horizontal, then vertical, each rounded to
//! 8 bits): `fast_image_resize` computes one pass at a time the way PIL does, so splitting the
//! passes keeps the result within one level of Pillow's.

use std::path::Path;

use fast_image_resize::images::{Image as FrImage, ImageRef};
use fast_image_resize::{self as fr, FilterType, IntoImageView, PixelType, ResizeAlg};
use image::RgbImage;
use tract_onnx::prelude::Tensor;

use crate::error::{Error, Result};

/// ImageNet mean per RGB channel, as used by timm, torchvision and transformers.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation per RGB channel.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A named evaluation pipeline (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// timm's evaluation transform: the shorter side to ⌊size / crop_pct⌋, bicubic, centre crop.
    Timm,
    /// torchvision's: the shorter side to round(size / crop_pct), bilinear, centre crop.
    Torchvision,
    /// Hugging Face's `ConvNextImageProcessor` (see the module docs' table).
    Hf,
    /// The whole image to size × size, aspect ratio not kept, no crop.
    Squash,
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "timm" => Ok(Preset::Timm),
            "torchvision" => Ok(Preset::Torchvision),
            "hf" => Ok(Preset::Hf),
            "squash" => Ok(Preset::Squash),
            other => Err(Error::Config(format!(
                "unknown preprocessing preset {other:?}; expected timm, torchvision, hf or squash"
            ))),
        }
    }
}

impl Preset {
    /// The crop fraction each library uses by default at 224.
    pub fn default_crop_pct(self) -> f32 {
        match self {
            Preset::Timm | Preset::Hf => 0.875,
            Preset::Torchvision => 224.0 / 236.0,
            Preset::Squash => 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CropOffset {
    /// `int(round((len - crop) / 2))`, Python's round-half-even (torchvision CenterCrop).
    RoundHalfEven,
    /// `(len - crop) // 2` (transformers' center_crop).
    Floor,
}

/// A preprocessing pipeline producing `1x3xSxS` f32 model inputs.
///
/// ```
/// use convnext_edge::preprocess::{Preprocess, Preset};
/// let p = Preprocess::new(Preset::Timm, 224, 0.875);
/// let img = image::RgbImage::from_pixel(640, 480, image::Rgb([255, 0, 0]));
/// let x = p.to_tensor(&img).unwrap();
/// assert_eq!(x.shape(), &[1, 3, 224, 224]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// The transform family.
    pub preset: Preset,
    /// The output side.
    pub size: u32,
    /// Crop fraction (timm).
    pub crop_pct: f32,
    /// Per-channel mean subtracted.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f32; 3],
}

impl Preprocess {
    /// A preset at model input size `size` with ImageNet mean and std.
    pub fn new(preset: Preset, size: u32, crop_pct: f32) -> Self {
        Preprocess {
            preset,
            size,
            crop_pct,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    fn filter(&self) -> FilterType {
        match self.preset {
            Preset::Torchvision => FilterType::Bilinear,
            _ => FilterType::CatmullRom,
        }
    }

    /// Target size (w, h) of the resize step and the crop rule, for a `w`x`h` source.
    fn plan(&self, w: u32, h: u32) -> ((u32, u32), Option<CropOffset>) {
        let s = self.size;
        let short_side = |target: u32| {
            let (short, long) = (w.min(h) as u64, w.max(h) as u64);
            let new_long = (target as u64 * long / short) as u32;
            if w <= h {
                (target, new_long)
            } else {
                (new_long, target)
            }
        };
        match self.preset {
            Preset::Timm => (
                short_side((s as f32 / self.crop_pct).floor() as u32),
                Some(CropOffset::RoundHalfEven),
            ),
            Preset::Torchvision => (
                short_side((s as f32 / self.crop_pct).round() as u32),
                Some(CropOffset::RoundHalfEven),
            ),
            Preset::Hf if s < 384 => (
                short_side((s as f32 / self.crop_pct) as u32),
                Some(CropOffset::Floor),
            ),
            Preset::Hf | Preset::Squash => ((s, s), None),
        }
    }

    /// Resize and crop: the `SxS` RGB image before normalisation.
    pub fn resize_crop(&self, img: &RgbImage) -> Result<RgbImage> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::Config("image has zero width or height".into()));
        }
        let ((rw, rh), crop) = self.plan(w, h);
        let resized = self.resize(img, rw.max(1), rh.max(1))?;
        let Some(rule) = crop else { return Ok(resized) };
        let s = self.size;
        let offset = |len: u32| {
            crop_offset(len, s, rule).ok_or_else(|| {
                Error::Config(format!(
                    "resized image side {len} is smaller than the crop {s}; raise crop_pct"
                ))
            })
        };
        let (left, top) = (offset(rw)?, offset(rh)?);
        Ok(image::imageops::crop_imm(&resized, left, top, s, s).to_image())
    }

    /// Antialiased convolution resize, horizontal pass then vertical pass, like PIL.
    fn resize(&self, img: &RgbImage, w: u32, h: u32) -> Result<RgbImage> {
        let (sw, sh) = img.dimensions();
        let src = ImageRef::new(sw, sh, img.as_raw(), PixelType::U8x3)
            .map_err(|e| Error::Config(format!("bad image buffer: {e}")))?;
        let filter = self.filter();
        let out = match (w != sw, h != sh) {
            (false, false) => return Ok(img.clone()),
            (true, true) => resize_pass(&resize_pass(&src, w, sh, filter)?, w, h, filter)?,
            _ => resize_pass(&src, w, h, filter)?,
        };
        RgbImage::from_raw(w, h, out.into_vec())
            .ok_or_else(|| Error::Config("resize produced a short buffer".into()))
    }

    /// Normalises an already resized and cropped image into a `1x3xHxW` tensor.
    pub fn normalize(&self, img: &RgbImage) -> Tensor {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut data = vec![0f32; 3 * w * h];
        let (planes, rest) = data.split_at_mut(w * h);
        let (g_plane, b_plane) = rest.split_at_mut(w * h);
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.std[c]));
        let shift: [f32; 3] = std::array::from_fn(|c| self.mean[c] / self.std[c]);
        for (i, px) in img.pixels().enumerate() {
            planes[i] = px[0] as f32 * scale[0] - shift[0];
            g_plane[i] = px[1] as f32 * scale[1] - shift[1];
            b_plane[i] = px[2] as f32 * scale[2] - shift[2];
        }
        Tensor::from_shape(&[1, 3, h, w], &data).expect("shape matches buffer length")
    }

    /// Resize, crop and normalise.
    pub fn to_tensor(&self, img: &RgbImage) -> Result<Tensor> {
        Ok(self.normalize(&self.resize_crop(img)?))
    }

    /// Decodes an image file (JPEG or PNG) and preprocesses it.
    pub fn load(&self, path: &Path) -> Result<Tensor> {
        self.to_tensor(&decode(path)?)
    }
}

/// One convolution resize of `src` to `w`x`h`.
fn resize_pass(
    src: &impl IntoImageView,
    w: u32,
    h: u32,
    filter: FilterType,
) -> Result<FrImage<'static>> {
    let mut dst = FrImage::new(w, h, PixelType::U8x3);
    let opts = fr::ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    fr::Resizer::new()
        .resize(src, &mut dst, &opts)
        .map_err(|e| Error::Config(format!("resize failed: {e}")))?;
    Ok(dst)
}

/// Offset of a centred crop of `crop` in `len`, or None when it does not fit.
fn crop_offset(len: u32, crop: u32, rule: CropOffset) -> Option<u32> {
    let extra = len.checked_sub(crop)?;
    let half = extra / 2;
    Some(match rule {
        CropOffset::RoundHalfEven if extra % 2 == 1 => half + half % 2,
        _ => half,
    })
}

/// Decodes a JPEG or PNG file to 8-bit RGB (greyscale is replicated, alpha dropped).
pub fn decode(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(path, &bytes)
}

/// Largest image side decoded (files and camera frames); a header claiming more is refused
/// before any pixel memory is allocated.
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Decodes JPEG or PNG bytes; `path` names them in errors.
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    decode_limited(bytes).map_err(|reason| Error::Image {
        path: path.to_owned(),
        reason,
    })
}

/// Decodes any image the `image` crate reads, within [`MAX_IMAGE_SIDE`] and 1 GiB of pixels.
pub(crate) fn decode_limited(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    crate::error::catch_panic(|| {
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_IMAGE_SIDE);
        limits.max_image_height = Some(MAX_IMAGE_SIDE);
        limits.max_alloc = Some(1 << 30);
        reader.limits(limits);
        reader
            .decode()
            .map(|img| img.to_rgb8())
            .map_err(|e| e.to_string())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_libraries() {
        let timm = Preprocess::new(Preset::Timm, 224, 0.875);
        assert_eq!(
            timm.plan(640, 480),
            ((341, 256), Some(CropOffset::RoundHalfEven))
        );
        let tv = Preprocess::new(Preset::Torchvision, 224, 224.0 / 236.0);
        assert_eq!(tv.plan(480, 640).0, (236, 314));
        let hf = Preprocess::new(Preset::Hf, 384, 0.875);
        assert_eq!(hf.plan(640, 480), ((384, 384), None));
    }

    #[test]
    fn crop_offsets_round_like_python() {
        // torchvision: int(round((len - crop) / 2)) rounds half to even; transformers floors.
        assert_eq!(crop_offset(257, 224, CropOffset::RoundHalfEven), Some(16));
        assert_eq!(crop_offset(259, 224, CropOffset::RoundHalfEven), Some(18));
        assert_eq!(crop_offset(259, 224, CropOffset::Floor), Some(17));
        assert_eq!(crop_offset(256, 224, CropOffset::Floor), Some(16));
        assert_eq!(crop_offset(200, 224, CropOffset::Floor), None);
    }

    #[test]
    fn normalizes_with_mean_and_std() {
        let p = Preprocess::new(Preset::Squash, 2, 1.0);
        let img = RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 128]));
        let t = p.normalize(&img);
        let v = t.to_plain_array_view::<f32>().unwrap();
        let v = v.as_slice().unwrap();
        assert!((v[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((v[4] - (0.0 - 0.456) / 0.224).abs() < 1e-5);
    }
}

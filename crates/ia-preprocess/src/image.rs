//! Image processors as transformers' PIL backend runs them: convert to RGB, resize with Pillow's
//! filter, center-crop, rescale by 1/255, normalise with the checkpoint's mean and std, and for
//! DETR pad the batch to its largest image with a pixel mask.

use crate::resample::resize_rgb8;
pub use crate::resample::Filter;
use crate::PreprocessError;
use serde_json::Value;
use std::path::Path;

/// An 8-bit RGB image, rows of interleaved R, G, B.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self, PreprocessError> {
        if width == 0 || height == 0 || data.len() != width * height * 3 {
            return Err(PreprocessError::Input(format!(
                "an RGB image of {width}x{height} needs {} bytes, got {}",
                width * height * 3,
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Decodes a PNG or JPEG file. Transparent pixels are composited over white and grey
    /// images replicated to three channels, as transformers' `convert_to_rgb` does.
    pub fn open(path: &Path) -> Result<Self, PreprocessError> {
        let bytes = std::fs::read(path).map_err(|e| PreprocessError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::decode(&bytes).map_err(|reason| PreprocessError::WrongKind {
            path: path.display().to_string(),
            expected: "PNG or JPEG image",
            reason,
        })
    }

    /// Decodes PNG or JPEG bytes; images wider or taller than [`MAX_INPUT_SIDE`] or with more
    /// than [`MAX_INPUT_PIXELS`] are refused before their pixels are allocated.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        reader.limits(limits_for_decode());
        let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
        if w == 0 || h == 0 {
            return Err(format!("the image is {w}x{h} pixels"));
        }
        if u64::from(w) * u64::from(h) > MAX_INPUT_PIXELS {
            return Err(format!(
                "the image is {w}x{h} pixels; at most {MAX_INPUT_PIXELS} pixels are decoded"
            ));
        }
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        reader.limits(limits_for_decode());
        let img = reader.decode().map_err(|e| e.to_string())?;
        let (width, height) = (img.width() as usize, img.height() as usize);
        let data = if img.color().has_alpha() {
            let rgba = img.to_rgba8();
            let mut out = Vec::with_capacity(width * height * 3);
            for px in rgba.pixels() {
                let a = px.0[3];
                for c in 0..3 {
                    out.push(composite_over_white(px.0[c], a));
                }
            }
            out
        } else {
            img.to_rgb8().into_raw()
        };
        Ok(Self {
            width,
            height,
            data,
        })
    }

    pub fn resize(&self, width: usize, height: usize, filter: Filter) -> Self {
        Self {
            width,
            height,
            data: resize_rgb8(&self.data, self.width, self.height, width, height, filter),
        }
    }
}

/// The widest or tallest image decoded, pixels.
pub const MAX_INPUT_SIDE: u32 = 1 << 15;
/// The most pixels an input image may have (64 megapixels).
pub const MAX_INPUT_PIXELS: u64 = 1 << 26;
/// The most pixels a processor may resize or crop an image to (16 megapixels: DETR's largest
/// output is 1333 x 1333, CLIP's and ViT's are under one megapixel).
pub const MAX_OUTPUT_PIXELS: u64 = 1 << 24;

/// Decoder limits: the largest accepted image as RGBA8, plus the decoder's own buffers.
fn limits_for_decode() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_INPUT_PIXELS * 4 * 2);
    limits
}

/// Pillow's `alpha_composite` of a pixel over opaque white, in its 7-bit fixed point.
fn composite_over_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    const BITS: u32 = 7;
    let (c, a) = (u32::from(c), u32::from(a));
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << BITS) / outa255;
    let coef2 = 255 * (1 << BITS) - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << BITS);
    ((((tmp >> 8) + tmp) >> 8) >> BITS) as u8
}

/// How a processor sizes an image before cropping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    Exact {
        height: usize,
        width: usize,
    },
    ShortestEdge(usize),
    ShortestLongest {
        shortest: usize,
        longest: usize,
    },
    /// Qwen2-VL's `smart_resize`: sides multiples of `factor`, area within `min..=max`
    /// pixels, the aspect ratio kept as closely as that allows.
    Pixels {
        min: usize,
        max: usize,
        factor: usize,
    },
}

/// Qwen2-VL's patch layout: images become a grid of `patch`-pixel patches, `merge` x `merge`
/// of which the model merges into one token, each repeated `temporal` times (a still image
/// is a clip of identical frames).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatchGrid {
    pub patch: usize,
    pub merge: usize,
    pub temporal: usize,
}

impl PatchGrid {
    /// `Qwen2VLImageProcessor.patchify`: a processed CHW image of `height` x `width` ->
    /// [grid_h * grid_w, channels * temporal * patch * patch], the patches of each
    /// merge x merge block adjacent.
    pub fn patchify(&self, chw: &[f32], height: usize, width: usize) -> Vec<f32> {
        let (p, m, t) = (self.patch, self.merge, self.temporal);
        let (gh, gw) = (height / p, width / p);
        let channels = chw.len() / (height * width);
        let mut out = Vec::with_capacity(chw.len() * t);
        for bi in 0..gh / m {
            for bj in 0..gw / m {
                for mi in 0..m {
                    for mj in 0..m {
                        let (y0, x0) = ((bi * m + mi) * p, (bj * m + mj) * p);
                        for c in 0..channels {
                            for _ in 0..t {
                                for y in y0..y0 + p {
                                    let row = (c * height + y) * width;
                                    out.extend_from_slice(&chw[row + x0..row + x0 + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// The fields of `preprocessor_config.json` that image processors act on.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub processor_type: String,
    pub resize: Option<(Size, Filter)>,
    pub center_crop: Option<(usize, usize)>,
    pub rescale_factor: Option<f64>,
    pub normalize: Option<([f64; 3], [f64; 3])>,
    /// DETR: pad every image of a batch to the largest one and return a pixel mask.
    pub pad: bool,
    /// LLaVA-NeXT: each image becomes tiles (the whole image resized, then the grid), each
    /// of which goes through the steps above.
    pub anyres: Option<AnyRes>,
    /// Qwen2-VL: the patch layout its model reads the resized image in.
    pub patches: Option<PatchGrid>,
}

const IMAGENET_DEFAULT: ([f64; 3], [f64; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
const IMAGENET_STANDARD: ([f64; 3], [f64; 3]) = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]);
const OPENAI_CLIP: ([f64; 3], [f64; 3]) = (
    [0.48145466, 0.4578275, 0.40821073],
    [0.26862954, 0.26130258, 0.27577711],
);

impl ImageProcessor {
    /// The processor a checkpoint's `preprocessor_config.json` describes. Fields it leaves out
    /// take the defaults of its `image_processor_type` (CLIP, ViT, DETR), as transformers does.
    pub fn from_config(config: &Value) -> Result<Self, PreprocessError> {
        let kind = config
            .get("image_processor_type")
            .or_else(|| config.get("feature_extractor_type"))
            .and_then(Value::as_str)
            .unwrap_or("ViTImageProcessor")
            .trim_end_matches("Fast")
            .replace("FeatureExtractor", "ImageProcessor");
        let mut p = Self::defaults(&kind)?;
        let flag = |name: &str, default: bool| {
            config.get(name).and_then(Value::as_bool).unwrap_or(default)
        };
        let square = !matches!(
            p.processor_type.as_str(),
            "CLIPImageProcessor" | "LlavaNextImageProcessor" | "VideoMAEImageProcessor"
        );
        if let Some((size, filter)) = p.resize {
            let filter = match config.get("resample") {
                Some(v) => v
                    .as_u64()
                    .and_then(Filter::from_pil)
                    .ok_or_else(|| PreprocessError::Config(format!("unknown resample {v}")))?,
                None => filter,
            };
            let size = match config.get("size") {
                Some(v) => parse_size(v, config.get("max_size"), square)?,
                None => size,
            };
            p.resize = flag("do_resize", true).then_some((size, filter));
        }
        if let Some(crop) = config.get("crop_size") {
            p.center_crop = Some(match parse_size(crop, None, true)? {
                Size::Exact { height, width } => (height, width),
                other => {
                    return Err(PreprocessError::Config(format!(
                        "crop_size must be a height and width, got {other:?}"
                    )))
                }
            });
        }
        if !flag("do_center_crop", p.center_crop.is_some()) {
            p.center_crop = None;
        }
        if let Some(f) = config.get("rescale_factor").and_then(Value::as_f64) {
            p.rescale_factor = Some(f);
        }
        if !flag("do_rescale", true) {
            p.rescale_factor = None;
        }
        if let Some((mut mean, mut std)) = p.normalize {
            if let Some(m) = config.get("image_mean") {
                mean = triple(m, "image_mean")?;
            }
            if let Some(s) = config.get("image_std") {
                std = triple(s, "image_std")?;
            }
            p.normalize = flag("do_normalize", true).then_some((mean, std));
        }
        if p.processor_type == "Qwen2VLImageProcessor" {
            let int = |name: &str, default: usize| {
                config
                    .get(name)
                    .and_then(Value::as_u64)
                    .map_or(default, |v| v as usize)
            };
            let grid = PatchGrid {
                patch: int("patch_size", 14),
                merge: int("merge_size", 2),
                temporal: int("temporal_patch_size", 2),
            };
            if grid.patch == 0 || grid.merge == 0 || grid.temporal == 0 {
                return Err(PreprocessError::Config(format!(
                    "patch_size {}, merge_size {} and temporal_patch_size {} must be positive",
                    grid.patch, grid.merge, grid.temporal
                )));
            }
            let size = config.get("size");
            let bound = |key: &str, legacy: &str, default: usize| {
                size.and_then(|s| s.get(key))
                    .and_then(Value::as_u64)
                    .map(|v| v as usize)
                    .unwrap_or_else(|| int(legacy, default))
            };
            let (min, max) = (
                bound("shortest_edge", "min_pixels", 56 * 56),
                bound("longest_edge", "max_pixels", 28 * 28 * 1280),
            );
            if min == 0 || max < min {
                return Err(PreprocessError::Config(format!(
                    "min_pixels {min} and max_pixels {max} make no pixel budget"
                )));
            }
            let filter = p.resize.map_or(Filter::Bicubic, |(_, f)| f);
            p.resize = flag("do_resize", true).then_some((
                Size::Pixels {
                    min,
                    max,
                    factor: grid.patch * grid.merge,
                },
                filter,
            ));
            p.center_crop = None;
            p.patches = Some(grid);
        }
        if p.processor_type == "LlavaNextImageProcessor" {
            // Its do_pad pads the number of tiles across a batch, not the pixels.
            p.anyres = Some(AnyRes::from_config(config, &p)?);
        } else {
            p.pad = flag("do_pad", p.pad);
        }
        Ok(p)
    }

    fn defaults(kind: &str) -> Result<Self, PreprocessError> {
        let base = |resize, crop, normalize, pad| Self {
            processor_type: kind.to_string(),
            resize: Some(resize),
            center_crop: crop,
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some(normalize),
            pad,
            anyres: None,
            patches: None,
        };
        Ok(match kind {
            "CLIPImageProcessor" | "LlavaNextImageProcessor" | "Qwen2VLImageProcessor" => base(
                (Size::ShortestEdge(224), Filter::Bicubic),
                Some((224, 224)),
                OPENAI_CLIP,
                false,
            ),
            // X-CLIP's checkpoints name VideoMAE's processor, applied to each frame.
            "VideoMAEImageProcessor" => base(
                (Size::ShortestEdge(224), Filter::Bilinear),
                Some((224, 224)),
                IMAGENET_STANDARD,
                false,
            ),
            "ViTImageProcessor" => base(
                (
                    Size::Exact {
                        height: 224,
                        width: 224,
                    },
                    Filter::Bilinear,
                ),
                None,
                IMAGENET_STANDARD,
                false,
            ),
            "DetrImageProcessor" => base(
                (
                    Size::ShortestLongest {
                        shortest: 800,
                        longest: 1333,
                    },
                    Filter::Bilinear,
                ),
                None,
                IMAGENET_DEFAULT,
                true,
            ),
            other => {
                return Err(PreprocessError::Config(format!(
                    "image processor {other} is not supported (CLIPImageProcessor, ViTImageProcessor, DetrImageProcessor, LlavaNextImageProcessor are)"
                )))
            }
        })
    }

    /// Processes a batch into NCHW float pixels (plus a pixel mask when the processor pads).
    pub fn process(&self, images: &[RgbImage]) -> Result<PixelBatch, PreprocessError> {
        if images.is_empty() {
            return Err(PreprocessError::Input("no images to process".into()));
        }
        let tiles;
        let images = match &self.anyres {
            Some(anyres) => {
                tiles = images
                    .iter()
                    .map(|im| anyres.tiles(im))
                    .collect::<Result<Vec<_>, _>>()?
                    .concat();
                &tiles[..]
            }
            None => images,
        };
        let planes: Vec<(usize, usize, Vec<f32>)> = images
            .iter()
            .map(|im| self.process_one(im))
            .collect::<Result<_, _>>()?;
        let (h, w) = (
            planes.iter().map(|p| p.0).max().unwrap_or(0),
            planes.iter().map(|p| p.1).max().unwrap_or(0),
        );
        if !self.pad && planes.iter().any(|p| (p.0, p.1) != (h, w)) {
            return Err(PreprocessError::Input(
                "images of this batch come out at different sizes and the processor does not pad; run them one at a time".into(),
            ));
        }
        let mut pixel_values = vec![0f32; images.len() * 3 * h * w];
        let mut pixel_mask = vec![0u8; images.len() * h * w];
        for (i, (ph, pw, plane)) in planes.iter().enumerate() {
            for c in 0..3 {
                for y in 0..*ph {
                    let dst = ((i * 3 + c) * h + y) * w;
                    let src = (c * ph + y) * pw;
                    pixel_values[dst..dst + pw].copy_from_slice(&plane[src..src + pw]);
                }
            }
            for y in 0..*ph {
                pixel_mask[(i * h + y) * w..(i * h + y) * w + pw].fill(1);
            }
        }
        Ok(PixelBatch {
            shape: [images.len(), 3, h, w],
            pixel_values,
            pixel_mask: self.pad.then_some(pixel_mask),
        })
    }

    fn process_one(&self, image: &RgbImage) -> Result<(usize, usize, Vec<f32>), PreprocessError> {
        let mut img = std::borrow::Cow::Borrowed(image);
        if let Some((size, filter)) = self.resize {
            let (long, short) = (image.height.max(image.width), image.height.min(image.width));
            if matches!(size, Size::Pixels { .. }) && long > 200 * short {
                return Err(PreprocessError::Input(format!(
                    "a {}x{} image: the aspect ratio must be under 200 (smart_resize)",
                    image.width, image.height
                )));
            }
            let (h, w) = output_size(image.height, image.width, size);
            check_output(h, w, "resizes", image)?;
            if (h, w) != (image.height, image.width) {
                img = std::borrow::Cow::Owned(image.resize(w, h, filter));
            }
        }
        // Channel-first u8 planes, zero-padded where a crop is larger than the image.
        let (mut h, mut w) = (img.height, img.width);
        let mut chw: Vec<u8> = (0..3)
            .flat_map(|c| img.data.iter().skip(c).step_by(3).copied())
            .collect();
        if let Some((ch, cw)) = self.center_crop {
            check_output(ch, cw, "crops", image)?;
            chw = center_crop(&chw, h, w, ch, cw);
            (h, w) = (ch, cw);
        }
        let scale = self.rescale_factor.unwrap_or(1.0);
        let out = chw
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                // transformers rescales in float64 and casts to float32 before normalising.
                let x = (f64::from(v) * scale) as f32;
                match self.normalize {
                    Some((mean, std)) => {
                        let c = i / (h * w);
                        (x - mean[c] as f32) / std[c] as f32
                    }
                    None => x,
                }
            })
            .collect();
        Ok((h, w, out))
    }
}

/// A resize or crop target must have pixels, and not more than [`MAX_OUTPUT_PIXELS`].
fn check_output(h: usize, w: usize, verb: &str, image: &RgbImage) -> Result<(), PreprocessError> {
    if h == 0 || w == 0 || (h as u64).saturating_mul(w as u64) > MAX_OUTPUT_PIXELS {
        return Err(PreprocessError::Input(format!(
            "the processor {verb} a {}x{} image to {w}x{h} pixels; \
             the result must have between 1 and {MAX_OUTPUT_PIXELS} pixels",
            image.width, image.height
        )));
    }
    Ok(())
}

/// Processed pixels, NCHW.
#[derive(Debug, Clone)]
pub struct PixelBatch {
    pub shape: [usize; 4],
    pub pixel_values: Vec<f32>,
    /// 1 where a pixel belongs to the image, 0 in padding; NHW.
    pub pixel_mask: Option<Vec<u8>>,
}

fn triple(v: &Value, name: &str) -> Result<[f64; 3], PreprocessError> {
    match v {
        Value::Number(n) => Ok([n.as_f64().unwrap_or(0.0); 3]),
        Value::Array(a) if a.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().ok_or_else(|| {
                    PreprocessError::Config(format!("{name} must hold numbers, got {x}"))
                })?;
            }
            Ok(out)
        }
        other => Err(PreprocessError::Config(format!(
            "{name} must be a number or three numbers, got {other}"
        ))),
    }
}

fn parse_size(v: &Value, max_size: Option<&Value>, square: bool) -> Result<Size, PreprocessError> {
    let field = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
    let size = if let Some(n) = v.as_u64() {
        let n = n as usize;
        match max_size.and_then(Value::as_u64) {
            Some(longest) => Size::ShortestLongest {
                shortest: n,
                longest: longest as usize,
            },
            None if square => Size::Exact {
                height: n,
                width: n,
            },
            None => Size::ShortestEdge(n),
        }
    } else if let (Some(height), Some(width)) = (field("height"), field("width")) {
        Size::Exact { height, width }
    } else if let (Some(shortest), Some(longest)) = (field("shortest_edge"), field("longest_edge"))
    {
        Size::ShortestLongest { shortest, longest }
    } else if let Some(s) = field("shortest_edge") {
        Size::ShortestEdge(s)
    } else {
        return Err(PreprocessError::Config(format!(
            "size {v} is not a number, {{height, width}}, {{shortest_edge}} or {{shortest_edge, longest_edge}}"
        )));
    };
    let zero = match size {
        Size::Exact { height, width } => height == 0 || width == 0,
        Size::ShortestEdge(s) => s == 0,
        Size::ShortestLongest { shortest, longest } => shortest == 0 || longest < shortest,
        Size::Pixels { min, max, factor } => min == 0 || max < min || factor == 0,
    };
    if zero {
        return Err(PreprocessError::Config(format!("size {v} is empty")));
    }
    Ok(size)
}

/// Qwen2-VL's `smart_resize` (Python's round: ties to even).
fn smart_resize(
    height: usize,
    width: usize,
    min: usize,
    max: usize,
    factor: usize,
) -> (usize, usize) {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let mut hb = (h / f).round_ties_even() * f;
    let mut wb = (w / f).round_ties_even() * f;
    if hb * wb > max as f64 {
        let beta = (h * w / max as f64).sqrt();
        hb = f.max((h / beta / f).floor() * f);
        wb = f.max((w / beta / f).floor() * f);
    } else if hb * wb < min as f64 {
        let beta = (min as f64 / (h * w)).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    (hb as usize, wb as usize)
}

/// The (height, width) transformers resizes to: `get_resize_output_image_size` for a shortest
/// edge, `get_size_with_aspect_ratio` for shortest + longest.
pub fn output_size(height: usize, width: usize, size: Size) -> (usize, usize) {
    match size {
        Size::Exact { height, width } => (height, width),
        Size::ShortestEdge(s) => {
            let (short, long) = if width <= height {
                (width, height)
            } else {
                (height, width)
            };
            let new_long = ((s as f64 * long as f64 / short as f64) as usize).max(1);
            if width <= height {
                (new_long, s)
            } else {
                (s, new_long)
            }
        }
        Size::Pixels { min, max, factor } => smart_resize(height, width, min, max, factor),
        Size::ShortestLongest { shortest, longest } => {
            let (h, w) = (height as f64, width as f64);
            let (min_o, max_o) = (h.min(w), h.max(w));
            let mut size = shortest as f64;
            let mut raw = None;
            if max_o / min_o * size > longest as f64 {
                let r = longest as f64 * min_o / max_o;
                raw = Some(r);
                size = r.round_ties_even();
            }
            let s = size as usize;
            if (height <= width && height == s) || (width <= height && width == s) {
                (height, width)
            } else if width < height {
                let oh = match raw {
                    Some(r) => (r * h / w) as usize,
                    None => (size * h / w) as usize,
                };
                (oh, s)
            } else {
                let ow = match raw {
                    Some(r) => (r * w / h) as usize,
                    None => (size * w / h) as usize,
                };
                (s, ow)
            }
        }
    }
}

/// transformers' `center_crop` on CHW planes, padding with zeros where the crop is larger.
fn center_crop(chw: &[u8], h: usize, w: usize, ch: usize, cw: usize) -> Vec<u8> {
    let (nh, nw) = (ch.max(h), cw.max(w));
    let top_pad = (nh - h).div_ceil(2);
    let left_pad = (nw - w).div_ceil(2);
    let top = (h as i64 - ch as i64).div_euclid(2) + top_pad as i64;
    let left = (w as i64 - cw as i64).div_euclid(2) + left_pad as i64;
    let mut out = vec![0u8; 3 * ch * cw];
    for c in 0..3 {
        for y in 0..ch {
            let py = top + y as i64 - top_pad as i64; // row in the original image
            if py < 0 || py >= h as i64 {
                continue;
            }
            for x in 0..cw {
                let px = left + x as i64 - left_pad as i64;
                if px >= 0 && px < w as i64 {
                    out[(c * ch + y) * cw + x] = chw[(c * h + py as usize) * w + px as usize];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shortest_edge_keeps_aspect_like_transformers() {
        assert_eq!(output_size(300, 400, Size::ShortestEdge(224)), (224, 298));
        assert_eq!(output_size(400, 300, Size::ShortestEdge(224)), (298, 224));
        let detr = Size::ShortestLongest {
            shortest: 800,
            longest: 1333,
        };
        assert_eq!(output_size(300, 400, detr), (800, 1066));
        assert_eq!(output_size(100, 1000, detr), (133, 1333));
    }

    #[test]
    fn config_overrides_type_defaults() {
        let p = ImageProcessor::from_config(&json!({
            "image_processor_type": "CLIPImageProcessor",
            "size": {"shortest_edge": 32}, "crop_size": {"height": 30, "width": 30},
            "do_normalize": false
        }))
        .unwrap();
        assert_eq!(p.resize, Some((Size::ShortestEdge(32), Filter::Bicubic)));
        assert_eq!(p.center_crop, Some((30, 30)));
        assert_eq!(p.normalize, None);
        assert!(
            ImageProcessor::from_config(&json!({"image_processor_type": "Foo"}))
                .unwrap_err()
                .to_string()
                .contains("Foo")
        );
        assert!(ImageProcessor::from_config(&json!({"size": "big"})).is_err());
    }

    #[test]
    fn crop_larger_than_image_pads_with_zero_pixels() {
        let img = RgbImage::new(2, 2, vec![255; 12]).unwrap();
        let p = ImageProcessor {
            processor_type: "test".into(),
            resize: None,
            center_crop: Some((4, 4)),
            rescale_factor: Some(1.0 / 255.0),
            normalize: None,
            pad: false,
            anyres: None,
            patches: None,
        };
        let b = p.process(&[img]).unwrap();
        assert_eq!(b.shape, [1, 3, 4, 4]);
        let ones = b.pixel_values.iter().filter(|&&v| v == 1.0).count();
        assert_eq!(ones, 3 * 4);
        assert_eq!(b.pixel_values[5], 1.0); // row 1, col 1
    }

    #[test]
    fn smart_resize_matches_qwen2_vl() {
        // transformers' smart_resize on the same sizes.
        let size = |h, w, max| {
            output_size(
                h,
                w,
                Size::Pixels {
                    min: 3136,
                    max,
                    factor: 28,
                },
            )
        };
        assert_eq!(size(512, 512, 12845056), (504, 504));
        assert_eq!(size(1080, 1920, 12845056), (1092, 1932));
        assert_eq!(size(10, 700, 12845056), (28, 476));
        assert_eq!(size(4000, 3000, 1003520), (1148, 840));
        assert_eq!(size(42, 42, 1003520), (56, 56));
        let grid = PatchGrid {
            patch: 1,
            merge: 2,
            temporal: 1,
        };
        // A 2x4 one-channel image: the patches of each 2x2 block adjacent.
        let chw = [0., 1., 2., 3., 4., 5., 6., 7.];
        assert_eq!(grid.patchify(&chw, 2, 4), [0., 1., 4., 5., 2., 3., 6., 7.]);
    }

    #[test]
    fn padding_batches_mark_the_real_pixels() {
        let p = ImageProcessor {
            processor_type: "test".into(),
            resize: None,
            center_crop: None,
            rescale_factor: None,
            normalize: None,
            pad: true,
            anyres: None,
            patches: None,
        };
        let a = RgbImage::new(3, 2, vec![1; 18]).unwrap();
        let b = RgbImage::new(2, 3, vec![2; 18]).unwrap();
        let out = p.process(&[a, b]).unwrap();
        assert_eq!(out.shape, [2, 3, 3, 3]);
        let mask = out.pixel_mask.unwrap();
        assert_eq!(&mask[..9], &[1, 1, 1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(&mask[9..], &[1, 1, 0, 1, 1, 0, 1, 1, 0]);
    }

    #[test]
    fn extreme_shapes_stay_within_the_pixel_budget() {
        // 1 x 200: DETR's sizing keeps both sides at least one pixel.
        let detr = Size::ShortestLongest {
            shortest: 800,
            longest: 1333,
        };
        let (h, w) = output_size(200, 1, detr);
        assert!(h >= 1 && w >= 1, "{h}x{w}");
        // A shortest-edge resize of a 1 x 30000 strip would be 224 x 6.7M pixels.
        let strip = RgbImage::new(30_000, 1, vec![0; 90_000]).unwrap();
        let p = ImageProcessor::from_config(&json!({
            "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224}
        }))
        .unwrap();
        let e = p.process(&[strip]).unwrap_err().to_string();
        assert!(e.contains("30000x1") && e.contains("pixels"), "{e}");
    }

    #[test]
    fn corrupt_bytes_are_reported() {
        assert!(RgbImage::decode(b"not an image").is_err());
        assert_eq!(composite_over_white(10, 255), 10);
        assert_eq!(composite_over_white(10, 0), 255);
    }
}

/// LLaVA-NeXT's "anyres" tiling, as transformers' `LlavaNextImageProcessor` does it: the image
/// is fitted (aspect ratio kept, bicubic) into the grid resolution that keeps the most of it
/// and wastes the least, padded with black to that resolution (centred), and cut into tiles of
/// the vision tower's size; the whole image, resized to one tile, comes first.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyRes {
    /// `image_grid_pinpoints`: the (height, width) resolutions an image may be fitted to.
    pub pinpoints: Vec<(usize, usize)>,
    /// A tile's side: the crop size.
    pub tile: usize,
    /// (height, width) the whole image is resized to.
    pub base: (usize, usize),
    pub filter: Filter,
}

impl AnyRes {
    fn from_config(config: &Value, p: &ImageProcessor) -> Result<Self, PreprocessError> {
        let (size, filter) = p
            .resize
            .unwrap_or((Size::ShortestEdge(224), Filter::Bicubic));
        let base = match size {
            Size::Exact { height, width } => (height, width),
            Size::ShortestEdge(s) | Size::ShortestLongest { shortest: s, .. } => (s, s),
            Size::Pixels { .. } => {
                return Err(PreprocessError::Config(
                    "anyres tiles need a fixed size, not a pixel budget".into(),
                ))
            }
        };
        let tile = p.center_crop.map_or(base.0, |(h, _)| h);
        let bad = |why: &str| PreprocessError::Config(format!("image_grid_pinpoints: {why}"));
        let pinpoints = match config.get("image_grid_pinpoints").filter(|v| !v.is_null()) {
            None => vec![(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)],
            Some(Value::Array(list)) => list
                .iter()
                .map(|pair| match pair.as_array().map(|a| a.as_slice()) {
                    Some([h, w]) => match (h.as_u64(), w.as_u64()) {
                        (Some(h), Some(w)) => Ok((h as usize, w as usize)),
                        _ => Err(bad("each must be two integers")),
                    },
                    _ => Err(bad("each must be [height, width]")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(bad("must be a list of [height, width]")),
        };
        Self::new(pinpoints, tile, base, filter)
    }

    /// Tiling over `pinpoints` (height, width), each a grid of `tile`-pixel tiles.
    pub fn new(
        pinpoints: Vec<(usize, usize)>,
        tile: usize,
        base: (usize, usize),
        filter: Filter,
    ) -> Result<Self, PreprocessError> {
        let bad = |why: &str| PreprocessError::Config(format!("image_grid_pinpoints: {why}"));
        if pinpoints.is_empty() {
            return Err(bad("the list is empty"));
        }
        for &(h, w) in &pinpoints {
            if h == 0
                || w == 0
                || !h.is_multiple_of(tile)
                || !w.is_multiple_of(tile)
                || (h as u64) * (w as u64) > MAX_OUTPUT_PIXELS
            {
                return Err(bad(&format!(
                    "{h}x{w} is not a grid of {tile}-pixel tiles within {MAX_OUTPUT_PIXELS} pixels"
                )));
            }
        }
        Ok(Self {
            pinpoints,
            tile,
            base,
            filter,
        })
    }

    /// transformers' `select_best_resolution`: the pinpoint that keeps the most pixels of a
    /// `height` x `width` image, then the one that wastes the fewest.
    pub fn best_resolution(&self, height: usize, width: usize) -> (usize, usize) {
        let (oh, ow) = (height as f64, width as f64);
        let mut best = self.pinpoints[0];
        let (mut most, mut least_wasted) = (0u64, u64::MAX);
        for &(h, w) in &self.pinpoints {
            let scale = (w as f64 / ow).min(h as f64 / oh);
            let (dw, dh) = ((ow * scale) as u64, (oh * scale) as u64);
            let effective = (dw * dh).min((height * width) as u64);
            let wasted = (h * w) as u64 - effective.min((h * w) as u64);
            if effective > most || (effective == most && wasted < least_wasted) {
                (most, least_wasted, best) = (effective, wasted, (h, w));
            }
        }
        best
    }

    /// The grid of tiles (rows, columns) a `height` x `width` image is cut into.
    pub fn grid(&self, height: usize, width: usize) -> (usize, usize) {
        let (h, w) = self.best_resolution(height, width);
        (h / self.tile, w / self.tile)
    }

    /// Where the grid tiles' patch features of a `height` x `width` image lie once the
    /// padding is taken off (transformers' `unpad_image`): the grid is rows x columns of
    /// `tile / patch` patches a side, of which the kept rows and columns are
    /// `(first row, rows), (first column, columns)`.
    pub fn unpadded_features(
        &self,
        height: usize,
        width: usize,
        patch: usize,
    ) -> ((usize, usize), (usize, usize)) {
        let (grid_rows, grid_cols) = self.grid(height, width);
        let side = self.tile / patch.max(1);
        let (current_h, current_w) = (grid_rows * side, grid_cols * side);
        // Python's int(round(x, 7)).
        let round7 = |x: f64| ((x * 1e7).round() / 1e7) as usize;
        if width as f64 / height as f64 > current_w as f64 / current_h as f64 {
            let new_h = round7(height as f64 * (current_w as f64 / width as f64));
            let pad = current_h.saturating_sub(new_h) / 2;
            ((pad, current_h - 2 * pad), (0, current_w))
        } else {
            let new_w = round7(width as f64 * (current_h as f64 / height as f64));
            let pad = current_w.saturating_sub(new_w) / 2;
            ((0, current_h), (pad, current_w - 2 * pad))
        }
    }

    /// Image tokens LLaVA-NeXT's processor puts in the prompt for a `height` x `width` image
    /// (transformers' `LlavaNextProcessor._get_number_of_features`): the base tile's patches,
    /// then the grid's unpadded patches with one newline per row; CLS counts once unless the
    /// strategy drops it.
    pub fn image_tokens(&self, height: usize, width: usize, patch: usize, keep_cls: bool) -> usize {
        let side = self.tile / patch.max(1);
        let ((_, rows), (_, cols)) = self.unpadded_features(height, width, patch);
        side * side + usize::from(keep_cls) + rows * (cols + 1)
    }

    /// The whole image resized to the base size, then the grid's tiles row by row.
    pub fn tiles(&self, image: &RgbImage) -> Result<Vec<RgbImage>, PreprocessError> {
        let (th, tw) = self.best_resolution(image.height, image.width);
        let (nh, nw) = fitted_size(image.height, image.width, th, tw);
        let resize = |h: usize, w: usize| -> Result<RgbImage, PreprocessError> {
            check_output(h, w, "resizes", image)?;
            Ok(if (h, w) == (image.height, image.width) {
                image.clone()
            } else {
                image.resize(w, h, self.filter)
            })
        };
        let fitted = resize(nh, nw)?;
        let (top, left) = ((th - nh) / 2, (tw - nw) / 2);
        let mut tiles = vec![resize(self.base.0, self.base.1)?];
        let t = self.tile;
        for row in 0..th / t {
            for col in 0..tw / t {
                let mut data = vec![0u8; t * t * 3];
                for y in 0..t {
                    // Rows and columns of the tile inside the fitted image (the rest is padding).
                    let Some(fy) = (row * t + y).checked_sub(top).filter(|&fy| fy < nh) else {
                        continue;
                    };
                    for x in 0..t {
                        let Some(fx) = (col * t + x).checked_sub(left).filter(|&fx| fx < nw) else {
                            continue;
                        };
                        let src = (fy * nw + fx) * 3;
                        data[(y * t + x) * 3..(y * t + x) * 3 + 3]
                            .copy_from_slice(&fitted.data[src..src + 3]);
                    }
                }
                tiles.push(RgbImage::new(t, t, data)?);
            }
        }
        Ok(tiles)
    }
}

/// transformers' `get_patch_output_size`: a `height` x `width` image scaled to fit in
/// `target_h` x `target_w`, aspect ratio kept (the long side fills it, the other rounds up).
fn fitted_size(height: usize, width: usize, target_h: usize, target_w: usize) -> (usize, usize) {
    let (scale_w, scale_h) = (
        target_w as f64 / width as f64,
        target_h as f64 / height as f64,
    );
    if scale_w < scale_h {
        (
            ((height as f64 * scale_w).ceil() as usize).min(target_h),
            target_w,
        )
    } else {
        (
            target_h,
            ((width as f64 * scale_h).ceil() as usize).min(target_w),
        )
    }
}

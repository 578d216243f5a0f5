//! Images for vision-language models: generated deterministically from the
//! seed (`--images N --image-size WxH[:WEIGHT],... --image-format jpeg|png`)
//! or taken from a folder of real files (`--image-dir`), each sent as an
//! OpenAI `image_url` content part with a `data:` URL.
//!
//! Generated images are fractal value noise (five octaves of smoothly
//! interpolated random values, a colour per channel) with a little per-pixel
//! grain: large smooth regions, texture at every scale and sensor-like noise,
//! so JPEG and PNG compress them about as they compress a photo — neither
//! the tiny files of a flat gradient nor the incompressible ones of pure
//! noise. Every request gets its own images (drawn from the seed and the
//! request's index), so a server's image cache cannot flatter the numbers.

use crate::record::ImagesInfo;
use crate::units::BadValue;
use anyhow::Context;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One image as sent: its URL and what is known of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// A `data:` URL, or a `file://` / `http(s)://` URL given as is.
    pub url: String,
    /// Width and height in pixels, when known.
    pub size: Option<(u32, u32)>,
    /// Encoded bytes, when known.
    pub bytes: Option<u64>,
}

impl Image {
    /// An image file read into a `data:` URL; its size read from its header.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
        let format = image::guess_format(&data)
            .with_context(|| format!("{}: not an image", path.display()))?;
        let size = image::ImageReader::with_format(std::io::Cursor::new(&data), format)
            .into_dimensions()
            .with_context(|| format!("{}: unreadable image", path.display()))?;
        Ok(Self::encoded(&data, format.to_mime_type(), size))
    }

    fn encoded(data: &[u8], mime: &str, size: (u32, u32)) -> Self {
        let base64 = base64::engine::general_purpose::STANDARD.encode(data);
        Self {
            url: format!("data:{mime};base64,{base64}"),
            size: Some(size),
            bytes: Some(data.len() as u64),
        }
    }
}

/// What the records say about a request's images.
pub fn info(images: &[Arc<Image>]) -> Option<ImagesInfo> {
    let sum = |f: fn(&Image) -> Option<u64>| images.iter().map(|i| f(i)).sum::<Option<u64>>();
    (!images.is_empty()).then(|| ImagesInfo {
        count: images.len() as u32,
        pixels: sum(|i| i.size.map(|(w, h)| w as u64 * h as u64)),
        bytes: sum(|i| i.bytes),
    })
}

/// Encoding of generated images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    Jpeg,
    Png,
}

/// Pixel sizes to draw from, each with a weight: `512x512` or
/// `512x512:3,1024x768:1`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageSizes(pub Vec<(u32, u32, f64)>);

impl std::str::FromStr for ImageSizes {
    type Err = BadValue;
    fn from_str(text: &str) -> Result<Self, BadValue> {
        let bad = || {
            BadValue(format!(
                "`{text}` is not WIDTHxHEIGHT or a list WxH:WEIGHT,... (like 512x512 or 512x512:3,1024x768:1)"
            ))
        };
        let mut sizes = Vec::new();
        for item in text.split(',') {
            let (size, weight) = match item.split_once(':') {
                Some((s, w)) => (s, w.trim().parse::<f64>().map_err(|_| bad())?),
                None => (item, 1.0),
            };
            let (w, h) = size.trim().split_once(['x', 'X']).ok_or_else(bad)?;
            let (w, h): (u32, u32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
            if !(1..=8192).contains(&w) || !(1..=8192).contains(&h) {
                return Err(BadValue(format!(
                    "`{text}`: sides must be 1 to 8192 pixels"
                )));
            }
            if !(weight > 0.0 && weight.is_finite()) {
                return Err(BadValue(format!("`{text}`: weights must be > 0")));
            }
            sizes.push((w, h, weight));
        }
        Ok(Self(sizes))
    }
}

/// Where a run's images come from (checked: see [`ImageSource::check`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    Generated {
        sizes: ImageSizes,
        format: ImageFormat,
    },
    Folder {
        dir: PathBuf,
        /// The folder's image files, sorted; filled by [`ImageSource::check`].
        #[serde(skip)]
        files: Vec<PathBuf>,
    },
}

/// `--images N` per request, from a source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageConfig {
    pub per_request: u32,
    pub source: ImageSource,
}

impl ImageSource {
    /// A folder's image files, each header read (an unreadable image is an
    /// error naming it, before any request is sent).
    pub fn folder(dir: &Path) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        let listing = std::fs::read_dir(dir)
            .with_context(|| format!("--image-dir {}: cannot read it", dir.display()))?;
        for entry in listing {
            let path = entry
                .with_context(|| format!("--image-dir {}: cannot read it", dir.display()))?
                .path();
            if path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        if files.is_empty() {
            anyhow::bail!("--image-dir {}: holds no files", dir.display());
        }
        for path in &files {
            image::ImageReader::open(path)
                .and_then(|r| r.with_guessed_format())
                .map_err(anyhow::Error::from)
                .and_then(|r| Ok(r.into_dimensions()?))
                .with_context(|| format!("--image-dir: {}: unreadable image", path.display()))?;
        }
        Ok(ImageSource::Folder {
            dir: dir.to_path_buf(),
            files,
        })
    }
}

impl ImageConfig {
    /// The images of request `index`: the same seed and index always give the same ones.
    pub fn images(&self, seed: u64, index: u64) -> anyhow::Result<Vec<Arc<Image>>> {
        let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03));
        (0..self.per_request)
            .map(|_| match &self.source {
                ImageSource::Generated { sizes, format } => {
                    let (w, h) = pick(&mut rng, sizes);
                    Ok(Arc::new(generate(rng.random(), w, h, *format)))
                }
                ImageSource::Folder { files, .. } => {
                    let file = &files[rng.random_range(0..files.len())];
                    Image::from_file(file).map(Arc::new)
                }
            })
            .collect()
    }
}

fn pick(rng: &mut StdRng, sizes: &ImageSizes) -> (u32, u32) {
    let total: f64 = sizes.0.iter().map(|s| s.2).sum();
    let mut at = rng.random::<f64>() * total;
    for &(w, h, weight) in &sizes.0 {
        if at < weight {
            return (w, h);
        }
        at -= weight;
    }
    let (w, h, _) = sizes.0[sizes.0.len() - 1];
    (w, h)
}

/// A photo-like image (see the module doc), encoded.
pub fn generate(seed: u64, width: u32, height: u32, format: ImageFormat) -> Image {
    let mut rng = StdRng::seed_from_u64(seed);
    let channels: Vec<Vec<Octave>> = (0..3)
        .map(|_| {
            [128u32, 64, 32, 16, 8]
                .iter()
                .map(|cell| Octave::new(&mut rng, width, height, *cell))
                .collect()
        })
        .collect();
    let pixels = image::RgbImage::from_fn(width, height, |x, y| {
        let mut rgb = [0u8; 3];
        for (value, octaves) in rgb.iter_mut().zip(&channels) {
            let mut v = 0.0;
            let mut amplitude = 0.5;
            for octave in octaves {
                v += amplitude * octave.at(x, y);
                amplitude *= 0.5;
            }
            let grain = rng.random_range(-6.0..6.0);
            *value = (v * 255.0 / 0.97 + grain).clamp(0.0, 255.0) as u8;
        }
        image::Rgb(rgb)
    });
    let mut data = Vec::new();
    let (encoded, mime) = match format {
        ImageFormat::Jpeg => (
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut data, 85).encode_image(&pixels),
            "image/jpeg",
        ),
        ImageFormat::Png => (
            pixels.write_with_encoder(image::codecs::png::PngEncoder::new(&mut data)),
            "image/png",
        ),
    };
    encoded.expect("encoding an in-memory RGB image cannot fail");
    Image::encoded(&data, mime, (width, height))
}

/// A grid of random values `cell` pixels apart, smoothly interpolated.
struct Octave {
    cell: f64,
    columns: usize,
    values: Vec<f64>,
}

impl Octave {
    fn new(rng: &mut StdRng, width: u32, height: u32, cell: u32) -> Self {
        let columns = (width / cell + 2) as usize;
        let rows = (height / cell + 2) as usize;
        Self {
            cell: cell as f64,
            columns,
            values: (0..columns * rows).map(|_| rng.random()).collect(),
        }
    }

    fn at(&self, x: u32, y: u32) -> f64 {
        let (fx, fy) = (x as f64 / self.cell, y as f64 / self.cell);
        let (cx, cy) = (fx as usize, fy as usize);
        let smooth = |t: f64| t * t * (3.0 - 2.0 * t);
        let (tx, ty) = (smooth(fx.fract()), smooth(fy.fract()));
        let v = |i: usize, j: usize| self.values[j * self.columns + i];
        let top = v(cx, cy) * (1.0 - tx) + v(cx + 1, cy) * tx;
        let bottom = v(cx, cy + 1) * (1.0 - tx) + v(cx + 1, cy + 1) * tx;
        top * (1.0 - ty) + bottom * ty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_images_are_deterministic_and_compress_like_photos() {
        let a = generate(7, 256, 256, ImageFormat::Jpeg);
        assert_eq!(a, generate(7, 256, 256, ImageFormat::Jpeg));
        assert_ne!(a.url, generate(8, 256, 256, ImageFormat::Jpeg).url);
        assert!(a.url.starts_with("data:image/jpeg;base64,"));
        assert_eq!(a.size, Some((256, 256)));
        // Raw RGB is 3 bytes a pixel; a photo's JPEG at quality 85 is roughly
        // 0.1-0.6 bytes a pixel, a flat image far less, noise far more.
        let per_pixel = a.bytes.unwrap() as f64 / (256.0 * 256.0);
        assert!((0.05..1.0).contains(&per_pixel), "{per_pixel}");
        let png = generate(7, 64, 48, ImageFormat::Png);
        assert!(png.url.starts_with("data:image/png;base64,"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.url.split_once(',').unwrap().1)
            .unwrap();
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (64, 48));
    }

    #[test]
    fn sizes_parse_with_weights() {
        let sizes: ImageSizes = "512x512".parse().unwrap();
        assert_eq!(sizes.0, [(512, 512, 1.0)]);
        let sizes: ImageSizes = "64x64:3,32x16:1".parse().unwrap();
        assert_eq!(sizes.0, [(64, 64, 3.0), (32, 16, 1.0)]);
        for bad in ["512", "0x5", "5x5:0", "axb", "5x5:-1"] {
            assert!(bad.parse::<ImageSizes>().is_err(), "{bad}");
        }
        let config = ImageConfig {
            per_request: 2,
            source: ImageSource::Generated {
                sizes,
                format: ImageFormat::Png,
            },
        };
        let mut small = 0;
        for index in 0..40 {
            let images = config.images(1, index).unwrap();
            assert_eq!(images, config.images(1, index).unwrap());
            small += images.iter().filter(|i| i.size == Some((32, 16))).count();
            let info = info(&images).unwrap();
            assert_eq!(info.count, 2);
            assert!(info.bytes.unwrap() > 0);
        }
        // One draw in four is the small size, about.
        assert!((8..=32).contains(&small), "{small}");
    }

    #[test]
    fn a_folder_with_an_unreadable_image_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let good = generate(1, 16, 16, ImageFormat::Png);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(good.url.split_once(',').unwrap().1)
            .unwrap();
        std::fs::write(dir.path().join("a.png"), &bytes).unwrap();
        let ImageSource::Folder { files, .. } = ImageSource::folder(dir.path()).unwrap() else {
            panic!()
        };
        assert_eq!(files.len(), 1);
        assert_eq!(Image::from_file(&files[0]).unwrap().size, Some((16, 16)));
        std::fs::write(dir.path().join("b.jpg"), b"not an image at all").unwrap();
        let err = format!("{:#}", ImageSource::folder(dir.path()).unwrap_err());
        assert!(
            err.contains("b.jpg") && err.contains("unreadable image"),
            "{err}"
        );
    }
}

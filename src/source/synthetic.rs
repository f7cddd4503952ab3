//! The synthetic camera: the demo scenes of docs/scene-spec.md, moving, with ground truth on every frame.
//!
//! Each frame is rendered as RGB at the configured size, then encoded the way a camera delivers that format:
//! YUYV and NV12 in BT.601 limited range (yuvutils-rs, as the preparation step decodes them), GREY as BT.601
//! luma in full range (as V4L2 `GREY`), RGB24/BGR24 as is, MJPEG as a baseline 4:2:2 JPEG (quality 90).
//! Scratch buffers are allocated in `start`.

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use yuvutils_rs::{
    BufferStoreMut, YuvConversionMode, YuvPackedImageMut, YuvPlanarImage, YuvPlanarImageMut,
    YuvRange, YuvStandardMatrix,
};

use super::{CameraSettings, SourceSettings};
use super::{FrameSource, Pacer, SourceError};
use crate::frame::{FrameBuf, FrameMeta, PixelFormat};
use crate::scene::{render_into, Rng, SceneParams};

/// JPEG quality of MJPEG frames.
pub const MJPEG_QUALITY: u8 = 90;

/// The synthetic camera.
pub struct SyntheticSource {
    camera: usize,
    name: String,
    format: PixelFormat,
    width: u32,
    height: u32,
    fps: u32,
    seed: u64,
    hold_frames: u32,
    rng: Rng,
    scene: SceneParams,
    frame_in_hold: u64,
    sequence: u64,
    pacer: Pacer,
    started: bool,
    rgb: Vec<u8>,
    /// Planar 4:2:2 scratch for YUYV (Y, U, V).
    planes: [Vec<u8>; 3],
}

/// Memory a synthetic camera holds besides its pool: the RGB render and the planar conversion scratch.
pub fn resident_bytes(width: u32, height: u32) -> u64 {
    let pixels = width as u64 * height as u64;
    pixels * 3 + pixels * 2
}

impl SyntheticSource {
    /// A synthetic source for camera number `index`; fails if the config is not a synthetic camera or the size
    /// does not suit the format.
    pub fn new(index: usize, camera: &CameraSettings) -> Result<SyntheticSource, SourceError> {
        let SourceSettings::Synthetic { seed, hold_frames } = camera.source else {
            return Err(SourceError::Unsupported {
                camera: camera.name.clone(),
                format: camera.format,
                width: camera.width,
                height: camera.height,
                reason: format!("camera source is {}, not synthetic", camera.kind()),
            });
        };
        let mut rng = Rng::new(seed);
        let scene = SceneParams::sample(&mut rng);
        Ok(SyntheticSource {
            camera: index,
            name: camera.name.clone(),
            format: camera.format,
            width: camera.width,
            height: camera.height,
            fps: camera.fps,
            seed,
            hold_frames: hold_frames.max(1),
            rng,
            scene,
            frame_in_hold: 0,
            sequence: 0,
            pacer: Pacer::new(camera.fps),
            started: false,
            rgb: Vec::new(),
            planes: [Vec::new(), Vec::new(), Vec::new()],
        })
    }

    /// The scene the next frame shows (before motion), for tests and tools.
    pub fn current_scene(&self) -> &SceneParams {
        &self.scene
    }

    fn unsupported(&self, reason: impl Into<String>) -> SourceError {
        SourceError::Unsupported {
            camera: self.name.clone(),
            format: self.format,
            width: self.width,
            height: self.height,
            reason: reason.into(),
        }
    }

    fn encode(&mut self, out: &mut [u8]) -> Result<usize, SourceError> {
        let (w, h) = (self.width, self.height);
        let pixels = w as usize * h as usize;
        let rgb = &self.rgb[..pixels * 3];
        match self.format {
            PixelFormat::Rgb24 => {
                out[..pixels * 3].copy_from_slice(rgb);
                Ok(pixels * 3)
            }
            PixelFormat::Bgr24 => {
                for (o, i) in out[..pixels * 3]
                    .chunks_exact_mut(3)
                    .zip(rgb.chunks_exact(3))
                {
                    o[0] = i[2];
                    o[1] = i[1];
                    o[2] = i[0];
                }
                Ok(pixels * 3)
            }
            PixelFormat::Grey => {
                for (o, i) in out[..pixels].iter_mut().zip(rgb.chunks_exact(3)) {
                    *o = luma_bt601_full(i[0], i[1], i[2]);
                }
                Ok(pixels)
            }
            PixelFormat::Yuyv => {
                let [y, u, v] = &mut self.planes;
                let cw = w.div_ceil(2);
                let chroma = cw as usize * h as usize;
                {
                    let mut planar = YuvPlanarImageMut {
                        y_plane: BufferStoreMut::Borrowed(&mut y[..pixels]),
                        y_stride: w,
                        u_plane: BufferStoreMut::Borrowed(&mut u[..chroma]),
                        u_stride: cw,
                        v_plane: BufferStoreMut::Borrowed(&mut v[..chroma]),
                        v_stride: cw,
                        width: w,
                        height: h,
                    };
                    yuvutils_rs::rgb_to_yuv422(
                        &mut planar,
                        rgb,
                        w * 3,
                        YuvRange::Limited,
                        YuvStandardMatrix::Bt601,
                        YuvConversionMode::Balanced,
                    )
                    .map_err(|e| encode_error(&self.name, self.format, e))?;
                }
                let planar = YuvPlanarImage {
                    y_plane: &y[..pixels],
                    y_stride: w,
                    u_plane: &u[..chroma],
                    u_stride: cw,
                    v_plane: &v[..chroma],
                    v_stride: cw,
                    width: w,
                    height: h,
                };
                let mut packed = YuvPackedImageMut {
                    yuy: BufferStoreMut::Borrowed(&mut out[..pixels * 2]),
                    yuy_stride: w * 2,
                    width: w,
                    height: h,
                };
                yuvutils_rs::yuv422_to_yuyv422(&mut packed, &planar)
                    .map_err(|e| encode_error(&self.name, self.format, e))?;
                Ok(pixels * 2)
            }
            PixelFormat::Nv12 => {
                let (y, uv) = out[..pixels + pixels / 2].split_at_mut(pixels);
                let mut bi = yuvutils_rs::YuvBiPlanarImageMut {
                    y_plane: BufferStoreMut::Borrowed(y),
                    y_stride: w,
                    uv_plane: BufferStoreMut::Borrowed(uv),
                    uv_stride: w,
                    width: w,
                    height: h,
                };
                yuvutils_rs::rgb_to_yuv_nv12(
                    &mut bi,
                    rgb,
                    w * 3,
                    YuvRange::Limited,
                    YuvStandardMatrix::Bt601,
                    YuvConversionMode::Balanced,
                )
                .map_err(|e| encode_error(&self.name, self.format, e))?;
                Ok(pixels + pixels / 2)
            }
            PixelFormat::Mjpeg => {
                let out_len = out.len();
                let mut cursor = std::io::Cursor::new(&mut out[..]);
                let mut encoder = Encoder::new(&mut cursor, MJPEG_QUALITY);
                if let Some(sampling) = SamplingFactor::from_factors(2, 1) {
                    encoder.set_sampling_factor(sampling);
                }
                encoder
                    .encode(rgb, w as u16, h as u16, ColorType::Rgb)
                    .map_err(|e| {
                        encode_error(
                            &self.name,
                            self.format,
                            format!("{e} (frame buffer of {} bytes)", out_len),
                        )
                    })?;
                Ok(cursor.position() as usize)
            }
        }
    }
}

fn encode_error(camera: &str, format: PixelFormat, e: impl std::fmt::Display) -> SourceError {
    SourceError::Encode {
        camera: camera.to_owned(),
        format,
        message: e.to_string(),
    }
}

/// BT.601 luma in full range, as a V4L2 `GREY` camera delivers it.
pub fn luma_bt601_full(r: u8, g: u8, b: u8) -> u8 {
    ((299 * r as u32 + 587 * g as u32 + 114 * b as u32 + 500) / 1000) as u8
}

impl FrameSource for SyntheticSource {
    fn describe(&self) -> String {
        format!(
            "synthetic camera '{}': {} {}x{} at {} fps, seed {}, {} frames per scene",
            self.name, self.format, self.width, self.height, self.fps, self.seed, self.hold_frames
        )
    }

    fn start(&mut self) -> Result<(), SourceError> {
        self.format
            .check_size(self.width, self.height)
            .map_err(|why| self.unsupported(why))?;
        if self.format == PixelFormat::Mjpeg && (self.width > 65_535 || self.height > 65_535) {
            return Err(self.unsupported("JPEG frames are at most 65535 pixels per side"));
        }
        let pixels = self.width as usize * self.height as usize;
        self.rgb = vec![0; pixels * 3];
        if self.format == PixelFormat::Yuyv {
            let chroma = self.width.div_ceil(2) as usize * self.height as usize;
            self.planes = [vec![0; pixels], vec![0; chroma], vec![0; chroma]];
        }
        self.pacer.reset();
        self.started = true;
        Ok(())
    }

    fn next_frame(&mut self, buf: &mut FrameBuf) -> Result<(), SourceError> {
        if !self.started {
            return Err(SourceError::NotStarted {
                camera: self.name.clone(),
            });
        }
        let needed = self.max_frame_bytes();
        if buf.data.len() < needed {
            return Err(SourceError::BufferTooSmall {
                needed,
                capacity: buf.data.len(),
            });
        }
        if self.frame_in_hold >= self.hold_frames as u64 {
            self.scene = SceneParams::sample(&mut self.rng);
            self.frame_in_hold = 0;
        }
        let capture_ns = self.pacer.wait();
        let scene = self.scene.at_frame(self.frame_in_hold);
        let (w, h) = (self.width, self.height);
        render_into(&scene, w, h, &mut self.rgb).map_err(|e| self.unsupported(e.to_string()))?;
        let bytes = self.encode(&mut buf.data)?;
        buf.meta = FrameMeta {
            camera: self.camera,
            sequence: self.sequence,
            capture_ns,
            width: w,
            height: h,
            format: self.format,
            bytes,
            label: Some(scene.label()),
        };
        self.sequence += 1;
        self.frame_in_hold += 1;
        Ok(())
    }

    fn stop(&mut self) {
        self.started = false;
    }

    fn max_frame_bytes(&self) -> usize {
        self.format.max_frame_bytes(self.width, self.height)
    }
}

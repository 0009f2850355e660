//! The network: a small convolutional classifier, its deterministic weights, and loading them
//! from a safetensors file.
//!
//! # Architecture
//! For an input of `3 × S × S` (S a multiple of 8) and base width `W`:
//!
//! ```text
//! conv1 3×3, 3→W,  pad 1, ReLU, max-pool 2    → W  × S/2 × S/2
//! conv2 3×3, W→2W, pad 1, ReLU, max-pool 2    → 2W × S/4 × S/4
//! conv3 3×3, 2W→4W, pad 1, ReLU, max-pool 2   → 4W × S/8 × S/8
//! fc1   4W·(S/8)² → H, ReLU
//! fc2   H → classes, softmax
//! ```
//!
//! The default (S = 64, W = 16, H = 128, 10 classes) has about 0.55 M parameters (2.2 MB in
//! f32) and costs about 24 MFLOP per image; compute grows with S² and W², memory with the
//! batch, as in any CNN. It is what a small on-device vision model (a defect or presence
//! classifier) looks like, scaled down so a Pi-sized CPU answers in milliseconds.
//!
//! # Weights
//! The project makes its own model: [`generate`] draws He-normal weights (and zero biases)
//! from the seeded generator, so every build and every node has bit-identical weights for the
//! same seed. They are written with [`save`] and read back with [`Model::load`], the same code path a
//! trained model would take; [`Config`] is recovered from the tensor shapes and validated.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, Module, VarBuilder};
use edge_common::rng::SeededRng;

/// The network's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Config {
    /// Input height and width (square RGB images); a multiple of 8.
    pub input_size: usize,
    /// Channels of the first convolution (the others have 2× and 4×).
    pub width: usize,
    /// Units of the hidden fully connected layer.
    pub hidden: usize,
    /// Output classes.
    pub classes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            input_size: 64,
            width: 16,
            hidden: 128,
            classes: 10,
        }
    }
}

/// A model file or configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("loading the model {path}: {source}")]
    Load {
        path: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("the model in {path} is not this network: {reason}")]
    Shape { path: String, reason: String },
    #[error("writing the model {path}: {source}")]
    Save {
        path: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("running the model: {0}")]
    Run(#[from] candle_core::Error),
}

impl Config {
    /// Checks that the shape is usable.
    ///
    /// # Errors
    /// When a dimension is zero or the input size is not a multiple of 8.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.input_size == 0 || !self.input_size.is_multiple_of(8) {
            return Err(ModelError::Config(format!(
                "input size {} is not a positive multiple of 8",
                self.input_size
            )));
        }
        if self.width == 0 || self.hidden == 0 || self.classes == 0 {
            return Err(ModelError::Config(
                "width, hidden and classes must be positive".into(),
            ));
        }
        Ok(())
    }

    fn flat(&self) -> usize {
        let s = self.input_size / 8;
        4 * self.width * s * s
    }

    /// (name, shape) of every tensor.
    fn tensors(&self) -> Vec<(&'static str, Vec<usize>)> {
        let w = self.width;
        vec![
            ("conv1.weight", vec![w, 3, 3, 3]),
            ("conv1.bias", vec![w]),
            ("conv2.weight", vec![2 * w, w, 3, 3]),
            ("conv2.bias", vec![2 * w]),
            ("conv3.weight", vec![4 * w, 2 * w, 3, 3]),
            ("conv3.bias", vec![4 * w]),
            ("fc1.weight", vec![self.hidden, self.flat()]),
            ("fc1.bias", vec![self.hidden]),
            ("fc2.weight", vec![self.classes, self.hidden]),
            ("fc2.bias", vec![self.classes]),
        ]
    }

    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Multiply-adds ×2 for one image (convolutions and dense layers; activations and pooling
    /// are negligible).
    pub fn flops_per_image(&self) -> u64 {
        let (s, w) = (self.input_size as u64, self.width as u64);
        let conv = |hw: u64, cin: u64, cout: u64| 2 * hw * hw * cout * cin * 9;
        conv(s, 3, w)
            + conv(s / 2, w, 2 * w)
            + conv(s / 4, 2 * w, 4 * w)
            + 2 * self.flat() as u64 * self.hidden as u64
            + 2 * self.hidden as u64 * self.classes as u64
    }

    /// Recovers the shape from loaded tensors.
    fn from_tensors(t: &HashMap<String, Tensor>) -> Result<Self, String> {
        let dims = |name: &str| -> Result<Vec<usize>, String> {
            t.get(name)
                .map(|x| x.dims().to_vec())
                .ok_or_else(|| format!("no tensor `{name}`"))
        };
        let c1 = dims("conv1.weight")?;
        let f1 = dims("fc1.weight")?;
        let f2 = dims("fc2.weight")?;
        let (width, hidden, classes) = (c1[0], f1[0], f2[0]);
        let per_pixel = 4 * width;
        let flat = f1.get(1).copied().ok_or("fc1.weight is not a matrix")?;
        if per_pixel == 0 || flat % per_pixel != 0 {
            return Err(format!(
                "fc1 input {flat} is not a multiple of 4×width {per_pixel}"
            ));
        }
        let side = ((flat / per_pixel) as f64).sqrt().round() as usize;
        let cfg = Self {
            input_size: side * 8,
            width,
            hidden,
            classes,
        };
        for (name, shape) in cfg.tensors() {
            let got = dims(name)?;
            if got != shape {
                return Err(format!("`{name}` has shape {got:?}, expected {shape:?}"));
            }
        }
        Ok(cfg)
    }
}

/// Deterministic He-normal weights for `cfg` from `seed`.
///
/// # Errors
/// When the configuration is invalid or a tensor cannot be built.
pub fn generate(cfg: &Config, seed: u64) -> Result<HashMap<String, Tensor>, ModelError> {
    cfg.validate()?;
    let mut out = HashMap::new();
    for (name, shape) in cfg.tensors() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let fan_in: usize = shape[1..].iter().product();
            let std = (2.0 / fan_in as f64).sqrt();
            let mut rng = SeededRng::for_stream(seed, name);
            (0..n).map(|_| (rng.next_gaussian() * std) as f32).collect()
        };
        out.insert(
            name.to_string(),
            Tensor::from_vec(data, shape, &Device::Cpu)?,
        );
    }
    Ok(out)
}

/// Writes `tensors` as a safetensors file.
///
/// # Errors
/// When the file cannot be written.
pub fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<(), ModelError> {
    candle_core::safetensors::save(tensors, path).map_err(|source| ModelError::Save {
        path: path.display().to_string(),
        source,
    })
}

/// The network, ready to run.
#[derive(Debug)]
pub struct Model {
    cfg: Config,
    device: Device,
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl Model {
    /// Loads a safetensors file onto `device`, checking that it is this network.
    ///
    /// # Errors
    /// When the file cannot be read or its tensors do not fit the architecture.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let p = path.display().to_string();
        let tensors =
            candle_core::safetensors::load(path, device).map_err(|source| ModelError::Load {
                path: p.clone(),
                source,
            })?;
        let cfg = Config::from_tensors(&tensors).map_err(|reason| ModelError::Shape {
            path: p.clone(),
            reason,
        })?;
        Self::from_tensors(cfg, tensors, device)
    }

    /// Builds the network from named tensors.
    ///
    /// # Errors
    /// When a tensor is missing or misshapen.
    pub fn from_tensors(
        cfg: Config,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let conv = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let w = cfg.width;
        Ok(Self {
            conv1: candle_nn::conv2d(3, w, 3, conv, vb.pp("conv1"))?,
            conv2: candle_nn::conv2d(w, 2 * w, 3, conv, vb.pp("conv2"))?,
            conv3: candle_nn::conv2d(2 * w, 4 * w, 3, conv, vb.pp("conv3"))?,
            fc1: candle_nn::linear(cfg.flat(), cfg.hidden, vb.pp("fc1"))?,
            fc2: candle_nn::linear(cfg.hidden, cfg.classes, vb.pp("fc2"))?,
            cfg,
            device: device.clone(),
        })
    }

    /// The network's shape.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Class probabilities for a batch `[n, 3, S, S]` → `[n, classes]`.
    ///
    /// # Errors
    /// When the input has the wrong shape or a kernel fails.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let x = self.conv1.forward(x)?.relu()?.max_pool2d(2)?;
        let x = self.conv2.forward(&x)?.relu()?.max_pool2d(2)?;
        let x = self.conv3.forward(&x)?.relu()?.max_pool2d(2)?;
        let x = x.flatten_from(1)?;
        let x = self.fc1.forward(&x)?.relu()?;
        let x = self.fc2.forward(&x)?;
        Ok(candle_nn::ops::softmax(&x, D::Minus1)?)
    }

    /// Runs `images` (each `3·S·S` floats, channel-major) and returns, per image, the class
    /// probabilities.
    ///
    /// # Errors
    /// When an image has the wrong size or the forward pass fails.
    pub fn classify(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let s = self.cfg.input_size;
        let per = 3 * s * s;
        let mut flat = Vec::with_capacity(images.len() * per);
        for (i, img) in images.iter().enumerate() {
            if img.len() != per {
                return Err(ModelError::Config(format!(
                    "image {i} has {} values, expected 3×{s}×{s} = {per}",
                    img.len()
                )));
            }
            flat.extend_from_slice(img);
        }
        let x = Tensor::from_vec(flat, (images.len(), 3, s, s), &self.device)?;
        Ok(self.forward(&x)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

/// A synthetic, deterministic input image for `seed`: smooth colour gradients plus noise,
/// normalised to zero mean (what a camera frame looks like after preprocessing, roughly).
pub fn synthetic_image(cfg: &Config, seed: u64) -> Vec<f32> {
    let s = cfg.input_size;
    let mut rng = SeededRng::for_stream(seed, "image");
    let (fx, fy) = (rng.next_f64() * 4.0, rng.next_f64() * 4.0);
    let mut out = Vec::with_capacity(3 * s * s);
    for c in 0..3 {
        let phase = rng.next_f64() * std::f64::consts::TAU;
        for y in 0..s {
            for x in 0..s {
                let (u, v) = (x as f64 / s as f64, y as f64 / s as f64);
                let val = (fx * u * std::f64::consts::TAU + phase).sin()
                    * (fy * v * std::f64::consts::TAU + c as f64).cos();
                out.push((val + 0.1 * rng.next_gaussian()) as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_size_and_cost() {
        let c = Config::default();
        assert_eq!(c.parameters(), 549_290);
        let mflop = c.flops_per_image() as f64 / 1e6;
        assert!((20.0..30.0).contains(&mflop), "{mflop} MFLOP");
        // Compute scales with the square of the width.
        let wide = Config { width: 32, ..c };
        assert!(wide.flops_per_image() > 3 * c.flops_per_image());
    }

    #[test]
    fn weights_are_deterministic_and_round_trip_through_a_file() {
        let cfg = Config {
            input_size: 32,
            width: 4,
            hidden: 16,
            classes: 5,
        };
        let a = generate(&cfg, 1).unwrap();
        let b = generate(&cfg, 1).unwrap();
        let c = generate(&cfg, 2).unwrap();
        let v = |m: &HashMap<String, Tensor>| {
            m["conv2.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(v(&a), v(&b));
        assert_ne!(v(&a), v(&c));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        save(&a, &path).unwrap();
        let loaded = Model::load(&path, &Device::Cpu).unwrap();
        assert_eq!(*loaded.config(), cfg);
        let direct = Model::from_tensors(cfg, a, &Device::Cpu).unwrap();
        let img = synthetic_image(&cfg, 9);
        let p1 = loaded.classify(std::slice::from_ref(&img)).unwrap();
        let p2 = direct.classify(&[img]).unwrap();
        assert_eq!(p1, p2);
        assert_eq!(p1[0].len(), 5);
        let sum: f32 = p1[0].iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
    }

    #[test]
    fn wrong_files_and_inputs_are_refused() {
        let cfg = Config {
            input_size: 16,
            width: 2,
            hidden: 4,
            classes: 3,
        };
        let mut t = generate(&cfg, 1).unwrap();
        t.remove("fc2.bias");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.safetensors");
        save(&t, &path).unwrap();
        let err = Model::load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("fc2.bias"), "{err}");

        let m = Model::from_tensors(cfg, generate(&cfg, 1).unwrap(), &Device::Cpu).unwrap();
        assert!(m.classify(&[vec![0.0; 10]]).is_err());
        assert!(
            Config {
                input_size: 30,
                ..cfg
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn batches_give_the_same_answers_as_single_images() {
        let cfg = Config {
            input_size: 32,
            width: 8,
            hidden: 32,
            classes: 10,
        };
        let m = Model::from_tensors(cfg, generate(&cfg, 3).unwrap(), &Device::Cpu).unwrap();
        let imgs: Vec<Vec<f32>> = (0..4).map(|i| synthetic_image(&cfg, i)).collect();
        let batch = m.classify(&imgs).unwrap();
        for (i, img) in imgs.iter().enumerate() {
            let one = m.classify(std::slice::from_ref(img)).unwrap();
            for (a, b) in one[0].iter().zip(&batch[i]) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }
}

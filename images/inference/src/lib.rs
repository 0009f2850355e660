//! `inference`: an image-classification service that runs a real convolutional network
//! ([`model`]) on the CPU with candle, under a per-request deadline, so a scenario can compare
//! deadline misses on a Pi-shaped and an Orin-shaped node under the same load.
//!
//! # Design
//! - The model is loaded once from a safetensors file (`--model-path`; else
//!   `$EDGESIM_WORKDIR/model.safetensors`, generated there deterministically on first start).
//! - Each request carries one or more images (or a seed to synthesise them); the forward pass
//!   runs on tokio's blocking pool, at most `--workers` at once; waiting requests queue. The
//!   default, `auto`, is one worker per core of the board (`EDGESIM_CPU_CORES`, which every
//!   edgesim target sets from the node's profile; else the CPUs this process may use). With
//!   more than one worker each pass runs on one thread (the binary sets `RAYON_NUM_THREADS=1`
//!   unless it is set), the way a service keeps every core of a board busy without
//!   oversubscribing it; a single worker's matrix kernels use every CPU the process may use.
//! - The deadline (`--deadline`, or the request's `deadline_ms`) runs from the request's
//!   arrival. A request whose deadline passed while it queued is shed without computing
//!   (answered 503, counted as a miss at stage `queue`); one whose forward pass ends after the
//!   deadline is answered but counted as a miss at stage `compute`.
//! - GPU seam: with the `cuda` cargo feature, `--device cuda` runs the same model through
//!   candle's CUDA backend (Jetson Orin's GPU); without it, asking for CUDA is a clear error.
//!
//! # Endpoints
//! - `POST /infer` — JSON [`InferRequest`]; answers [`InferResponse`].
//! - `GET /infer?seed=N&batch=B` — the same with synthetic images.
//! - `GET /model` — the network's shape, parameters and cost.
//! - `GET /healthz`, `GET /metrics`, `GET /status`.

pub mod model;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use candle_core::Device;
use edge_common::metrics::{FloatGauge, exponential_buckets};
use edge_common::units::Dur;
use edge_common::{CommonArgs, EdgeEnv, Shutdown};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::model::{Config, Model};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    /// NVIDIA GPU 0 (needs the `cuda` feature).
    Cuda,
}

/// Command line of `inference`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "inference",
    version,
    about = "CNN image classification on the CPU (candle) with request deadlines"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Model file (safetensors). Default: $EDGESIM_WORKDIR/model.safetensors (else
    /// ./inference-data/model.safetensors), generated there from --model-seed if absent.
    #[arg(long, env = "INFERENCE_MODEL", global = true)]
    pub model_path: Option<PathBuf>,

    /// Shape of a generated model: input size (a multiple of 8).
    #[arg(
        long,
        env = "INFERENCE_INPUT_SIZE",
        default_value_t = 64,
        global = true
    )]
    pub input_size: usize,

    /// Shape of a generated model: channels of the first convolution (cost grows with its square).
    #[arg(long, env = "INFERENCE_WIDTH", default_value_t = 16, global = true)]
    pub width: usize,

    /// Seed of a generated model's weights. Fixed by default (not EDGESIM_SEED), so every run
    /// and node has the same model.
    #[arg(long, env = "INFERENCE_MODEL_SEED", default_value_t = 1, global = true)]
    pub model_seed: u64,

    /// Deadline of a request, from its arrival.
    #[arg(long, env = "INFERENCE_DEADLINE", default_value = "200ms")]
    pub deadline: Dur,

    /// Forward passes running at once (`auto`: one per board core, see the crate docs);
    /// further requests queue.
    #[arg(long, env = "INFERENCE_WORKERS", default_value = "auto")]
    pub workers: Workers,

    /// Most images per request.
    #[arg(long, env = "INFERENCE_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,

    /// Where the model runs: cpu, or cuda (needs a build with the `cuda` feature).
    #[arg(long, env = "INFERENCE_DEVICE", value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
}

/// How many forward passes run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per core of the board ([`Workers::resolve`]).
    Auto,
    /// Exactly this many (at least 1).
    Fixed(usize),
}

impl std::str::FromStr for Workers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        match s.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!(
                "workers must be `auto` or a whole number of at least 1, not {s:?}"
            )),
            Ok(n) => Ok(Self::Fixed(n)),
        }
    }
}

impl Workers {
    /// The number of workers: `Fixed(n)` is `n`; `Auto` is the board's core count from
    /// `cores` (the value of `EDGESIM_CPU_CORES`) where that is a whole number of at least 1,
    /// else `fallback` (the CPUs this process may use).
    #[must_use]
    pub fn resolve(self, cores: Option<&str>, fallback: usize) -> usize {
        match self {
            Self::Fixed(n) => n.max(1),
            Self::Auto => cores
                .and_then(|c| c.trim().parse::<usize>().ok())
                .filter(|&n| n >= 1)
                .unwrap_or(fallback.max(1)),
        }
    }

    /// [`Workers::resolve`] from this process's environment.
    #[must_use]
    pub fn count(self) -> usize {
        let fallback = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        self.resolve(std::env::var("EDGESIM_CPU_CORES").ok().as_deref(), fallback)
    }
}

/// Subcommands besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Write the deterministic model for --input-size/--width/--model-seed to a file and exit.
    GenModel {
        /// The safetensors file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// A classification request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InferRequest {
    /// Images, each `3·S·S` floats in channel-major order.
    #[serde(default)]
    pub images: Vec<Vec<f32>>,
    /// Without `images`: synthesise `batch` images from this seed.
    pub seed: Option<u64>,
    /// Number of synthetic images (default 1).
    pub batch: Option<usize>,
    /// Overrides `--deadline` for this request.
    pub deadline_ms: Option<u64>,
}

/// The answer to one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub class: usize,
    pub confidence: f32,
}

/// The answer to a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InferResponse {
    pub predictions: Vec<Prediction>,
    pub queue_ms: f64,
    pub compute_ms: f64,
    pub total_ms: f64,
    pub deadline_ms: f64,
    pub deadline_met: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug)]
struct Metrics {
    requests: Counter,
    images: Counter,
    met: Counter,
    missed: Family<StageLabel, Counter>,
    errors: Counter,
    latency: Histogram,
    compute: Histogram,
    queue_wait: Histogram,
    inflight: Gauge,
    workers: Gauge,
    deadline: FloatGauge,
    parameters: Gauge,
    model_bytes: Gauge,
    flops: Gauge,
}

impl Metrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            requests: Counter::default(),
            images: Counter::default(),
            met: Counter::default(),
            missed: Family::default(),
            errors: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            compute: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            queue_wait: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            inflight: Gauge::default(),
            workers: Gauge::default(),
            deadline: FloatGauge::default(),
            parameters: Gauge::default(),
            model_bytes: Gauge::default(),
            flops: Gauge::default(),
        };
        r.register(
            "inference_requests",
            "Classification requests received",
            m.requests.clone(),
        );
        r.register("inference_images", "Images classified", m.images.clone());
        r.register(
            "inference_deadline_met",
            "Requests answered within their deadline",
            m.met.clone(),
        );
        r.register("inference_deadline_missed", "Requests that missed their deadline: stage=queue (shed before computing), stage=compute (answered late)", m.missed.clone());
        r.register(
            "inference_errors",
            "Requests that failed (bad input or a failed forward pass)",
            m.errors.clone(),
        );
        r.register(
            "inference_latency_seconds",
            "Time from a request's arrival to its answer",
            m.latency.clone(),
        );
        r.register(
            "inference_compute_seconds",
            "Forward-pass time per request",
            m.compute.clone(),
        );
        r.register(
            "inference_queue_wait_seconds",
            "Time requests waited for a model instance",
            m.queue_wait.clone(),
        );
        r.register(
            "inference_inflight_requests",
            "Requests being served now",
            m.inflight.clone(),
        );
        r.register(
            "inference_workers",
            "Forward passes that may run at once (--workers)",
            m.workers.clone(),
        );
        r.register(
            "inference_deadline_seconds",
            "The configured --deadline",
            m.deadline.clone(),
        );
        r.register(
            "inference_model_parameters",
            "Parameters of the loaded model",
            m.parameters.clone(),
        );
        r.register(
            "inference_model_bytes",
            "Bytes of the loaded model's weights (f32)",
            m.model_bytes.clone(),
        );
        r.register(
            "inference_model_flops_per_image",
            "Floating-point operations of one forward pass of one image",
            m.flops.clone(),
        );
        for stage in ["queue", "compute"] {
            let _ = m.missed.get_or_create(&StageLabel { stage });
        }
        m
    }
}

struct Service {
    env: EdgeEnv,
    args: Args,
    model: Arc<Model>,
    model_path: PathBuf,
    slots: Semaphore,
    workers: usize,
    metrics: Metrics,
}

type Failure = (StatusCode, String);

impl Service {
    async fn infer(&self, req: InferRequest) -> Result<InferResponse, Failure> {
        let arrived = Instant::now();
        let m = &self.metrics;
        m.requests.inc();
        m.inflight.inc();
        let out = self.infer_inner(req, arrived).await;
        m.inflight.dec();
        m.latency.observe(arrived.elapsed().as_secs_f64());
        out
    }

    async fn infer_inner(
        &self,
        req: InferRequest,
        arrived: Instant,
    ) -> Result<InferResponse, Failure> {
        let m = &self.metrics;
        let cfg = *self.model.config();
        let deadline = req
            .deadline_ms
            .map_or(self.args.deadline.0, Duration::from_millis);
        let images = if req.images.is_empty() {
            let n = req.batch.unwrap_or(1);
            let seed = req.seed.unwrap_or(0);
            if n == 0 || n > self.args.max_batch {
                m.errors.inc();
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("batch {n} is outside 1..={}\n", self.args.max_batch),
                ));
            }
            (0..n as u64)
                .map(|i| model::synthetic_image(&cfg, seed.wrapping_add(i)))
                .collect()
        } else if req.images.len() > self.args.max_batch {
            m.errors.inc();
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "{} images is above --max-batch {}\n",
                    req.images.len(),
                    self.args.max_batch
                ),
            ));
        } else {
            req.images
        };
        let _permit = self.slots.acquire().await.map_err(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting down\n".to_string(),
            )
        })?;
        let queued = arrived.elapsed();
        m.queue_wait.observe(queued.as_secs_f64());
        if queued >= deadline {
            m.missed.get_or_create(&StageLabel { stage: "queue" }).inc();
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "deadline {deadline:?} passed after {queued:.1?} in the queue; not computed\n"
                ),
            ));
        }
        let model = self.model.clone();
        let n = images.len() as u64;
        let started = Instant::now();
        let probs = tokio::task::spawn_blocking(move || model.classify(&images))
            .await
            .map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("inference task failed: {e}\n"),
                )
            })?;
        let compute = started.elapsed();
        let probs = probs.map_err(|e| {
            m.errors.inc();
            (StatusCode::BAD_REQUEST, format!("{e}\n"))
        })?;
        m.compute.observe(compute.as_secs_f64());
        m.images.inc_by(n);
        let total = arrived.elapsed();
        let met = total <= deadline;
        if met {
            m.met.inc();
        } else {
            m.missed
                .get_or_create(&StageLabel { stage: "compute" })
                .inc();
        }
        let predictions = probs
            .iter()
            .map(|p| {
                let (class, confidence) =
                    p.iter()
                        .copied()
                        .enumerate()
                        .fold(
                            (0, f32::MIN),
                            |best, (i, v)| if v > best.1 { (i, v) } else { best },
                        );
                Prediction { class, confidence }
            })
            .collect();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Ok(InferResponse {
            predictions,
            queue_ms: ms(queued),
            compute_ms: ms(compute),
            total_ms: ms(total),
            deadline_ms: ms(deadline),
            deadline_met: met,
        })
    }

    fn model_info(&self) -> serde_json::Value {
        let cfg = self.model.config();
        json!({
            "path": self.model_path.display().to_string(),
            "config": cfg,
            "parameters": cfg.parameters(),
            "bytes": cfg.parameters() * 4,
            "flops_per_image": cfg.flops_per_image(),
            "device": self.args.device,
        })
    }

    fn status(&self) -> serde_json::Value {
        let m = &self.metrics;
        json!({
            "env": self.env,
            "model": self.model_info(),
            "deadline": self.args.deadline.to_string(),
            "workers": self.workers,
            "requests": m.requests.get(),
            "images": m.images.get(),
            "deadline_met": m.met.get(),
            "deadline_missed_queue": m.missed.get_or_create(&StageLabel { stage: "queue" }).get(),
            "deadline_missed_compute": m.missed.get_or_create(&StageLabel { stage: "compute" }).get(),
        })
    }
}

fn reply(r: Result<InferResponse, Failure>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn infer_post(
    State(s): State<Arc<Service>>,
    axum::Json(req): axum::Json<InferRequest>,
) -> Response {
    reply(s.infer(req).await)
}

#[derive(Debug, Deserialize)]
struct InferQuery {
    seed: Option<u64>,
    batch: Option<usize>,
    deadline_ms: Option<u64>,
}

async fn infer_get(State(s): State<Arc<Service>>, Query(q): Query<InferQuery>) -> Response {
    let req = InferRequest {
        images: Vec::new(),
        seed: q.seed,
        batch: q.batch,
        deadline_ms: q.deadline_ms,
    };
    reply(s.infer(req).await)
}

/// The device for `kind`.
///
/// # Errors
/// When CUDA is asked for but this build lacks the `cuda` feature, or no GPU is usable.
pub fn select_device(kind: DeviceKind) -> anyhow::Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Device::new_cuda(0).context("opening CUDA device 0"),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => anyhow::bail!(
            "--device cuda needs a build with the `cuda` feature (cargo build --features cuda); this one runs on the CPU only"
        ),
    }
}

fn model_config(args: &Args) -> Config {
    Config {
        input_size: args.input_size,
        width: args.width,
        ..Config::default()
    }
}

/// Writes the deterministic model for the flags to `out`.
///
/// # Errors
/// When the configuration is invalid or the file cannot be written.
pub fn gen_model(args: &Args, out: &std::path::Path) -> anyhow::Result<()> {
    let cfg = model_config(args);
    let tensors = model::generate(&cfg, args.model_seed)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Write then rename, so a crash never leaves half a model where the next start looks.
    let tmp = out.with_extension("tmp");
    model::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(())
}

/// A started service.
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Loads (or first generates) the model, binds and serves until `shutdown`.
///
/// # Errors
/// When the model cannot be made or loaded, the device is unavailable, or binding fails.
pub async fn start(args: Args, shutdown: Shutdown) -> anyhow::Result<Running> {
    let env = EdgeEnv::new("inference", env!("CARGO_PKG_VERSION"), &args.common);
    let device = select_device(args.device)?;
    let path = args.model_path.clone().unwrap_or_else(|| {
        args.common
            .workdir_or("inference-data")
            .join("model.safetensors")
    });
    if !path.exists() {
        tracing::info!(path = %path.display(), seed = args.model_seed, "generating the model");
        let (a, p) = (args.clone(), path.clone());
        tokio::task::spawn_blocking(move || gen_model(&a, &p)).await??;
    }
    let (p, d) = (path.clone(), device.clone());
    let model = tokio::task::spawn_blocking(move || Model::load(&p, &d))
        .await?
        .with_context(|| format!("loading {}", path.display()))?;
    let cfg = *model.config();
    tracing::info!(path = %path.display(), ?cfg, parameters = cfg.parameters(), mflop_per_image = cfg.flops_per_image() as f64 / 1e6, "model loaded");
    let mut registry = edge_common::metrics::new_registry(&env);
    let metrics = Metrics::register(&mut registry);
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    metrics.deadline.set(args.deadline.0.as_secs_f64());
    metrics.parameters.set(to_i64(cfg.parameters() as u64));
    metrics.model_bytes.set(to_i64(cfg.parameters() as u64 * 4));
    metrics.flops.set(to_i64(cfg.flops_per_image()));
    let workers = args.workers.count();
    tracing::info!(workers, threads_per_pass = ?std::env::var("RAYON_NUM_THREADS").ok(), "serving");
    metrics.workers.set(to_i64(workers as u64));
    let svc = Arc::new(Service {
        env,
        slots: Semaphore::new(workers),
        workers,
        model: Arc::new(model),
        model_path: path,
        metrics,
        args: args.clone(),
    });
    let (status_svc, model_svc) = (svc.clone(), svc.clone());
    let app = Router::new()
        .route("/infer", get(infer_get).post(infer_post))
        .route(
            "/model",
            get(move || async move { axum::Json(model_svc.model_info()) }),
        )
        .with_state(svc)
        .merge(edge_common::server::base_router(
            Arc::new(registry),
            Arc::new(move || status_svc.status()),
        ));
    let listener = edge_common::server::bind(&args.common).await?;
    let addr = listener.local_addr();
    let task = tokio::spawn(edge_common::server::serve(
        listener,
        app,
        shutdown,
        args.common.shutdown_grace.0,
    ));
    Ok(Running { addr, task })
}

#[cfg(test)]
mod tests {
    use super::Workers;

    #[test]
    fn workers_are_auto_or_a_positive_count() {
        assert_eq!("auto".parse::<Workers>(), Ok(Workers::Auto));
        assert_eq!("3".parse::<Workers>(), Ok(Workers::Fixed(3)));
        for bad in ["0", "-1", "many", ""] {
            let e = bad.parse::<Workers>().unwrap_err();
            assert!(e.contains("auto"), "{e}");
        }
    }

    #[test]
    fn auto_is_one_worker_per_board_core() {
        assert_eq!(Workers::Auto.resolve(Some("4"), 2), 4, "a Pi 5 profile");
        assert_eq!(Workers::Auto.resolve(Some(" 8\n"), 2), 8);
        assert_eq!(
            Workers::Auto.resolve(None, 2),
            2,
            "outside edgesim: the CPUs"
        );
        assert_eq!(Workers::Auto.resolve(Some("zero"), 3), 3);
        assert_eq!(Workers::Auto.resolve(Some("0"), 0), 1);
        assert_eq!(Workers::Fixed(5).resolve(Some("4"), 2), 5, "a number wins");
    }
}

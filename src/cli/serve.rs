//! `sympathy serve`: flags into [`sympathy::serve::ServeOptions`], then the server on a
//! tokio runtime until Ctrl-C.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use sympathy::run::checkpoint;
use sympathy::runtime::device::DeviceChoice;
use sympathy::serve::{self, engine::EngineConfig, ServeOptions};

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// A run folder or a checkpoint folder.
    #[arg(long, default_value = "runs/default")]
    checkpoint: PathBuf,
    /// Address to listen on; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 = any free port; the URL printed says which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests decoded together in one batch at most.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests waiting for a batch row at most; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Seconds a request may take in all (reading its body, waiting, generating).
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// The run folder whose training the web page shows [default: the checkpoint's run].
    #[arg(long)]
    run: Option<PathBuf>,
    /// Intra-op CPU threads of the inference thread [default: the cores libtorch would
    /// use, less one left to the HTTP side, at least 1].
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

pub(crate) fn cmd_serve(args: ServeArgs) -> Result<()> {
    if args.max_batch == 0 {
        bail!("--max-batch: must be at least 1");
    }
    if args.max_queue == 0 {
        bail!("--max-queue: must be at least 1");
    }
    if args.timeout_s == 0 {
        bail!("--timeout-s: must be at least 1");
    }
    if let Some(run) = &args.run {
        if !run.is_dir() {
            bail!(
                "--run {}: not a folder; pass a run folder made by `sympathy train`",
                run.display()
            );
        }
    }
    if args.threads.is_some_and(|n| n < 1) {
        bail!("--threads: must be at least 1");
    }
    let device = args.device.resolve()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    let opts = ServeOptions {
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        engine: EngineConfig {
            max_batch: args.max_batch,
            max_queue: args.max_queue,
            threads: args.threads,
        },
        timeout: Duration::from_secs(args.timeout_s),
        run_dir: args.run.or_else(|| run_folder(&loaded.dir)),
        model_id: model_id(&args.checkpoint),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve::serve(loaded, opts, ctrl_c(), |addr| {
        println!("sympathy serve: listening on http://{addr} (Ctrl-C stops)");
    }))?;
    eprintln!("sympathy serve: stopped");
    Ok(())
}

/// The run folder a checkpoint folder belongs to: its parent, when that holds the
/// run's `metrics.jsonl`.
fn run_folder(checkpoint_dir: &std::path::Path) -> Option<PathBuf> {
    let parent = checkpoint_dir.parent()?;
    parent
        .join("metrics.jsonl")
        .is_file()
        .then(|| parent.to_path_buf())
}

/// The model's name in the API: the folder name given to --checkpoint.
fn model_id(checkpoint: &std::path::Path) -> String {
    let name = checkpoint
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    name.unwrap_or_else(|| "sympathy".to_string())
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

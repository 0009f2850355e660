//! `inference` binary: see the library docs for what it does.

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let args = inference::Args::parse();
    edge_common::init_tracing(&args.common.log);
    if let Some(inference::Command::GenModel { out }) = &args.command {
        inference::gen_model(&args, out)?;
        tracing::info!(path = %out.display(), "model written");
        return Ok(());
    }
    // Several workers: one thread per forward pass (candle's kernels read RAYON_NUM_THREADS),
    // so N passes use N cores instead of N × every core.
    if args.workers.count() > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet (the runtime is built below), so nothing reads
        // the environment while it changes.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: inference::Args) -> anyhow::Result<()> {
    let shutdown = edge_common::Shutdown::new();
    shutdown.listen_for_signals()?;
    let running = inference::start(args, shutdown).await?;
    running.task.await??;
    tracing::info!("stopped");
    Ok(())
}

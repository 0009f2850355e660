//! `inference` binary: see the library docs for what it does.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = inference::Args::parse();
    edge_common::init_tracing(&args.common.log);
    if let Some(inference::Command::GenModel { out }) = &args.command {
        inference::gen_model(&args, out)?;
        tracing::info!(path = %out.display(), "model written");
        return Ok(());
    }
    let shutdown = edge_common::Shutdown::new();
    shutdown.listen_for_signals()?;
    let running = inference::start(args, shutdown).await?;
    running.task.await??;
    tracing::info!("stopped");
    Ok(())
}

//! `offline-first` binary: see the library docs for what it does.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = offline_first::Args::parse();
    edge_common::init_tracing(&args.common.log);
    let shutdown = edge_common::Shutdown::new();
    shutdown.listen_for_signals()?;
    let running = offline_first::start(args, shutdown).await?;
    running.task.await??;
    tracing::info!("stopped");
    Ok(())
}

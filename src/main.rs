//! The `user-service` command: parses the command line, sets up logging and runs the chosen command.

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use user_service::config::{Cli, Command, LogFormat};
use user_service::store::Store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    match cli.log_format {
        // Colour codes only help a person at a terminal; in a file or a pipe they are noise.
        LogFormat::Text => logs.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Migrate(database) => {
            let options = database.store_options();
            let applied = tokio::task::spawn_blocking(move || Store::migrate(&options)).await??;
            tracing::info!(applied, "migrations done");
        }
        Command::Token(config) => {
            let signer = user_service::auth::signer_for_cli(&config.auth)?;
            let scopes: Vec<String> = config
                .scopes
                .iter()
                .flat_map(|s| s.split_whitespace())
                .map(str::to_owned)
                .collect();
            println!("{}", signer.sign(&config.sub, &scopes, config.ttl)?);
        }
        Command::Serve(config) => {
            let app = user_service::app(&config).await?;
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            tracing::info!(address = %listener.local_addr()?, "serving");
            user_service::serve(listener, app, &config, shutdown_signal()).await?;
        }
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

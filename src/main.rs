use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use waybill::config::Config;
use waybill::telemetry::{self, LogFormat};

/// A webhook ingestion, deduplication and idempotency gateway.
#[derive(Parser)]
#[command(name = "waybill", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (default: $WAYBILL_CONFIG, else config/waybill.toml, else the built-in default).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "json")]
        log_format: LogFormat,
    },
    /// Validate a config, resolving every secret; exit 2 naming each bad key.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the headers a delivery of FILE from a source would carry.
    Sign {
        #[arg(long)]
        source: String,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print a ready curl command for this URL instead.
        #[arg(long)]
        curl: Option<String>,
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            ExitCode::from(waybill::cli::check_config(config.as_deref()) as u8)
        }
        Command::Sign {
            source,
            config,
            curl,
            file,
        } => match waybill::cli::sign(config.as_deref(), &source, &file, curl.as_deref()) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(waybill::cli::SignError::Config(errors)) => {
                waybill::cli::print_errors(&errors);
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config, log_format } => serve(config, log_format),
    }
}

fn serve(config: Option<PathBuf>, log_format: LogFormat) -> ExitCode {
    telemetry::init_logging(log_format);
    let (config, origin) = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            for issue in &errors.0 {
                tracing::error!(key = %issue.key, why = %issue.why, "invalid config");
            }
            waybill::cli::print_errors(&errors);
            return ExitCode::from(2);
        }
    };
    tracing::info!(config = %origin, "config loaded");
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.server.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %config.server.listen, error = %e, "cannot bind");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        match waybill::app::run(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}

/// Installs the SIGTERM and SIGINT handlers now, before the gateway says it
/// is serving, so a signal sent right after start is never the default
/// (fatal) action; the returned future resolves on the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}

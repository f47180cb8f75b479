//! The `tidegate` binary: argv, logging, runtimes; everything else lives in the library.

use clap::Parser;
use tidegate::cli::{Cli, LogFormat};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Every TLS user in the process (listeners, tests' clients) uses the ring provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match tidegate::commands::execute(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tidegate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal; log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

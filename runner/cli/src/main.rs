//! `gantry`: Gantry's command line.

mod plugin;

use clap::{Parser, Subcommand};

/// Gantry promotes one immutable build through environments, with gates,
/// migrations and notifications run as sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "gantry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run or inspect a plugin component locally.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing("error");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Plugin(command) => plugin::run(command).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the command's default level.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

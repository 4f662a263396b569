//! `redirector`: the daemon and its CLI. Errors meet the operator here, as
//! anyhow chains naming the file, interface or service involved.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use redirector::{config::Config, daemon};

#[derive(Parser)]
#[command(version, about = "XDP active/standby failover redirector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it, write the services and run until SIGINT/SIGTERM.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and print what it defines; changes nothing.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => daemon::run(&config),
        Command::Check { config } => check(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redirector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::from_file(path)?;
    println!(
        "{}: ok: {} interface(s), {} service(s)",
        path.display(),
        cfg.gateway.interfaces.len(),
        cfg.services.len()
    );
    for s in &cfg.services {
        println!(
            "  {}: {} {} {} primary {} secondary {}",
            s.name,
            s.protocol,
            std::net::SocketAddr::new(s.vip, s.port),
            s.mode,
            s.primary,
            s.secondary
        );
    }
    Ok(())
}

//! `redirector`: the daemon and its CLI. Errors meet the operator here, as
//! anyhow chains naming the file, interface or service involved.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use redirector::{
    config::{Config, Control},
    control::{
        ControlError, client,
        proto::{EventRecord, Request, Response, Status},
    },
    daemon, offline,
    policy::Slot,
};

#[derive(Parser)]
#[command(version, about = "XDP active/standby failover redirector")]
struct Cli {
    /// Control socket of the daemon (default: [control] socket of --config, else /run/redirector/control.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Configuration file, to find the socket, state and pins of the daemon it configures.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Another gateway's control socket (repeatable; adds to [control] peers): flip, auto, drain and
    /// undrain reach every gateway, so they decide alike.
    #[arg(long = "peer", global = true, value_name = "SOCKET")]
    peers: Vec<PathBuf>,
    /// Flip, auto, drain and undrain this gateway only, not its peers.
    #[arg(long, global = true)]
    local: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Primary,
    Secondary,
}

impl From<Backend> for Slot {
    fn from(b: Backend) -> Slot {
        match b {
            Backend::Primary => Slot::Primary,
            Backend::Secondary => Slot::Secondary,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load or adopt the data plane, probe, fail over, until SIGINT/SIGTERM
    /// (the data plane keeps forwarding after it stops; `detach` removes it).
    Run,
    /// Validate a configuration file and print what it defines; changes nothing.
    Check,
    /// Ask the running daemon to re-read its configuration file (same as SIGHUP).
    Reload,
    /// Every service: active backend, health, overrides, drains, traffic, last transition.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Every gateway's status, this one's and its peers' ([control] peers, --peer).
        #[arg(long)]
        all: bool,
    },
    /// Pin a service to a backend until `auto` (or for a while).
    Flip {
        /// Service name.
        service: String,
        /// Backend to pin.
        backend: Backend,
        /// Pin for this long, then return to automatic control (e.g. "30s", "10m").
        #[arg(long = "for", value_parser = parse_duration)]
        for_: Option<Duration>,
        /// Pin even if that backend is down.
        #[arg(long)]
        force: bool,
        /// Why (recorded in the transition log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Return a service to automatic control.
    Auto {
        /// Service name.
        service: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Send no new flows to a backend; established TCP flows finish there.
    Drain {
        /// Service name.
        service: String,
        /// The backend.
        backend: Backend,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let a drained backend take new flows again.
    Undrain {
        /// Service name.
        service: String,
        /// The backend.
        backend: Backend,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a backend's fence (`fence = true` fences the primary when
    /// traffic leaves it): it may take traffic again when policy says so.
    Unfence {
        /// Service name.
        service: String,
        /// The backend.
        backend: Backend,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// The transition log.
    Events {
        /// Keep printing new transitions.
        #[arg(long)]
        follow: bool,
    },
    /// Remove the XDP program, its links and pins (stops the daemon if it runs).
    Detach,
    /// Withdraw every VIP from the routing daemon (`[announce]`; the track
    /// file says 254, FAULT for keepalived), e.g. before an upgrade; kept
    /// across restarts until `announce`. Forwarding goes on.
    Withdraw {
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Publish every servable VIP to the routing daemon again.
    Announce {
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print the completion script for a shell (the Debian package installs bash's and zsh's).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    redirector::config::parse_duration(s)
}

fn main() -> ExitCode {
    // `run` must survive a SIGHUP from its first instruction (the documented
    // unit reloads with `kill -HUP`): ignored until the daemon's handler takes
    // it over. Other commands keep the default.
    // SAFETY: signal(2) with SIG_IGN / SIG_DFL installs no code of ours.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run) {
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_DFL) };
    }
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redirector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The control settings: from `--config` when given, defaults otherwise;
/// `--socket` wins for the socket.
fn control(cli: &Cli) -> Result<Control> {
    let mut c = match &cli.config {
        Some(p) => Config::from_file(p)?.control,
        None => Control::default(),
    };
    if let Some(s) = &cli.socket {
        c.socket = s.clone();
    }
    for p in &cli.peers {
        if !c.peers.contains(p) && *p != c.socket {
            c.peers.push(p.clone());
        }
    }
    if cli.local {
        c.peers.clear();
    }
    Ok(c)
}

fn dispatch(cli: Cli) -> Result<()> {
    let ctl = control(&cli)?;
    let need_config = || cli.config.clone().context("--config FILE is required");
    match cli.command {
        Command::Run => daemon::run(&need_config()?),
        Command::Check => check(&need_config()?),
        Command::Reload => done(&ctl.socket, Request::Reload),
        Command::Status { json, all } => {
            if !all || ctl.peers.is_empty() {
                return status(&ctl, json);
            }
            for socket in gateways(&ctl) {
                println!("== {} ==", socket.display());
                let one = Control {
                    socket: socket.clone(),
                    ..ctl.clone()
                };
                if let Err(e) = status(&one, json) {
                    println!("NOT ANSWERING: {e:#}");
                }
            }
            Ok(())
        }
        Command::Flip {
            service,
            backend,
            for_,
            force,
            reason,
        } => intent(
            &ctl,
            &Request::Flip {
                service,
                to: backend.into(),
                for_ms: for_.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                force,
                reason,
            },
        ),
        Command::Auto { service, reason } => intent(&ctl, &Request::Auto { service, reason }),
        Command::Drain {
            service,
            backend,
            reason,
        } => intent(
            &ctl,
            &Request::Drain {
                service,
                slot: backend.into(),
                drained: true,
                reason,
            },
        ),
        Command::Undrain {
            service,
            backend,
            reason,
        } => intent(
            &ctl,
            &Request::Drain {
                service,
                slot: backend.into(),
                drained: false,
                reason,
            },
        ),
        Command::Unfence {
            service,
            backend,
            reason,
        } => intent(
            &ctl,
            &Request::Unfence {
                service,
                slot: backend.into(),
                reason,
            },
        ),
        Command::Events { follow } => events(&ctl.socket, follow),
        Command::Detach => detach(&ctl),
        Command::Withdraw { reason } => done(&ctl.socket, Request::Announce { on: false, reason }),
        Command::Announce { reason } => done(&ctl.socket, Request::Announce { on: true, reason }),
        Command::Completions { shell } => {
            // Generated into memory first: clap_complete panics on a failed
            // write (`| head`), this returns the error instead.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "redirector", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("writing the completion script")
        }
    }
}

/// This gateway's socket, then its peers'.
fn gateways(ctl: &Control) -> impl Iterator<Item = &PathBuf> {
    std::iter::once(&ctl.socket).chain(&ctl.peers)
}

/// An operator's intent (flip, auto, drain, undrain, unfence): to this gateway and
/// every peer, in that order, so all of them decide alike. Each answer is
/// printed with its gateway; a gateway that did not apply it fails the
/// command, naming it (the requests are idempotent: run it again).
fn intent(ctl: &Control, request: &Request) -> Result<()> {
    if ctl.peers.is_empty() {
        println!("{}", ask(&ctl.socket, request.clone())?);
        return Ok(());
    }
    let mut failed = Vec::new();
    let total = 1 + ctl.peers.len();
    for socket in gateways(ctl) {
        match ask(socket, request.clone()) {
            Ok(m) => println!("{}: {m}", socket.display()),
            Err(e) => {
                println!("{}: NOT APPLIED: {e:#}", socket.display());
                failed.push(socket.display().to_string());
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    bail!(
        "not applied on {} of {total} gateways ({}): the gateways may now decide differently; run the \
         command again once they answer, or undo it on the others",
        failed.len(),
        failed.join(", ")
    )
}

/// A request answered by one `Done` or `Error`, printed.
fn done(socket: &Path, request: Request) -> Result<()> {
    println!("{}", ask(socket, request)?);
    Ok(())
}

/// A request answered by one `Done` (its message) or `Error`.
fn ask(socket: &Path, request: Request) -> Result<String> {
    let mut outcome = None;
    client::call(socket, request, Some(Duration::from_secs(10)), |r| {
        outcome = Some(r);
        false
    })?;
    match outcome {
        Some(Response::Done { message }) => Ok(message),
        Some(Response::Error { message }) => bail!("{message}"),
        Some(other) => bail!("unexpected answer from the daemon: {other:?}"),
        None => bail!("the daemon closed the connection without an answer"),
    }
}

fn status(ctl: &Control, json: bool) -> Result<()> {
    let mut got = None;
    let asked = client::call(&ctl.socket, Request::Status, Some(Duration::from_secs(10)), |r| {
        got = Some(r);
        false
    });
    let status: Status = match (asked, got) {
        (Ok(()), Some(Response::Status(s))) => s,
        (Ok(()), Some(Response::Error { message })) => bail!("{message}"),
        (Ok(()), other) => bail!("unexpected answer from the daemon: {other:?}"),
        (Err(ControlError::NotRunning { .. }), _) => offline::status(ctl)?,
        (Err(e), _) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", offline::render(&status));
    }
    Ok(())
}

fn print_event(e: &EventRecord) {
    println!("{}", offline::render_event(e));
}

fn events(socket: &Path, follow: bool) -> Result<()> {
    let mut failure = None;
    client::call(socket, Request::Events { follow }, None, |r| match r {
        Response::Event(e) => {
            print_event(&e);
            true
        }
        Response::End => follow,
        Response::Error { message } => {
            failure = Some(message);
            false
        }
        _ => true,
    })?;
    match failure {
        Some(m) => bail!("{m}"),
        None => Ok(()),
    }
}

fn detach(ctl: &Control) -> Result<()> {
    match done(&ctl.socket, Request::Detach) {
        Ok(()) => Ok(()),
        Err(e)
            if e.downcast_ref::<ControlError>()
                .is_some_and(|c| matches!(c, ControlError::NotRunning { .. })) =>
        {
            let removed = offline::detach(ctl)?;
            println!("{removed}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn check(path: &Path) -> Result<()> {
    let cfg = Config::from_file(path)?;
    println!(
        "{}: ok: {} interface(s), {} service(s)",
        path.display(),
        cfg.gateway.interfaces.len(),
        cfg.services.len()
    );
    for s in &cfg.services {
        println!(
            "  {}: {} {} {} primary {} secondary {}; {} probe every {:?} (timeout {:?}, rise {}, fall {}); \
             failback {:?} after {:?}, all_down {:?}",
            s.name,
            s.protocol,
            std::net::SocketAddr::new(s.vip, s.port),
            s.mode,
            s.primary,
            s.secondary,
            s.health.kind.as_str(),
            s.health.interval,
            s.health.timeout,
            s.health.rise,
            s.health.fall,
            s.failover.failback,
            s.failover.failback_delay,
            s.failover.all_down,
        );
    }
    Ok(())
}

//! `cargo xtask`: bootstrap, build, package, run, test, bench and fuzz redirector.
mod bootstrap;
mod cmd;
mod package;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, load, test and benchmark redirector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the eBPF toolchain and lab tools; install what is missing.
    Bootstrap,
    /// Build the eBPF object and the `redirector` binary (release).
    Build,
    /// Build, then run `redirector` as root with the given arguments.
    Run {
        /// Arguments passed to `redirector`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the Debian package: target/debian/redirector_<version>_<arch>.deb.
    Package,
    /// Run every check and test: fmt, clippy, unit, in-kernel and end-to-end tests.
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
    /// Run the built-in lab: namespaces, redirector, real traffic, counters.
    Demo {
        /// A recipe's story with the real servers instead: database (PostgreSQL promoted, fenced,
        /// roles swapped), web (nginx drained and killed under wrk), dns (dnsmasq, UDP and TCP grouped).
        #[arg(long, value_parser = ["database", "web", "dns"])]
        case: Option<String>,
    },
    /// The built-in lab topology as a command: up (idempotent), down (also after a crash), status.
    Lab {
        /// `cluster`: the multi-gateway lab, running until Ctrl-C.
        #[arg(value_parser = ["up", "down", "status", "cluster"])]
        action: String,
        /// `cluster`: how many gateways behind the ECMP router (1..=9; default 3).
        #[arg(long)]
        gateways: Option<u8>,
        /// `cluster`: resilient next-hop groups on the router instead of plain multipath.
        #[arg(long)]
        resilient: bool,
        /// `cluster`: a VRRP pair (keepalived) instead of ECMP.
        #[arg(long)]
        vrrp: bool,
        /// `cluster`: remove it after this many seconds (default: at Ctrl-C).
        #[arg(long)]
        secs: Option<u64>,
    },
    /// Benchmarks (not tests); print tables.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Random faults every few seconds against steady traffic in the lab, with
    /// invariants checked over the whole run (a violation fails).
    Soak {
        /// Minutes to run.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Seed of the run (default: from the clock; printed, so a run can be replayed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Fuzzers: generated and mutated inputs against invariants; a violation fails.
    Fuzz {
        #[command(subcommand)]
        which: Fuzz,
    },
}

#[derive(Subcommand)]
enum Fuzz {
    /// The compiled XDP program in the kernel (BPF_PROG_TEST_RUN): VIP traffic, NAT replies,
    /// ICMP errors, fragments, options, echo, foreign and broken frames, changing backend states.
    Datapath {
        /// Number of cases.
        #[arg(long, default_value_t = 100_000)]
        cases: u64,
        /// Seed of the run (default: from the clock; printed, so a failure can be replayed).
        #[arg(long)]
        seed: Option<u64>,
        /// Go on after a violation (one report per kind) and fail at the end.
        #[arg(long)]
        keep_going: bool,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// The recipes with the real servers (PostgreSQL crash and partition, nginx kill and drain, dnsmasq
    /// kill): write outage, errors, queries lost.
    Recipes {
        /// Runs of each fault.
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Several gateways (3 behind ECMP, plain and resilient; a VRRP pair; one alone): a gateway killed,
    /// drained, and a backend killed, with UDP and long-lived TCP traffic.
    Gateways {
        /// Runs per topology and fault (interleaved).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Long-lived TCP connections.
        #[arg(long, default_value_t = 1000)]
        tcp: u32,
    },
    /// Fault → first request served by the secondary, in the lab (server kill, link down, silent drop).
    Failover {
        /// Runs per fault and series.
        #[arg(long, default_value_t = 100)]
        runs: u32,
        /// Seconds of the busy-machine phase (both vCPUs saturated; 0 skips it).
        #[arg(long, default_value_t = 60)]
        busy_secs: u32,
        /// Seconds of the traffic-flood phase (both vCPUs saturated by packets through the gateway; 0 skips it).
        #[arg(long, default_value_t = 60)]
        flood_secs: u32,
        /// Instead: redirector against HAProxy, keepalived VRRP and nftables DNAT + prober, interleaved
        /// (installs haproxy, keepalived and conntrack if missing).
        #[arg(long)]
        peers: bool,
    },
    /// Packets/s through the gateway in the lab (in-kernel generator): the static XDP forwarder,
    /// kernel routing, nftables DNAT and redirector, interleaved.
    Throughput {
        /// Rounds of interleaved measurements.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Frames per measurement.
        #[arg(long, default_value_t = 500_000)]
        packets: u32,
    },
    /// ns/packet of the XDP program in the kernel (BPF_PROG_TEST_RUN).
    Datapath {
        /// Rounds of interleaved measurements.
        #[arg(long, default_value_t = 15)]
        rounds: u32,
        /// Runs per measurement (test-run repeat count).
        #[arg(long, default_value_t = 200_000)]
        repeat: u32,
    },
}

/// The test that installs `cargo xtask package`'s .deb (tests/tests/package.rs):
/// `cargo xtask test FILTER` builds the package only when FILTER selects it.
const PACKAGE_TEST: &str = "the_debian_package_installs_on_bookworm_and_its_unit_runs";

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// What everything that builds the lab needs: the toolchain, the lab's tools, root.
fn lab_prerequisites(what: &str) -> Result<()> {
    bootstrap::ensure()?;
    bootstrap::ensure_lab_tools()?;
    if !bootstrap::is_root() {
        bail!("{what} creates network namespaces and loads XDP programs: run it as root");
    }
    Ok(())
}

/// Runs the soak (release builds of the daemon and the lab's tools).
fn soak(root: &Path, length: &[String], seed: Option<u64>) -> Result<()> {
    cmd::cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "redirector",
            "-p",
            "redirector-tests",
            "--bins",
        ],
    )?;
    let seed = seed.map(|s| s.to_string());
    let mut args: Vec<&str> = length.iter().map(String::as_str).collect();
    if let Some(s) = seed.as_deref() {
        args.extend(["--seed", s]);
    }
    run_tool(root, "soak", &args)
}

/// Runs the datapath fuzzer (release build: it runs ~40k cases per second).
fn fuzz_datapath(root: &Path, cases: u64, seed: Option<u64>, keep_going: bool) -> Result<()> {
    let cases = cases.to_string();
    let seed = seed.map(|s| s.to_string());
    let mut args = vec!["--cases", &cases];
    if let Some(s) = seed.as_deref() {
        args.extend(["--seed", s]);
    }
    if keep_going {
        args.push("--keep-going");
    }
    run_tool(root, "fuzz-datapath", &args)
}

/// Runs one of the lab's binaries (`tests/src/bin`), release-built, with `args`.
/// Release builds of the daemon and of every lab binary (servers, tools):
/// what the demo, the multi-gateway lab and the gateways benchmark run.
fn build_lab_binaries(root: &Path) -> Result<()> {
    cmd::cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "redirector-tests",
            "-p",
            "redirector",
            "--bins",
        ],
    )
}

fn run_tool(root: &Path, bin: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["run", "--release", "-p", "redirector-tests", "--bin", bin, "--"];
    all.extend_from_slice(args);
    cmd::cargo(root, &all)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::Bootstrap => bootstrap::ensure(),
        Command::Build => {
            bootstrap::ensure()?;
            cmd::cargo(&root, &["build", "--release", "-p", "redirector"])
        }
        Command::Run { args } => {
            bootstrap::ensure()?;
            cmd::cargo(&root, &["build", "--release", "-p", "redirector"])?;
            if !bootstrap::is_root() {
                bail!("redirector loads XDP programs and needs root: run this as root");
            }
            cmd::run(&root.join("target/release/redirector"), &args)
        }
        Command::Package => {
            bootstrap::ensure()?;
            bootstrap::ensure_package_tools()?;
            package::build(&root).map(drop)
        }
        Command::Test { filter } => {
            bootstrap::ensure()?;
            bootstrap::ensure_lab_tools()?;
            bootstrap::ensure_recipe_tools()?;
            bootstrap::ensure_package_tools()?;
            bootstrap::ensure_package_test_tools()?;
            if !bootstrap::is_root() && std::env::var("CI").is_ok_and(|v| v == "true") {
                bail!("CI=true but not root: the in-kernel and namespace tests need root");
            }
            cmd::cargo(&root, &["fmt", "--all", "--", "--check"])?;
            cmd::cargo(&root, &["clippy", "--all-targets", "--", "-D", "warnings"])?;
            // The CLI tests run target/debug/redirector itself; `cargo test` alone
            // does not build another package's binary.
            cmd::cargo(&root, &["build", "-p", "redirector", "--bin", "redirector"])?;
            // The package's test installs the .deb (it needs root; a release build).
            if bootstrap::is_root() && filter.as_deref().is_none_or(|f| PACKAGE_TEST.contains(f)) {
                package::build(&root)?;
            }
            let mut args = vec!["test", "--workspace", "--exclude", "redirector-ebpf"];
            if let Some(f) = filter.as_deref() {
                args.push(f);
            }
            cmd::cargo(&root, &args)?;
            // The whole suite also fuzzes the data plane (a filter selects tests only).
            if filter.is_none() {
                if bootstrap::is_root() {
                    fuzz_datapath(&root, 100_000, None, false)?;
                    // And a one-minute soak: random faults against traffic.
                    soak(&root, &["--seconds".to_owned(), "60".to_owned()], None)?;
                } else {
                    eprintln!(
                        "SKIPPED the datapath fuzzer and the soak: they need root (run `cargo xtask test` as root)"
                    );
                }
            }
            Ok(())
        }
        Command::Demo { case } => {
            lab_prerequisites("the demo")?;
            if case.is_some() {
                bootstrap::ensure_recipe_tools()?;
            }
            // The lab's server processes and the CLI the demo runs are binaries of their own.
            build_lab_binaries(&root)?;
            match case {
                Some(c) => run_tool(&root, "demo", &["--case", &c]),
                None => run_tool(&root, "demo", &[]),
            }
        }
        Command::Lab {
            action,
            gateways,
            resilient,
            vrrp,
            secs,
        } => {
            lab_prerequisites("the lab")?;
            if action != "cluster" {
                return run_tool(&root, "lab", &[&action]);
            }
            // The gateways run the daemon; the lab's servers are binaries too.
            build_lab_binaries(&root)?;
            let mut args = vec!["cluster".to_owned()];
            if let Some(n) = gateways {
                args.extend(["--gateways".into(), n.to_string()]);
            }
            if resilient {
                args.push("--resilient".into());
            }
            if vrrp {
                args.push("--vrrp".into());
            }
            if let Some(s) = secs {
                args.extend(["--secs".into(), s.to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_tool(&root, "lab", &args)
        }
        Command::Soak { minutes, seed } => {
            lab_prerequisites("the soak")?;
            soak(&root, &["--minutes".to_owned(), minutes.to_string()], seed)
        }
        Command::Bench { which } => {
            bootstrap::ensure()?;
            match which {
                Bench::Failover {
                    runs,
                    busy_secs,
                    flood_secs,
                    peers,
                } => {
                    lab_prerequisites("the failover benchmark")?;
                    // The lab's server processes are a binary of their own.
                    cmd::cargo(&root, &["build", "--release", "-p", "redirector-tests", "--bins"])?;
                    let (r, b, f) = (runs.to_string(), busy_secs.to_string(), flood_secs.to_string());
                    if peers {
                        bootstrap::ensure_peers()?;
                        return run_tool(&root, "bench-failover", &["--peers", "--runs", &r]);
                    }
                    run_tool(
                        &root,
                        "bench-failover",
                        &["--runs", &r, "--busy-secs", &b, "--flood-secs", &f],
                    )
                }
                Bench::Recipes { runs } => {
                    lab_prerequisites("the recipes benchmark")?;
                    bootstrap::ensure_recipe_tools()?;
                    build_lab_binaries(&root)?;
                    run_tool(&root, "bench-recipes", &["--runs", &runs.to_string()])
                }
                Bench::Gateways { runs, tcp } => {
                    lab_prerequisites("the gateways benchmark")?;
                    // The lab's servers and tools, and the daemon the gateways run.
                    build_lab_binaries(&root)?;
                    let (r, t) = (runs.to_string(), tcp.to_string());
                    run_tool(&root, "bench-gateways", &["--runs", &r, "--tcp", &t])
                }
                Bench::Throughput { rounds, packets } => {
                    lab_prerequisites("the throughput benchmark")?;
                    let (r, n) = (rounds.to_string(), packets.to_string());
                    run_tool(&root, "bench-throughput", &["--rounds", &r, "--packets", &n])
                }
                Bench::Datapath { rounds, repeat } => {
                    let r = rounds.to_string();
                    let n = repeat.to_string();
                    run_tool(&root, "bench-datapath", &["--rounds", &r, "--repeat", &n])
                }
            }
        }
        Command::Fuzz { which } => match which {
            Fuzz::Datapath {
                cases,
                seed,
                keep_going,
            } => {
                lab_prerequisites("the datapath fuzzer")?;
                fuzz_datapath(&root, cases, seed, keep_going)
            }
        },
    }
}

//! Makes sure the eBPF toolchain and the lab tools exist, installing what is
//! missing and saying so. Two routes, detected rather than hard-coded:
//!
//! - **rustup nightly with rust-src** (internet-connected machines): used as is;
//!   if rustup can install it, `rustup toolchain install nightly --component rust-src`.
//! - **Debian** (rustup cannot download): `rustc-web cargo-web rust-web-src`
//!   give a matching compiler + library sources (rustc 1.96, LLVM 22), linked
//!   into rustup as the `debian` toolchain; `redirector/build.rs` builds with it
//!   under `RUSTC_BOOTSTRAP=1`. bpf-linker is built against Debian's LLVM 22.
//!
//! When everything is present this runs a handful of `--version` probes (well
//! under a second) and installs nothing.
use std::path::Path;

use anyhow::{Result, bail};

use crate::cmd;

const DEBIAN_RUST: &[&str] = &["rustc-web", "cargo-web", "rust-web-src"];
const DEBIAN_LLVM: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];
const LAB_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("nft", "nftables"),
    ("nsenter", "util-linux"),
    // BIRD 2: the routing daemon of the multi-gateway lab and tests.
    ("bird", "bird2"),
    // keepalived: the VRRP pair of gateways (lab and tests) and a peer.
    ("keepalived", "keepalived"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn is_root() -> bool {
    cmd::output(&["id", "-u"]).is_some_and(|s| s.trim() == "0")
}

fn has_rustup() -> bool {
    cmd::ok(&["rustup", "--version"])
}

fn sysroot_has_src(toolchain: &str) -> bool {
    cmd::output(&["rustup", "run", toolchain, "rustc", "--print", "sysroot"]).is_some_and(|s| {
        Path::new(s.trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
    })
}

fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists() && cmd::ok(&["apt-get", "--version"])
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `apt-get install {}` as root",
            pkgs.join(" "),
            pkgs.join(" ")
        );
    }
    eprintln!("bootstrap: installing Debian packages: {}", pkgs.join(" "));
    // A fresh machine may have empty or stale package lists.
    cmd::sh(&["apt-get", "update", "-qq"])?;
    let mut words = vec!["apt-get", "install", "-y", "-qq"];
    words.extend_from_slice(pkgs);
    let mut c = std::process::Command::new(words[0]);
    c.args(&words[1..]).env("DEBIAN_FRONTEND", "noninteractive");
    eprintln!("+ {}", words.join(" "));
    let st = c.status()?;
    if !st.success() {
        bail!("`{}` failed ({st})", words.join(" "));
    }
    Ok(())
}

fn dpkg_missing<'a>(pkgs: &[&'a str]) -> Vec<&'a str> {
    pkgs.iter()
        .copied()
        .filter(|p| {
            !cmd::output(&["dpkg-query", "-W", "-f", "${Status}", p])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

/// Which compiler route builds the eBPF side.
enum Route {
    Nightly,
    Debian,
}

fn ensure_compiler() -> Result<Route> {
    if has_rustup() && sysroot_has_src("nightly") {
        return Ok(Route::Nightly);
    }
    if is_debian() {
        let missing = dpkg_missing(DEBIAN_RUST);
        if !missing.is_empty() {
            apt_install(&missing)?;
        }
        if has_rustup() && !sysroot_has_src("debian") {
            eprintln!("bootstrap: linking Debian's rustc as the rustup toolchain `debian`");
            cmd::sh(&["rustup", "toolchain", "link", "debian", "/usr"])?;
        }
        return Ok(Route::Debian);
    }
    if has_rustup() {
        eprintln!("bootstrap: installing rustup nightly with rust-src");
        cmd::sh(&[
            "rustup",
            "toolchain",
            "install",
            "nightly",
            "--component",
            "rust-src",
        ])?;
        return Ok(Route::Nightly);
    }
    bail!(
        "no eBPF-capable Rust toolchain: install rustup and run \
         `rustup toolchain install nightly --component rust-src`"
    )
}

fn ensure_linker(route: &Route) -> Result<()> {
    if cmd::ok(&["bpf-linker", "--version"]) {
        return Ok(());
    }
    match route {
        Route::Debian => {
            let missing = dpkg_missing(DEBIAN_LLVM);
            if !missing.is_empty() {
                apt_install(&missing)?;
            }
            eprintln!("bootstrap: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
            let mut c = std::process::Command::new("cargo");
            c.args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
            eprintln!("+ LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --features llvm-22 …");
            if !c.status()?.success() {
                bail!("building bpf-linker failed; see above (needs llvm-22-dev and libpolly-22-dev)");
            }
        }
        Route::Nightly => {
            eprintln!("bootstrap: installing bpf-linker");
            cmd::sh(&["cargo", "install", "bpf-linker", "--locked"])?;
        }
    }
    if !cmd::ok(&["bpf-linker", "--version"]) {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// The eBPF toolchain: compiler with library sources, and bpf-linker.
pub fn ensure() -> Result<()> {
    let route = ensure_compiler()?;
    ensure_linker(&route)
}

/// The peers the failover benchmark compares with, from Debian packages.
const PEERS: &[(&str, &str)] = &[
    ("haproxy", "haproxy"),
    ("keepalived", "keepalived"),
    ("conntrack", "conntrack"),
];

/// Installs the peers (`bench failover --peers`) if missing.
pub fn ensure_peers() -> Result<()> {
    ensure_tools(PEERS)
}

/// Tools the namespace tests and the lab use.
pub fn ensure_lab_tools() -> Result<()> {
    let had = |bin: &str| cmd::ok(&["sh", "-c", &format!("command -v {bin}")]);
    let (had_bird, had_keepalived) = (had("bird"), had("keepalived"));
    ensure_tools(LAB_TOOLS)?;
    // The packages may start their daemons on the host; the lab runs its
    // own processes in namespaces only.
    if !had_bird {
        let _ = cmd::ok(&["systemctl", "disable", "--now", "bird"]);
    }
    if !had_keepalived {
        let _ = cmd::ok(&["systemctl", "disable", "--now", "keepalived"]);
    }
    Ok(())
}

/// The real servers and clients of the recipes (tests, `bench recipes`,
/// `demo --case`): PostgreSQL (`pg_ctlcluster` comes with the server),
/// nginx and wrk, dnsmasq (the binary only, no service) and dig, curl.
const RECIPE_TOOLS: &[(&str, &str)] = &[
    ("pg_ctlcluster", "postgresql"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "bind9-dnsutils"),
    ("curl", "curl"),
];

/// Installs the recipes' servers if missing, without letting their packages
/// start services on the host (a policy-rc.d that refuses, for the install
/// only): the recipes run their own processes in namespaces.
pub fn ensure_recipe_tools() -> Result<()> {
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = is_root() && !policy.exists();
    if ours {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask bootstrap: no service starts while it installs\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = ensure_tools(RECIPE_TOOLS);
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result
}

/// What `cargo xtask package` runs: dpkg-shlibdeps (dpkg-dev, which brings
/// binutils' strip); dpkg-deb and md5sum are Essential.
const PACKAGE_TOOLS: &[(&str, &str)] = &[("dpkg-shlibdeps", "dpkg-dev"), ("strip", "binutils")];

/// Installs the package builder's tools if missing.
pub fn ensure_package_tools() -> Result<()> {
    ensure_tools(PACKAGE_TOOLS)
}

/// And what the package's test runs: debootstrap makes the Debian 12 it
/// installs on (whose own systemd-analyze verifies the unit).
pub fn ensure_package_test_tools() -> Result<()> {
    ensure_tools(&[("debootstrap", "debootstrap")])
}

/// Installs the packages of the `(binary, package)` pairs whose binary is missing.
fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| !cmd::ok(&["sh", "-c", &format!("command -v {bin}")]))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_debian() {
        bail!("missing tools from packages {}: install them", missing.join(" "));
    }
    apt_install(&missing)
}

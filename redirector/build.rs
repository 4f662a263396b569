//! Builds the eBPF object with aya-build, choosing the toolchain route here so
//! that `cargo build`, `cargo clippy` and `cargo xtask` all use the same one:
//!
//! 1. `REDIRECTOR_EBPF_TOOLCHAIN=<rustup toolchain>` if set;
//! 2. rustup's `nightly` when it has `rust-src` (the usual internet route);
//! 3. a rustup toolchain named `debian` linked to `/usr` (Debian's rustc-web +
//!    rust-web-src), or plain `rustc` on PATH without rustup, with
//!    `RUSTC_BOOTSTRAP=1` so a stable compiler accepts `-Z build-std=core`.
//!
//! `cargo xtask bootstrap` installs whichever route is missing.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

const FIX: &str = "run `cargo xtask bootstrap` (it installs the eBPF toolchain and bpf-linker)";

fn sysroot_has_src(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib/src/rust/library/core").is_dir()
}

fn sysroot(cmd: &mut Command) -> Option<PathBuf> {
    let out = cmd.args(["--print", "sysroot"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()))
}

fn rustup_sysroot(toolchain: &str) -> Option<PathBuf> {
    sysroot(Command::new("rustup").args(["run", toolchain, "rustc"]))
}

fn is_nightly(cmd: &mut Command) -> bool {
    cmd.arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("nightly"))
        .unwrap_or(false)
}

/// Picks the toolchain; returns its rustup name (if rustup is used) and
/// whether RUSTC_BOOTSTRAP=1 is needed.
fn choose_route() -> anyhow::Result<(Option<String>, bool)> {
    let have_rustup = Command::new("rustup").arg("--version").output().is_ok();
    if let Ok(tc) = env::var("REDIRECTOR_EBPF_TOOLCHAIN") {
        let root = rustup_sysroot(&tc)
            .ok_or_else(|| anyhow!("REDIRECTOR_EBPF_TOOLCHAIN={tc}: rustup cannot run it"))?;
        if !sysroot_has_src(&root) {
            bail!(
                "REDIRECTOR_EBPF_TOOLCHAIN={tc} has no rust-src under {}",
                root.display()
            );
        }
        let nightly = is_nightly(Command::new("rustup").args(["run", &tc, "rustc"]));
        return Ok((Some(tc), !nightly));
    }
    if have_rustup {
        if rustup_sysroot("nightly").is_some_and(|r| sysroot_has_src(&r)) {
            return Ok((Some("nightly".into()), false));
        }
        if rustup_sysroot("debian").is_some_and(|r| sysroot_has_src(&r)) {
            return Ok((Some("debian".into()), true));
        }
        bail!(
            "no eBPF-capable Rust toolchain: rustup's nightly lacks rust-src and no `debian` \
             toolchain is linked; {FIX}"
        );
    }
    let root = sysroot(&mut Command::new("rustc")).ok_or_else(|| anyhow!("no rustc on PATH; {FIX}"))?;
    if !sysroot_has_src(&root) {
        bail!(
            "rustc at {} has no library sources (rust-src); {FIX}",
            root.display()
        );
    }
    Ok((None, !is_nightly(&mut Command::new("rustc"))))
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=REDIRECTOR_EBPF_TOOLCHAIN");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true");
    if skip {
        // Metadata-only runs (fast clippy): empty stubs keep include_bytes compiling.
        for bin in ["redirector", "lab"] {
            std::fs::write(out_dir.join(bin), [])?;
        }
        return Ok(());
    }
    let (toolchain, bootstrap) = choose_route()?;
    if Command::new("bpf-linker").arg("--version").output().is_err() {
        bail!("bpf-linker not found on PATH; {FIX}");
    }
    if bootstrap {
        // SAFETY: build scripts are single-threaded at this point; aya-build reads
        // this variable and passes it to the cargo it spawns.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    // aya-build watches the eBPF crate; the shared types are compiled into it too.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("redirector-common").display()
    );
    let root = workspace.join("redirector-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    let tc = match toolchain.as_deref() {
        Some(t) => Toolchain::Custom(t),
        None => Toolchain::Nightly,
    };
    aya_build::build_ebpf(
        [Package {
            name: "redirector-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        tc,
    )
    .context("building the eBPF object")
}

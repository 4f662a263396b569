//! Builds the eBPF object (see `build_ebpf`), choosing the toolchain route here so
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
    collections::VecDeque,
    env,
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};

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
    // Also when skipping: otherwise unsetting it would not rerun us and the stubs would stay.
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
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
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    // build_ebpf watches the eBPF crate; the shared types are compiled into it too.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("redirector-common").display()
    );
    build_ebpf(
        &out_dir,
        &workspace.join("redirector-ebpf"),
        "redirector-ebpf",
        toolchain.as_deref(),
        bootstrap,
    )
    .context("building the eBPF object")
}

/// How many lines of the inner cargo's stderr a failed build shows.
const STDERR_TAIL: usize = 60;

/// `cargo` or `rustc` of the chosen toolchain: through `rustup run` when
/// rustup picked it, else the one on PATH.
fn tool(toolchain: Option<&str>, program: &str) -> Command {
    match toolchain {
        Some(tc) => {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", tc, program]);
            cmd
        }
        None => Command::new(program),
    }
}

/// Builds `package`'s binaries for the bpf target and copies each to
/// `OUT_DIR/<bin name>`, as aya-build 0.2.0's `build_ebpf` does, but quietly:
/// aya-build forwards every line of the inner cargo's stderr (its `Compiling …`
/// progress) as `cargo:warning`, so each rebuild printed dozens of warnings.
/// Here only the compiler's diagnostics become warnings; the stderr is shown
/// (its tail) only in the error when the build fails.
fn build_ebpf(
    out_dir: &Path,
    root: &Path,
    package: &str,
    toolchain: Option<&str>,
    bootstrap: bool,
) -> anyhow::Result<()> {
    // The eBPF crate is no dependency of ours: without this cargo would not rerun
    // us when its sources change.
    println!("cargo:rerun-if-changed={}", root.display());

    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endian={other}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    // aya-ebpf's cfg knows only `riscv64` (as aya-build maps it).
    let arch = if arch.starts_with("riscv64") {
        "riscv64"
    } else {
        &arch
    };

    let mut cmd = tool(toolchain, "cargo");
    cmd.args([
        "build",
        "--package",
        package,
        "--bins",
        "--message-format=json",
        "--release",
        "--target",
        target,
    ]);
    if bootstrap {
        // Only the inner cargo needs it: a stable compiler then accepts `-Z`.
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    // aya-build's rule: RUSTC_BOOTSTRAP=1 (or =<crate>) enables -Z, -1 forbids it,
    // otherwise the compiler's channel decides.
    let rustc_bootstrap = if bootstrap {
        Some(OsString::from("1"))
    } else {
        env::var_os("RUSTC_BOOTSTRAP")
    };
    let build_std = match rustc_bootstrap.as_ref().and_then(|v| v.to_str()) {
        Some("1") => true,
        Some(v) if v == package => true,
        Some("-1") => false,
        _ => is_nightly(&mut tool(toolchain, "rustc")),
    };
    if build_std {
        cmd.args(["-Z", "build-std=core"]);
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        [
            format!("--cfg=bpf_target_arch=\"{arch}\""),
            "-Cdebuginfo=2".into(),
            "-Clink-arg=--btf".into(),
        ]
        .join("\x1f"),
    );
    // Our own RUSTC (cargo sets it for build scripts) would override the chosen toolchain.
    cmd.env_remove("RUSTC").env_remove("RUSTC_WORKSPACE_WRAPPER");
    // Separate from the objects copied into OUT_DIR, and from the outer build's
    // target dir, which the running cargo holds locked.
    cmd.arg("--target-dir")
        .arg(out_dir.join("aya-build").join("target").join(package));

    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to spawn {cmd:?}"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    // Drained on its own thread so a full pipe cannot stall cargo; only the tail is kept.
    let stderr = std::thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(STDERR_TAIL);
        for line in BufReader::new(stderr).split(b'\n') {
            let line = line?;
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(String::from_utf8_lossy(&line).into_owned());
        }
        std::io::Result::Ok(tail)
    });

    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut executables = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's stdout")?;
        // serde_json rather than aya-build's cargo_metadata parser, which is what
        // forwarded the stderr noise; we need three fields of two message kinds.
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            // Not JSON: show it rather than lose it, as aya-build did.
            println!("cargo:warning={line}");
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-artifact") => {
                if let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
                {
                    executables.push((name.to_owned(), PathBuf::from(exe)));
                }
            }
            Some("compiler-message") => {
                // `rendered` ends in a blank line: no empty warning for it.
                for line in msg["message"]["rendered"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_end()
                    .lines()
                {
                    println!("cargo:warning={line}");
                }
            }
            _ => {}
        }
    }

    let status = child
        .wait()
        .with_context(|| format!("failed to wait for {cmd:?}"))?;
    let tail = stderr
        .join()
        .map_err(|_| anyhow!("the thread reading cargo's stderr panicked"))?
        .context("reading cargo's stderr")?;
    if !status.success() {
        let tail = Vec::from(tail).join("\n");
        bail!("{cmd:?} failed ({status}); its stderr (last {STDERR_TAIL} lines):\n{tail}");
    }
    for (name, exe) in executables {
        let dst = out_dir.join(&name);
        fs::copy(&exe, &dst)
            .with_context(|| format!("failed to copy {} to {}", exe.display(), dst.display()))?;
    }
    Ok(())
}

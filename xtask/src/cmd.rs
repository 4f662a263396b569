//! Running commands with their command line echoed and failures named.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Runs `cargo` in the workspace root; fails naming the command.
pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(root).args(args);
    status(c, &format!("cargo {}", args.join(" ")))
}

/// Runs a program with arguments.
pub fn run(program: &Path, args: &[String]) -> Result<()> {
    let mut c = Command::new(program);
    c.args(args);
    status(c, &format!("{} {}", program.display(), args.join(" ")))
}

/// Runs a shell-free command given as words, echoing it.
pub fn sh(words: &[&str]) -> Result<()> {
    let (prog, args) = words.split_first().context("empty command")?;
    let mut c = Command::new(prog);
    c.args(args);
    status(c, &words.join(" "))
}

/// True when `words` runs and exits 0 (output discarded).
pub fn ok(words: &[&str]) -> bool {
    let Some((prog, args)) = words.split_first() else {
        return false;
    };
    Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Captures stdout of `words` if it exits 0.
pub fn output(words: &[&str]) -> Option<String> {
    let (prog, args) = words.split_first()?;
    let out = Command::new(prog)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(mut c: Command, shown: &str) -> Result<()> {
    eprintln!("+ {shown}");
    let st = c.status().with_context(|| format!("cannot start `{shown}`"))?;
    if !st.success() {
        bail!("`{shown}` failed ({st})");
    }
    Ok(())
}

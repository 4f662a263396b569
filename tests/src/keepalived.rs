//! keepalived processes in the lab's namespaces, run with
//! `docs/examples/keepalived/gateway.conf` verbatim (after the per-gateway
//! `$NAME=value` definitions, as the docs tell operators to).
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::netns::NetNs;

/// `docs/examples/keepalived/<name>`.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/keepalived")
        .join(name)
}

/// True when `keepalived` can run; panics under `CI=true` when it cannot
/// (the bootstrap installs it: CI never skips).
pub fn available(test: &str) -> bool {
    if Command::new("keepalived").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs keepalived (Debian keepalived), and CI=true forbids skipping"
    );
    eprintln!("SKIPPED {test}: needs keepalived (`cargo xtask setup` installs it)");
    false
}

/// keepalived (VRRP only) in a namespace, in the foreground; killed on drop.
pub struct Keepalived {
    child: Child,
    files: Vec<PathBuf>,
}

impl Keepalived {
    /// Starts keepalived in `ns` with `vars` (`$NAME=value` lines) and the
    /// example `example_name` included after them.
    pub fn start(ns: &NetNs, vars: &[(&str, String)], example_name: &str) -> Keepalived {
        let base = std::env::temp_dir().join(format!("{}-keepalived", ns.name));
        let config = base.with_extension("conf");
        let pid = base.with_extension("pid");
        let vrrp_pid = base.with_extension("vrrp.pid");
        // Its log, for a failed test's reader.
        let log = base.with_extension("log");
        let mut text: String = vars.iter().map(|(k, v)| format!("${k}={v}\n")).collect();
        text.push_str(&format!("include {}\n", example(example_name).display()));
        std::fs::write(&config, text).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--vrrp",
                "--use-file",
            ])
            .arg(&config)
            .arg("--pid")
            .arg(&pid)
            .arg("--vrrp_pid")
            .arg(&vrrp_pid)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Keepalived {
            child,
            files: vec![config, pid, vrrp_pid, log],
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        // SIGTERM: keepalived gives its address up on the way out.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for f in &self.files {
            if std::env::var_os("KEEP_KEEPALIVED_LOGS").is_none() {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

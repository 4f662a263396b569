//! BIRD 2 processes in the lab's namespaces, run with the configurations in
//! `docs/examples/bird/` verbatim (after a few `define`s of per-host
//! values, as the docs tell operators to).
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// `docs/examples/bird/<name>`.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/bird")
        .join(name)
}

/// True when `bird` can run; panics under `CI=true` when it cannot (the
/// bootstrap installs `bird2`: CI never skips).
pub fn available(test: &str) -> bool {
    if Command::new("bird").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs BIRD 2 (Debian bird2), and CI=true forbids skipping"
    );
    eprintln!("SKIPPED {test}: needs BIRD 2 (`cargo xtask setup` installs bird2)");
    false
}

/// A BIRD daemon in a namespace, in the foreground; killed on drop.
pub struct Bird {
    child: Child,
    /// Its control socket (for `birdc -s`).
    pub socket: PathBuf,
    config: PathBuf,
}

impl Bird {
    /// Starts BIRD in `ns` with `defines` (lines of `define NAME = value;`),
    /// then `include` of the example `example`, then `extra` lines.
    pub fn start(ns: &NetNs, defines: &str, example_name: &str, extra: &str) -> Bird {
        let base = std::env::temp_dir().join(format!("{}-bird", ns.name));
        let config = base.with_extension("conf");
        let socket = base.with_extension("ctl");
        let text = format!(
            "{defines}\ninclude \"{}\";\n{extra}\n",
            example(example_name).display()
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "bird", "-f", "-c"])
            .arg(&config)
            .arg("-s")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let bird = Bird {
            child,
            socket,
            config,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while bird.birdc(&["show", "status"]).is_none() {
            assert!(Instant::now() < until, "BIRD in {} did not start", ns.name);
            std::thread::sleep(Duration::from_millis(50));
        }
        bird
    }

    /// `birdc` output, or `None` if BIRD does not answer.
    pub fn birdc(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !text.contains("Unable to connect")).then_some(text)
    }

    /// Waits until the BGP session `name` is established.
    pub fn wait_established(&self, name: &str, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let text = self.birdc(&["show", "protocols", name]).unwrap_or_default();
            if text.contains("Established") {
                return;
            }
            assert!(
                Instant::now() < until,
                "BGP session {name} not established:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.socket);
    }
}

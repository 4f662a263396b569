//! The real `redirector` binary as an operator runs it: the daemon as its own
//! process (only its network namespace switched, so its bpffs pins are the
//! host's) and the CLI over its control socket.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    lab::{DsrVips, LAB_CONFIG, Lab, Leftovers, Server},
    netns::NetNs,
};

/// target/<profile>/redirector, built by `cargo xtask` beside the tests
/// (in `deps/`) and the lab's tools (the soak).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("redirector");
    assert!(
        bin.exists(),
        "{} not built: run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// A daemon process; killed when dropped.
pub struct Daemon(pub Child);

impl Daemon {
    /// Starts `redirector run --config` in `gw`'s network namespace
    /// (`nsenter --net`) and waits until it answers on `socket`.
    pub fn start(gw: &NetNs, config: &Path, socket: &Path) -> Daemon {
        Self::start_with(gw, config, socket, &[])
    }

    /// [`Daemon::start`] with environment variables (fault hooks).
    pub fn start_with(gw: &NetNs, config: &Path, socket: &Path, env: &[(&str, &str)]) -> Daemon {
        let d = Daemon::spawn_with(gw, config, Stdio::null(), env);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = cli(socket, &["status"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("(pid ") {
                return d;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("the daemon did not answer on {} within 20 s", socket.display());
    }

    /// Starts it without waiting; its stderr goes to `stderr`.
    pub fn spawn(gw: &NetNs, config: &Path, stderr: impl Into<Stdio>) -> Daemon {
        Self::spawn_with(gw, config, stderr, &[])
    }

    /// [`Daemon::spawn`] with environment variables (fault hooks).
    pub fn spawn_with(gw: &NetNs, config: &Path, stderr: impl Into<Stdio>, env: &[(&str, &str)]) -> Daemon {
        let child = Command::new("nsenter")
            .envs(env.iter().copied())
            .arg(format!("--net=/var/run/netns/{}", gw.name))
            .arg(binary())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Daemon(child)
    }

    /// Waits (20 s at most) until it answers `status` on `socket`; panics
    /// if it exits first.
    pub fn wait_answering(&mut self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cli(socket, &["status"]).status.success() {
            assert!(
                self.0.try_wait().unwrap().is_none(),
                "the daemon exited by itself"
            );
            assert!(Instant::now() < deadline, "the daemon never answered");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `sig` and waits for the process to end.
    pub fn signal(&mut self, sig: i32) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(i32::try_from(self.0.id()).unwrap(), sig) };
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `redirector --socket SOCKET ARGS…`.
pub fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

/// [`cli`], which must succeed; its stdout.
pub fn cli_ok(socket: &Path, args: &[&str]) -> String {
    let out = cli(socket, args);
    assert!(
        out.status.success(),
        "redirector {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether an XDP program is attached to `dev` in `ns`.
pub fn xdp_attached(ns: &NetNs, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// The lab with servers on both backends and a config file for a daemon
/// process, its socket, state and pins in private places.
pub struct Setup {
    /// The namespaces.
    pub lab: Lab,
    /// The primary's server process.
    pub primary: Server,
    /// The secondary's server process.
    pub secondary: Server,
    /// Socket, state and pins (removed on drop).
    pub left: Leftovers,
    /// The config file.
    pub config: PathBuf,
    /// Extra `[control]` lines.
    control: String,
}

impl Setup {
    /// [`LAB_CONFIG`] with a `[control]` table pointing at private places.
    pub fn new(tag: &str) -> Setup {
        Self::with_config(tag, LAB_CONFIG)
    }

    /// `services` (a config without `[control]`) plus private places.
    pub fn with_config(tag: &str, services: &str) -> Setup {
        Self::with_control(tag, services, "")
    }

    /// [`Setup::with_config`] with more `[control]` keys (`key = value` lines).
    pub fn with_control(tag: &str, services: &str, control: &str) -> Setup {
        let lab = Lab::new(
            tag,
            &DsrVips {
                v4: &["198.18.100.2"],
                v6: &["2001:2::200"],
            },
        );
        let primary = Server::start(&lab.primary, "primary", "198.18.2.2", "2001:2:0:2::2", false);
        let secondary = Server::start(&lab.secondary, "secondary", "198.18.3.2", "2001:2:0:3::2", false);
        let left = Leftovers::new(&lab.gw);
        let config = std::env::temp_dir().join(format!("{}.toml", lab.gw.name));
        let s = Setup {
            lab,
            primary,
            secondary,
            left,
            config,
            control: control.to_owned(),
        };
        s.write_config(services);
        s
    }

    /// Rewrites the config file with `services` and the private `[control]` table.
    pub fn write_config(&self, services: &str) {
        let text = format!(
            "{services}\n[control]\nsocket = {:?}\nstate_dir = {:?}\nbpffs_dir = {:?}\nmetrics = \"198.18.1.1:9630\"\n{}\n",
            self.left.socket, self.left.state_dir, self.left.bpffs_dir, self.control
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// A log file for a daemon's stderr, beside the config (removed when
    /// dropped).
    pub fn log(&self) -> Log {
        let path = self.config.with_extension("log");
        std::fs::File::create(&path).unwrap();
        Log(path)
    }

    /// Starts the daemon on it, its stderr in `log`, and waits until it answers.
    pub fn daemon_logged(&self, log: &Log) -> Daemon {
        let mut d = Daemon::spawn(&self.lab.gw, &self.config, log.file());
        d.wait_answering(&self.left.socket);
        d
    }

    /// Starts the daemon on it.
    pub fn daemon(&self) -> Daemon {
        Daemon::start(&self.lab.gw, &self.config, &self.left.socket)
    }
}

/// A daemon's log file; removed when dropped.
pub struct Log(PathBuf);

impl Log {
    /// For a daemon's stderr (appending).
    pub fn file(&self) -> std::fs::File {
        std::fs::OpenOptions::new().append(true).open(&self.0).unwrap()
    }

    /// What was logged so far.
    pub fn read(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Polls `ok` every 20 ms; panics naming `what` after `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The active backend of `service` per `redirector status` ("primary", "secondary").
pub fn active(sock: &Path, service: &str) -> String {
    let st = cli_ok(sock, &["status"]);
    st.lines()
        .find(|l| l.starts_with(&format!("{service} ")))
        .and_then(|l| l.split("active ").nth(1))
        .and_then(|rest| rest.split([',', ' ']).next())
        .unwrap_or("")
        .to_owned()
}

/// Waits until `redirector status` shows both backends of `service` up.
pub fn wait_both_up(sock: &Path, service: &str, limit: std::time::Duration) {
    wait_for(&format!("both backends of {service} up"), limit, || {
        let st = cli_ok(sock, &["status"]);
        st.lines()
            .skip_while(|l| !l.starts_with(&format!("{service} ")))
            .skip(1)
            .take(2)
            .all(|l| l.contains(" up "))
    });
}

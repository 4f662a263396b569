//! The Debian package on a fresh Debian 12: `cargo xtask package`'s .deb
//! installed with `dpkg -i` in a debootstrapped bookworm, its files checked,
//! its unit verified by that system's own `systemd-analyze`, and the unit's
//! ExecStartPre, ExecStart and ExecReload run from the chroot as systemd would
//! run them (its directories, `NOTIFY_SOCKET`, `WATCHDOG_USEC`) in a fresh
//! network namespace that has the example config's interfaces: it becomes
//! ready, answers `redirector status`, reloads; stopped, its data plane stays
//! until `redirector detach`; a second run is detached by `dpkg --purge`.
//!
//! The chroot's mounts (proc, bpffs) live in a private mount namespace held
//! by one process whose stdin is this test's pipe: they go when the test
//! ends, however it ends. The debootstrapped tree is cached as a tarball in
//! target/package-test/ (about 30-60 s to make, well under a second to unpack).
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        net::UnixDatagram,
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use redirector::config::Config;
use redirector_tests::{
    daemon::{Daemon, xdp_attached},
    netns::{NetNs, in_ns},
    require_root,
};

const SUITE: &str = "bookworm";
/// Beyond minbase: procps (the package depends on it: the unit's ExecReload
/// runs /bin/kill) and systemd (a gateway's init; its systemd-analyze
/// verifies the unit against the system it is installed on).
const INCLUDE: &str = "procps,systemd";
/// systemd's default PATH for services.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const UNIT: &str = "lib/systemd/system/redirector.service";
const CONFIG: &str = "etc/redirector/redirector.toml";
/// Where the daemon's sd_notify datagrams arrive (a path in the chroot).
const NOTIFY: &str = "run/package-test-notify.sock";

#[test]
fn the_debian_package_installs_on_bookworm_and_its_unit_runs() {
    if !require_root("package") || !require_tools(&["debootstrap", "dpkg-deb", "unshare", "nsenter", "tar"]) {
        return;
    }
    let started = Instant::now();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let deb = package(workspace);
    let dir = workspace.join("target/package-test");
    fs::create_dir_all(&dir).unwrap();
    remove_stale(&dir);
    let tarball = tarball(&dir);
    let root = Chroot::new(&tarball, &dir);
    eprintln!(
        "package: chroot ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Installed as an operator would on a fresh system.
    fs::copy(&deb, root.path("tmp/redirector.deb")).unwrap();
    eprint!("{}", root.ok(None, &["dpkg", "-i", "/tmp/redirector.deb"]));
    check_files(&root, workspace);
    let enabled = root.run(None, &["systemctl", "is-enabled", "redirector.service"]);
    assert_eq!(
        String::from_utf8_lossy(&enabled.stdout),
        "disabled\n",
        "the package must not enable the service: attaching XDP is the operator's decision"
    );
    let verify = root.run(None, &["systemd-analyze", "verify", &format!("/{UNIT}")]);
    assert!(
        verify.status.success() && verify.stdout.is_empty() && verify.stderr.is_empty(),
        "systemd-analyze verify /{UNIT}: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(
        root.ok(None, &["redirector", "--version"]),
        format!("redirector {}\n", env!("CARGO_PKG_VERSION"))
    );
    let check = root.ok(None, &["redirector", "check", "--config", &format!("/{CONFIG}")]);
    assert!(check.contains(": ok: "), "{check}");

    // The example config's interfaces, in a namespace of their own.
    let unit = Unit::read(&root.path(UNIT));
    let cfg = Config::from_file(&root.path(CONFIG)).unwrap();
    let ns = gateway_namespace(&cfg);
    let pre = unit.exec("ExecStartPre");
    eprint!("{}", root.ok(Some(&ns), &pre));
    for (key, base) in [("RuntimeDirectory", "run"), ("StateDirectory", "var/lib")] {
        let d = root.path(&format!("{base}/{}", unit.one(key)));
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let notify = UnixDatagram::bind(root.path(NOTIFY)).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let watchdog = seconds(unit.one("WatchdogSec"));
    let log = root.path("tmp/redirector.log");

    // First run: ready, status, reload, stop (the data plane stays), detach.
    let spawned = Instant::now();
    let mut daemon = root.start(&ns, &unit, watchdog, &log);
    let pid = daemon.pid();
    wait_notified(&notify, &mut daemon, &log, "READY=1");
    eprintln!(
        "package: READY=1 from pid {pid} {:.1} s after ExecStart",
        spawned.elapsed().as_secs_f64()
    );
    let status = root.ok(Some(&ns), &["redirector", "status"]);
    assert!(status.contains(&format!("(pid {pid})")), "{status}");
    for s in &cfg.services {
        assert!(
            status.contains(&format!("\n{} (id ", s.name)),
            "no {} in\n{status}",
            s.name
        );
    }
    // WatchdogSec: the decision loop pings at half of it.
    wait_notified(&notify, &mut daemon, &log, "WATCHDOG=1");
    let reload = unit.exec("ExecReload");
    let reload: Vec<String> = reload
        .iter()
        .map(|w| w.replace("$MAINPID", &pid.to_string()))
        .collect();
    root.ok(Some(&ns), &reload.iter().map(String::as_str).collect::<Vec<_>>());
    wait_logged(&log, &mut daemon, "reloaded:");
    stop(&mut daemon, &notify, &log);
    for dev in &cfg.gateway.interfaces {
        assert!(
            xdp_attached(&ns, dev),
            "{dev}: the data plane must outlive the daemon"
        );
    }
    let detached = root.ok(
        Some(&ns),
        &["redirector", "detach", "--config", &format!("/{CONFIG}")],
    );
    eprint!("{detached}");
    for dev in &cfg.gateway.interfaces {
        assert!(!xdp_attached(&ns, dev), "{dev}: still attached after detach");
    }

    // Second run, then purge: the package takes its data plane and state along.
    let mut daemon = root.start(&ns, &unit, watchdog, &log);
    wait_notified(&notify, &mut daemon, &log, "READY=1");
    stop(&mut daemon, &notify, &log);
    assert!(xdp_attached(&ns, &cfg.gateway.interfaces[0]));
    eprint!("{}", root.ok(Some(&ns), &["dpkg", "--purge", "redirector"]));
    for dev in &cfg.gateway.interfaces {
        assert!(
            !xdp_attached(&ns, dev),
            "{dev}: still attached after dpkg --purge"
        );
    }
    for gone in [
        "usr/sbin/redirector",
        UNIT,
        "etc/redirector",
        "var/lib/redirector",
    ] {
        assert!(!root.path(gone).exists(), "/{gone} left after dpkg --purge");
    }
    eprintln!("package: done in {:.1} s", started.elapsed().as_secs_f64());
}

/// target/debian/redirector_<version>_<arch>.deb, which `cargo xtask test`
/// builds before the tests (`cargo xtask package`).
fn package(workspace: &Path) -> PathBuf {
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let deb = workspace.join(format!(
        "target/debian/redirector_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    ));
    assert!(
        deb.exists(),
        "{} not built: run `cargo xtask package` (`cargo xtask test` does)",
        deb.display()
    );
    deb
}

/// The installed files: where, mode, owner, content.
fn check_files(root: &Chroot, workspace: &Path) {
    for (path, mode) in [
        ("usr/sbin/redirector", 0o755),
        (UNIT, 0o644),
        (CONFIG, 0o644),
        ("usr/share/bash-completion/completions/redirector", 0o644),
        ("usr/share/zsh/vendor-completions/_redirector", 0o644),
        ("usr/share/doc/redirector/README.md", 0o644),
        ("usr/share/doc/redirector/docs/operations.md", 0o644),
        ("usr/share/doc/redirector/copyright", 0o644),
    ] {
        let m = fs::metadata(root.path(path)).unwrap_or_else(|e| panic!("/{path}: {e}"));
        assert_eq!(m.permissions().mode() & 0o7777, mode, "/{path}: mode");
        assert_eq!((m.uid(), m.gid()), (0, 0), "/{path}: owner");
    }
    let same = |installed: &str, source: &str| {
        assert_eq!(
            fs::read_to_string(root.path(installed)).unwrap(),
            fs::read_to_string(workspace.join(source)).unwrap(),
            "/{installed} differs from {source}"
        );
    };
    same(UNIT, "packaging/redirector.service");
    same(CONFIG, "docs/examples/redirector.toml");
    let bash = fs::read_to_string(root.path("usr/share/bash-completion/completions/redirector")).unwrap();
    assert!(bash.contains("complete -F _redirector") && bash.contains("withdraw"));
    let zsh = fs::read_to_string(root.path("usr/share/zsh/vendor-completions/_redirector")).unwrap();
    assert!(zsh.starts_with("#compdef redirector"));

    let query = |field: &str| {
        root.ok(
            None,
            &["dpkg-query", "-W", &format!("-f=${{{field}}}"), "redirector"],
        )
    };
    assert!(
        query("Conffiles").contains(&format!("/{CONFIG} ")),
        "the config must be a conffile"
    );
    let depends = query("Depends");
    assert!(
        depends.contains("libc6 (>= ") && depends.contains("procps"),
        "Depends: {depends}"
    );
    // Every shipped file as packaged (DEBIAN/md5sums).
    assert_eq!(root.ok(None, &["dpkg", "--verify", "redirector"]), "");
}

/// A network namespace with veths named as the config's interfaces and, on
/// the backend-facing one, a gateway address in each backend's subnet (DSR
/// needs its backends directly attached). Only the benchmarking ranges.
fn gateway_namespace(cfg: &Config) -> NetNs {
    let ns = NetNs::new("pkg");
    for (i, dev) in cfg.gateway.interfaces.iter().enumerate() {
        let peer = format!("pkgpeer{i}");
        in_ns(
            &ns.name,
            &["ip", "link", "add", dev, "type", "veth", "peer", "name", &peer],
        );
        in_ns(&ns.name, &["ip", "link", "set", dev, "up"]);
        in_ns(&ns.name, &["ip", "link", "set", &peer, "up"]);
    }
    let backends = cfg
        .gateway
        .backend_interfaces
        .first()
        .or(cfg.gateway.interfaces.last())
        .unwrap();
    let mut subnets = Vec::new();
    for b in cfg
        .services
        .iter()
        .flat_map(|s| [s.primary.addr, s.secondary.addr])
    {
        let (gw, len) = match b {
            IpAddr::V4(a) => {
                let [x, y, z, _] = a.octets();
                assert!(x == 198 && (y & 0xfe) == 18, "{b}: not in 198.18.0.0/15");
                (IpAddr::from([x, y, z, 1]), 24)
            }
            IpAddr::V6(a) => {
                let mut s = a.segments();
                assert!(
                    s[0] == 0x2001 && s[1] == 2 && s[2] == 0,
                    "{b}: not in 2001:2::/48"
                );
                s[4..].copy_from_slice(&[0, 0, 0, 1]);
                (IpAddr::from(s), 64)
            }
        };
        assert_ne!(gw, b, "a backend at the gateway's address");
        if !subnets.contains(&gw) {
            subnets.push(gw);
            let cidr = format!("{gw}/{len}");
            let mut add = vec!["ip", "addr", "add", &cidr, "dev", backends];
            if gw.is_ipv6() {
                add.push("nodad");
            }
            in_ns(&ns.name, &add);
        }
    }
    ns
}

/// The installed unit's `[Service]` settings.
struct Unit(Vec<(String, String)>);

impl Unit {
    fn read(path: &Path) -> Unit {
        let text = fs::read_to_string(path).unwrap();
        let mut section = "";
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
            } else if section == "[Service]"
                && !line.starts_with('#')
                && let Some((k, v)) = line.split_once('=')
            {
                keys.push((k.to_owned(), v.to_owned()));
            }
        }
        Unit(keys)
    }

    /// The value of a key set once.
    fn one(&self, key: &str) -> &str {
        let all: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(all.len(), 1, "{key}= in the unit: {all:?}");
        all[0]
    }

    /// An Exec line's words (plain words only: no prefixes, quotes or
    /// specifiers but $MAINPID, which this test does not need to parse).
    fn exec(&self, key: &str) -> Vec<&str> {
        let line = self.one(key);
        assert!(
            !line.starts_with(['-', '@', '+', '!', ':']) && !line.contains(['"', '\'', '%', '\\']),
            "{key}={line}: a form this test does not parse"
        );
        line.split_whitespace().collect()
    }
}

fn seconds(v: &str) -> Duration {
    let n = v.strip_suffix('s').and_then(|n| n.parse().ok());
    Duration::from_secs(n.unwrap_or_else(|| panic!("a duration of whole seconds: {v}")))
}

/// The debootstrapped tree, made once and cached as a tarball (apt's lists
/// and caches left out: nothing here reads them).
fn tarball(dir: &Path) -> PathBuf {
    let tar = dir.join(format!("{SUITE}-minbase-{}.tar", INCLUDE.replace(',', "-")));
    if tar.exists() {
        return tar;
    }
    let mirror = mirror();
    let tree = dir.join(format!("debootstrap-{}", std::process::id()));
    let _gone = RemoveOnDrop(tree.clone());
    let started = Instant::now();
    eprintln!(
        "package: debootstrap {SUITE} from {mirror} (cached in {})",
        tar.display()
    );
    // In a mount namespace of its own: the proc and sys it mounts in the
    // tree go with it, even when it is killed.
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "debootstrap",
            "--variant=minbase",
        ])
        .arg(format!("--include={INCLUDE}"))
        .arg(SUITE)
        .arg(&tree)
        .arg(&mirror)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debootstrap failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for d in ["var/lib/apt/lists", "var/cache/apt", "var/cache/apt/archives"] {
        for e in fs::read_dir(tree.join(d)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                fs::remove_file(p).unwrap();
            }
        }
    }
    let partial = tar.with_extension("tar.partial");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
    );
    fs::rename(&partial, &tar).unwrap();
    eprintln!(
        "package: debootstrap took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tar
}

/// The bookworm mirror this machine's apt uses (one-line or deb822 sources),
/// else deb.debian.org.
fn mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(d) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = d.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let found = match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => text.split("\n\n").find_map(|stanza| {
                let field = |name: &str| {
                    stanza.lines().find_map(|l| {
                        l.strip_prefix(name)
                            .and_then(|r| r.strip_prefix(':'))
                            .map(str::trim)
                    })
                };
                let deb = field("Types")?.split_whitespace().any(|t| t == "deb");
                let suite = field("Suites")?.split_whitespace().any(|s| s == SUITE);
                (deb && suite && field("Enabled") != Some("no"))
                    .then(|| field("URIs")?.split_whitespace().next().map(str::to_owned))
                    .flatten()
            }),
            _ if f.ends_with("sources.list") || f.extension().is_some_and(|e| e == "list") => {
                text.lines().find_map(|l| {
                    let mut w = l.split_whitespace().filter(|w| !w.starts_with('['));
                    (w.next()? == "deb").then_some(())?;
                    let uri = w.next()?;
                    (w.next()? == SUITE).then(|| uri.to_owned())
                })
            }
            _ => None,
        };
        if let Some(uri) = found.filter(|u| u.starts_with("http")) {
            return uri;
        }
    }
    "http://deb.debian.org/debian".to_owned()
}

/// The unpacked tree and the process that holds its mounts (proc, and a
/// bpffs at /sys/fs/bpf as systemd mounts it) in a private mount namespace.
/// Dropped: the holder's stdin closes, it exits and the namespace and its
/// mounts go; then the tree is removed.
struct Chroot {
    root: PathBuf,
    holder: Child,
    stdin: Option<ChildStdin>,
}

impl Chroot {
    fn new(tarball: &Path, dir: &Path) -> Chroot {
        let root = dir.join(format!("root-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let gone = RemoveOnDrop(root.clone());
        run_ok(Command::new("tar").arg("-C").arg(&root).arg("-xf").arg(tarball));
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                r#"mount -t proc proc "$1/proc" && mkdir -p "$1/sys/fs/bpf" &&
                   mount -t bpf bpf "$1/sys/fs/bpf" && echo ready && exec cat >/dev/null"#,
            )
            .arg("sh")
            .arg(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::mem::forget(gone);
        let stdin = holder.stdin.take();
        let stdout = holder.stdout.take().unwrap();
        let c = Chroot { root, holder, stdin };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(
            line, "ready\n",
            "mounting proc and bpffs in the chroot failed (see above)"
        );
        c
    }

    /// A path of the tree, as seen from here.
    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    /// `args` run chrooted, in the holder's mount namespace (and `ns`'s
    /// network namespace), with systemd's PATH and nothing else of ours.
    fn command(&self, ns: Option<&NetNs>, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.env_clear()
            .env("PATH", PATH)
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()));
        if let Some(ns) = ns {
            c.arg(format!("--net=/var/run/netns/{}", ns.name));
        }
        c.arg("--").arg("chroot").arg(&self.root).args(args);
        c
    }

    fn run(&self, ns: Option<&NetNs>, args: &[&str]) -> Output {
        self.command(ns, args).output().unwrap()
    }

    /// [`Chroot::run`], which must succeed; its stdout.
    fn ok(&self, ns: Option<&NetNs>, args: &[&str]) -> String {
        let out = self.run(ns, args);
        assert!(
            out.status.success(),
            "{args:?} in the chroot failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The unit's ExecStart as systemd starts it: its environment for a
    /// Type=notify service with a watchdog, stderr to `log`.
    fn start(&self, ns: &NetNs, unit: &Unit, watchdog: Duration, log: &Path) -> Daemon {
        let mut c = self.command(Some(ns), &unit.exec("ExecStart"));
        c.env("NOTIFY_SOCKET", format!("/{NOTIFY}"))
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap());
        Daemon(c.spawn().unwrap())
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.holder.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // Its mounts were never visible here: removing the tree cannot reach
        // the host's proc or bpffs.
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Waits for a notification containing `what` (30 s); fails with the log if
/// the daemon exits first.
fn wait_notified(sock: &UnixDatagram, daemon: &mut Daemon, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "no {what} within 30 s:\n{}", read(log));
        // What was sent before an exit is read first.
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == what) {
                return;
            }
            continue;
        }
        if let Some(st) = daemon.0.try_wait().unwrap() {
            panic!("the daemon exited ({st}) before {what}:\n{}", read(log));
        }
    }
}

/// Waits (10 s) until the daemon's log has `what`.
fn wait_logged(log: &Path, daemon: &mut Daemon, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read(log).contains(what) {
        assert!(
            daemon.0.try_wait().unwrap().is_none(),
            "the daemon exited:\n{}",
            read(log)
        );
        assert!(
            Instant::now() < deadline,
            "no {what:?} logged within 10 s:\n{}",
            read(log)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `systemctl stop`: SIGTERM to the main process, which says STOPPING=1 and
/// exits 0.
fn stop(daemon: &mut Daemon, notify: &UnixDatagram, log: &Path) {
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(i32::try_from(daemon.pid()).unwrap(), libc::SIGTERM) };
    wait_notified(notify, daemon, log, "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        if let Some(st) = daemon.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "SIGTERM: still running after 10 s:\n{}",
            read(log)
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "SIGTERM: exited {st}:\n{}", read(log));
}

fn read(log: &Path) -> String {
    fs::read_to_string(log).unwrap_or_default()
}

fn run_ok(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Trees of runs that died (their pid gone); their mounts died with them.
fn remove_stale(dir: &Path) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("root-")
            .or_else(|| name.strip_prefix("debootstrap-"))
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// True when every tool is on PATH. A missing one skips the test loudly,
/// except under `CI=true`, where it fails: CI never skips.
fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "package: missing {}, and CI=true forbids skipping (`cargo xtask test` installs them)",
        missing.join(", ")
    );
    eprintln!(
        "SKIPPED package: missing {} (`cargo xtask test` installs them)",
        missing.join(", ")
    );
    false
}

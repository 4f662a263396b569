//! PostgreSQL in the lab: a primary and a streaming replica (the real
//! Debian server, run as the `postgres` user inside the backends'
//! namespaces), and a writer that commits one numbered row per
//! millisecond through the VIP, reconnecting whenever its connection is
//! lost, so a failover's write outage can be measured from what committed.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed setup is a failed test")]

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    daemon::{Setup, cli_ok, wait_both_up},
    netns::NetNs,
};

/// The server's binaries (`/usr/lib/postgresql/<newest>/bin`), if installed.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// True when the server is installed; under `CI=true` its absence fails.
pub fn available(test: &str) -> bool {
    if bin_dir().is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: PostgreSQL is not installed (`cargo xtask bootstrap` installs it), and CI=true forbids skipping"
    );
    eprintln!("SKIPPED {test}: PostgreSQL is not installed (run `cargo xtask bootstrap`)");
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `args` as the `postgres` user inside namespace `ns`.
fn as_postgres(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"])
        .args(args);
    c
}

/// One server instance: its data directory in a private place (removed on
/// drop, after an immediate stop).
pub struct Pg {
    /// The namespace it runs in.
    pub ns: String,
    /// Its data directory.
    pub data: PathBuf,
    /// The address it listens on.
    pub addr: String,
    bin: PathBuf,
}

/// Settings of every lab instance: listen on the backend's address only,
/// no Unix socket (two instances share the file system; a socket's lock
/// file in the data directory would travel with `pg_basebackup`),
/// replication on. `fsync = off` is for the lab's speed only (never in
/// production).
fn settings(addr: &str) -> String {
    format!(
        "\nlisten_addresses = '{addr}'\nunix_socket_directories = ''\nwal_level = replica\n\
         max_wal_senders = 5\nhot_standby = on\nfsync = off\nlogging_collector = off\n"
    )
}

impl Pg {
    /// A fresh primary in `ns` on `addr`: trust authentication from the
    /// lab's addresses (production: scram-sha-256 and a `.pgpass`).
    pub fn primary(ns: &NetNs, tag: &str, addr: &str) -> Pg {
        let bin = bin_dir().unwrap();
        let data = fresh_dir(tag);
        run(as_postgres(
            &ns.name,
            &[
                bin.join("initdb").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        )
        .stdout(std::process::Stdio::null()));
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&settings(addr));
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 198.18.0.0/15 trust\nhost replication all 198.18.0.0/15 trust\n",
        )
        .unwrap();
        let pg = Pg {
            ns: ns.name.clone(),
            data,
            addr: addr.to_owned(),
            bin,
        };
        pg.start();
        pg
    }

    /// A streaming replica of `of` in `ns` on `addr` (`pg_basebackup -R`).
    pub fn replica(ns: &NetNs, tag: &str, addr: &str, of: &str) -> Pg {
        let bin = bin_dir().unwrap();
        let data = fresh_dir(tag);
        std::fs::remove_dir(&data).unwrap();
        run(&mut as_postgres(
            &ns.name,
            &[
                bin.join("pg_basebackup").to_str().unwrap(),
                "-h",
                of,
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                // Not a spread checkpoint: with pgbench's pages dirty it
                // would take minutes.
                "--checkpoint=fast",
                "--no-sync",
            ],
        ));
        // The copied settings name the primary's address: the later lines win.
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&settings(addr));
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        let pg = Pg {
            ns: ns.name.clone(),
            data,
            addr: addr.to_owned(),
            bin,
        };
        pg.start();
        pg
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let log = self.data.join("server.log");
        let out = as_postgres(
            &self.ns,
            &[
                self.bin.join("pg_ctl").to_str().unwrap(),
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "starting PostgreSQL in {}: {}\n{}",
            self.data.display(),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// A crash: immediate shutdown (every server process ends at once, no
    /// checkpoint; clients' connections are reset).
    pub fn crash(&self) {
        let _ = as_postgres(
            &self.ns,
            &[
                self.bin.join("pg_ctl").to_str().unwrap(),
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .output();
    }

    /// One query's result (psql, unaligned, tuples only), from namespace `from`.
    pub fn sql_from(&self, from: &str, query: &str) -> String {
        let out = run(Command::new("ip").args([
            "netns", "exec", from, "psql", "-X", "-q", "-t", "-A", "-h", &self.addr, "-U", "postgres", "-d",
            "postgres", "-c", query,
        ]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// [`Pg::sql_from`] from its own namespace.
    pub fn sql(&self, query: &str) -> String {
        self.sql_from(&self.ns.clone(), query)
    }

    /// Whether it is a standby (in recovery).
    pub fn in_recovery(&self) -> bool {
        self.sql("SELECT pg_is_in_recovery()") == "t"
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.crash();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn fresh_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("redirector-pg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    run(Command::new("chown").args(["postgres:postgres", d.to_str().unwrap()]));
    run(Command::new("chmod").args(["700", d.to_str().unwrap()]));
    d
}

/// One write attempt of the [`Writer`].
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// Its number (the row's `seq` when it committed).
    pub seq: i64,
    /// When it ended, from the writer's start.
    pub at: Duration,
    /// Committed.
    pub ok: bool,
}

/// Commits `INSERT INTO ticks (seq)` through `to`, one attempt per ms,
/// from namespace `ns` until stopped (at most `limit`). A lost connection is
/// reconnected at the next attempt (connect timeout 50 ms, unacknowledged
/// data given up after 300 ms). pgbench cannot measure this: it aborts a
/// client whose connection is lost.
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<Attempt>>,
    /// When it started.
    pub start: Instant,
}

impl Writer {
    /// Starts writing rows numbered from `first`; the table must exist.
    pub fn start(ns: &NetNs, to: std::net::SocketAddr, first: i64, limit: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let name = ns.name.clone();
        let flag = stop.clone();
        let start = Instant::now();
        let thread = thread::spawn(move || {
            let _in = crate::netns::enter(&name);
            let mut config = postgres::Config::new();
            config
                .host(&to.ip().to_string())
                .port(to.port())
                .user("postgres")
                .dbname("postgres")
                .connect_timeout(Duration::from_millis(50))
                // A statement sent into a partition fails instead of waiting
                // for TCP's retransmissions to give up (minutes).
                .tcp_user_timeout(Duration::from_millis(300));
            let mut client: Option<postgres::Client> = None;
            let mut attempts = Vec::new();
            let mut seq = first - 1;
            while !flag.load(Ordering::Relaxed) && start.elapsed() < limit {
                seq += 1;
                if client.is_none() {
                    client = config.connect(postgres::NoTls).ok();
                }
                let ok = match client.as_mut() {
                    Some(c) => match c.execute("INSERT INTO ticks (seq) VALUES ($1)", &[&seq]) {
                        Ok(_) => true,
                        Err(_) => {
                            client = None;
                            false
                        }
                    },
                    None => false,
                };
                attempts.push(Attempt {
                    seq,
                    at: start.elapsed(),
                    ok,
                });
                thread::sleep(Duration::from_millis(1));
            }
            attempts
        });
        Writer { stop, thread, start }
    }

    /// Stops and returns every attempt.
    pub fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The write outage of a fault at `fault` (time from the writer's start):
/// the longest time without a commit, among the gaps between consecutive
/// commits that end after `fault`, and the attempts that failed in it.
pub fn outage(attempts: &[Attempt], fault: Duration) -> Option<(Duration, usize)> {
    let commits: Vec<&Attempt> = attempts.iter().filter(|a| a.ok).collect();
    let (from, to) = commits
        .windows(2)
        .filter(|w| w[1].at > fault)
        .map(|w| (w[0].at, w[1].at))
        .max_by_key(|(a, b)| b.saturating_sub(*a))?;
    let failed = attempts
        .iter()
        .filter(|a| !a.ok && a.at > from && a.at < to)
        .count();
    Some((to.saturating_sub(from), failed))
}

/// The table the [`Writer`] fills.
pub const TICKS: &str = "CREATE TABLE ticks (seq bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())";

/// The recipe's VIP.
pub const VIP: &str = "198.18.100.1:5432";

/// A file of docs/examples/postgresql.
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/postgresql")
        .join(name)
}

/// The example configuration on the lab's interfaces, with `primary` and
/// `secondary` as given, the example's promote hook and no notify hook.
pub fn config(primary: &str, secondary: &str) -> String {
    let text = std::fs::read_to_string(example("redirector.toml")).unwrap();
    let promote = example("promote");
    text.replace(
        "interfaces = [\"eth0\", \"eth1\"]\nbackend_interfaces = [\"eth1\"]",
        "interfaces = [\"g-c\", \"g-p\", \"g-s\"]\nbackend_interfaces = [\"g-p\", \"g-s\"]\nxdp_mode = \"driver\"",
    )
    .replace("\"/usr/local/lib/redirector/promote\"", &format!("{promote:?}"))
    .replace("notify = [\"/usr/local/lib/redirector/notify\"]\n", "")
    .replace("primary = \"198.18.2.2\"", &format!("primary = \"{primary}\""))
    .replace("secondary = \"198.18.3.2\"", &format!("secondary = \"{secondary}\""))
}

/// The lab with the database on both backends, the daemon running.
pub struct Db {
    /// The lab and its daemon's files.
    pub s: Setup,
    /// The database's primary.
    pub primary: Pg,
    /// Its streaming replica.
    pub replica: Pg,
    /// The daemon.
    pub daemon: crate::daemon::Daemon,
}

/// The lab with a primary (the `ticks` table created), the daemon, then the
/// replica; returns once both backends are up.
pub fn db(tag: &str) -> Db {
    let s = Setup::with_config(tag, &config("198.18.2.2", "198.18.3.2"));
    let primary = Pg::primary(&s.lab.primary, &format!("{tag}p"), "198.18.2.2");
    primary.sql(TICKS);
    // The gateway forwards the replication connection too (the backends
    // reach each other through it): started first, it sees the connection
    // from its first packet (docs/operations.md, PostgreSQL recipe).
    let daemon = s.daemon();
    let replica = Pg::replica(&s.lab.secondary, &format!("{tag}s"), "198.18.3.2", "198.18.2.2");
    assert!(replica.in_recovery());
    let sock = s.left.socket.clone();
    wait_both_up(&sock, "pg", Duration::from_secs(10));
    Db {
        s,
        primary,
        replica,
        daemon,
    }
}

/// Committed sequence numbers.
pub fn committed(attempts: &[Attempt]) -> Vec<i64> {
    attempts.iter().filter(|a| a.ok).map(|a| a.seq).collect()
}

/// Rows of `ticks` matching `filter` on `pg`, asked from namespace `from_ns`.
pub fn count(pg: &Pg, from_ns: &str, filter: &str) -> i64 {
    pg.sql_from(from_ns, &format!("SELECT count(*) FROM ticks WHERE {filter}"))
        .parse()
        .unwrap()
}

/// The promote hook's duration, from the transition log.
pub fn promoted_in(sock: &std::path::Path) -> String {
    let events = cli_ok(sock, &["events"]);
    events
        .lines()
        .find_map(|l| l.split("secondary promoted in ").nth(1))
        .unwrap_or("?")
        .to_owned()
}

/// Commits the writer saw acknowledged before `before` that `pg` does not
/// hold (asynchronous replication's loss when `pg` is the promoted replica).
pub fn acked_but_missing(attempts: &[Attempt], pg: &Pg, from_ns: &str, before: i64) -> usize {
    let held: std::collections::HashSet<i64> = pg
        .sql_from(
            from_ns,
            &format!("SELECT string_agg(seq::text, ',') FROM ticks WHERE seq < {before}"),
        )
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    attempts
        .iter()
        .filter(|a| a.ok && a.seq < before && !held.contains(&a.seq))
        .count()
}

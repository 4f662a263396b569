//! Issue 10: the redirector's own failure modes, each with the test that
//! fails when its fix is reverted (`docs/reliability.md` lists them). Real
//! daemon processes, real traffic, in the lab's namespaces.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    io::{Read as _, Write as _},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    client::{
        Traffic, WEB4, all_up, connect_from, health_of, metric, scrape, status_json, wait_for, wait_health,
    },
    daemon::{Daemon, Setup, binary, cli, cli_ok, xdp_attached},
    lab::{LAB_CONFIG, Server, lab_config_with},
    netns::NetNs,
    require_root,
};

/// These tests run one at a time: each runs a lab with real servers and a
/// daemon, and timing-sensitive checks must not share two CPUs with another.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connections from `ports`, each answered by whom.
fn who_answers(client: &NetNs, ports: std::ops::Range<u16>) -> Vec<(u16, String)> {
    ports
        .map(|p| (p, connect_from(client, p, WEB4).unwrap_or_else(|e| e)))
        .collect()
}

fn all(answers: &[(u16, String)], who: &str) -> bool {
    answers.iter().all(|(_, w)| w == who)
}

/// Fault 0: a finished connection's flow entry must never decide a new
/// connection from the same client port — after a failback, nor with the
/// secondary drained (the entries live for `tcp_flow_idle`, an hour).
#[test]
fn new_connections_from_reused_client_ports_follow_failback_and_drain() {
    if !require_root("new_connections_from_reused_client_ports_follow_failback_and_drain") {
        return;
    }
    let _serial = serial();
    let config = lab_config_with("[service.failover]\nfailback_delay = \"0s\"\nflap_hold = \"0s\"");
    let mut s = Setup::with_config("reuse", &config);
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    let client = &s.lab.client;
    wait_for(client, "primary");

    // The primary dies: connections from ports 42000.. go to the secondary,
    // which pins them with flow entries.
    s.primary.kill();
    wait_for(client, "secondary");
    let during = who_answers(client, 42000..42020);
    assert!(all(&during, "secondary"), "{during:?}");

    // It comes back, traffic fails back: the same ports' new connections
    // belong to the primary.
    s.primary = Server::start(&s.lab.primary, "primary", "198.18.2.2", "2001:2:0:2::2", false);
    wait_for(client, "primary");
    let after = who_answers(client, 42000..42020);
    assert!(all(&after, "primary"), "after a failback: {after:?}");

    // A manual flip pins ports 42100.. to the secondary; then the secondary
    // is drained and control is automatic again: no new connection there.
    cli_ok(&sock, &["flip", "web4", "secondary"]);
    wait_for(client, "secondary");
    let flipped = who_answers(client, 42100..42120);
    assert!(all(&flipped, "secondary"), "{flipped:?}");
    cli_ok(&sock, &["drain", "web4", "secondary"]);
    cli_ok(&sock, &["auto", "web4"]);
    wait_for(client, "primary");
    let drained = who_answers(client, 42100..42120);
    assert!(
        all(&drained, "primary"),
        "with the secondary drained: {drained:?}"
    );
}

/// Runs `redirector run --config CONFIG` in the gateway's namespace, which
/// must be refused within 20 s; returns its stderr.
fn refused_start(s: &Setup, config: &std::path::Path) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", s.lab.gw.name))
        .arg(binary())
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id();
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_secs(20));
        // SAFETY: kill(2) of our own child, if it still runs.
        unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
    });
    let out = out.wait_with_output().unwrap();
    drop(killer);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a second daemon started: {stderr}");
    stderr
}

/// Fault 7: one daemon per data plane. A second daemon on the same pins
/// (another socket), or on the same socket (other pins), is refused naming
/// the holder; an offline detach cannot remove a live daemon's data plane.
#[test]
fn a_second_daemon_and_an_offline_detach_are_refused_while_one_runs() {
    if !require_root("a_second_daemon_and_an_offline_detach_are_refused_while_one_runs") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("lock");
    let d = s.daemon();
    let client = &s.lab.client;
    wait_for(client, "primary");
    let holder = format!("(pid {})", d.pid());

    let other_sock = s.left.socket.with_extension("other.sock");
    let same_pins = s.config.with_extension("samepins.toml");
    std::fs::write(
        &same_pins,
        format!(
            "{LAB_CONFIG}\n[control]\nsocket = {other_sock:?}\nstate_dir = {:?}\nbpffs_dir = {:?}\n",
            s.left.state_dir, s.left.bpffs_dir
        ),
    )
    .unwrap();
    let err = refused_start(&s, &same_pins);
    assert!(
        err.contains("in use by another redirector daemon") && err.contains(&holder),
        "{err}"
    );

    let other_dirs = s.config.with_extension("samesocket.toml");
    let elsewhere = std::env::temp_dir().join(format!("{}-elsewhere", s.lab.gw.name));
    std::fs::write(
        &other_dirs,
        format!(
            "{LAB_CONFIG}\n[control]\nsocket = {:?}\nstate_dir = {:?}\nbpffs_dir = \"/sys/fs/bpf/{}-elsewhere\"\n",
            s.left.socket,
            elsewhere,
            s.lab.gw.name
        ),
    )
    .unwrap();
    let err = refused_start(&s, &other_dirs);
    assert!(err.contains(&holder), "{err}");
    assert!(
        !std::path::Path::new(&format!("/sys/fs/bpf/{}-elsewhere", s.lab.gw.name)).exists(),
        "the refused daemon created a pin directory"
    );

    // No daemon answers on the other socket: the CLI's offline detach must
    // still leave the running daemon's data plane alone.
    let out = Command::new(binary())
        .args(["--config", same_pins.to_str().unwrap(), "detach"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refusing to detach") && err.contains(&holder),
        "{err}"
    );
    assert!(xdp_attached(&s.lab.gw, "g-c"));
    assert_eq!(connect_from(client, 0, WEB4).as_deref(), Ok("primary"));
    // The daemon still answers on its own socket.
    cli_ok(&s.left.socket, &["status"]);
    for f in [&same_pins, &other_dirs] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir_all(&elsewhere);
    let _ = std::fs::remove_dir(format!("/sys/fs/bpf/{}-elsewhere", s.lab.gw.name));
}

/// Fault 11: SIGHUP during start-up (the documented unit reloads with
/// `kill -HUP`) neither kills the daemon nor is lost: it reloads once started.
#[test]
fn sighup_during_start_up_is_kept_not_fatal() {
    if !require_root("sighup_during_start_up_is_kept_not_fatal") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("hupstart");
    let log = s.log();
    let mut d = Daemon::spawn(&s.lab.gw, &s.config, log.file());
    let pid = d.pid();
    // nsenter execs the daemon in place: wait until the daemon's own code
    // runs (it ignores or catches SIGHUP from the first line of main; no
    // program can do anything before that).
    let handles_hup = || {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|st| {
            st.lines()
                .filter(|l| l.starts_with("SigIgn:") || l.starts_with("SigCgt:"))
                .any(|l| u64::from_str_radix(l[7..].trim(), 16).is_ok_and(|m| m & 1 != 0))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !handles_hup() {
        assert!(Instant::now() < deadline, "the daemon never took SIGHUP over");
        thread::sleep(Duration::from_micros(200));
    }
    let mut sent = 0;
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGHUP) };
        sent += 1;
        assert!(
            d.0.try_wait().unwrap().is_none(),
            "SIGHUP {sent} killed the starting daemon"
        );
        thread::sleep(Duration::from_millis(25));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli(&s.left.socket, &["status"]).status.success() {
        assert!(
            d.0.try_wait().unwrap().is_none(),
            "the daemon died after {sent} SIGHUPs"
        );
        assert!(Instant::now() < deadline, "the daemon never answered");
        thread::sleep(Duration::from_millis(50));
    }
    // The queued SIGHUP reloads once the start is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.read().contains("SIGHUP: reloading") {
        assert!(Instant::now() < deadline, "no reload after the start");
        thread::sleep(Duration::from_millis(50));
    }
    wait_for(&s.lab.client, "primary");
    d.signal(libc::SIGTERM);
}

/// Fault 11a: an operator's action is answered only once it is saved. The
/// state file's writes are slowed (a debug-build fault hook): "done" must
/// still mean on disk, so a crash right after it loses nothing.
#[test]
fn an_operator_action_is_on_disk_before_it_is_acknowledged() {
    if !require_root("an_operator_action_is_on_disk_before_it_is_acknowledged") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("acksave");
    let sock = &s.left.socket;
    let mut d = Daemon::start_with(&s.lab.gw, &s.config, sock, &[("REDIRECTOR_FAULT_SAVE_MS", "300")]);
    cli_ok(sock, &["flip", "web4", "secondary", "--reason", "ack test"]);
    let state = std::fs::read_to_string(s.left.state_dir.join("state.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert!(
        json["intents"]["web4"].to_string().contains("ack test"),
        "acknowledged but not saved: {state}"
    );
    // A crash right after the answer, a restart: the flip holds.
    d.signal(libc::SIGKILL);
    let _d = s.daemon();
    let status = cli_ok(sock, &["status"]);
    assert!(status.contains("pinned to the secondary"), "{status}");
    wait_for(&s.lab.client, "secondary");
}

/// Services probed by UDP, ICMP and a command, for the local-trouble test.
const LOCAL_TROUBLE: &str = r#"
[gateway]
interfaces = ["g-c", "g-p", "g-s"]
xdp_mode = "driver"

[[service]]
name = "dns4"
vip = "198.18.100.1"
port = 53
protocol = "udp"
primary = "198.18.2.2"
secondary = "198.18.3.2"

[[service]]
name = "ping4"
vip = "198.18.100.1"
port = 54
protocol = "udp"
primary = "198.18.2.2"
secondary = "198.18.3.2"
[service.health]
kind = "icmp"

[[service]]
name = "exec4"
vip = "198.18.100.1"
port = 55
protocol = "udp"
primary = "198.18.2.2"
secondary = "198.18.3.2"
[service.health]
kind = "exec"
command = ["/bin/true"]
interval = "20ms"
"#;

/// Fault 8: the gateway's own trouble — a local firewall refusing its probes
/// (EPERM), its fd limit exhausted (EMFILE) — is reported and never becomes
/// a down verdict: no transition, a clear error in status and in the log.
#[test]
fn the_gateways_own_trouble_is_reported_never_blamed_on_the_backends() {
    if !require_root("the_gateways_own_trouble_is_reported_never_blamed_on_the_backends") {
        return;
    }
    let _serial = serial();
    let s = Setup::with_config("local", LOCAL_TROUBLE);
    let sock = &s.left.socket;
    let log_file = s.log();
    let d = Daemon::spawn(&s.lab.gw, &s.config, log_file.file());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli(sock, &["status"]).status.success() || !all_up(&status_json(sock)) {
        assert!(Instant::now() < deadline, "not every backend came up");
        thread::sleep(Duration::from_millis(50));
    }
    let events = cli_ok(sock, &["events"]).lines().count();

    // A local firewall drops the gateway's own packets to the primary: its
    // UDP and ICMP probes get EPERM.
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &s.lab.gw.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    nft.stdin
        .take()
        .unwrap()
        .write_all(b"table inet rdrlocal {\n chain out {\n  type filter hook output priority 0;\n  ip daddr 198.18.2.2 drop\n }\n}\n")
        .unwrap();
    assert!(nft.wait().unwrap().success());
    thread::sleep(Duration::from_millis(1000));
    let st = status_json(sock);
    for svc in ["dns4", "ping4"] {
        let primary = st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == svc)
            .map(|x| x["backends"][0].clone())
            .unwrap();
        assert_eq!(primary["health"], "up", "{svc}: {primary}");
        let e = primary["local_error"].as_str().unwrap_or_default().to_owned();
        assert!(
            e.contains("not permitted"),
            "{svc}: no local error in status: {primary}"
        );
    }
    let text = cli_ok(sock, &["status"]);
    assert!(text.contains("PROBE CANNOT RUN ON THIS HOST"), "{text}");
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &s.lab.gw.name,
            "nft",
            "delete",
            "table",
            "inet",
            "rdrlocal",
        ])
        .status()
        .unwrap();
    assert!(status.success());

    // The daemon's fd limit exhausted: no socket, no fork for any probe. The
    // limit is set below every descriptor but stdio's (open ones stay
    // usable): a limit at the lowest free one would leave the holes probes
    // in flight open when they close.
    let pid = i32::try_from(d.pid()).unwrap();
    let stdio_only = 3;
    let mut was = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) on our own child, reading into a valid rlimit.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut was) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let limit = |n: u64| {
        let new = libc::rlimit {
            rlim_cur: n,
            rlim_max: was.rlim_max,
        };
        // SAFETY: prlimit(2) on our own child with a valid rlimit.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    limit(stdio_only);
    thread::sleep(Duration::from_millis(1500));
    limit(was.rlim_cur);
    let log = log_file.read();
    for svc in ["dns4", "ping4", "exec4"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("service {svc}")) && l.contains("Too many open files")),
            "{svc}: the fd exhaustion is not reported:\n{log}"
        );
    }
    // Neither fault moved anything.
    thread::sleep(Duration::from_millis(300));
    assert!(all_up(&status_json(sock)));
    assert_eq!(
        cli_ok(sock, &["events"]).lines().count(),
        events,
        "a transition during the gateway's own trouble"
    );
}

/// Fault 3: a reload that restarts a service (here: the secondary's port
/// edited) keeps the drain of its unchanged primary and the primary's known
/// death; traffic stays on the secondary.
#[test]
fn a_reload_that_restarts_a_service_keeps_intent_and_known_health() {
    if !require_root("a_reload_that_restarts_a_service_keeps_intent_and_known_health") {
        return;
    }
    let _serial = serial();
    let mut s = Setup::new("rldkeep");
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    let client = &s.lab.client;
    wait_for(client, "primary");
    cli_ok(&sock, &["drain", "web4", "primary", "--reason", "patching"]);
    wait_for(client, "secondary");
    s.primary.kill();
    // Known down (the TCP probe is refused, confirmed at once).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cli_ok(&sock, &["status"])
        .lines()
        .any(|l| l.trim_start().starts_with("primary   198.18.2.2:8080") && l.contains(" down"))
    {
        assert!(Instant::now() < deadline, "the primary never went down");
        thread::sleep(Duration::from_millis(20));
    }
    // The secondary now serves on port 80 (the lab server listens there too).
    let text = LAB_CONFIG.replacen(
        "secondary = \"198.18.3.2:8080\"",
        "secondary = \"198.18.3.2:80\"",
        1,
    );
    assert_ne!(text, LAB_CONFIG);
    s.write_config(&text);
    let out = cli_ok(&sock, &["reload"]);
    assert!(out.contains("1 restarted"), "{out}");
    let status = cli_ok(&sock, &["status"]);
    let web4: Vec<&str> = status
        .split("\n\n")
        .find(|b| b.starts_with("web4 "))
        .unwrap()
        .lines()
        .collect();
    let primary = web4
        .iter()
        .find(|l| l.trim_start().starts_with("primary"))
        .unwrap();
    assert!(
        primary.contains(" down") && primary.contains("DRAINED"),
        "{status}"
    );
    assert!(web4[0].contains("active secondary"), "{status}");
    for _ in 0..20 {
        assert_eq!(connect_from(client, 0, WEB4).as_deref(), Ok("secondary"));
    }
    // The operator's command still reaches the restarted service by name.
    cli_ok(&sock, &["undrain", "web4", "primary"]);
}

/// 100 HTTP and 100 UDP services (DSR, so they may share the backends'
/// servers) with the default timeouts and `fall`.
fn many_services() -> String {
    let mut c = String::from("[gateway]\ninterfaces = [\"g-c\", \"g-p\", \"g-s\"]\nxdp_mode = \"driver\"\n");
    for i in 1..=100 {
        c.push_str(&format!(
            "\n[[service]]\nname = \"http{i}\"\nvip = \"198.18.101.{i}\"\nport = 80\nprotocol = \"tcp\"\n\
             mode = \"dsr\"\nprimary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n\
             [service.health]\nkind = \"http\"\ninterval = \"50ms\"\n\
             \n[[service]]\nname = \"udp{i}\"\nvip = \"198.18.102.{i}\"\nport = 53\nprotocol = \"udp\"\n\
             mode = \"dsr\"\nprimary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n\
             [service.health]\ninterval = \"50ms\"\n"
        ));
    }
    c
}

/// Fault 1: a stalled decision loop delays decisions, never invents
/// failures. The daemon's loop blocks its thread for 200 ms ten times
/// (a debug-build fault hook) while `status --json` and `/metrics` are
/// hammered: no transition of any of 200 services (default timeouts and
/// `fall`; the HTTP probe's own stall case is `a_stalled_prober_gives_no_false_verdict`).
#[test]
fn a_stalled_loop_and_busy_control_socket_invent_no_failures() {
    if !require_root("a_stalled_loop_and_busy_control_socket_invent_no_failures") {
        return;
    }
    let _serial = serial();
    let s = Setup::with_control("stall", &many_services(), "probe_budget = 20000");
    let sock = s.left.socket.clone();
    let d = Daemon::start_with(
        &s.lab.gw,
        &s.config,
        &sock,
        &[
            ("REDIRECTOR_FAULT_STALL_MS", "200"),
            ("REDIRECTOR_FAULT_STALL_EVERY_MS", "600"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_up(&status_json(&sock)) {
        assert!(Instant::now() < deadline, "not every backend came up");
        thread::sleep(Duration::from_millis(100));
    }
    let events = cli_ok(&sock, &["events"]).lines().count();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let status = {
        let (stop, sock) = (stop.clone(), sock.clone());
        thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 10_000 {
                cli_ok(&sock, &["status", "--json"]);
                n += 1;
            }
            n
        })
    };
    let metrics = {
        let (stop, gw) = (stop.clone(), s.lab.gw.name.clone());
        thread::spawn(move || {
            let _in = redirector_tests::netns::enter(&gw);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 10_000 {
                let mut c = std::net::TcpStream::connect("198.18.1.1:9630").unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut body = String::new();
                let _ = c.read_to_string(&mut body);
                assert!(
                    body.starts_with("HTTP/1.1 200"),
                    "{}",
                    &body[..body.len().min(200)]
                );
                n += 1;
            }
            n
        })
    };
    // Ten stalls.
    thread::sleep(Duration::from_millis(6000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (statuses, scrapes) = (status.join().unwrap(), metrics.join().unwrap());
    assert!(
        statuses > 10 && scrapes > 10,
        "{statuses} status, {scrapes} scrapes"
    );
    let after = cli_ok(&sock, &["events"]);
    assert_eq!(after.lines().count(), events, "transitions:\n{after}");
    assert!(all_up(&status_json(&sock)));
    drop(d);
}

/// Fault 10: a dead internal thread or task (here the prober, by a
/// debug-build fault hook) ends the daemon with a non-zero status, for its
/// supervisor to restart it; the data plane keeps forwarding meanwhile.
#[test]
fn a_dead_prober_ends_the_daemon_for_its_supervisor_and_forwarding_goes_on() {
    if !require_root("a_dead_prober_ends_the_daemon_for_its_supervisor_and_forwarding_goes_on") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("deadprober");
    let log_file = s.log();
    let mut d = Daemon::spawn_with(
        &s.lab.gw,
        &s.config,
        log_file.file(),
        &[("REDIRECTOR_FAULT_PROBER_EXIT_MS", "1500")],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = d.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the daemon went on without its prober");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{status}");
    let log = log_file.read();
    assert!(log.contains("the prober stopped unexpectedly"), "{log}");
    assert!(xdp_attached(&s.lab.gw, "g-c"));
    assert_eq!(connect_from(&s.lab.client, 0, WEB4).as_deref(), Ok("primary"));
    // The supervisor's restart adopts the data plane.
    let _d = s.daemon();
    wait_for(&s.lab.client, "primary");
}

/// Fault 10: the switch state is reconciled with the decision, and every map
/// the configuration determines with the configuration. Another writer
/// flips a service's pinned switch entry, deletes its `SERVICES` key,
/// points its primary's `BACKENDS` entry elsewhere and adds an allow-list
/// entry: each is repaired (traffic back on the primary), counted by map,
/// and nothing else is ever counted.
#[test]
fn map_entries_changed_behind_the_daemons_back_are_repaired() {
    if !require_root("map_entries_changed_behind_the_daemons_back_are_repaired") {
        return;
    }
    let _serial = serial();
    use aya::maps::{Array, HashMap, Map, MapData, lpm_trie::LpmTrie};
    use redirector_common::{AclKey, Backend, Endpoint, ServiceInfo, SwitchState};
    let s = Setup::new("drift");
    let sock = &s.left.socket;
    let _d = s.daemon();
    let client = &s.lab.client;
    wait_for(client, "primary");
    let id = status_json(sock)["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "web4")
        .and_then(|x| x["id"].as_u64())
        .unwrap();
    let id = u32::try_from(id).unwrap();
    let pins = redirector::datapath::PinDir::new(&s.left.bpffs_dir);
    let pinned = |name: &str| MapData::from_pin(pins.map(name)).unwrap();
    let drift = |map: &str| metric(&scrape(&s), &format!("redirector_drift_total{{map=\"{map}\"}}"));

    // SWITCH: the active backend flipped.
    let mut switch: Array<MapData, SwitchState> = Array::try_from(Map::Array(pinned("SWITCH"))).unwrap();
    let mut st = switch.get(&id, 0).unwrap();
    st.active = redirector_common::SLOT_SECONDARY;
    switch.set(id, st, 0).unwrap();
    assert_eq!(
        connect_from(client, 0, WEB4).as_deref(),
        Ok("secondary"),
        "the forged write took"
    );
    wait_for(client, "primary");
    assert_eq!(
        switch.get(&id, 0).unwrap().active,
        redirector_common::SLOT_PRIMARY
    );

    // SERVICES: the service's key deleted (its `SERVICE_INDEX` copy keeps
    // serving it meanwhile: the copy equals the configured entry).
    let mut services: HashMap<MapData, Endpoint, ServiceInfo> =
        HashMap::try_from(Map::HashMap(pinned("SERVICES"))).unwrap();
    let key = services
        .iter()
        .map(Result::unwrap)
        .find(|(_, v)| v.id == id)
        .map(|(k, _)| k)
        .unwrap();
    services.remove(&key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while services.get(&key, 0).is_err() {
        assert!(Instant::now() < deadline, "the SERVICES key was never restored");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(services.get(&key, 0).unwrap().id, id);
    wait_for(client, "primary");

    // BACKENDS: the primary's address pointed at a host that is not there.
    let mut backends: Array<MapData, Backend> = Array::try_from(Map::Array(pinned("BACKENDS"))).unwrap();
    let mut be = backends.get(&(id * 2), 0).unwrap();
    let right = be.addr;
    be.addr = redirector::datapath::addr16("198.18.2.99".parse().unwrap());
    backends.set(id * 2, be, 0).unwrap();
    wait_for(client, "primary");
    assert_eq!(backends.get(&(id * 2), 0).unwrap().addr, right);

    // ALLOW: an entry for a service without an allow list (walked every 10 s).
    let mut allow: LpmTrie<MapData, AclKey, u8> = LpmTrie::try_from(Map::LpmTrie(pinned("ALLOW"))).unwrap();
    let forged = aya::maps::lpm_trie::Key::new(
        128,
        AclKey {
            service_be: id.to_be(),
            addr: redirector::datapath::addr16("198.18.1.2".parse().unwrap()),
        },
    );
    allow.insert(&forged, 1, 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while allow.get(&forged, 0).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the forged allow-list entry is still there"
        );
        thread::sleep(Duration::from_millis(100));
    }

    for (map, n) in [
        ("SWITCH", 1.0),
        ("SERVICES", 1.0),
        ("BACKENDS", 1.0),
        ("ALLOW", 1.0),
    ] {
        assert_eq!(drift(map), n, "{map}");
    }
    // Nothing the daemon itself wrote was ever taken for drift.
    for map in [
        "SERVICE_VIPS",
        "VIPS",
        "BACKEND_ADDRS",
        "REVERSE",
        "PORTS",
        "DENY",
        "pin",
    ] {
        assert_eq!(drift(map), 0.0, "{map}");
    }
}

/// Fault 6: a restart is no shortcut back into traffic. A primary held down
/// for flapping stays held across a daemon restart (flap history is in the
/// state file; an adopted backend the data plane had down must pass `rise`
/// probes and flap damping again).
#[test]
fn a_flapping_primary_stays_held_across_a_restart() {
    if !require_root("a_flapping_primary_stays_held_across_a_restart") {
        return;
    }
    let _serial = serial();
    let mut s = Setup::new("flaprestart");
    let sock = s.left.socket.clone();
    let mut d = s.daemon();
    wait_for(&s.lab.client, "primary");
    // Up, not merely not-yet-probed: only an up backend's fall is a flap.
    wait_health(&sock, "web4", 0, "up");
    // Four times down within the flap window: held on the fourth rise.
    for round in 0..4 {
        s.primary.kill();
        wait_health(&sock, "web4", 0, "down");
        s.primary = Server::start(&s.lab.primary, "primary", "198.18.2.2", "2001:2:0:2::2", false);
        if round < 3 {
            wait_health(&sock, "web4", 0, "up");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cli_ok(&sock, &["events"]).contains("web4: primary → primary: primary held down")
        && !cli_ok(&sock, &["events"]).contains("web4: secondary → secondary: primary held down")
    {
        assert!(Instant::now() < deadline, "{}", cli_ok(&sock, &["events"]));
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        health_of(&sock, "web4", 0),
        ("down".to_owned(), "secondary".to_owned())
    );
    // Restart the daemon (as the unit does on any exit).
    d.signal(libc::SIGTERM);
    let _d = s.daemon();
    // The hold (5 s) outlives the restart: no failback after one probe plus
    // failback_delay (1 s).
    thread::sleep(Duration::from_millis(2500));
    let (health, active) = health_of(&sock, "web4", 0);
    assert_eq!(
        active, "secondary",
        "the flapping primary got traffic back after the restart ({health})"
    );
    assert_eq!(connect_from(&s.lab.client, 0, WEB4).as_deref(), Ok("secondary"));
}

/// Fault 5: a restart matches a pinned service by what it forwards (VIP,
/// port, protocol, mode, backends), as a reload does. A secondary's port
/// changed while the daemon was down: the service starts over (fresh id
/// state, flows cleared) and the old backend endpoint's reverse-NAT entry
/// is gone, so its traffic is no longer rewritten to the VIP.
#[test]
fn a_restart_with_a_changed_backend_starts_the_service_over() {
    if !require_root("a_restart_with_a_changed_backend_starts_the_service_over") {
        return;
    }
    let _serial = serial();
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    use redirector_common::{Endpoint, ReverseInfo};
    let s = Setup::new("restartid");
    let sock = s.left.socket.clone();
    let mut d = s.daemon();
    let client = &s.lab.client;
    wait_for(client, "primary");
    // A flow pinned to the secondary.
    cli_ok(&sock, &["flip", "web4", "secondary"]);
    wait_for(client, "secondary");
    d.signal(libc::SIGTERM);
    let pins = redirector::datapath::PinDir::new(&s.left.bpffs_dir);
    let old_endpoint = Endpoint {
        addr: redirector::datapath::addr16("198.18.3.2".parse().unwrap()),
        port_be: 8080u16.to_be(),
        proto: 6,
        _pad: 0,
    };
    let reverse = || -> BpfHashMap<MapData, Endpoint, ReverseInfo> {
        BpfHashMap::try_from(Map::HashMap(MapData::from_pin(pins.map("REVERSE")).unwrap())).unwrap()
    };
    assert!(
        reverse().get(&old_endpoint, 0).is_ok(),
        "the old secondary's reverse entry"
    );

    let text = LAB_CONFIG.replacen(
        "secondary = \"198.18.3.2:8080\"",
        "secondary = \"198.18.3.2:80\"",
        1,
    );
    s.write_config(&text);
    let log_file = s.log();
    let _d = s.daemon_logged(&log_file);
    let log = log_file.read();
    assert!(
        log.lines()
            .any(|l| l.contains("service web4 (id") && !l.contains("adopted")),
        "web4 was adopted although its secondary changed:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("service dns4 (id") && l.contains("adopted")),
        "unchanged services are adopted:\n{log}"
    );
    assert!(
        reverse().get(&old_endpoint, 0).is_err(),
        "the old secondary endpoint's replies would still be rewritten to the VIP"
    );
}

/// Fault 11: every pinned map is checked against this build and config
/// before it is reused, also when what is left of a data plane lacks its
/// switch states; and a refused start removes nothing that was pinned.
#[test]
fn what_is_left_of_a_data_plane_is_checked_and_never_removed_by_a_refused_start() {
    if !require_root("what_is_left_of_a_data_plane_is_checked_and_never_removed_by_a_refused_start") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("partial");
    let mut d = s.daemon();
    wait_for(&s.lab.client, "primary");
    d.signal(libc::SIGTERM);
    let pins = redirector::datapath::PinDir::new(&s.left.bpffs_dir);
    std::fs::remove_file(pins.map("SWITCH")).unwrap();
    // A size the pinned maps were not made for.
    let text = LAB_CONFIG.replacen("[gateway]\n", "[gateway]\nmax_services = 2048\n", 1);
    s.write_config(&text);
    let err = refused_start(&s, &s.config);
    assert!(
        err.contains("pinned map") && err.contains("never reused silently"),
        "{err}"
    );
    assert!(
        pins.map("BACKENDS").exists(),
        "the refused start removed the pins"
    );
    assert!(xdp_attached(&s.lab.gw, "g-c"));
    assert_eq!(connect_from(&s.lab.client, 0, WEB4).as_deref(), Ok("primary"));
}

/// Fault 10: systemd's watchdog is fed by the decision loop itself
/// (`Type=notify`, `WatchdogSec=`): `READY=1` once started, `WATCHDOG=1`
/// every half period, none while the loop is wedged (here: stalled for
/// 600 ms by a debug-build fault hook), `STOPPING=1` at the end.
#[test]
fn the_watchdog_is_fed_by_the_decision_loop() {
    if !require_root("the_watchdog_is_fed_by_the_decision_loop") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("watchdog");
    let path = s.config.with_extension("notify");
    let _ = std::fs::remove_file(&path);
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut d = Daemon::spawn_with(
        &s.lab.gw,
        &s.config,
        Stdio::null(),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
            ("REDIRECTOR_FAULT_STALL_MS", "600"),
            ("REDIRECTOR_FAULT_STALL_EVERY_MS", "1500"),
        ],
    );
    let mut got: Vec<(Instant, String)> = Vec::new();
    let mut buf = [0u8; 256];
    let until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
        let pings = got.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
        if pings >= 25 {
            break;
        }
    }
    let first = got.first().map(|(_, m)| m.clone()).unwrap_or_default();
    assert!(first.starts_with("READY=1\nMAINPID="), "{got:?}");
    let pings: Vec<Instant> = got
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 25, "{} pings", pings.len());
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    assert!(
        longest >= Duration::from_millis(450),
        "no gap while the loop was stalled: {gaps:?}"
    );
    let usual = gaps.iter().filter(|g| **g < Duration::from_millis(200)).count();
    assert!(usual * 2 > gaps.len(), "pings are not every ~100 ms: {gaps:?}");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(i32::try_from(d.pid()).unwrap(), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stopping = false;
    while Instant::now() < deadline && !stopping {
        if let Ok(n) = sock.recv(&mut buf) {
            stopping = &buf[..n] == b"STOPPING=1";
        }
    }
    assert!(stopping, "no STOPPING=1");
    let _ = d.0.wait();
    let _ = std::fs::remove_file(&path);
}

/// Two NAT services whose backends swap between the two configs: every
/// reload restarts both (new ids; the retired ones are handed out again on
/// the next reload).
fn swapping(swapped: bool) -> String {
    let (a, b) = if swapped {
        ("198.18.3.2", "198.18.2.2")
    } else {
        ("198.18.2.2", "198.18.3.2")
    };
    format!(
        "[gateway]\ninterfaces = [\"g-c\", \"g-p\", \"g-s\"]\nxdp_mode = \"driver\"\n\n\
         [[service]]\nname = \"x\"\nvip = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n\
         primary = \"{a}:8080\"\nsecondary = \"{b}:8080\"\n\n\
         [[service]]\nname = \"y\"\nvip = \"198.18.100.1\"\nport = 53\nprotocol = \"udp\"\n\
         primary = \"{a}\"\nsecondary = \"{b}\"\n"
    )
}

/// Fault 9: the resolver (next hops) and reloads (whole entries) never lose
/// each other's updates of `BACKENDS`: 40 reloads that retire and reuse ids
/// while the backends' neighbour entries churn (and, by a debug-build hook,
/// each hop update takes 3 ms between its read and its write): every
/// backend entry holds its configured address.
#[test]
fn reloads_and_next_hop_churn_never_mix_up_backend_entries() {
    if !require_root("reloads_and_next_hop_churn_never_mix_up_backend_entries") {
        return;
    }
    let _serial = serial();
    use aya::maps::{Array, Map, MapData};
    use redirector_common::Backend;
    let s = Setup::with_config("hopchurn", &swapping(false));
    let sock = s.left.socket.clone();
    let _d = Daemon::start_with(
        &s.lab.gw,
        &s.config,
        &sock,
        &[("REDIRECTOR_FAULT_HOP_WRITE_MS", "20")],
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (stop, gw) = (stop.clone(), s.lab.gw.name.clone());
        thread::spawn(move || {
            let mut ip = Command::new("ip")
                .args(["-n", &gw, "-force", "-batch", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut input = ip.stdin.take().unwrap();
            let until = Instant::now() + Duration::from_secs(60);
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                let last = if n.is_multiple_of(2) { "99" } else { "02" };
                let line = format!(
                    "neigh replace 198.18.2.2 lladdr 02:00:00:00:02:{last} dev g-p nud permanent\n\
                     neigh replace 198.18.3.2 lladdr 02:00:00:00:03:{last} dev g-s nud permanent\n"
                );
                if input.write_all(line.as_bytes()).is_err() {
                    break;
                }
                n += 1;
                thread::sleep(Duration::from_millis(2));
            }
            drop(input);
            let _ = ip.wait();
        })
    };
    let pins = redirector::datapath::PinDir::new(&s.left.bpffs_dir);
    // Each backend is reached through its own interface.
    let egress = {
        let _in = s.lab.gw.enter();
        [
            ("198.18.2.2", redirector_tests::netns::ifindex("g-p")),
            ("198.18.3.2", redirector_tests::netns::ifindex("g-s")),
        ]
    };
    let check = |round: u32, swapped: bool| {
        let backends: Array<MapData, Backend> =
            Array::try_from(Map::Array(MapData::from_pin(pins.map("BACKENDS")).unwrap())).unwrap();
        let (a, b) = if swapped {
            ("198.18.3.2", "198.18.2.2")
        } else {
            ("198.18.2.2", "198.18.3.2")
        };
        for svc in status_json(&sock)["services"].as_array().unwrap() {
            let id = u32::try_from(svc["id"].as_u64().unwrap()).unwrap();
            for (slot, want) in [(0u32, a), (1, b)] {
                let got = backends.get(&(id * 2 + slot), 0).unwrap();
                let what = format!("round {round}: service {} (id {id}) slot {slot}", svc["name"]);
                assert_eq!(
                    got.addr,
                    redirector::datapath::addr16(want.parse().unwrap()),
                    "{what}: address"
                );
                let via = egress.iter().find(|(addr, _)| *addr == want).map(|(_, i)| *i);
                assert!(
                    got.hop.ifindex == 0 || Some(got.hop.ifindex) == via,
                    "{what}: {want} with the next hop of another backend (ifindex {})",
                    got.hop.ifindex
                );
            }
        }
    };
    let mut swapped = false;
    for round in 0..40u32 {
        swapped = !swapped;
        s.write_config(&swapping(swapped));
        let out = cli_ok(&sock, &["reload"]);
        assert!(out.contains("2 restarted"), "{out}");
        // A write the resolver began before the reload lands within 20 ms;
        // the resolver itself stays behind the reloads.
        thread::sleep(Duration::from_millis(30));
        check(round, swapped);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    thread::sleep(Duration::from_millis(300));
    check(40, swapped);
}

/// What a refused reload must leave exactly as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// (name, id, active backend) of every service.
    services: Vec<(String, u64, String)>,
    /// The state file.
    state: String,
    /// The published `SERVICES` keys and their ids.
    published: Vec<(Vec<u8>, u32)>,
}

fn snapshot(s: &Setup) -> Snapshot {
    let st = status_json(&s.left.socket);
    let mut services: Vec<(String, u64, String)> = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_owned(),
                x["id"].as_u64().unwrap(),
                x["active"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    services.sort();
    let state = std::fs::read_to_string(s.left.state_dir.join("state.json")).unwrap();
    let published = published_keys(s);
    Snapshot {
        services,
        state,
        published,
    }
}

/// The published `SERVICES` keys and their ids, from the pin.
fn published_keys(s: &Setup) -> Vec<(Vec<u8>, u32)> {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    use redirector_common::{Endpoint, ServiceInfo};
    let pins = redirector::datapath::PinDir::new(&s.left.bpffs_dir);
    let keys: BpfHashMap<MapData, Endpoint, ServiceInfo> =
        BpfHashMap::try_from(Map::HashMap(MapData::from_pin(pins.map("SERVICES")).unwrap())).unwrap();
    let mut published: Vec<(Vec<u8>, u32)> = keys
        .iter()
        .map(|r| {
            let (k, v) = r.unwrap();
            (bytemuck::bytes_of(&k).to_vec(), v.id)
        })
        .collect();
    published.sort();
    published
}

/// One more NAT service on its own backend ports.
fn extra_service(i: u16) -> String {
    format!(
        "\n[[service]]\nname = \"extra{i}\"\nvip = \"198.18.100.3\"\nport = {}\nprotocol = \"tcp\"\n\
         primary = \"198.18.2.2:{}\"\nsecondary = \"198.18.3.2:{}\"\n",
        1000 + i,
        9000 + i,
        9000 + i
    )
}

/// Fault 2: a reload is a transaction. A map write that fails mid-apply (a
/// debug-build fault hook fails the 8th service step: after a policy
/// update, a restart and a new service were applied) is undone: services,
/// ids, active backends, the state file and the published keys are exactly
/// as before; the same reload then succeeds.
#[test]
fn a_reload_that_fails_mid_apply_is_undone() {
    if !require_root("a_reload_that_fails_mid_apply_is_undone") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("rldtx");
    let sock = s.left.socket.clone();
    let _d = Daemon::start_with(
        &s.lab.gw,
        &s.config,
        &sock,
        &[("REDIRECTOR_FAULT_RELOAD_STEP_AT", "8")],
    );
    wait_for(&s.lab.client, "primary");
    cli_ok(&sock, &["drain", "dns4", "primary"]);
    thread::sleep(Duration::from_millis(200));
    let before = snapshot(&s);
    // web4: a policy change; dns4: restarted (its secondary's port); then
    // three new services, the second of which fails.
    let mut text = LAB_CONFIG
        .replacen(
            "secondary = \"198.18.3.2\"\n",
            "secondary = \"198.18.3.2:5353\"\n",
            1,
        )
        .replacen(
            "secondary = \"198.18.3.2:8080\"\n",
            "secondary = \"198.18.3.2:8080\"\n[service.failover]\nfailback_delay = \"2s\"\n",
            1,
        );
    for i in 0..3 {
        text.push_str(&extra_service(i));
    }
    s.write_config(&text);
    let out = cli(&sock, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("undone") && err.contains("fault injected"),
        "{err}"
    );
    assert_eq!(snapshot(&s), before, "the failed reload left traces");
    assert_eq!(connect_from(&s.lab.client, 0, WEB4).as_deref(), Ok("primary"));
    // The same file again (the fault hook fired once): applied in full.
    let out = cli_ok(&sock, &["reload"]);
    assert!(out.contains("3 added, 0 removed, 1 restarted"), "{out}");
    let after = snapshot(&s);
    assert_eq!(after.services.len(), before.services.len() + 3);
    assert!(
        cli_ok(&sock, &["status"]).contains("DRAINED"),
        "the drain of dns4's primary survives its restart"
    );
}

/// Fault 2: a reload whose allow lists need more entries than the data
/// plane holds (70 new services × 1000 prefixes) is refused before anything
/// is touched.
#[test]
fn a_reload_over_the_prefix_tries_capacity_changes_nothing() {
    if !require_root("a_reload_over_the_prefix_tries_capacity_changes_nothing") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("rldacl");
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    wait_for(&s.lab.client, "primary");
    let before = snapshot(&s);
    let mut text = LAB_CONFIG.to_owned();
    for i in 0..70u16 {
        text.push_str(&extra_service(i));
        let hosts: Vec<String> = (0..1000u32)
            .map(|h| {
                let n = u32::from(i) * 1000 + h;
                format!("\"198.{}.{}.{}\"", 18 + (n >> 16), (n >> 8) & 0xff, n & 0xff)
            })
            .collect();
        text.push_str(&format!("allow = [{}]\n", hosts.join(", ")));
    }
    s.write_config(&text);
    let out = cli(&sock, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("70000 prefixes"), "{err}");
    assert_eq!(snapshot(&s), before);
}

/// `n` DSR services on one VIP (ports 2000..), probed by ICMP once an hour.
fn many_dsr(n: u16, swapped: &[u16]) -> String {
    let mut c = String::from("[gateway]\ninterfaces = [\"g-c\", \"g-p\", \"g-s\"]\nxdp_mode = \"driver\"\n");
    for i in 0..n {
        let (a, b) = if swapped.contains(&i) {
            ("198.18.3.2", "198.18.2.2")
        } else {
            ("198.18.2.2", "198.18.3.2")
        };
        c.push_str(&format!(
            "\n[[service]]\nname = \"s{i}\"\nvip = \"198.18.100.9\"\nport = {}\nprotocol = \"tcp\"\nmode = \"dsr\"\n\
             primary = \"{a}\"\nsecondary = \"{b}\"\n[service.health]\nkind = \"icmp\"\ninterval = \"1h\"\n",
            2000 + i
        ));
    }
    c
}

/// Fault 2: a reload that needs more ids than `max_services` — here two
/// restarted services of 1023, whose old ids stay in use while they are
/// cleared — is refused before anything is touched.
#[test]
fn a_reload_over_max_services_changes_nothing() {
    if !require_root("a_reload_over_max_services_changes_nothing") {
        return;
    }
    let _serial = serial();
    let s = Setup::with_config("rldmax", &many_dsr(1023, &[]));
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    let before = snapshot(&s);
    s.write_config(&many_dsr(1023, &[5, 6]));
    let out = cli(&sock, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("max_services = 1024") && err.contains("2 restarted"),
        "{err}"
    );
    assert_eq!(snapshot(&s), before);
    // One restart fits.
    s.write_config(&many_dsr(1023, &[5]));
    let out = cli_ok(&sock, &["reload"]);
    assert!(out.contains("1 restarted"), "{out}");
}

/// The ids of every loaded program named redirector*.
fn redirector_programs() -> std::collections::BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("redirector")))
        .map(|p| p.id())
        .collect()
}

/// Contents of the maps a start writes, read from their pins.
fn pinned_contents(s: &Setup) -> Vec<Vec<u8>> {
    use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
    use redirector_common::{Addr, Backend, SwitchState};
    let pins = redirector::datapath::PinDir::new(&s.left.bpffs_dir);
    let open = |name: &str| MapData::from_pin(pins.map(name)).unwrap();
    let mut out: Vec<Vec<u8>> = published_keys(s)
        .into_iter()
        .map(|(k, id)| [k, id.to_le_bytes().to_vec()].concat())
        .collect();
    let switch: Array<MapData, SwitchState> = Array::try_from(Map::Array(open("SWITCH"))).unwrap();
    let backends: Array<MapData, Backend> = Array::try_from(Map::Array(open("BACKENDS"))).unwrap();
    for id in 0..16u32 {
        out.push(bytemuck::bytes_of(&switch.get(&id, 0).unwrap()).to_vec());
        for slot in 0..2 {
            out.push(bytemuck::bytes_of(&backends.get(&(id * 2 + slot), 0).unwrap()).to_vec());
        }
    }
    let vips: BpfHashMap<MapData, Addr, u8> = BpfHashMap::try_from(Map::HashMap(open("VIPS"))).unwrap();
    let mut v: Vec<Vec<u8>> = vips
        .iter()
        .map(|r| {
            let (k, f) = r.unwrap();
            let mut b = bytemuck::bytes_of(&k).to_vec();
            b.push(f);
            b
        })
        .collect();
    v.sort();
    out.extend(v);
    out
}

/// Fault 4: a refused start changes nothing live. With a data plane pinned
/// and forwarding (the daemon stopped), starts that must be refused — an
/// interface missing, allow lists over the tries' capacity, `icmp_echo`
/// changed on the way — leave forwarding, links, loaded programs and map
/// contents exactly as they were.
#[test]
fn a_refused_start_leaves_the_live_data_plane_untouched() {
    if !require_root("a_refused_start_leaves_the_live_data_plane_untouched") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("refusedstart");
    let mut d = s.daemon();
    wait_for(&s.lab.client, "primary");
    let links = |s: &Setup| {
        let out = Command::new("ip")
            .args(["-n", &s.lab.gw.name, "-d", "link", "show"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut ids: Vec<String> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "prog/xdp")
            .map(|w| w[1].to_owned())
            .collect();
        ids.sort();
        ids
    };
    d.signal(libc::SIGTERM);
    let (programs, attached, maps) = (redirector_programs(), links(&s), pinned_contents(&s));
    assert!(!programs.is_empty() && !attached.is_empty());

    let missing = LAB_CONFIG
        .replacen(
            "interfaces = [\"g-c\", \"g-p\", \"g-s\"]",
            "interfaces = [\"g-c\", \"g-p\", \"g-s\", \"g-none\"]",
            1,
        )
        .replacen(
            "xdp_mode = \"driver\"\n",
            "xdp_mode = \"driver\"\nicmp_echo = \"pass\"\n",
            1,
        );
    s.write_config(&missing);
    let err = refused_start(&s, &s.config);
    assert!(err.contains("g-none"), "{err}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        redirector_programs(),
        programs,
        "a refused start left programs loaded (in PATHS?)"
    );
    assert_eq!(links(&s), attached);
    assert_eq!(pinned_contents(&s), maps, "a refused start wrote the pinned maps");
    assert_eq!(connect_from(&s.lab.client, 0, WEB4).as_deref(), Ok("primary"));
}

/// Fault injection: a crash loop. The daemon is SIGKILLed 50 times in a row
/// at random points — during its start (before, during, after the load and
/// the attach), right after a SIGHUP (mid-reload), right after a flip — and
/// restarted 200 ms later, as the documented unit does, under one UDP request
/// per ms and 50 TCP connections per second. Forwarding never stops: no
/// request is lost; every operator action that was acknowledged holds at the
/// end (a drain, an override, the last acknowledged flip).
#[test]
fn a_crash_loop_of_50_sigkills_loses_nothing_and_keeps_every_acknowledged_intent() {
    if !require_root("a_crash_loop_of_50_sigkills_loses_nothing_and_keeps_every_acknowledged_intent") {
        return;
    }
    let _serial = serial();
    let seed = std::env::var("REDIRECTOR_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 0x9e37_79b9 + 1);
    eprintln!("crash loop seed {seed} (REDIRECTOR_TEST_SEED replays it)");
    let mut rng = redirector_tests::packets::Rng(seed);
    let s = Setup::new("crashloop");
    let sock = s.left.socket.clone();
    let d = s.daemon();
    wait_for(&s.lab.client, "primary");
    cli_ok(&sock, &["drain", "dns6", "secondary", "--reason", "crash loop"]);
    cli_ok(&sock, &["flip", "web6", "secondary", "--reason", "crash loop"]);
    drop(d);
    let traffic = Traffic::start(&s.lab.client);
    let mut web4: Option<&str> = None;
    let mut kinds = [0u32; 4];
    for _ in 0..50 {
        let mut d = Daemon::spawn(&s.lab.gw, &s.config, Stdio::null());
        let kind = usize::try_from(rng.next_u64() % 4).unwrap();
        kinds[kind] += 1;
        let up = |d: &mut Daemon| d.wait_answering(&sock);
        match kind {
            // Anywhere in the start.
            0 => thread::sleep(Duration::from_millis(rng.next_u64() % 2500)),
            // Mid-reload.
            1 => {
                up(&mut d);
                // SAFETY: kill(2) of our own child.
                unsafe { libc::kill(i32::try_from(d.pid()).unwrap(), libc::SIGHUP) };
                thread::sleep(Duration::from_millis(rng.next_u64() % 20));
            }
            // Right after a flip (kept only if acknowledged).
            2 => {
                up(&mut d);
                let to = if rng.next_u64().is_multiple_of(2) {
                    "primary"
                } else {
                    "secondary"
                };
                if cli(&sock, &["flip", "web4", to]).status.success() {
                    web4 = Some(to);
                }
            }
            // While it runs.
            _ => {
                up(&mut d);
                thread::sleep(Duration::from_millis(rng.next_u64() % 500));
            }
        }
        d.signal(libc::SIGKILL);
        thread::sleep(Duration::from_millis(200));
    }
    let _d = s.daemon();
    thread::sleep(Duration::from_millis(500));
    let seen = traffic.stop();
    eprintln!(
        "crash loop: kills by kind (start, reload, flip, running) {kinds:?}; {} UDP requests, {} lost; {} TCP \
         connections, {} failed",
        seen.udp_sent,
        seen.udp_lost.len(),
        seen.tcp_made,
        seen.tcp_failed.len()
    );
    assert!(
        seen.udp_lost.is_empty(),
        "UDP requests lost: {:?}",
        &seen.udp_lost[..seen.udp_lost.len().min(20)]
    );
    assert!(
        seen.tcp_failed.is_empty(),
        "TCP connections failed: {:?}",
        seen.tcp_failed
    );
    let status = cli_ok(&sock, &["status"]);
    let block = |name: &str| {
        status
            .split("\n\n")
            .find(|b| b.starts_with(&format!("{name} ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(block("dns6").contains("DRAINED"), "{status}");
    assert!(block("web6").contains("pinned to the secondary"), "{status}");
    if let Some(to) = web4 {
        assert!(
            block("web4").contains(&format!("pinned to the {to}")),
            "last flip {to}: {status}"
        );
    }
}

/// The crash loop with the backends failing too: the primary's server is
/// killed every 2–4 s (restarted a second later) on its own schedule while
/// the daemon is SIGKILLed 30 times at random points. A request may be lost
/// only while a backend it was sent to is down and undetected: within the
/// detection bound after the kill, stretched by any daemon downtime that
/// overlaps it (the next daemon detects it). Flap damping off: the faults
/// repeat on purpose.
#[test]
fn a_crash_loop_with_backend_faults_loses_only_within_detection_and_downtime() {
    if !require_root("a_crash_loop_with_backend_faults_loses_only_within_detection_and_downtime") {
        return;
    }
    let _serial = serial();
    /// Detection of a killed server by a running daemon, with margin for a
    /// debug build on two busy vCPUs (the soak's bound).
    const DETECT: Duration = Duration::from_millis(500);
    let seed = std::env::var("REDIRECTOR_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 0x9e37_79b9 + 3);
    eprintln!("crash loop with backend faults, seed {seed} (REDIRECTOR_TEST_SEED replays it)");
    let mut rng = redirector_tests::packets::Rng(seed);
    let mut s = Setup::with_config(
        "crashfault",
        &lab_config_with("[service.failover]\nflap_hold = \"0s\""),
    );
    let sock = s.left.socket.clone();
    drop(s.daemon());
    wait_for(&s.lab.client, "primary");
    // The daemon's downtimes (SIGKILL → the next daemon answering).
    let mut daemon_down: Vec<(Instant, Option<Instant>)> = Vec::new();
    let traffic = Traffic::start(&s.lab.client);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let server_down = thread::scope(|scope| {
        let (primary, primary_ns) = (&mut s.primary, &s.lab.primary);
        let mut server_rng = redirector_tests::packets::Rng(seed ^ 0x5eed);
        let stop = &stop;
        // The primary server's faults on their own schedule: killed every
        // 2–4 s, restarted a second later; (killed, restarted).
        let faults = scope.spawn(move || {
            let mut down = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(2000 + server_rng.next_u64() % 2000));
                primary.kill();
                let at = Instant::now();
                thread::sleep(Duration::from_secs(1));
                *primary = Server::start(primary_ns, "primary", "198.18.2.2", "2001:2:0:2::2", false);
                down.push((at, Some(Instant::now())));
            }
            down
        });
        for _ in 0..30 {
            let mut d = Daemon::spawn(&s.lab.gw, &s.config, Stdio::null());
            let kind = rng.next_u64() % 3;
            if kind != 0 {
                d.wait_answering(&sock);
                if let Some((_, end @ None)) = daemon_down.last_mut() {
                    *end = Some(Instant::now());
                }
            }
            let ms = match kind {
                // Anywhere in the start.
                0 => rng.next_u64() % 2500,
                // Mid-reload.
                1 => {
                    // SAFETY: kill(2) of our own child.
                    unsafe { libc::kill(i32::try_from(d.pid()).unwrap(), libc::SIGHUP) };
                    rng.next_u64() % 20
                }
                // While it runs.
                _ => rng.next_u64() % 1500,
            };
            thread::sleep(Duration::from_millis(ms));
            d.signal(libc::SIGKILL);
            if !matches!(daemon_down.last(), Some((_, None))) {
                daemon_down.push((Instant::now(), None));
            }
            thread::sleep(Duration::from_millis(200));
        }
        let d = Daemon::start(&s.lab.gw, &s.config, &s.left.socket);
        if let Some((_, end @ None)) = daemon_down.last_mut() {
            *end = Some(Instant::now());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (faults.join().unwrap(), d)
    });
    let (server_down, _d): (Vec<(Instant, Option<Instant>)>, Daemon) = server_down;
    thread::sleep(Duration::from_millis(500));
    let seen = traffic.stop();
    let end = Instant::now();
    // Each server kill's window: until DETECT after it, stretched to DETECT
    // after the end of every daemon downtime that overlaps it.
    let windows: Vec<(Instant, Instant)> = server_down
        .iter()
        .map(|&(at, _)| {
            let mut until = at + DETECT;
            loop {
                let stretched = daemon_down
                    .iter()
                    .filter(|(a, b)| *a <= until && b.unwrap_or(end) >= at)
                    .map(|(_, b)| b.unwrap_or(end) + DETECT)
                    .fold(until, Instant::max);
                if stretched == until {
                    break (at, until);
                }
                until = stretched;
            }
        })
        .collect();
    let outside = |t: Instant, before: Duration| !windows.iter().any(|&(a, b)| t + before >= a && t <= b);
    let udp_outside: Vec<u64> = seen
        .udp_lost
        .iter()
        .zip(&seen.udp_lost_at)
        // A request in flight when the server dies is lost with it.
        .filter(|(_, t)| outside(**t, Duration::from_millis(10)))
        .map(|(n, _)| *n)
        .collect();
    // A connection begun just before a kill can meet it mid-exchange.
    let tcp_outside: Vec<&String> = seen
        .tcp_failed
        .iter()
        .zip(&seen.tcp_failed_at)
        .filter(|(_, t)| outside(**t, Duration::from_secs(1)))
        .map(|(e, _)| e)
        .collect();
    let down_ms: u128 = daemon_down
        .iter()
        .map(|(a, b)| b.unwrap_or(end).duration_since(*a).as_millis())
        .sum();
    eprintln!(
        "crash loop with backend faults: {} daemon kills ({down_ms} ms down in all), {} primary server kills; {} UDP \
         requests, {} lost ({} outside their windows); {} TCP connections, {} failed ({} outside)",
        daemon_down.len(),
        server_down.len(),
        seen.udp_sent,
        seen.udp_lost.len(),
        udp_outside.len(),
        seen.tcp_made,
        seen.tcp_failed.len(),
        tcp_outside.len()
    );
    if !udp_outside.is_empty() || !tcp_outside.is_empty() {
        // The timeline, to see where they fell.
        let t0 = server_down.first().map_or(end, |d| d.0);
        let ms = |t: Instant| t.saturating_duration_since(t0).as_millis();
        for (n, t) in seen.udp_lost.iter().zip(&seen.udp_lost_at) {
            eprintln!("  UDP {n} lost at {} ms", ms(*t));
        }
        for (what, list) in [("server", &server_down), ("daemon", &daemon_down)] {
            for (a, b) in list {
                eprintln!("  {what} down {}..{} ms", ms(*a), b.map_or(0, ms));
            }
        }
    }
    assert!(server_down.len() >= 5, "too few server faults to mean anything");
    assert!(
        udp_outside.is_empty(),
        "UDP requests lost outside a server fault's detection and daemon downtime: {:?}",
        &udp_outside[..udp_outside.len().min(20)]
    );
    assert!(
        tcp_outside.is_empty(),
        "TCP connections failed outside a server fault's window: {tcp_outside:?}"
    );
    // And it ends where it should: the primary back, active, everything up.
    wait_for(&s.lab.client, "primary");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all_up(&status_json(&sock)) {
        assert!(Instant::now() < deadline, "not every backend came back up");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The reload storm's second config: the lab's services in reverse order,
/// `extra0` gone, `extra1` new, web6's secondary on another port (restarted).
fn storm_b() -> String {
    let blocks: Vec<&str> = LAB_CONFIG.split("[[service]]").collect();
    let mut text = blocks[0].to_owned();
    for b in blocks[1..].iter().rev() {
        text.push_str("[[service]]");
        text.push_str(b);
    }
    text = text.replacen(
        "secondary = \"[2001:2:0:3::2]:8080\"",
        "secondary = \"[2001:2:0:3::2]:80\"",
        1,
    );
    text.push_str(&extra_service(1));
    text
}

/// Fault injection: a reload storm. 100 reloads as fast as they go (at
/// most 30 s), alternating two configs (services added, removed, reordered,
/// one backend changed), under one UDP request per ms and 50 TCP
/// connections per second through services neither config changes: nothing
/// lost; the running config is the file's; probe rate, open fds and
/// published services are back where they were with the same file.
#[test]
fn a_reload_storm_loses_nothing_and_leaks_nothing() {
    if !require_root("a_reload_storm_loses_nothing_and_leaks_nothing") {
        return;
    }
    let _serial = serial();
    let a = format!("{LAB_CONFIG}{}", extra_service(0));
    let s = Setup::with_config("storm", &a);
    let sock = s.left.socket.clone();
    let d = s.daemon();
    wait_for(&s.lab.client, "primary");
    thread::sleep(Duration::from_millis(500));
    // Probes in flight and scrapes hold a few fds at any moment: the least
    // of several looks. A leak per reload would show as dozens.
    let fds = |pid: u32| {
        (0..10)
            .map(|_| {
                thread::sleep(Duration::from_millis(30));
                std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
            })
            .min()
            .unwrap()
    };
    let (fds_before, rate_before, keys_before) = (
        fds(d.pid()),
        metric(&scrape(&s), "redirector_probe_rate"),
        published_keys(&s).len(),
    );
    let traffic = Traffic::start(&s.lab.client);
    let b = storm_b();
    let started = Instant::now();
    let mut reloads = 0;
    while reloads < 100 && started.elapsed() < Duration::from_secs(30) {
        s.write_config(if reloads % 2 == 0 { &b } else { &a });
        cli_ok(&sock, &["reload"]);
        reloads += 1;
    }
    let took = started.elapsed();
    thread::sleep(Duration::from_millis(300));
    let seen = traffic.stop();
    eprintln!(
        "reload storm: {reloads} reloads in {:.1} s; {} UDP requests, {} lost; {} TCP connections, {} failed",
        took.as_secs_f64(),
        seen.udp_sent,
        seen.udp_lost.len(),
        seen.tcp_made,
        seen.tcp_failed.len()
    );
    assert_eq!(reloads, 100, "only {reloads} reloads in 30 s");
    assert!(
        seen.udp_lost.is_empty(),
        "UDP requests lost: {:?}",
        &seen.udp_lost[..seen.udp_lost.len().min(20)]
    );
    assert!(
        seen.tcp_failed.is_empty(),
        "TCP connections failed: {:?}",
        seen.tcp_failed
    );
    // The last reload applied `a` (an even count): the running config is it.
    let mut running: Vec<String> = status_json(&sock)["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_owned())
        .collect();
    running.sort();
    let mut want: Vec<String> = redirector::config::Config::from_str_named(&a, "a.toml")
        .unwrap()
        .services
        .iter()
        .map(|x| x.name.clone())
        .collect();
    want.sort();
    assert_eq!(running, want);
    assert!(cli_ok(&sock, &["status"]).contains("[2001:2:0:3::2]:8080"));
    // Nothing leaked: the scheduler's probes, fds, published keys.
    thread::sleep(Duration::from_millis(500));
    let rate_after = metric(&scrape(&s), "redirector_probe_rate");
    assert!(
        (rate_after - rate_before).abs() <= rate_before * 0.05,
        "probe rate {rate_before} → {rate_after} /s"
    );
    let fds_after = fds(d.pid());
    assert!(
        fds_after <= fds_before + 4,
        "fds {fds_before} → {fds_after} after {reloads} reloads"
    );
    assert_eq!(published_keys(&s).len(), keys_before);
}

/// The ground moves: the state directory full, then read-only. The daemon
/// keeps deciding and forwarding; an operator's action takes effect and is
/// answered with an error saying it is not saved; once the directory is
/// writable again, the next save holds everything.
#[test]
fn a_full_or_read_only_state_dir_is_reported_and_nothing_else_fails() {
    if !require_root("a_full_or_read_only_state_dir_is_reported_and_nothing_else_fails") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("statefull");
    let sock = s.left.socket.clone();
    // A tiny tmpfs of its own as the state directory.
    std::fs::create_dir_all(&s.left.state_dir).unwrap();
    let dir = s.left.state_dir.to_str().unwrap().to_owned();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "rdrstate", &dir])
            .status()
            .unwrap()
            .success()
    );
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());
    let _d = s.daemon();
    wait_for(&s.lab.client, "primary");
    // Full.
    let filler = s.left.state_dir.join("filler");
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=4k",
            "count=64",
        ])
        .stderr(Stdio::null())
        .status();
    let out = cli(&sock, &["flip", "web4", "secondary"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("in effect now, but saving the state file failed"),
        "{err}"
    );
    wait_for(&s.lab.client, "secondary");
    let left: Vec<String> = std::fs::read_dir(&s.left.state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| !n.ends_with(".tmp")),
        "temporary files left: {left:?}"
    );
    std::fs::remove_file(&filler).unwrap();
    // Read-only.
    assert!(
        Command::new("mount")
            .args(["-o", "remount,ro", &dir])
            .status()
            .unwrap()
            .success()
    );
    let out = cli(&sock, &["auto", "web4"]);
    assert!(
        !out.status.success(),
        "a save on a read-only state dir reported success"
    );
    wait_for(&s.lab.client, "primary");
    assert!(cli(&sock, &["status"]).status.success());
    // Writable again: the next save holds the current intent.
    assert!(
        Command::new("mount")
            .args(["-o", "remount,rw", &dir])
            .status()
            .unwrap()
            .success()
    );
    cli_ok(&sock, &["drain", "dns4", "secondary"]);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.left.state_dir.join("state.json")).unwrap()).unwrap();
    assert!(state["intents"]["dns4"].is_object(), "{state}");
    assert!(
        state["intents"]["web4"].is_null(),
        "the override ended while unsaved must not come back: {state}"
    );
}

/// The ground moves: the primary flaps every 20 ms for 10 s (its web and
/// DNS ports reject, then answer, by a pre-started `nft -i`). Flap damping
/// holds it down: one failover per service, no failback while it flaps,
/// and the hold is in the transition log.
#[test]
fn a_backend_flapping_every_20_ms_is_held_down_not_followed() {
    if !require_root("a_backend_flapping_every_20_ms_is_held_down_not_followed") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("flap20");
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    wait_for(&s.lab.client, "primary");
    let before = cli_ok(&sock, &["events"]).lines().count();
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &s.lab.primary.name, "nft", "-i"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = nft.stdin.take().unwrap();
    input
        .write_all(b"add table inet flap\nadd chain inet flap in { type filter hook input priority 0; }\n")
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let mut flaps = 0;
    while Instant::now() < until {
        input
            .write_all(
                b"add rule inet flap in ip daddr 198.18.2.2 tcp dport 8080 reject with tcp reset\n\
                  add rule inet flap in ip daddr 198.18.2.2 udp dport 53 reject\n",
            )
            .unwrap();
        thread::sleep(Duration::from_millis(20));
        input.write_all(b"flush chain inet flap in\n").unwrap();
        thread::sleep(Duration::from_millis(20));
        flaps += 1;
    }
    input.write_all(b"delete table inet flap\n").unwrap();
    drop(input);
    let _ = nft.wait();
    let events = cli_ok(&sock, &["events"]);
    let new: Vec<&str> = events.lines().skip(before).collect();
    eprintln!("{flaps} flaps; transitions:\n{}", new.join("\n"));
    for svc in ["web4", "dns4"] {
        let failovers = new
            .iter()
            .filter(|l| l.contains(&format!("{svc}: primary → secondary")))
            .count();
        let failbacks = new
            .iter()
            .filter(|l| l.contains(&format!("{svc}: secondary → primary")))
            .count();
        assert!(
            failovers <= 1 && failbacks == 0,
            "{svc}: {failovers} failovers, {failbacks} failbacks"
        );
        assert!(
            new.iter()
                .any(|l| l.contains(&format!("{svc}:")) && l.contains("held down")),
            "{svc}: flap damping never held the primary"
        );
    }
    assert_eq!(connect_from(&s.lab.client, 0, WEB4).as_deref(), Ok("secondary"));
}

/// The ground moves: the daemon at nice 19 beside two CPU hogs at nice -20
/// for 10 s. Starved of CPU, its probes give no verdict rather than false
/// ones: no transition; afterwards it decides again.
#[test]
fn a_starved_daemon_invents_no_failures() {
    if !require_root("a_starved_daemon_invents_no_failures") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("starved");
    let sock = s.left.socket.clone();
    let d = s.daemon();
    wait_for(&s.lab.client, "primary");
    let before = cli_ok(&sock, &["events"]).lines().count();
    assert!(
        Command::new("renice")
            .args(["-n", "19", "-p", &d.pid().to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    // Every thread of the daemon (the prober's too).
    for t in std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .flatten()
    {
        let _ = Command::new("renice")
            .args(["-n", "19", "-p", &t.file_name().to_string_lossy()])
            .stdout(Stdio::null())
            .status();
    }
    let hogs: Vec<std::process::Child> = (0..2)
        .map(|_| {
            Command::new("nice")
                .args(["-n", "-20", "timeout", "10", "sh", "-c", "while :; do :; done"])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut h in hogs {
        let _ = h.wait();
    }
    thread::sleep(Duration::from_millis(500));
    let events = cli_ok(&sock, &["events"]);
    let new: Vec<&str> = events.lines().skip(before).collect();
    assert!(new.is_empty(), "transitions while starved:\n{}", new.join("\n"));
    // It still decides: the primary's server killed → failover.
    let mut s = s;
    s.primary.kill();
    wait_for(&s.lab.client, "secondary");
}

/// The ground moves: pins removed under a running daemon (two maps and an
/// XDP link) are pinned again from the daemon's own handles within a
/// second, so the data plane still outlives it and the next start adopts
/// the same maps and link. Forwarding never stops: no request lost.
#[test]
fn pins_removed_under_a_running_daemon_are_pinned_again() {
    if !require_root("pins_removed_under_a_running_daemon_are_pinned_again") {
        return;
    }
    let _serial = serial();
    use aya::maps::MapData;
    let s = Setup::new("unpinned");
    let log_file = s.log();
    let mut d = s.daemon_logged(&log_file);
    wait_for(&s.lab.client, "primary");
    let pins = redirector::datapath::PinDir::new(&s.left.bpffs_dir);
    let id_of = |name: &str| MapData::from_pin(pins.map(name)).unwrap().info().unwrap().id();
    let (flows, switch) = (id_of("FLOWS"), id_of("SWITCH"));
    let traffic = Traffic::start(&s.lab.client);
    for name in ["FLOWS", "SWITCH"] {
        std::fs::remove_file(pins.map(name)).unwrap();
    }
    std::fs::remove_file(pins.link("g-c")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(pins.map("FLOWS").exists() && pins.map("SWITCH").exists() && pins.link("g-c").exists()) {
        assert!(Instant::now() < deadline, "the pins were not restored");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (id_of("FLOWS"), id_of("SWITCH")),
        (flows, switch),
        "pinned again: the same maps"
    );
    let log = log_file.read();
    assert!(
        log.contains("the pin of the XDP link on g-c was removed under the running daemon: pinned again"),
        "{log}"
    );
    // A restart adopts the same maps and swaps the program into the link.
    d.signal(libc::SIGTERM);
    let _d = s.daemon();
    assert_eq!(
        (id_of("FLOWS"), id_of("SWITCH")),
        (flows, switch),
        "the restart adopted the maps"
    );
    assert!(xdp_attached(&s.lab.gw, "g-c"));
    thread::sleep(Duration::from_millis(300));
    let seen = traffic.stop();
    eprintln!(
        "pins removed and pinned again: {} UDP requests, {} lost; {} TCP connections, {} failed",
        seen.udp_sent,
        seen.udp_lost.len(),
        seen.tcp_made,
        seen.tcp_failed.len()
    );
    assert!(
        seen.udp_lost.is_empty(),
        "UDP requests lost: {}",
        seen.udp_lost.len()
    );
    assert!(seen.tcp_failed.is_empty(), "{:?}", seen.tcp_failed);
}

/// The ground moves: a configured interface renamed, then one deleted and
/// re-created under its name. Renamed: the daemon goes on (the program
/// follows the interface) and says a restart needs the new name. Re-created:
/// the daemon exits for its supervisor, whose restart attaches to the new
/// interface. Traffic through the other interfaces never stops.
#[test]
fn interfaces_renamed_or_recreated_are_reported_or_reattached() {
    if !require_root("interfaces_renamed_or_recreated_are_reported_or_reattached") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("ifmove");
    let log_file = s.log();
    let mut d = s.daemon_logged(&log_file);
    wait_for(&s.lab.client, "primary");
    let traffic = Traffic::start(&s.lab.client);
    let gw = s.lab.gw.name.clone();
    let ip = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(["-n", &gw])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args:?}");
    };
    // Renamed (and back, so the lab stays as it was).
    ip(&["link", "set", "g-s", "down"]);
    ip(&["link", "set", "g-s", "name", "g-s9"]);
    ip(&["link", "set", "g-s9", "up"]);
    thread::sleep(Duration::from_millis(500));
    assert!(d.0.try_wait().unwrap().is_none(), "the daemon exited on a rename");
    let log = log_file.read();
    assert!(log.contains("interface g-s was renamed to g-s9"), "{log}");
    ip(&["link", "set", "g-s9", "down"]);
    ip(&["link", "set", "g-s9", "name", "g-s"]);
    ip(&["link", "set", "g-s", "up"]);
    // Deleted and re-created under the same name (a new ifindex).
    ip(&["link", "del", "g-s"]);
    let sec = s.lab.secondary.name.clone();
    ip(&[
        "link",
        "add",
        "g-s",
        "address",
        "02:00:00:00:03:01",
        "type",
        "veth",
        "peer",
        "name",
        "s0",
        "netns",
        &sec,
        "address",
        "02:00:00:00:03:02",
    ]);
    ip(&["addr", "add", "198.18.3.1/24", "dev", "g-s"]);
    ip(&["addr", "add", "2001:2:0:3::1/64", "dev", "g-s", "nodad"]);
    ip(&["link", "set", "g-s", "up"]);
    for args in [
        vec!["addr", "add", "198.18.3.2/24", "dev", "s0"],
        vec!["addr", "add", "2001:2:0:3::2/64", "dev", "s0", "nodad"],
        vec!["link", "set", "s0", "up"],
    ] {
        assert!(
            Command::new("ip")
                .args(["-n", &sec])
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = d.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon went on without the re-created g-s"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = log_file.read();
    assert!(log.contains("interface g-s was re-created"), "{log}");
    // The supervisor's restart attaches to the new g-s.
    let _d = s.daemon();
    assert!(
        xdp_attached(&s.lab.gw, "g-s"),
        "the restart did not attach to the re-created g-s"
    );
    let seen = traffic.stop();
    eprintln!(
        "interfaces moved: {} UDP requests, {} lost; {} TCP connections, {} failed",
        seen.udp_sent,
        seen.udp_lost.len(),
        seen.tcp_made,
        seen.tcp_failed.len()
    );
    assert!(seen.udp_lost.is_empty() && seen.tcp_failed.is_empty());
}

/// Fault 8, the guard: when most backends fail at the same moment, the
/// gateway is suspected, not the backends. A local firewall drops every
/// packet the gateway itself sends to both backends: TCP probes time out
/// (a dropped SYN looks like a silent backend), UDP and ICMP probes get
/// EPERM. No transition; the suspicion is in status and counted.
#[test]
fn when_most_backends_fail_at_once_the_gateway_is_suspected() {
    if !require_root("when_most_backends_fail_at_once_the_gateway_is_suspected") {
        return;
    }
    let _serial = serial();
    let s = Setup::new("suspect");
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !all_up(&status_json(&sock)) {
        assert!(Instant::now() < deadline, "not every backend came up");
        thread::sleep(Duration::from_millis(50));
    }
    let before = cli_ok(&sock, &["events"]).lines().count();
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &s.lab.gw.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    nft.stdin
        .take()
        .unwrap()
        .write_all(
            b"table inet rdrsuspect {\n chain out {\n  type filter hook output priority 0;\n  \
              ip daddr { 198.18.2.2, 198.18.3.2 } drop\n  ip6 daddr { 2001:2:0:2::2, 2001:2:0:3::2 } drop\n }\n}\n",
        )
        .unwrap();
    assert!(nft.wait().unwrap().success());
    thread::sleep(Duration::from_millis(1500));
    let text = cli_ok(&sock, &["status"]);
    let events = cli_ok(&sock, &["events"]);
    let new: Vec<&str> = events.lines().skip(before).collect();
    assert!(
        new.is_empty(),
        "transitions although the gateway's own packets were dropped:\n{}",
        new.join("\n")
    );
    assert!(text.contains("suspecting this gateway"), "{text}");
    assert!(metric(&scrape(&s), "redirector_gateway_suspect_total") > 0.0);
    // Traffic itself was never concerned (XDP forwards before the firewall).
    assert_eq!(connect_from(&s.lab.client, 0, WEB4).as_deref(), Ok("primary"));
    let ok = Command::new("ip")
        .args([
            "netns",
            "exec",
            &s.lab.gw.name,
            "nft",
            "delete",
            "table",
            "inet",
            "rdrsuspect",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

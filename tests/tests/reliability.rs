//! Issue 10: the redirector's own failure modes, each with the test that
//! fails when its fix is reverted (`docs/reliability.md` lists them). Real
//! daemon processes, real traffic, in the lab's namespaces.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    daemon::{Setup, binary, cli_ok, xdp_attached},
    lab::{LAB_CONFIG, Server, lab_config_with},
    netns::NetNs,
    require_root,
};

const WEB4: &str = "198.18.100.1:80";

/// One TCP connection from the client's `port` (0: any) to `to`, its source
/// port reusable at once (as behind a busy NAT); returns who answered.
fn connect_from(client: &NetNs, port: u16, to: &str) -> Result<String, String> {
    let name = client.name.clone();
    let to: SocketAddr = to.parse().unwrap();
    thread::spawn(move || {
        let _in = redirector_tests::netns::enter(&name);
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_reuse_address(true).unwrap();
        let from: SocketAddr = format!("198.18.1.2:{port}").parse().unwrap();
        sock.bind(&from.into()).map_err(|e| format!("bind {from}: {e}"))?;
        sock.connect_timeout(&to.into(), Duration::from_secs(2))
            .map_err(|e| format!("connect from {from}: {e}"))?;
        let mut c: std::net::TcpStream = sock.into();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(b"hello").map_err(|e| e.to_string())?;
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| e.to_string())?;
        Ok(s)
    })
    .join()
    .unwrap()
}

/// Waits until new connections (fresh ports) reach `who`.
fn wait_for(client: &NetNs, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if connect_from(client, 0, WEB4).as_deref() == Ok(who) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("new connections never reached the {who}");
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

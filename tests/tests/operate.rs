//! The real `redirector` binary as an operator runs it, in the lab: the
//! daemon as its own process (only its network namespace switched, so its
//! bpffs pins are the host's), the CLI over the control socket. The data
//! plane outlives the daemon (SIGKILL, SIGTERM), a restart adopts it without
//! losing a request (also while failed over and drained), manual actions go
//! through the CLI with who and why, and only `detach` removes it.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    collections::HashSet,
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    daemon::{Daemon, Setup, binary, cli, cli_ok, xdp_attached},
    lab::Server,
    netns::NetNs,
    require_root,
};

/// One UDP flow, one `seq:N` per ms, in the client namespace until stopped;
/// returns (sent, answered seqs, answers by server name).
fn traffic(
    client: &NetNs,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(u64, HashSet<u64>, std::collections::BTreeMap<String, u64>)> {
    let name = client.name.clone();
    thread::spawn(move || {
        let _in = redirector_tests::netns::enter(&name);
        let vip: SocketAddr = "198.18.100.1:53".parse().unwrap();
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let (mut sent, mut seen, mut by) = (0u64, HashSet::new(), std::collections::BTreeMap::new());
        let mut buf = [0u8; 128];
        let limit = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
            sent += 1;
            sock.send_to(format!("seq:{sent}").as_bytes(), vip).unwrap();
            thread::sleep(Duration::from_millis(1));
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                note(&buf[..n], &mut seen, &mut by);
            }
        }
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            note(&buf[..n], &mut seen, &mut by);
        }
        (sent, seen, by)
    })
}

/// Records an answer `NAME seq:N`.
fn note(answer: &[u8], seen: &mut HashSet<u64>, by: &mut std::collections::BTreeMap<String, u64>) {
    let s = String::from_utf8_lossy(answer);
    if let Some((who, seq)) = s.split_once(" seq:") {
        seen.insert(seq.parse().unwrap());
        *by.entry(who.to_owned()).or_default() += 1;
    }
}

/// Runs `during` while one UDP flow sends a request per ms; asserts none
/// was lost and returns who answered how many.
fn no_request_lost(client: &NetNs, during: impl FnOnce()) -> std::collections::BTreeMap<String, u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let t = traffic(client, stop.clone());
    thread::sleep(Duration::from_millis(200));
    during();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (sent, seen, by) = t.join().unwrap();
    let lost: Vec<u64> = (1..=sent).filter(|s| !seen.contains(s)).collect();
    assert!(
        lost.is_empty(),
        "{} of {sent} requests lost: {:?}…",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    by
}

fn setup(tag: &str) -> Setup {
    Setup::new(tag)
}

#[test]
fn data_plane_outlives_the_daemon_and_restarts_lose_nothing() {
    if !require_root("data_plane_outlives_the_daemon_and_restarts_lose_nothing") {
        return;
    }
    let mut s = setup("op");
    let sock = s.left.socket.clone();
    let mut d = Daemon::start(&s.lab.gw, &s.config, &sock);

    // SIGKILL: traffic keeps flowing on the last decision; status says so.
    let by = no_request_lost(&s.lab.client, || {
        d.signal(libc::SIGKILL);
        thread::sleep(Duration::from_millis(200));
        let st = cli_ok(&sock, &["--config", s.config.to_str().unwrap(), "status"]);
        assert!(st.contains("NOT running"), "{st}");
        assert!(st.contains("dns4") && st.contains("active primary"), "{st}");
        // Restart: adopts the pinned data plane, no gap.
        d = Daemon::start(&s.lab.gw, &s.config, &sock);
    });
    assert_eq!(by.keys().collect::<Vec<_>>(), vec!["primary"], "{by:?}");

    // Failed over and drained, then restarted: nothing moves, nothing is lost.
    s.primary.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cli_ok(&sock, &["status"]).contains("dns4 (id 1) 198.18.100.1:53/udp nat: active secondary")
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(20));
    }
    let out = cli_ok(&sock, &["drain", "dns4", "primary", "--reason", "disk swap"]);
    assert!(out.contains("drained"), "{out}");
    let by = no_request_lost(&s.lab.client, || {
        d.signal(libc::SIGTERM);
        assert!(
            xdp_attached(&s.lab.gw, "g-c"),
            "SIGTERM leaves the data plane attached"
        );
        d = Daemon::start(&s.lab.gw, &s.config, &sock);
    });
    assert_eq!(by.keys().collect::<Vec<_>>(), vec!["secondary"], "{by:?}");
    let st = cli_ok(&sock, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    let dns4 = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "dns4")
        .unwrap();
    assert_eq!(dns4["active"], "secondary", "{dns4}");
    assert_eq!(
        dns4["backends"][0]["drained"], true,
        "the drain survived the restart: {dns4}"
    );

    // Only detach removes it.
    let out = cli_ok(&sock, &["detach"]);
    assert!(out.contains("detached"), "{out}");
    let _ = d.0.wait();
    assert!(!xdp_attached(&s.lab.gw, "g-c"), "detach removes the program");
    let pins = s
        .left
        .bpffs_dir
        .join(format!("v{}", redirector_common::ABI_VERSION));
    assert!(!pins.exists(), "and the pins ({})", pins.display());
    let _ = std::fs::remove_file(&s.config);
}

#[test]
fn operator_flip_auto_and_refusals_through_the_cli() {
    if !require_root("operator_flip_auto_and_refusals_through_the_cli") {
        return;
    }
    let s = setup("cli");
    let sock = s.left.socket.clone();
    let mut d = Daemon::start(&s.lab.gw, &s.config, &sock);
    let out = cli_ok(
        &sock,
        &["flip", "dns4", "secondary", "--for", "1s", "--reason", "patching"],
    );
    assert!(out.contains("dns4: pinned to the secondary for"), "{out}");
    let st = cli_ok(&sock, &["status"]);
    assert!(st.contains("override: pinned to the secondary by root"), "{st}");
    let ev = cli_ok(&sock, &["events"]);
    assert!(
        ev.contains("dns4: primary → secondary") && ev.contains("root") && ev.contains("patching"),
        "{ev}"
    );
    // Prometheus sees it too (the endpoint lives in the gateway's namespace).
    let text = {
        let _in = s.lab.gw.enter();
        let mut c = std::net::TcpStream::connect("198.18.1.1:9630").unwrap();
        std::io::Write::write_all(&mut c, b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut c, &mut body).unwrap();
        body
    };
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for line in [
        "redirector_active_backend{service=\"dns4\",backend=\"secondary\"} 1",
        "redirector_override{service=\"dns4\"} 1",
        "redirector_transitions_total{service=\"dns4\",cause=\"manual_flip\"} 1",
        "redirector_backend_up{service=\"dns4\",backend=\"primary\",address=\"198.18.2.2\"} 1",
        "redirector_probe_budget 5000",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    for family in [
        "redirector_probes_total{",
        "redirector_probe_duration_seconds_bucket{",
        "redirector_datapath_packets_total{reason=\"passed\"}",
        "redirector_backend_packets_total{",
    ] {
        assert!(text.contains(family), "missing {family} in:\n{text}");
    }
    // `events --follow`: the backlog, then live transitions.
    let follower = Command::new(binary())
        .arg("--socket")
        .arg(&sock)
        .args(["events", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let _ = cli_ok(&sock, &["auto", "dns4", "--reason", "done"]);
    thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(i32::try_from(follower.id()).unwrap(), libc::SIGTERM) };
    let followed = String::from_utf8_lossy(&follower.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        followed.contains("dns4: primary → secondary"),
        "backlog: {followed}"
    );
    assert!(followed.contains("automatic control by root"), "live: {followed}");
    let _ = cli_ok(
        &sock,
        &["flip", "dns4", "secondary", "--for", "1s", "--reason", "patching"],
    );
    // The override expires by itself.
    thread::sleep(Duration::from_millis(1500));
    let st = cli_ok(&sock, &["status"]);
    assert!(
        st.contains("dns4 (id 1) 198.18.100.1:53/udp nat: active primary"),
        "{st}"
    );
    // Clear errors, non-zero exits.
    for (args, want) in [
        (vec!["flip", "nosuch", "secondary"], "unknown service \"nosuch\""),
        (vec!["auto", "nosuch"], "unknown service"),
    ] {
        let out = cli(&sock, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = cli(Path::new("/nonexistent/redirector.sock"), &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    // Not root: refused by the socket's mode.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary())
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    // Restarted with an interface removed from the file: the adopted data
    // plane leaves that interface, keeps the others.
    d.signal(libc::SIGTERM);
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace("\"g-c\", \"g-p\", \"g-s\"", "\"g-c\", \"g-p\"")
            .replace("\"g-p\", \"g-s\"", "\"g-p\""),
    )
    .unwrap();
    assert!(xdp_attached(&s.lab.gw, "g-s"));
    let _d2 = Daemon::start(&s.lab.gw, &s.config, &sock);
    assert!(
        !xdp_attached(&s.lab.gw, "g-s"),
        "detached from the interface no longer configured"
    );
    assert!(xdp_attached(&s.lab.gw, "g-c") && xdp_attached(&s.lab.gw, "g-p"));
    let _ = cli_ok(&sock, &["detach"]);
    let _ = std::fs::remove_file(&s.config);
}

fn events_of(sock: &Path, service: &str) -> Vec<String> {
    cli_ok(sock, &["events"])
        .lines()
        .filter(|l| l.contains(&format!(" {service}: ")))
        .map(str::to_owned)
        .collect()
}

fn nft(ns: &NetNs, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft: {script}");
}

#[test]
fn one_forged_reset_or_icmp_error_does_not_fail_a_healthy_backend_over() {
    if !require_root("one_forged_reset_or_icmp_error_does_not_fail_a_healthy_backend_over") {
        return;
    }
    let s = setup("forge");
    let sock = s.left.socket.clone();
    let _d = Daemon::start(&s.lab.gw, &s.config, &sock);
    thread::sleep(Duration::from_millis(300));
    // In the primary's namespace, answer exactly one health probe from the
    // gateway with a RST (TCP, web4) and one with an ICMP port unreachable
    // (UDP, dns4): what a forged packet carrying the backend's address does.
    nft(
        &s.lab.primary,
        "table inet forge {\n chain in {\n  type filter hook input priority 0;\n  \
         ip saddr 198.18.2.1 tcp dport 8080 limit rate 1/hour burst 1 packets counter reject with tcp reset\n  \
         ip saddr 198.18.2.1 udp dport 53 limit rate 1/hour burst 1 packets counter reject\n }\n}\n",
    );
    thread::sleep(Duration::from_millis(500));
    let listed = Command::new("ip")
        .args([
            "netns",
            "exec",
            &s.lab.primary.name,
            "nft",
            "list",
            "table",
            "inet",
            "forge",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        listed.matches("counter packets 1 ").count(),
        2,
        "each rule answered exactly one probe: {listed}"
    );
    for service in ["web4", "dns4"] {
        let ev = events_of(&sock, service);
        assert!(
            ev.iter().all(|l| !l.contains("primary → secondary")),
            "{service} failed over on one refused probe: {ev:?}"
        );
    }
    let st = cli_ok(&sock, &["status"]);
    assert!(
        st.contains("web4 (id 0) 198.18.100.1:80/tcp nat: active primary"),
        "{st}"
    );
    assert!(
        st.contains("dns4 (id 1) 198.18.100.1:53/udp nat: active primary"),
        "{st}"
    );
    let _ = cli_ok(&sock, &["detach"]);
    let _ = std::fs::remove_file(&s.config);
}

#[test]
fn flip_to_a_down_backend_is_refused_unless_forced() {
    if !require_root("flip_to_a_down_backend_is_refused_unless_forced") {
        return;
    }
    let mut s = setup("force");
    let sock = s.left.socket.clone();
    let _d = Daemon::start(&s.lab.gw, &s.config, &sock);
    s.secondary.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cli_ok(&sock, &["status"]).contains("secondary 198.18.3.2 ") || {
        let st = cli_ok(&sock, &["status"]);
        !st.lines()
            .any(|l| l.contains("secondary 198.18.3.2 ") && l.contains(" down"))
    } {
        assert!(Instant::now() < deadline, "the secondary is not seen down");
        thread::sleep(Duration::from_millis(20));
    }
    let out = cli(&sock, &["flip", "dns4", "secondary"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secondary is down") && err.contains("--force"),
        "{err}"
    );
    let out = cli_ok(
        &sock,
        &["flip", "dns4", "secondary", "--force", "--reason", "test"],
    );
    assert!(out.contains("pinned to the secondary"), "{out}");
    assert!(cli_ok(&sock, &["status"]).contains("forced"));
    let _ = cli_ok(&sock, &["detach"]);
    let _ = std::fs::remove_file(&s.config);
}

/// The lab configuration's service blocks, in reverse order.
fn reversed(config: &str) -> String {
    let mut parts: Vec<&str> = config.split("[[service]]").collect();
    let head = parts.remove(0);
    parts.reverse();
    let mut out = head.to_owned();
    for p in parts {
        out.push_str("[[service]]");
        out.push_str(p);
        out.push('\n');
    }
    out
}

#[test]
fn reload_applies_by_name_and_refuses_a_bad_file() {
    if !require_root("reload_applies_by_name_and_refuses_a_bad_file") {
        return;
    }
    let mut s = setup("rld");
    let sock = s.left.socket.clone();
    let mut d = Daemon::start(&s.lab.gw, &s.config, &sock);
    let vip: SocketAddr = "198.18.100.1:53".parse().unwrap();
    // A flow pinned to the secondary: the primary dies, the flow moves, the
    // primary comes back; the flow stays on the secondary (its flow entry).
    s.primary.kill();
    let pinned = {
        let _c = s.lab.client.enter();
        let f = UdpSocket::bind("0.0.0.0:0").unwrap();
        f.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 64];
        loop {
            assert!(Instant::now() < deadline, "no failover");
            f.send_to(b"hello", vip).unwrap();
            if let Ok((n, _)) = f.recv_from(&mut buf)
                && buf[..n].starts_with(b"secondary")
            {
                break f;
            }
        }
    };
    s.primary = Server::start(&s.lab.primary, "primary", "198.18.2.2", "2001:2:0:2::2", false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cli_ok(&sock, &["status"]).contains("dns4 (id 1) 198.18.100.1:53/udp nat: active primary") {
        assert!(Instant::now() < deadline, "no failback");
        thread::sleep(Duration::from_millis(20));
    }
    let before = cli_ok(&sock, &["status", "--json"]);

    // Reordered, dsr-dns6 removed, a service added, web6's policy changed.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let (services, control) = text.split_at(text.find("[control]").unwrap());
    let mut new = reversed(services);
    let cut = new.find("[[service]]\nname = \"dsr-dns6\"").unwrap();
    let end = new[cut + 1..]
        .find("[[service]]")
        .map_or(new.len(), |e| cut + 1 + e);
    new.replace_range(cut..end, "");
    new = new.replace(
        "name = \"web6\"\n",
        "name = \"web6\"\n[service.failover]\nfailback_delay = \"2s\"\n",
    );
    // (keys after a sub-table belong to it: move web6's sub-table to its end)
    new = fix_subtable(&new, "web6");
    new.push_str(
        "[[service]]\nname = \"extra\"\nvip = \"198.18.100.3\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n\
         primary = \"198.18.2.2\"\nsecondary = \"198.18.3.2\"\n\n",
    );
    new.push_str(control);
    std::fs::write(&s.config, &new).unwrap();
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(i32::try_from(d.0.id()).unwrap(), libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cli_ok(&sock, &["status"]).contains("extra (id") {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        thread::sleep(Duration::from_millis(20));
    }
    let st = cli_ok(&sock, &["status"]);
    assert!(!st.contains("dsr-dns6"), "removed: {st}");
    let after = cli_ok(&sock, &["status", "--json"]);
    let (b, a): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&before).unwrap(),
        serde_json::from_str(&after).unwrap(),
    );
    let find = |v: &serde_json::Value, n: &str| {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .cloned()
            .unwrap()
    };
    for name in ["dns4", "web4", "web6"] {
        let (x, y) = (find(&b, name), find(&a, name));
        assert_eq!(x["id"], y["id"], "{name}: same id after a reorder");
        // Health state kept: the backend has been up at least as long as before.
        assert!(
            y["backends"][1]["since_s"].as_f64().unwrap() >= x["backends"][1]["since_s"].as_f64().unwrap(),
            "{name}: health state reset by the reload"
        );
    }
    // The pinned flow is still on the secondary.
    {
        let _c = s.lab.client.enter();
        let mut buf = [0u8; 64];
        pinned.send_to(b"hello", vip).unwrap();
        let (n, _) = pinned.recv_from(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"secondary"), "the pinned flow moved");
    }
    // A deny list for the client's network: its datagrams are refused in XDP
    // (the pinned flow too); taking the list out lets them through again.
    let ask = |sock_: &UdpSocket| {
        let _c = s.lab.client.enter();
        let mut buf = [0u8; 64];
        sock_.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        (0..3).any(|_| {
            sock_.send_to(b"hello", vip).unwrap();
            sock_.recv_from(&mut buf).is_ok()
        })
    };
    std::fs::write(
        &s.config,
        new.replace(
            "name = \"dns4\"\n",
            "name = \"dns4\"\ndeny = [\"198.18.1.0/24\"]\n",
        ),
    )
    .unwrap();
    let out = cli_ok(&sock, &["reload"]);
    assert!(out.contains("allow/deny changed: dns4"), "{out}");
    assert!(!ask(&pinned), "a denied client was answered");
    let now: serde_json::Value = serde_json::from_str(&cli_ok(&sock, &["status", "--json"])).unwrap();
    assert_eq!(
        find(&now, "dns4")["id"],
        find(&a, "dns4")["id"],
        "a list change restarted the service"
    );
    std::fs::write(&s.config, &new).unwrap();
    cli_ok(&sock, &["reload"]);
    assert!(
        ask(&pinned),
        "the client is still refused after the deny list went"
    );
    // A bad file is refused with its error; the running configuration stays.
    std::fs::write(
        &s.config,
        new.replace("protocol = \"tcp\"", "protocol = \"tcpp\""),
    )
    .unwrap();
    let out = cli(&sock, &["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("running configuration unchanged") && err.contains("protocol"),
        "{err}"
    );
    assert!(cli_ok(&sock, &["status"]).contains("extra (id"));
    d.signal(libc::SIGTERM);
    drop(d);
    // Daemon down: detach through the pins (the file is broken now: give the dirs by hand).
    std::fs::write(
        &s.config,
        format!(
            "[gateway]\ninterfaces = [\"g-c\"]\n[control]\nsocket = {:?}\nstate_dir = {:?}\nbpffs_dir = {:?}\n",
            s.left.socket, s.left.state_dir, s.left.bpffs_dir
        ),
    )
    .unwrap();
    let out = cli_ok(&sock, &["--config", s.config.to_str().unwrap(), "detach"]);
    assert!(out.contains("detached"), "{out}");
    assert!(!xdp_attached(&s.lab.gw, "g-c"));
    let _ = std::fs::remove_file(&s.config);
}

/// Moves `[service.failover]` right after `name = "<service>"` to the end of
/// that service's block (TOML: keys after a sub-table header belong to it).
fn fix_subtable(text: &str, service: &str) -> String {
    let marker = format!("name = \"{service}\"\n[service.failover]\nfailback_delay = \"2s\"\n");
    let Some(at) = text.find(&marker) else {
        return text.to_owned();
    };
    let block_end = text[at..].find("[[service]]").map_or(text.len(), |e| at + e);
    let mut out = String::new();
    out.push_str(&text[..at]);
    out.push_str(&format!("name = \"{service}\"\n"));
    out.push_str(&text[at + marker.len()..block_end]);
    out.push_str("[service.failover]\nfailback_delay = \"2s\"\n\n");
    out.push_str(&text[block_end..]);
    out
}

//! Transition hooks and fencing with the real daemon in the lab: the
//! `promote` hook runs before traffic moves (a failure keeps traffic and
//! runs it again; a hung hook is killed with its process group), `notify`
//! after each event, both with the `REDIRECTOR_*` environment; a fenced
//! primary takes no traffic when it comes back, across a daemon restart,
//! until `redirector unfence`.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    daemon::{Setup, cli, cli_ok},
    lab::{LAB_CONFIG, Server},
    netns::NetNs,
    require_root,
};

/// A directory for the hook scripts and what they write; removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("redirector-hooks-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One UDP request per ms to dns4, a new flow every 50, until stopped; the answering server of
/// each answer, with the time it came (from the start).
fn traffic(client: &NetNs, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<(Duration, String)>> {
    let name = client.name.clone();
    thread::spawn(move || {
        let _in = redirector_tests::netns::enter(&name);
        let vip: SocketAddr = "198.18.100.1:53".parse().unwrap();
        let fresh = || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.set_nonblocking(true).unwrap();
            sock
        };
        let mut sock = fresh();
        let start = Instant::now();
        let limit = start + Duration::from_secs(60);
        let mut answers = Vec::new();
        let mut buf = [0u8; 128];
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
            sent += 1;
            // A new flow every 50 ms: new flows go where the switch says
            // (an established UDP flow stays on the secondary after a failback).
            if sent.is_multiple_of(50) {
                sock = fresh();
            }
            sock.send_to(format!("seq:{sent}").as_bytes(), vip).unwrap();
            thread::sleep(Duration::from_millis(1));
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                let s = String::from_utf8_lossy(&buf[..n]);
                if let Some((who, _)) = s.split_once(" seq:") {
                    answers.push((start.elapsed(), who.to_owned()));
                }
            }
        }
        answers
    })
}

/// Who answered how many, from `from` on.
fn by_server(answers: &[(Duration, String)], from: Duration) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for (_, who) in answers.iter().filter(|(at, _)| *at >= from) {
        *by.entry(who.clone()).or_default() += 1;
    }
    by
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn status(sock: &Path) -> String {
    cli_ok(sock, &["status"])
}

/// The metrics endpoint's text (in the gateway's namespace).
fn metrics(gw: &NetNs) -> String {
    let name = gw.name.clone();
    thread::spawn(move || {
        let _in = redirector_tests::netns::enter(&name);
        let mut s = TcpStream::connect("198.18.1.1:9630").unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
    .join()
    .unwrap()
}

#[test]
fn promotion_fencing_and_notifications() {
    if !require_root("promotion_fencing_and_notifications") {
        return;
    }
    let dir = Dir::new("pf");
    // The first promotion fails, the second takes 300 ms.
    std::fs::write(dir.0.join("fail-once"), "").unwrap();
    let promote = dir.script(
        "promote",
        &format!(
            "cd {}\n[ -e promote.env ] || env | grep ^REDIRECTOR_ | sort > promote.env\n\
             if [ -e fail-once ]; then rm fail-once; echo 'standby not ready' >&2; exit 3; fi\n\
             sleep 0.3\necho promoted",
            dir.0.display()
        ),
    );
    let notify = dir.script(
        "notify",
        &format!(
            "echo \"$REDIRECTOR_SERVICE $REDIRECTOR_CAUSE $REDIRECTOR_FROM $REDIRECTOR_TO\" >> {}/notify.log",
            dir.0.display()
        ),
    );
    // A hook that hangs, and leaves a child in its group: killed at 300 ms.
    let marker = format!("{}/hung-child", dir.0.display());
    let hang = dir.script("hang", &format!("(sleep 2; touch {marker}) &\nsleep 30"));
    let mut config = String::new();
    for (i, block) in LAB_CONFIG.split("[[service]]").enumerate() {
        if i > 0 {
            config.push_str("[[service]]");
        }
        config.push_str(block);
        if block.contains("name = \"dns4\"") {
            config.push_str(&format!(
                "[service.failover]\npromote = [{promote:?}]\npromote_timeout = \"5s\"\nnotify = [{notify:?}]\n\
                 fence = true\nfailback_delay = \"0s\"\n"
            ));
        } else if block.contains("name = \"web4\"") {
            config.push_str(&format!(
                "[service.failover]\npromote = [{hang:?}]\npromote_timeout = \"300ms\"\n\
                 on_promote_failure = \"move\"\n"
            ));
        }
    }
    let mut s = Setup::with_config("hk", &config);
    let sock = s.left.socket.clone();
    let log = s.log();
    let mut d = s.daemon_logged(&log);

    let stop = Arc::new(AtomicBool::new(false));
    let t = traffic(&s.lab.client, stop.clone());
    thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    s.primary.kill();
    // Detected, fenced, promotion fails, 2 s later runs again and succeeds.
    wait_for("dns4 on the secondary", Duration::from_secs(10), || {
        status(&sock).contains("dns4 (id 1) 198.18.100.1:53/udp nat: active secondary")
    });
    let moved = killed.elapsed();
    thread::sleep(Duration::from_millis(300));

    // The log of events is the daemon's memory: read it before the restart.
    // web4's hung promotion was killed at its timeout with its child, and
    // traffic moved anyway.
    let events = cli_ok(&sock, &["events"]);
    assert!(
        events.contains("web4") && events.contains("promoting the secondary failed (timed out)"),
        "{events}"
    );
    assert!(
        events.contains("dns4") && events.contains("secondary promoted in"),
        "{events}"
    );
    let m = metrics(&s.lab.gw);
    for series in [
        r#"redirector_hooks_total{service="dns4",hook="promote",result="failed"} 1"#,
        r#"redirector_hooks_total{service="web4",hook="promote",result="timeout"} 1"#,
    ] {
        assert!(m.contains(series), "{series} not in metrics");
    }
    assert!(
        m.contains(r#"redirector_hooks_total{service="dns4",hook="notify",result="ok"}"#),
        "notify not counted"
    );

    // The primary comes back: fenced, it gets nothing.
    s.primary = Server::start(&s.lab.primary, "primary", "198.18.2.2", "2001:2:0:2::2", false);
    let back = Instant::now();
    wait_for("the primary up again", Duration::from_secs(5), || {
        let st = status(&sock);
        st.lines()
            .skip_while(|l| !l.starts_with("dns4 "))
            .nth(1)
            .is_some_and(|l| l.contains("198.18.2.2") && l.contains(" up ") && l.contains("FENCED"))
    });
    thread::sleep(Duration::from_millis(500));
    let out = cli(&sock, &["flip", "dns4", "primary", "--force"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fenced") && err.contains("unfence"), "{err}");

    // A restart keeps the fence.
    d.signal(libc::SIGTERM);
    d = s.daemon_logged(&log);
    thread::sleep(Duration::from_millis(800));
    assert!(status(&sock).contains("FENCED"), "{}", status(&sock));
    let fenced_until = back.elapsed();

    let out = cli_ok(&sock, &["unfence", "dns4", "primary", "--reason", "re-cloned"]);
    assert!(out.contains("unfenced"), "{out}");
    wait_for("dns4 back on the primary", Duration::from_secs(5), || {
        status(&sock).contains("dns4 (id 1) 198.18.100.1:53/udp nat: active primary")
    });
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let answers = t.join().unwrap();
    let _ = fenced_until;

    // Between the kill and the move nothing reached the secondary (traffic
    // waited for the promotion); while fenced, nothing reached the primary.
    let start_of = |after: Duration, who: &str| {
        answers
            .iter()
            .find(|(at, w)| *at >= after && w == who)
            .map(|(at, _)| *at)
    };
    let first_secondary = start_of(Duration::ZERO, "secondary").unwrap();
    let first_primary_again = start_of(first_secondary, "primary").unwrap();
    let fenced_window: Vec<_> = answers
        .iter()
        .filter(|(at, w)| *at > first_secondary && *at < first_primary_again && w == "primary")
        .collect();
    assert!(
        fenced_window.is_empty(),
        "the fenced primary answered: {fenced_window:?}"
    );
    let promoted_after = first_secondary.saturating_sub(Duration::from_millis(300));
    assert!(
        promoted_after >= Duration::from_secs(2),
        "traffic moved {promoted_after:?} after the kill: before the retried promotion (moved per status after {moved:?})"
    );
    let by = by_server(&answers, first_primary_again + Duration::from_millis(50));
    assert_eq!(by.keys().collect::<Vec<_>>(), vec!["primary"], "{by:?}");

    // What the promote hook saw.
    let env = dir.read("promote.env");
    for line in [
        "REDIRECTOR_HOOK=promote",
        "REDIRECTOR_SERVICE=dns4",
        "REDIRECTOR_FROM=primary",
        "REDIRECTOR_TO=secondary",
        "REDIRECTOR_TO_ADDR=198.18.3.2",
        "REDIRECTOR_TO_PORT=53",
        "REDIRECTOR_FROM_ADDR=198.18.2.2",
        "REDIRECTOR_CAUSE=failover",
        "REDIRECTOR_VIP=198.18.100.1",
        "REDIRECTOR_PROTOCOL=udp",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in:\n{env}");
    }
    assert!(env.contains("REDIRECTOR_DETECTION_MS="), "{env}");
    // What notify saw, in order.
    let notified = dir.read("notify.log");
    let causes: Vec<&str> = notified
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap_or(""))
        .collect();
    let order = [
        "health_change",
        "fenced",
        "promoting",
        "promote_failed",
        "promoting",
        "promoted",
        "unfenced",
    ];
    let mut at = 0;
    for want in order {
        let found = causes[at..].iter().position(|c| *c == want);
        assert!(
            found.is_some(),
            "{want} not notified in order after {:?}: {causes:?}",
            &causes[..at]
        );
        at += found.unwrap() + 1;
    }

    // By now the hung hook's child would have touched its marker.
    assert!(
        !Path::new(&marker).exists(),
        "the hung hook's child outlived its timeout"
    );
    let logged = log.read();
    assert!(
        logged.contains("dns4: promote: standby not ready"),
        "hook output not logged"
    );

    drop(d);
}

/// Reads one answer on a held connection: `Ok(text)`, or the error (a
/// reset, the end) that ended it.
fn exchange(c: &mut TcpStream, msg: &str) -> Result<String, String> {
    c.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    match c.read(&mut buf) {
        Ok(0) => Err("closed".into()),
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn a_fenced_primary_gets_nothing_of_its_old_connections_after_a_partition() {
    if !require_root("a_fenced_primary_gets_nothing_of_its_old_connections_after_a_partition") {
        return;
    }
    let config =
        redirector_tests::lab::lab_config_with("[service.failover]\nfence = true\nfailback_delay = \"0s\"\n");
    let s = Setup::with_config("hf", &config);
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    let vip: SocketAddr = "198.18.100.1:80".parse().unwrap();
    // A connection through the VIP to the primary, held open.
    let mut held = {
        let _in = s.lab.client.enter();
        TcpStream::connect_timeout(&vip, Duration::from_secs(2)).unwrap()
    };
    held.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(
        exchange(&mut held, "hold 1")
            .unwrap()
            .starts_with("primary hold 1")
    );

    // The primary's link goes down (a partition: the server stays up).
    let primary = s.lab.primary.name.clone();
    redirector_tests::netns::in_ns(&primary, &["ip", "link", "set", "p0", "down"]);
    wait_for("web4 on the secondary", Duration::from_secs(5), || {
        status(&sock).contains("web4 (id 0) 198.18.100.1:80/tcp nat: active secondary")
    });
    // The partition heals: the primary answers its probes again, fenced.
    redirector_tests::netns::in_ns(&primary, &["ip", "link", "set", "p0", "up"]);
    redirector_tests::netns::in_ns(
        &primary,
        &["ip", "route", "replace", "198.18.0.0/15", "via", "198.18.2.1"],
    );
    wait_for("the primary up and fenced", Duration::from_secs(10), || {
        let st = status(&sock);
        st.lines()
            .skip_while(|l| !l.starts_with("web4 "))
            .nth(1)
            .is_some_and(|l| l.contains(" up ") && l.contains("FENCED"))
    });
    // The old connection's next segment does not reach the primary (it
    // would answer it): it meets the secondary, which resets it.
    let after = exchange(&mut held, "hold 2");
    assert!(
        !after.as_deref().is_ok_and(|a| a.starts_with("primary")),
        "the fenced primary still served its old connection: {after:?}"
    );
    // New connections go to the secondary.
    let answer = {
        let _in = s.lab.client.enter();
        redirector_tests::lab::tcp_request(vip)
    };
    assert!(answer.starts_with("secondary"), "{answer}");
    cli_ok(&sock, &["unfence", "web4", "primary"]);
    wait_for("web4 back on the primary", Duration::from_secs(5), || {
        status(&sock).contains("web4 (id 0) 198.18.100.1:80/tcp nat: active primary")
    });
    let answer = {
        let _in = s.lab.client.enter();
        redirector_tests::lab::tcp_request(vip)
    };
    assert!(answer.starts_with("primary"), "{answer}");
}

//! The DNS recipe (docs/examples/dns/) with a real server, dnsmasq, on both
//! backends: `kind = "dns"` health checks with a real query, 53/udp and
//! 53/tcp in one group. A killed primary resolver: both services move,
//! queries answered by the secondary within milliseconds. Only the UDP side
//! failing (a firewall drops 53/udp): the TCP service follows its group.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    daemon::{Setup, active, cli_ok, wait_both_up, wait_for},
    dns::{Dnsmasq, PRIMARY_ANSWER, SECONDARY_ANSWER, config, dnsmasq_available, queries, tcp_answer},
    netns::in_ns,
    require_root,
};

#[test]
fn a_killed_resolver_and_a_resolver_whose_udp_side_fails() {
    if !require_root("dns recipe") || !dnsmasq_available("dns recipe") {
        return;
    }
    let mut s = Setup::with_config("dn", &config());
    // The lab's own servers hold port 53: the resolvers take it.
    s.primary.kill();
    s.secondary.kill();
    let mut primary = Dnsmasq::start(&s.lab.primary, "198.18.2.2", PRIMARY_ANSWER);
    let _secondary = Dnsmasq::start(&s.lab.secondary, "198.18.3.2", SECONDARY_ANSWER);
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    wait_both_up(&sock, "dns-udp", Duration::from_secs(5));

    // The primary resolver dies.
    let stop = Arc::new(AtomicBool::new(false));
    let t = queries(&s.lab.client, stop.clone());
    thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    primary.kill();
    wait_for("dns-udp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-udp") == "secondary"
    });
    wait_for("dns-tcp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-tcp") == "secondary"
    });
    let moved = killed_at.elapsed();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let sent = t.join().unwrap();
    let unanswered: Vec<Duration> = sent
        .iter()
        .filter(|(_, a)| a.is_none())
        .map(|(at, _)| *at)
        .collect();
    let mut by = BTreeMap::new();
    for (_, a) in &sent {
        *by.entry(*a).or_insert(0usize) += 1;
    }
    let window = match (unanswered.first(), unanswered.last()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    };
    eprintln!(
        "dnsmasq killed: {} of {} queries unanswered within {window:.1?}; both services moved within {moved:.1?}",
        unanswered.len(),
        sent.len()
    );
    assert!(unanswered.len() < 100, "{} queries lost", unanswered.len());
    assert!(
        by.get(&Some(SECONDARY_ANSWER)).is_some_and(|n| *n > 100),
        "{by:?}"
    );
    assert_eq!(tcp_answer(&s.lab.client), "198.18.50.2");

    // Back (failback after 1 s), then only its UDP side fails: the TCP
    // service follows its group although its own probes pass.
    drop(primary);
    let _primary = Dnsmasq::start(&s.lab.primary, "198.18.2.2", PRIMARY_ANSWER);
    wait_for("dns-udp back on the primary", Duration::from_secs(10), || {
        active(&sock, "dns-udp") == "primary"
    });
    wait_for("dns-tcp back on the primary", Duration::from_secs(10), || {
        active(&sock, "dns-tcp") == "primary"
    });
    assert_eq!(tcp_answer(&s.lab.client), "198.18.50.1");
    let p = s.lab.primary.name.clone();
    in_ns(&p, &["nft", "add", "table", "inet", "rdrtest"]);
    in_ns(
        &p,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "rdrtest",
            "in",
            "{ type filter hook input priority 0; }",
        ],
    );
    in_ns(
        &p,
        &[
            "nft", "add", "rule", "inet", "rdrtest", "in", "udp", "dport", "53", "drop",
        ],
    );
    wait_for("dns-udp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-udp") == "secondary"
    });
    wait_for("dns-tcp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-tcp") == "secondary"
    });
    let st = cli_ok(&sock, &["status"]);
    let tcp_primary = st
        .lines()
        .skip_while(|l| !l.starts_with("dns-tcp "))
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(
        tcp_primary.contains(" up ") && tcp_primary.contains("DOWN FOR dns-udp OF ITS GROUP"),
        "{tcp_primary}"
    );
    let answer = tcp_answer(&s.lab.client);
    assert_eq!(
        answer,
        "198.18.50.2",
        "{}\n{}",
        cli_ok(&sock, &["status"]),
        cli_ok(&sock, &["events"])
    );
    // The firewall goes: both return together.
    in_ns(&p, &["nft", "delete", "table", "inet", "rdrtest"]);
    // Together: the group's failback waits for the UDP side's delay.
    let mut first = None;
    wait_for("both back on the primary", Duration::from_secs(10), || {
        let (u, t) = (active(&sock, "dns-udp"), active(&sock, "dns-tcp"));
        if first.is_none() && (u == "primary" || t == "primary") {
            first = Some((Instant::now(), u.clone(), t.clone()));
        }
        u == "primary" && t == "primary"
    });
    let (at, u, t) = first.unwrap();
    assert!(
        at.elapsed() < Duration::from_millis(200),
        "failback apart: first seen udp {u}, tcp {t}, both {:?} later\n{}",
        at.elapsed(),
        cli_ok(&sock, &["events"])
    );
}

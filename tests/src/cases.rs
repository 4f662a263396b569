//! `cargo xtask demo --case database|web|dns`: the recipes' stories with the
//! real servers, told step by step (the configurations of docs/examples/).
#![expect(clippy::unwrap_used, reason = "a demo: a failed setup is a failed run")]

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    daemon::{Setup, active, cli_ok, wait_both_up, wait_for},
    dns::{self, Dnsmasq},
    netns::in_ns,
    postgres::{self, Pg, VIP, Writer, db},
    web::{self, Nginx},
};

/// The lines of `redirector events` about `service`, indented.
fn events(sock: &Path, service: &str) {
    for line in cli_ok(sock, &["events"])
        .lines()
        .filter(|l| l.contains(&format!(" {service}: ")))
    {
        println!("    {line}");
    }
}

/// The status block of `service`, indented.
fn status(sock: &Path, service: &str) {
    let st = cli_ok(sock, &["status"]);
    let mut lines = st.lines().skip_while(|l| !l.starts_with(&format!("{service} ")));
    for line in lines.by_ref().take_while(|l| !l.is_empty()) {
        println!("    {line}");
    }
}

/// PostgreSQL: a crash, the replica promoted, writes continuing, the old
/// primary fenced, the roles swapped back with a reload and an unfence.
pub fn database() {
    let t0 = Instant::now();
    println!("== 1. the lab: PostgreSQL primary 198.18.2.2, streaming replica 198.18.3.2, VIP {VIP}");
    println!(
        "   config: docs/examples/postgresql/redirector.toml (promote = pg_promote hook, fence = true, failback manual)"
    );
    let d = db("demodb");
    let sock = d.s.left.socket.clone();
    let gw = d.s.lab.gw.name.clone();
    let vip: SocketAddr = VIP.parse().unwrap();
    status(&sock, "pg");

    println!("\n== 2. writes: one INSERT per ms through the VIP, reconnecting when a connection is lost");
    let w = Writer::start(&d.s.lab.client, vip, 1, Duration::from_secs(60));
    thread::sleep(Duration::from_secs(1));
    let fault = w.start.elapsed();
    println!("\n== 3. the primary crashes (pg_ctl stop -m immediate)");
    d.primary.crash();
    wait_for("pg on the secondary", Duration::from_secs(40), || {
        active(&sock, "pg") == "secondary"
    });
    thread::sleep(Duration::from_secs(1));
    let attempts = w.finish();
    let (outage, failed) = postgres::outage(&attempts, fault).unwrap();
    events(&sock, "pg");
    let after = attempts.iter().filter(|a| a.ok && a.at > fault + outage).count();
    println!(
        "   writes: {} committed before the crash, none for {:.0} ms ({failed} attempts failed), {after} committed on the promoted replica since",
        attempts.iter().filter(|a| a.ok && a.at <= fault).count(),
        outage.as_secs_f64() * 1e3
    );
    println!(
        "   the replica in recovery? {}",
        if d.replica.in_recovery() {
            "yes"
        } else {
            "no: it is the primary now"
        }
    );

    println!("\n== 4. the old primary restarts — a writable primary again — but it is fenced");
    d.primary.start();
    wait_for("the old primary up", Duration::from_secs(10), || {
        cli_ok(&sock, &["status"]).contains("FENCED")
    });
    let w = Writer::start(&d.s.lab.client, vip, 1_000_000, Duration::from_secs(10));
    thread::sleep(Duration::from_secs(1));
    let n = postgres::committed(&w.finish()).len();
    status(&sock, "pg");
    println!(
        "   {n} writes through the VIP meanwhile: {} reached the old primary, {} the promoted one",
        postgres::count(&d.primary, &gw, "seq >= 1000000"),
        postgres::count(&d.replica, &gw, "seq >= 1000000")
    );

    println!("\n== 5. back to two servers: the old primary re-cloned as a replica of the new one, the roles");
    println!(
        "   swapped in the config (primary = 198.18.3.2), `redirector reload`, `redirector unfence pg secondary`"
    );
    let postgres::Db {
        s,
        primary,
        replica,
        daemon,
    } = d;
    drop(primary);
    let standby = Pg::replica(&s.lab.primary, "demodb2", "198.18.2.2", "198.18.3.2");
    s.write_config(&postgres::config("198.18.3.2", "198.18.2.2"));
    println!("   $ redirector reload\n   {}", cli_ok(&sock, &["reload"]).trim());
    println!(
        "   $ redirector unfence pg secondary\n   {}",
        cli_ok(&sock, &["unfence", "pg", "secondary", "--reason", "re-cloned"]).trim()
    );
    wait_for("the new standby up", Duration::from_secs(10), || {
        let st = cli_ok(&sock, &["status"]);
        st.lines()
            .skip_while(|l| !l.starts_with("pg "))
            .nth(2)
            .is_some_and(|l| l.contains(" up ") && !l.contains("FENCED"))
    });
    status(&sock, "pg");
    println!(
        "\nsummary: write outage {:.0} ms across the crash, promote hook {}, no write to the fenced primary ({:.0} s in all)",
        outage.as_secs_f64() * 1e3,
        postgres::promoted_in(&sock),
        t0.elapsed().as_secs_f64()
    );
    drop((standby, replica, daemon, s));
}

/// nginx: a drain under load loses nothing, a kill costs the requests in
/// flight, the primary back, traffic returns by itself.
pub fn website() {
    let t0 = Instant::now();
    println!("== 1. the lab: nginx on 198.18.2.2 (primary) and 198.18.3.2, VIP 198.18.100.1:80");
    println!("   config: docs/examples/web/redirector.toml (HTTP check on /healthz, automatic failback)");
    let mut s = Setup::with_config("demoweb", &web::config());
    s.primary.kill();
    s.secondary.kill();
    let mut primary = Nginx::start(&s.lab.primary, "198.18.2.2", "primary");
    let _secondary = Nginx::start(&s.lab.secondary, "198.18.3.2", "secondary");
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    wait_both_up(&sock, "web", Duration::from_secs(5));
    status(&sock, "web");

    println!("\n== 2. wrk (20 keep-alive connections) for 3 s; after 1 s: redirector drain web primary");
    let load = web::wrk(&s.lab.client, 3);
    thread::sleep(Duration::from_secs(1));
    cli_ok(&sock, &["drain", "web", "primary", "--reason", "deploy"]);
    let drained = load.join().unwrap();
    println!("   {} requests, {} errors", drained.requests, drained.errors);
    cli_ok(&sock, &["undrain", "web", "primary"]);
    wait_for("web on the primary", Duration::from_secs(5), || {
        active(&sock, "web") == "primary"
    });

    println!("\n== 3. wrk again; after 1 s the primary's nginx is killed (SIGKILL)");
    let load = web::wrk(&s.lab.client, 3);
    thread::sleep(Duration::from_secs(1));
    primary.kill();
    wait_for("web on the secondary", Duration::from_secs(5), || {
        active(&sock, "web") == "secondary"
    });
    let killed = load.join().unwrap();
    println!(
        "   {} requests, {} errors (the requests in flight on the dead server's connections)",
        killed.requests, killed.errors
    );
    events(&sock, "web");

    println!("\n== 4. nginx back on the primary: traffic returns after the failback delay");
    drop(primary);
    let _primary = Nginx::start(&s.lab.primary, "198.18.2.2", "primary");
    wait_for("web failed back", Duration::from_secs(15), || {
        active(&sock, "web") == "primary"
    });
    events(&sock, "web");
    println!(
        "\nsummary: drain {} errors in {} requests; kill {} errors in {} ({:.0} s in all)",
        drained.errors,
        drained.requests,
        killed.errors,
        killed.requests,
        t0.elapsed().as_secs_f64()
    );
}

/// dnsmasq: a killed resolver, then a resolver whose UDP side fails and the
/// TCP service that follows its group.
pub fn resolver() {
    let t0 = Instant::now();
    println!("== 1. the lab: dnsmasq on 198.18.2.2 (primary) and 198.18.3.2, VIP 198.18.100.1:53 udp + tcp");
    println!(
        "   config: docs/examples/dns/redirector.toml (kind = \"dns\" checks, 53/udp and 53/tcp in group \"dns\")"
    );
    let mut s = Setup::with_config("demodns", &dns::config());
    s.primary.kill();
    s.secondary.kill();
    let mut primary = Dnsmasq::start(&s.lab.primary, "198.18.2.2", dns::PRIMARY_ANSWER);
    let _secondary = Dnsmasq::start(&s.lab.secondary, "198.18.3.2", dns::SECONDARY_ANSWER);
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    wait_both_up(&sock, "dns-udp", Duration::from_secs(5));
    println!(
        "   dig +tcp @198.18.100.1 www.lab → {}",
        dns::tcp_answer(&s.lab.client)
    );

    println!("\n== 2. one query per ms; the primary's dnsmasq is killed");
    let stop = Arc::new(AtomicBool::new(false));
    let t = dns::queries(&s.lab.client, stop.clone());
    thread::sleep(Duration::from_millis(500));
    primary.kill();
    wait_for("dns-udp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-udp") == "secondary"
    });
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let sent = t.join().unwrap();
    let lost = sent.iter().filter(|(_, a)| a.is_none()).count();
    println!("   {lost} of {} queries unanswered", sent.len());
    events(&sock, "dns-udp");
    events(&sock, "dns-tcp");

    println!("\n== 3. dnsmasq back; then a firewall drops only 53/udp on the primary");
    drop(primary);
    let _primary = Dnsmasq::start(&s.lab.primary, "198.18.2.2", dns::PRIMARY_ANSWER);
    wait_for("both back", Duration::from_secs(10), || {
        active(&sock, "dns-udp") == "primary" && active(&sock, "dns-tcp") == "primary"
    });
    let p = s.lab.primary.name.clone();
    in_ns(&p, &["nft", "add", "table", "inet", "rdrdemo"]);
    in_ns(
        &p,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "rdrdemo",
            "in",
            "{ type filter hook input priority 0; }",
        ],
    );
    in_ns(
        &p,
        &[
            "nft", "add", "rule", "inet", "rdrdemo", "in", "udp", "dport", "53", "drop",
        ],
    );
    wait_for("dns-tcp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-tcp") == "secondary"
    });
    status(&sock, "dns-tcp");
    println!(
        "   dig +tcp @198.18.100.1 www.lab → {} (the secondary: the group moved together)",
        dns::tcp_answer(&s.lab.client)
    );
    in_ns(&p, &["nft", "delete", "table", "inet", "rdrdemo"]);
    println!(
        "\nsummary: {lost} of {} queries lost to a killed resolver; TCP followed UDP ({:.0} s in all)",
        sent.len(),
        t0.elapsed().as_secs_f64()
    );
}

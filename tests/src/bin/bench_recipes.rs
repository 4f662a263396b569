//! `cargo xtask bench recipes [--runs N]`: the recipes of docs/examples with
//! the real servers in the lab, each fault N times, one table: PostgreSQL
//! (a crash and a partition of the primary: write outage through the VIP,
//! failed writes, the promote hook's time, commits lost by asynchronous
//! replication), nginx (a kill and a drain under wrk: errors), dnsmasq (a
//! kill under one query per ms: queries lost). Clients' requests only.
#![expect(clippy::unwrap_used, reason = "a benchmark: a failed setup is a failed run")]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    daemon::{Setup, active, cli_ok, wait_both_up, wait_for},
    dns::{self, Dnsmasq},
    netns::in_ns,
    postgres::{self, VIP, Writer, db},
    web::{self, Nginx},
};

/// Rows of the table: name → one value per run.
type Rows = BTreeMap<(u8, &'static str), Vec<f64>>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "150 ms" / "1.2 s" / "900 µs" → ms.
fn parse_ms(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let n: f64 = it.next()?.parse().ok()?;
    Some(match it.next()? {
        "s" => n * 1e3,
        "ms" => n,
        "µs" => n / 1e3,
        _ => return None,
    })
}

fn database(rows: &mut Rows, run: usize, partition: bool) {
    let tag = format!("br{}{run}", if partition { "n" } else { "c" });
    let d = db(&tag);
    let sock = d.s.left.socket.clone();
    let gw = d.s.lab.gw.name.clone();
    let vip: SocketAddr = VIP.parse().unwrap();
    let w = Writer::start(&d.s.lab.client, vip, 1, Duration::from_secs(60));
    thread::sleep(Duration::from_millis(500));
    let fault = w.start.elapsed();
    if partition {
        in_ns(&d.s.lab.primary.name, &["ip", "link", "set", "p0", "down"]);
    } else {
        d.primary.crash();
    }
    wait_for("pg on the secondary", Duration::from_secs(40), || {
        active(&sock, "pg") == "secondary"
    });
    thread::sleep(Duration::from_millis(500));
    let attempts = w.finish();
    let (outage, failed) = postgres::outage(&attempts, fault).unwrap();
    let promote = parse_ms(&postgres::promoted_in(&sock)).unwrap_or(f64::NAN);
    let (base, what) = if partition {
        (10, "partition")
    } else {
        (0, "crash")
    };
    let label = |m: &'static str| -> &'static str {
        Box::leak(format!("database, primary {what}: {m}").into_boxed_str())
    };
    rows.entry((base, label("write outage (ms)")))
        .or_default()
        .push(ms(outage));
    rows.entry((base + 1, label("failed writes")))
        .or_default()
        .push(failed as f64);
    rows.entry((base + 2, label("promote hook (ms)")))
        .or_default()
        .push(promote);
    if !partition {
        let after = attempts
            .iter()
            .find(|a| a.ok && a.at > fault + outage)
            .unwrap()
            .seq;
        let lost = postgres::acked_but_missing(&attempts, &d.replica, &gw, after);
        rows.entry((base + 3, label("acknowledged commits lost (async replication)")))
            .or_default()
            .push(lost as f64);
    }
}

fn website(rows: &mut Rows) {
    let mut s = Setup::with_config("brw", &web::config());
    s.primary.kill();
    s.secondary.kill();
    let mut primary = Nginx::start(&s.lab.primary, "198.18.2.2", "primary");
    let _secondary = Nginx::start(&s.lab.secondary, "198.18.3.2", "secondary");
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    wait_both_up(&sock, "web", Duration::from_secs(5));
    let load = web::wrk(&s.lab.client, 3);
    thread::sleep(Duration::from_secs(1));
    cli_ok(&sock, &["drain", "web", "primary"]);
    let drained = load.join().unwrap();
    rows.entry((20, "website, primary drained: wrk errors"))
        .or_default()
        .push(drained.errors as f64);
    cli_ok(&sock, &["undrain", "web", "primary"]);
    wait_for("web back on the primary", Duration::from_secs(5), || {
        active(&sock, "web") == "primary"
    });
    let load = web::wrk(&s.lab.client, 3);
    thread::sleep(Duration::from_secs(1));
    primary.kill();
    wait_for("web on the secondary", Duration::from_secs(5), || {
        active(&sock, "web") == "secondary"
    });
    let killed = load.join().unwrap();
    rows.entry((21, "website, primary killed: wrk errors"))
        .or_default()
        .push(killed.errors as f64);
    rows.entry((22, "website, primary killed: requests in the 3 s run"))
        .or_default()
        .push(killed.requests as f64);
}

fn resolver(rows: &mut Rows) {
    let mut s = Setup::with_config("brd", &dns::config());
    s.primary.kill();
    s.secondary.kill();
    let mut primary = Dnsmasq::start(&s.lab.primary, "198.18.2.2", dns::PRIMARY_ANSWER);
    let _secondary = Dnsmasq::start(&s.lab.secondary, "198.18.3.2", dns::SECONDARY_ANSWER);
    let sock = s.left.socket.clone();
    let _d = s.daemon();
    wait_both_up(&sock, "dns-udp", Duration::from_secs(5));
    let stop = Arc::new(AtomicBool::new(false));
    let t = dns::queries(&s.lab.client, stop.clone());
    thread::sleep(Duration::from_millis(300));
    primary.kill();
    wait_for("dns-udp on the secondary", Duration::from_secs(5), || {
        active(&sock, "dns-udp") == "secondary"
    });
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let sent = t.join().unwrap();
    let lost = sent.iter().filter(|(_, a)| a.is_none()).count();
    rows.entry((30, "dns, resolver killed: queries lost (1 per ms)"))
        .or_default()
        .push(lost as f64);
}

fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map_or(3, |n| n.parse().expect("--runs N"));
    let started = Instant::now();
    let mut rows = Rows::new();
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        database(&mut rows, run, false);
        database(&mut rows, run, true);
        website(&mut rows);
        resolver(&mut rows);
    }
    println!(
        "\nrecipes with the real servers, {runs} runs ({:.0} s):\n",
        started.elapsed().as_secs_f64()
    );
    println!("| scenario: figure | min | median | max |");
    println!("|---|---|---|---|");
    for ((_, name), mut v) in rows {
        v.sort_by(f64::total_cmp);
        let med = v[v.len() / 2];
        let fmt = |x: f64| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        };
        println!(
            "| {name} | {} | {} | {} |",
            fmt(v[0]),
            fmt(med),
            fmt(v[v.len() - 1])
        );
    }
}

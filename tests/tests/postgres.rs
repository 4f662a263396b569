//! The PostgreSQL recipe (docs/examples/postgresql/) with the real server:
//! a primary and its streaming replica behind the VIP, a writer committing a
//! row per ms through it. A crashed primary: the replica is promoted by the
//! example's `promote` hook, writes go on there, the old primary (restarted,
//! writable) gets none of them; the roles then swap by a reload without a
//! failed write. A partitioned primary (up, unreachable): the same, and
//! once the partition heals no transaction reaches it through the VIP.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{net::SocketAddr, thread, time::Duration};

use redirector_tests::{
    daemon::{active, cli_ok, wait_for},
    netns::in_ns,
    postgres::{self, Attempt, Db, Pg, VIP, Writer, committed, config, count, db, promoted_in},
    require_root,
};

#[test]
fn a_crashed_primary_fails_over_to_its_promoted_replica_and_the_roles_swap() {
    if !require_root("postgres crash") || !postgres::available("postgres crash") {
        return;
    }
    let d = db("pgc");
    let sock = d.s.left.socket.clone();
    let gw = d.s.lab.gw.name.clone();
    let vip: SocketAddr = VIP.parse().unwrap();
    let w = Writer::start(&d.s.lab.client, vip, 1, Duration::from_secs(60));
    thread::sleep(Duration::from_millis(500));
    let fault = w.start.elapsed();
    d.primary.crash();
    wait_for("pg on the secondary", Duration::from_secs(40), || {
        active(&sock, "pg") == "secondary"
    });
    thread::sleep(Duration::from_millis(500));
    let attempts = w.finish();
    let (outage, failed) = postgres::outage(&attempts, fault).unwrap();
    assert!(!d.replica.in_recovery(), "the replica was not promoted");
    // Every commit after the failover is on the promoted replica.
    let after: Vec<i64> = attempts
        .iter()
        .filter(|a| a.ok && a.at > fault + outage)
        .map(|a| a.seq)
        .collect();
    assert!(
        after.len() > 100,
        "few commits after the failover: {}",
        after.len()
    );
    let first_after = after[0];
    assert_eq!(
        count(&d.replica, &gw, &format!("seq >= {first_after}")),
        after.len() as i64
    );
    // Commits acknowledged by the old primary that never reached the
    // replica (asynchronous replication; synchronous_commit avoids them).
    let lost = postgres::acked_but_missing(&attempts, &d.replica, &gw, first_after);
    eprintln!(
        "crash: write outage {outage:.1?} ({failed} failed attempts), promote hook {}, {lost} acknowledged commits lost by asynchronous replication",
        promoted_in(&sock)
    );
    assert!(outage < Duration::from_secs(5), "write outage {outage:?}");
    // pgbench through the VIP on the promoted replica: it takes writes.
    let client = d.s.lab.client.name.clone();
    let pgbench = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &client,
                "pgbench",
                "-h",
                "198.18.100.1",
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    pgbench(&["-i", "-q", "-s", "1"]);
    let report = pgbench(&["-n", "-c", "4", "-j", "2", "-T", "2"]);
    let tps = report
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("tps ?")
        .to_owned();
    assert!(
        report.contains("number of failed transactions: 0"),
        "pgbench through the VIP after the failover:\n{report}"
    );
    eprintln!("pgbench through the VIP on the promoted replica: {tps}");

    // The old primary restarts as a writable primary: fenced, it gets
    // nothing through the VIP.
    d.primary.start();
    assert!(!d.primary.in_recovery());
    wait_for("the old primary up and fenced", Duration::from_secs(10), || {
        let st = cli_ok(&sock, &["status"]);
        st.lines()
            .skip_while(|l| !l.starts_with("pg "))
            .nth(1)
            .is_some_and(|l| l.contains(" up ") && l.contains("FENCED"))
    });
    let w = Writer::start(&d.s.lab.client, vip, 1_000_000, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(500));
    let attempts = w.finish();
    let n = committed(&attempts).len() as i64;
    assert!(n > 100, "{n} commits");
    assert_eq!(
        count(&d.primary, &gw, "seq >= 1000000"),
        0,
        "a write reached the fenced old primary"
    );
    assert_eq!(count(&d.replica, &gw, "seq >= 1000000"), n);

    // The roles swap: the old primary is re-cloned as a replica of the new
    // one, the addresses swap in the configuration, a reload applies it
    // while writes go on, and the new standby is unfenced.
    let Db {
        s,
        primary,
        replica,
        daemon: _daemon,
    } = d;
    drop(primary);
    let standby = Pg::replica(&s.lab.primary, "pgc2", "198.18.2.2", "198.18.3.2");
    assert!(standby.in_recovery());
    let w = Writer::start(&s.lab.client, vip, 2_000_000, Duration::from_secs(20));
    thread::sleep(Duration::from_millis(300));
    s.write_config(&config("198.18.3.2", "198.18.2.2"));
    let out = cli_ok(&sock, &["reload"]);
    assert!(out.contains("restarted"), "{out}");
    thread::sleep(Duration::from_millis(300));
    let out = cli_ok(
        &sock,
        &[
            "unfence",
            "pg",
            "secondary",
            "--reason",
            "re-cloned from the new primary",
        ],
    );
    assert!(out.contains("unfenced"), "{out}");
    wait_for("the new standby up", Duration::from_secs(10), || {
        let st = cli_ok(&sock, &["status"]);
        st.lines()
            .skip_while(|l| !l.starts_with("pg "))
            .nth(2)
            .is_some_and(|l| l.contains("198.18.2.2") && l.contains(" up ") && !l.contains("FENCED"))
    });
    thread::sleep(Duration::from_millis(300));
    let attempts = w.finish();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(
        failed.is_empty(),
        "writes failed across the role swap: {failed:?}"
    );
    assert_eq!(active(&sock, "pg"), "primary");
    assert_eq!(
        count(&replica, &s.lab.gw.name, "seq >= 2000000"),
        attempts.len() as i64
    );
    drop(standby);
    drop(replica);
}

#[test]
fn a_partitioned_primary_never_takes_writes_through_the_vip_again() {
    if !require_root("postgres partition") || !postgres::available("postgres partition") {
        return;
    }
    let d = db("pgn");
    let sock = d.s.left.socket.clone();
    let gw = d.s.lab.gw.name.clone();
    let vip: SocketAddr = VIP.parse().unwrap();
    let w = Writer::start(&d.s.lab.client, vip, 1, Duration::from_secs(60));
    thread::sleep(Duration::from_millis(500));
    let fault = w.start.elapsed();
    // The primary's link goes down: the server stays up and writable.
    let p = d.s.lab.primary.name.clone();
    in_ns(&p, &["ip", "link", "set", "p0", "down"]);
    wait_for("pg on the secondary", Duration::from_secs(40), || {
        active(&sock, "pg") == "secondary"
    });
    // The partition heals.
    in_ns(&p, &["ip", "link", "set", "p0", "up"]);
    in_ns(
        &p,
        &["ip", "route", "replace", "198.18.0.0/15", "via", "198.18.2.1"],
    );
    wait_for("the old primary up and fenced", Duration::from_secs(10), || {
        let st = cli_ok(&sock, &["status"]);
        st.lines()
            .skip_while(|l| !l.starts_with("pg "))
            .nth(1)
            .is_some_and(|l| l.contains(" up ") && l.contains("FENCED"))
    });
    let on_old = count(&d.primary, &gw, "true");
    thread::sleep(Duration::from_millis(1000));
    let attempts = w.finish();
    let (outage, failed) = postgres::outage(&attempts, fault).unwrap();
    assert!(
        !d.primary.in_recovery(),
        "the old primary is a writable primary (the split-brain case)"
    );
    assert_eq!(
        count(&d.primary, &gw, "true"),
        on_old,
        "a write reached the fenced old primary after the partition healed"
    );
    let after: Vec<i64> = attempts
        .iter()
        .filter(|a| a.ok && a.at > fault + outage)
        .map(|a| a.seq)
        .collect();
    assert!(
        after.len() > 500,
        "few commits after the failover: {}",
        after.len()
    );
    let max_old: i64 = d
        .primary
        .sql_from(&gw, "SELECT coalesce(max(seq), 0) FROM ticks")
        .parse()
        .unwrap();
    assert!(
        max_old < after[0],
        "the old primary holds row {max_old}, written after the failover"
    );
    assert_eq!(
        count(&d.replica, &gw, &format!("seq >= {}", after[0])),
        after.len() as i64
    );
    eprintln!(
        "partition: write outage {outage:.1?} ({failed} failed attempts), promote hook {}",
        promoted_in(&sock)
    );
}

#[test]
fn the_promote_hook_is_idempotent_when_every_gateway_runs_it() {
    if !require_root("postgres promote hook") || !postgres::available("postgres promote hook") {
        return;
    }
    // No daemon: three gateways' hooks at once against one standby, then once more.
    let lab = redirector_tests::lab::Lab::new("pgi", &redirector_tests::lab::DsrVips { v4: &[], v6: &[] });
    let primary = Pg::primary(&lab.primary, "pgip", "198.18.2.2");
    let replica = Pg::replica(&lab.secondary, "pgis", "198.18.3.2", "198.18.2.2");
    assert!(replica.in_recovery());
    let hook = postgres::example("promote");
    let run = move |gw: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", gw])
            .arg(&hook)
            .env("REDIRECTOR_TO_ADDR", "198.18.3.2")
            .env("REDIRECTOR_TO_PORT", "5432")
            .output()
            .unwrap()
    };
    let gw = lab.gw.name.clone();
    let outputs: Vec<_> = (0..3)
        .map(|_| {
            let gw = gw.clone();
            let run = run.clone();
            std::thread::spawn(move || run(&gw))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for out in outputs.iter().chain([&run(&gw)]) {
        assert!(
            out.status.success(),
            "a gateway's promote hook failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!replica.in_recovery());
    drop(primary);
}

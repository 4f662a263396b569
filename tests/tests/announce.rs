//! `[announce]`: the VIPs a gateway can serve are published as host routes
//! in a kernel table through a TUN device the daemon owns, for BIRD to
//! announce. Tested with the real daemon in the lab: published once
//! servable, withdrawn when all down, by an operator and by a reload that
//! removes the VIP's services; kept across a clean restart (not one route
//! deleted meanwhile), gone with the daemon's death and with `detach`; and
//! BIRD (the configs in `docs/examples/bird/` verbatim) announcing them over
//! BGP to a router and withdrawing them when the daemon dies.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    collections::BTreeSet,
    io::Read as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    bird::{self, Bird},
    daemon::{Setup, cli, cli_ok},
    lab::{Server, lab_config_with},
    netns::NetNs,
    require_root,
};

const TABLE: &str = "100";
const DEVICE: &str = "rdr-vips";
/// Every VIP of the lab's configuration.
const VIPS: [&str; 4] = ["198.18.100.1", "198.18.100.2", "2001:2::100", "2001:2::200"];

fn config(tag: &str, extra_service: &str) -> String {
    format!(
        "{}\n[announce]\ntable = {TABLE}\ndevice = \"{DEVICE}\"\ntrack_file = {:?}\n",
        lab_config_with(extra_service),
        track_path(tag)
    )
}

/// The test's `[announce] track_file` (for keepalived).
fn track_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("rdr-{tag}-{}-track", std::process::id()))
}

/// What the track file holds.
fn track(tag: &str) -> Option<u32> {
    std::fs::read_to_string(track_path(tag)).ok()?.trim().parse().ok()
}

/// Waits until the track file holds `want`.
fn wait_track(tag: &str, want: u32, what: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while track(tag) != Some(want) {
        assert!(
            Instant::now() < until,
            "{what}: track file holds {:?}, want {want}",
            track(tag)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The destinations of the host routes in the announce table through the
/// device, both families.
fn published(ns: &NetNs) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for family in ["-4", "-6"] {
        let out = Command::new("ip")
            .args(["-n", &ns.name, family, "route", "show", "table", TABLE])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut words = line.split_whitespace();
            let dst = words.next().unwrap_or_default().to_owned();
            if line.contains(&format!("dev {DEVICE}")) && line.contains("proto 245") {
                found.insert(dst);
            }
        }
    }
    found
}

fn set(vips: &[&str]) -> BTreeSet<String> {
    vips.iter().map(|v| (*v).to_owned()).collect()
}

/// Waits until exactly `want` is published.
fn wait_published(ns: &NetNs, want: &BTreeSet<String>, within: Duration, what: &str) {
    let until = Instant::now() + within;
    loop {
        let got = published(ns);
        if got == *want {
            return;
        }
        assert!(Instant::now() < until, "{what}: published {got:?}, want {want:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn device_exists(ns: &NetNs) -> bool {
    Command::new("ip")
        .args(["-n", &ns.name, "link", "show", DEVICE])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn vips_are_published_while_servable_and_withdrawn_when_all_down_by_an_operator_or_a_reload() {
    if !require_root("announce") {
        return;
    }
    let mut s = Setup::with_config(
        "ann-a",
        &config("ann-a", "[service.failover]\nall_down = \"drop\"\n"),
    );
    // The lab's servers without port 80, which processes of their own serve:
    // killing those takes exactly one VIP's services down (198.18.100.2,
    // dsr-web4). Killing every backend at once would be the gateway's own
    // trouble to the daemon (no verdict), not the backends'.
    let (mut p80, mut s80) = servers_without_port_80(&mut s);
    let mut d = s.daemon();
    wait_published(&s.lab.gw, &set(&VIPS), Duration::from_secs(5), "after the start");
    wait_track("ann-a", 0, "after the start");
    let status = cli_ok(&s.left.socket, &["status"]);
    assert!(
        status.contains(&format!("announce: routes on {DEVICE} in table {TABLE}")),
        "{status}"
    );
    assert!(status.contains("-track holds 0"), "{status}");
    assert!(
        status.contains("198.18.100.2             published (servable)"),
        "{status}"
    );

    p80.kill();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(published(&s.lab.gw), set(&VIPS), "the secondary serves them all");
    s80.kill();
    let others = set(&["198.18.100.1", "2001:2::100", "2001:2::200"]);
    wait_published(&s.lab.gw, &others, Duration::from_secs(5), "dsr-web4 all down");
    // keepalived's track file counts the VIPs that cannot be served.
    wait_track("ann-a", 1, "dsr-web4 all down");
    let status = cli_ok(&s.left.socket, &["status"]);
    assert!(
        status.contains("198.18.100.2             not published (every service of it is all down"),
        "{status}"
    );
    s80 = web80(&s.lab.secondary, "secondary80");
    wait_published(&s.lab.gw, &set(&VIPS), Duration::from_secs(5), "secondary back");
    wait_track("ann-a", 0, "secondary back");

    // An operator's withdraw holds across a restart, until `announce`.
    cli_ok(&s.left.socket, &["withdraw", "--reason", "upgrade"]);
    wait_published(&s.lab.gw, &BTreeSet::new(), Duration::from_secs(2), "withdrawn");
    // 254: FAULT for keepalived, whatever the weight.
    assert_eq!(track("ann-a"), Some(254), "a withdraw's track file");
    let status = cli_ok(&s.left.socket, &["status"]);
    assert!(status.contains("WITHDRAWN: withdrawn by"), "{status}");
    assert!(status.contains("\"upgrade\""), "{status}");
    d.signal(libc::SIGTERM);
    d = s.daemon();
    thread::sleep(Duration::from_millis(500));
    assert!(published(&s.lab.gw).is_empty(), "a restart undid the withdraw");
    assert_eq!(
        track("ann-a"),
        Some(254),
        "a restart undid the withdraw (track file)"
    );
    cli_ok(&s.left.socket, &["announce"]);
    wait_published(&s.lab.gw, &set(&VIPS), Duration::from_secs(2), "announced again");
    wait_track("ann-a", 0, "announced again");

    // A reload without the services of 198.18.100.2 (dsr-web4) withdraws it.
    let without: String = config("ann-a", "")
        .split("[[service]]")
        .filter(|b| !b.contains("name = \"dsr-web4\""))
        .collect::<Vec<_>>()
        .join("[[service]]");
    s.write_config(&without);
    cli_ok(&s.left.socket, &["reload"]);
    wait_published(
        &s.lab.gw,
        &set(&["198.18.100.1", "2001:2::100", "2001:2::200"]),
        Duration::from_secs(2),
        "after the reload",
    );

    // `[announce]` cannot change under a running daemon: refused, nothing changes.
    s.write_config(&without.replace("table = 100", "table = 101"));
    let out = cli(&s.left.socket, &["reload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[announce]"));
    assert_eq!(published(&s.lab.gw).len(), 3);
    drop(d);
    drop(s80);
    let _ = std::fs::remove_file(track_path("ann-a"));
}

/// A server on TCP port 80 only.
fn web80(ns: &NetNs, name: &str) -> Server {
    Server::start_args(ns, name, &["--tcp", "0.0.0.0:80"], false)
}

/// Replaces the setup's servers with ones without port 80; returns the
/// port-80 servers of the primary and the secondary.
fn servers_without_port_80(s: &mut Setup) -> (Server, Server) {
    let args = |own4: &str, own6: &str| {
        [
            "--tcp".to_owned(),
            format!("{own4}:8080"),
            "--tcp".to_owned(),
            format!("[{own6}]:8080"),
            "--udp".to_owned(),
            format!("{own4}:53"),
            "--udp".to_owned(),
            format!("[{own6}]:53"),
            "--udp".to_owned(),
            "[2001:2::200]:53".to_owned(),
        ]
    };
    s.primary.kill();
    s.primary = Server::start_args(
        &s.lab.primary,
        "primary",
        &args("198.18.2.2", "2001:2:0:2::2"),
        false,
    );
    s.secondary.kill();
    s.secondary = Server::start_args(
        &s.lab.secondary,
        "secondary",
        &args("198.18.3.2", "2001:2:0:3::2"),
        false,
    );
    (
        web80(&s.lab.primary, "primary80"),
        web80(&s.lab.secondary, "secondary80"),
    )
}

#[test]
fn the_announcement_survives_a_clean_restart_and_goes_with_the_daemons_death_and_detach() {
    if !require_root("announce") {
        return;
    }
    let s = Setup::with_config("ann-b", &config("ann-b", ""));
    let mut d = s.daemon();
    wait_published(&s.lab.gw, &set(&VIPS), Duration::from_secs(5), "after the start");

    // Watch every route change of the gateway across a clean restart.
    let mut monitor = Command::new("ip")
        .args(["-n", &s.lab.gw.name, "monitor", "route"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    d.signal(libc::SIGTERM);
    assert!(device_exists(&s.lab.gw), "a clean stop removed the device");
    assert_eq!(published(&s.lab.gw), set(&VIPS), "a clean stop withdrew routes");
    d = s.daemon();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(published(&s.lab.gw), set(&VIPS));
    let _ = monitor.kill();
    let mut seen = String::new();
    monitor.stdout.take().unwrap().read_to_string(&mut seen).unwrap();
    let _ = monitor.wait();
    let deleted: Vec<&str> = seen.lines().filter(|l| l.starts_with("Deleted")).collect();
    assert!(
        deleted.is_empty(),
        "routes deleted across a clean restart: {deleted:?}"
    );

    // Death: the kernel closes the device's descriptor, device and routes go.
    d.signal(libc::SIGKILL);
    let until = Instant::now() + Duration::from_secs(2);
    while device_exists(&s.lab.gw) {
        assert!(Instant::now() < until, "the device outlived the daemon");
        thread::sleep(Duration::from_millis(10));
    }
    assert!(published(&s.lab.gw).is_empty());

    // Detach through the daemon withdraws; so does an offline detach of what
    // a clean stop left.
    d = s.daemon();
    wait_published(
        &s.lab.gw,
        &set(&VIPS),
        Duration::from_secs(5),
        "after the restart",
    );
    wait_track("ann-b", 0, "after the restart");
    cli_ok(&s.left.socket, &["detach"]);
    let _ = d.0.wait();
    assert!(!device_exists(&s.lab.gw), "detach left the device");
    assert_eq!(track("ann-b"), Some(254), "detach left the track file able");
    d = s.daemon();
    wait_published(
        &s.lab.gw,
        &set(&VIPS),
        Duration::from_secs(5),
        "after a fresh start",
    );
    wait_track("ann-b", 0, "after a fresh start");
    d.signal(libc::SIGTERM);
    assert!(device_exists(&s.lab.gw));
    assert_eq!(track("ann-b"), Some(0), "a clean stop changed the track file");
    // The operator's CLI on the gateway (its network namespace).
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", s.lab.gw.name))
        .arg(redirector_tests::daemon::binary())
        .arg("--config")
        .arg(&s.config)
        .arg("detach")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains(&format!("the announce device {DEVICE}")), "{out}");
    assert!(!device_exists(&s.lab.gw), "offline detach left the device");
    assert_eq!(
        track("ann-b"),
        Some(254),
        "offline detach left the track file able"
    );
    let _ = std::fs::remove_file(track_path("ann-b"));
}

#[test]
fn bird_announces_the_published_vips_to_a_router_and_withdraws_them_when_the_daemon_dies() {
    if !require_root("announce") || !bird::available("announce with BIRD") {
        return;
    }
    let s = Setup::with_config("ann-c", &config("ann-c", ""));
    // The client namespace plays the router: eBGP with BFD to the gateway.
    let router = Bird::start(
        &s.lab.client,
        "define ROUTER_ID = 198.18.1.2;\ndefine ROUTER_AS = 65000;\ndefine GATEWAY_AS = 65001;\n\
         define KERNEL_TABLE = 254;",
        "router.conf",
        "protocol bgp gw1 from redirector_gateway { neighbor 198.18.1.1 as GATEWAY_AS; }",
    );
    let gateway = Bird::start(
        &s.lab.gw,
        &format!(
            "define GATEWAY_ID = 198.18.1.1;\ndefine GATEWAY_AS = 65001;\ndefine UPLINK = 198.18.1.2;\n\
             define UPLINK_AS = 65000;\ndefine ANNOUNCE_TABLE = {TABLE};"
        ),
        "gateway.conf",
        "",
    );
    router.wait_established("gw1", Duration::from_secs(20));
    gateway.wait_established("uplink", Duration::from_secs(5));
    // What the router's kernel has from BIRD for the VIPs.
    let learned = || {
        let mut found = BTreeSet::new();
        for family in ["-4", "-6"] {
            let out = Command::new("ip")
                .args(["-n", &s.lab.client.name, family, "route", "show", "proto", "bird"])
                .output()
                .unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dst) = line.split_whitespace().next() {
                    found.insert(dst.to_owned());
                }
            }
        }
        found
    };
    let wait_learned = |want: &BTreeSet<String>, within: Duration, what: &str| -> Duration {
        let t0 = Instant::now();
        loop {
            let got = learned();
            if got == *want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "{what}: the router has {got:?}, want {want:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    };
    assert!(learned().is_empty(), "announced before the daemon ran");
    let mut d = s.daemon();
    wait_learned(&set(&VIPS), Duration::from_secs(5), "daemon started");
    let kill = Instant::now();
    d.signal(libc::SIGKILL);
    let gone = wait_learned(&BTreeSet::new(), Duration::from_secs(3), "daemon killed");
    eprintln!(
        "router lost the VIPs {:.1} ms after the daemon's SIGKILL",
        (kill.elapsed().max(gone)).as_secs_f64() * 1e3
    );
    d = s.daemon();
    wait_learned(&set(&VIPS), Duration::from_secs(5), "daemon restarted");
    d.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(learned(), set(&VIPS), "a clean stop withdrew the VIPs");
    drop(gateway);
    drop(router);
    let _ = std::fs::remove_file(track_path("ann-c"));
}

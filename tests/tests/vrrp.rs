//! A VRRP pair of gateways (`redirector_tests::cluster`, [`Front::Vrrp`]):
//! each runs redirector with `[announce] track_file` and keepalived with
//! `docs/examples/keepalived/gateway.conf` verbatim; the router's route for
//! the VIPs points at the address keepalived moves. The track file follows
//! redirector's verdicts; an operator's `withdraw` hands the address to the
//! peer without losing a request, `announce` takes it back, and the
//! preferred gateway's death moves it to the warm standby, which serves
//! every flow (no flow entry is needed while the primary is active).
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    io::Write,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    cluster::{self, Cluster, Front, Run, traffic},
    daemon::cli_ok,
    keepalived, require_root,
};

fn wait(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < within, "{what} within {within:?}");
        thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

/// `redirector --config <gw>'s config> ARGS` from the host.
fn cli_config(c: &Cluster, i: usize, args: &[&str]) -> std::process::Output {
    Command::new(redirector_tests::daemon::binary())
        .arg("--config")
        .arg(&c.gateways[i].config)
        .args(args)
        .output()
        .unwrap()
}

/// `dns4`'s active backend on gateway `i`.
fn active(c: &Cluster, i: usize) -> String {
    let st: serde_json::Value =
        serde_json::from_str(&cli_ok(&c.gateways[i].left.socket, &["status", "--json"])).unwrap();
    st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "dns4")
        .map(|s| s["active"].as_str().unwrap_or_default().to_owned())
        .unwrap()
}

/// Waits until `dns4`'s active backends on gw1 and gw2 are `want`.
fn wait_active(c: &Cluster, want: [&str; 2]) {
    let t0 = Instant::now();
    loop {
        let got = [active(c, 0), active(c, 1)];
        if got == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "dns4 active on gw1, gw2: {got:?}, want {want:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Operator intent is cluster-wide: a flip on gw1 (whose `[control] peers`
/// lists gw2's socket) reaches gw2 too; `--local` only gw1; a peer that
/// does not answer fails the command, naming it, after the others applied.
fn intent_reaches_both_gateways(c: &Cluster) {
    let out = cli_config(c, 0, &["flip", "dns4", "secondary", "--reason", "cluster test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for g in &c.gateways {
        assert!(text.contains(&g.left.socket.display().to_string()), "{text}");
    }
    wait_active(c, ["secondary", "secondary"]);
    let out = cli_config(c, 0, &["auto", "dns4"]);
    assert!(out.status.success());
    wait_active(c, ["primary", "primary"]);

    let out = cli_config(c, 0, &["--local", "flip", "dns4", "secondary"]);
    assert!(out.status.success());
    wait_active(c, ["secondary", "primary"]);
    assert!(cli_config(c, 0, &["--local", "auto", "dns4"]).status.success());

    let gone = std::env::temp_dir().join("rdr-vrrp-no-such-gateway.sock");
    let out = cli_config(
        c,
        0,
        &["--peer", gone.to_str().unwrap(), "flip", "dns4", "secondary"],
    );
    assert!(!out.status.success(), "a flip a peer missed succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not applied on 1 of 3 gateways") && err.contains("rdr-vrrp-no-such-gateway"),
        "{err}"
    );
    wait_active(c, ["secondary", "secondary"]);
    assert!(cli_config(c, 0, &["auto", "dns4"]).status.success());
    wait_active(c, ["primary", "primary"]);
}

fn track(c: &Cluster, i: usize) -> Option<u32> {
    std::fs::read_to_string(&c.gateways[i].track_file)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Requests sent at or after `from` and never answered, and the last
/// one's delay after `from`.
fn lost_after(run: &Run, from: Instant) -> (usize, Duration) {
    let mut lost = 0;
    let mut last = Duration::ZERO;
    for flow in &run.sent {
        for (t, seq) in flow.iter().filter(|(t, _)| *t >= from) {
            if !run.answered.contains_key(seq) {
                lost += 1;
                last = last.max(t.duration_since(from));
            }
        }
    }
    (lost, last)
}

/// Flows whose last request went unanswered.
fn broken(run: &Run) -> Vec<usize> {
    (0..run.sent.len())
        .filter(|&f| {
            !run.sent[f]
                .last()
                .is_some_and(|(_, s)| run.answered.contains_key(s))
        })
        .collect()
}

#[test]
fn a_vrrp_pair_follows_redirector_and_survives_the_preferred_gateways_death() {
    if !require_root("vrrp") || !keepalived::available("vrrp") {
        return;
    }
    let mut c = Cluster::new("vr", 2, Front::Vrrp);
    c.start_gateway(0);
    c.start_gateway(1);
    // Both able (0 in the track file): the preferred gateway holds the address.
    wait("both track files say 0", Duration::from_secs(10), || {
        track(&c, 0) == Some(0) && track(&c, 1) == Some(0)
    });
    wait("gw1 alone holds the address", Duration::from_secs(10), || {
        c.vrrp_masters() == [0]
    });

    intent_reaches_both_gateways(&c);

    // A graceful hand-over: `withdraw` on gw1 makes keepalived give the
    // address up (FAULT); gw2 takes it; the router follows its gratuitous
    // ARP. gw1 keeps forwarding what still reaches it: nothing is lost.
    let socket1 = c.gateways[0].left.socket.clone();
    let mut at = None;
    let run = {
        let mut withdraw = || {
            at = Some(Instant::now());
            cli_ok(&socket1, &["withdraw", "--reason", "maintenance"]);
        };
        traffic(&c, cluster::NAT_VIP, 2, (500, &mut withdraw))
    };
    assert_eq!(
        track(&c, 0),
        Some(254),
        "a withdrawn gateway's track file says FAULT"
    );
    assert_eq!(
        c.vrrp_masters(),
        [1],
        "gw2 holds the address after gw1's withdraw"
    );
    let (lost, _) = lost_after(&run, at.unwrap());
    eprintln!("withdraw on gw1: {lost} requests lost");
    assert_eq!(lost, 0, "a withdraw lost requests");
    assert!(broken(&run).is_empty());

    // `announce` on gw1: it takes the address back (preemption), losslessly.
    let run = {
        let mut announce = || {
            at = Some(Instant::now());
            cli_ok(&socket1, &["announce"]);
        };
        traffic(&c, cluster::NAT_VIP, 2, (500, &mut announce))
    };
    assert_eq!(track(&c, 0), Some(0));
    assert_eq!(c.vrrp_masters(), [0], "gw1 takes the address back");
    let (lost, _) = lost_after(&run, at.unwrap());
    eprintln!("announce on gw1: {lost} requests lost");
    assert_eq!(lost, 0, "taking the address back lost requests");

    // gw1 dies (its links deleted by a pre-started injector): gw2 takes the
    // address after ~3.5 adverts; every flow is served again.
    let mut injector = Command::new("ip")
        .args(["-n", &c.gateways[0].ns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = injector.stdin.take();
    let router = c.router.name.clone();
    let watcher = thread::spawn(move || {
        // When the router's neighbour entry for the address moves to gw2.
        let mac = |ns: &str| {
            let out = Command::new("ip")
                .args(["-n", ns, "neigh", "show", cluster::VRRP_ADDRESS])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let before = mac(&router);
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            if mac(&router).split_whitespace().nth(4) != before.split_whitespace().nth(4) {
                return Some(Instant::now());
            }
            thread::sleep(Duration::from_millis(1));
        }
        None
    });
    let run = {
        let mut kill = || {
            at = Some(Instant::now());
            if let Some(mut s) = stdin.take() {
                s.write_all(b"link del g-r\nlink del g-b\n").unwrap();
            }
        };
        traffic(&c, cluster::NAT_VIP, 3, (1000, &mut kill))
    };
    assert!(injector.wait().unwrap().success());
    let at = at.unwrap();
    c.kill_gateway_processes(0);
    let moved = watcher
        .join()
        .unwrap()
        .expect("the router's neighbour entry never moved to gw2")
        .duration_since(at);
    assert_eq!(c.vrrp_masters(), [1]);
    let (lost, last) = lost_after(&run, at);
    eprintln!(
        "gw1 killed: router followed gw2's gratuitous ARP after {:.0} ms; {lost} requests lost, the last \
         {:.0} ms after the kill",
        moved.as_secs_f64() * 1e3,
        last.as_secs_f64() * 1e3
    );
    assert!(
        broken(&run).is_empty(),
        "flows never answered after the kill: {:?}",
        broken(&run)
    );
    assert!(moved < Duration::from_secs(1), "VRRP took {moved:?}");
    assert!(
        last < Duration::from_secs(2),
        "requests lost up to {last:?} after the kill"
    );
}

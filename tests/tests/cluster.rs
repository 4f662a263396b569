//! Several gateways behind an ECMP router (`redirector_tests::cluster`):
//! each runs redirector with `[announce]` and BIRD with the configs of
//! `docs/examples/bird/` verbatim; the router runs BIRD with multipath and
//! BFD. A gateway's death (its links deleted) moves its flows to the
//! survivors, which forward them correctly (no flow entry is needed while
//! the primary is active), and the router stops using it within BFD's
//! detection time.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    collections::BTreeMap,
    io::Write,
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    bird,
    cluster::{self, Cluster, FIRST_PORT, FLOWS, Front, traffic},
    require_root,
};

fn wait_hops(c: &Cluster, vip: &str, want: usize, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let hops = c.router_hops(vip);
        if hops.len() == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "router has {hops:?} for {vip}, want {want} hops"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// What one gateway death cost.
struct Death {
    dead_flows: usize,
    moved_survivors: usize,
    lost_dead: usize,
    lost_survivors: usize,
    /// From the kill to the last lost request.
    outage: Duration,
    /// From the kill to the router's route without the dead gateway.
    router_drop: Duration,
    /// Flows whose last request went unanswered.
    broken: Vec<usize>,
}

/// Three gateways, traffic to `vip`, gateway `kill` (0-based) dies (its
/// links deleted) a second into a four-second run.
fn gateway_death(tag: &str, resilient: bool, vip: &'static str, kill: usize) -> Death {
    let mut c = Cluster::new(tag, 3, Front::Bgp { resilient });
    for i in 0..3 {
        c.start_gateway(i);
    }
    for v in [cluster::NAT_VIP, cluster::DSR_VIP] {
        wait_hops(&c, v, 3, Duration::from_secs(10));
    }
    let before: Vec<Option<String>> = (0..FLOWS)
        .map(|i| c.router_choice(vip, FIRST_PORT + i, 53))
        .collect();
    let dead = c.gateways[kill].uplink.clone();
    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    for g in before.iter().flatten() {
        *spread.entry(g.clone()).or_default() += 1;
    }
    assert_eq!(
        spread.len(),
        3,
        "the router spreads the flows over every gateway: {spread:?}"
    );

    // A watcher notes when the router's route loses the dead gateway.
    let router = c.router.name.clone();
    let watcher = thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            if cluster::router_hops(&router, vip).len() < 3 {
                return Some(Instant::now());
            }
            thread::sleep(Duration::from_millis(1));
        }
        None
    });
    let mut killed_at = None;
    // The fault injector is started ahead and runs beside the traffic (an
    // exec of `ip` costs ~4 ms, deleting a veth with XDP attached tens).
    let mut injector = std::process::Command::new("ip")
        .args(["-n", &c.gateways[kill].ns.name, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = injector.stdin.take();
    let run = {
        let mut fault = || {
            killed_at = Some(Instant::now());
            if let Some(mut s) = stdin.take() {
                s.write_all(b"link del g-r\nlink del g-b\n").unwrap();
            }
        };
        traffic(&c, vip, 4, (1000, &mut fault))
    };
    assert!(injector.wait().unwrap().success());
    let killed_at = killed_at.unwrap();
    c.kill_gateway_processes(kill);
    let router_drop = watcher
        .join()
        .unwrap()
        .expect("the router never dropped the dead gateway")
        .duration_since(killed_at);
    assert_eq!(
        c.router_hops(vip).len(),
        2,
        "the router still uses the dead gateway"
    );
    let after: Vec<Option<String>> = (0..FLOWS)
        .map(|i| c.router_choice(vip, FIRST_PORT + i, 53))
        .collect();

    // Requests sent after the kill and never answered; the outage is the
    // window from the kill to the last lost one (1 request per ms).
    let mut d = Death {
        dead_flows: 0,
        moved_survivors: 0,
        lost_dead: 0,
        lost_survivors: 0,
        outage: Duration::ZERO,
        router_drop,
        broken: Vec::new(),
    };
    for f in 0..FLOWS as usize {
        let was_dead = before[f].as_deref() == Some(dead.as_str());
        if was_dead {
            d.dead_flows += 1;
        } else if before[f] != after[f] {
            d.moved_survivors += 1;
        }
        let later: Vec<&(Instant, u64)> = run.sent[f].iter().filter(|(t, _)| *t >= killed_at).collect();
        for (t, s) in &later {
            if !run.answered.contains_key(s) {
                d.outage = d.outage.max(t.duration_since(killed_at));
                if was_dead {
                    d.lost_dead += 1;
                } else {
                    d.lost_survivors += 1;
                }
            }
        }
        if !later.last().is_some_and(|(_, s)| run.answered.contains_key(s)) {
            d.broken.push(f);
        }
    }
    eprintln!(
        "{} ECMP, {vip}, gw{} killed: {} of {FLOWS} flows were on it, {} of the survivors' flows moved; \
         requests lost: {} on its flows, {} on the survivors'; last lost {:.0} ms after the kill; router \
         dropped it after {:.0} ms",
        if resilient { "resilient" } else { "plain" },
        kill + 1,
        d.dead_flows,
        d.moved_survivors,
        d.lost_dead,
        d.lost_survivors,
        d.outage.as_secs_f64() * 1e3,
        d.router_drop.as_secs_f64() * 1e3
    );
    d
}

/// A gateway's death: the router drops it by BFD, its flows go to the
/// survivors, which serve them (no flow entry needed while the primary is
/// active); every flow is answered again. With resilient next-hop groups
/// no survivor's flow moves; plain multipath moves some when the first
/// gateway goes. The backends' route back through the gateways drops the
/// dead one by BFD too (their BIRD), so the outage ends within a few BFD
/// detection times (the survivors' flows may lose the few replies sent to
/// the dead gateway meanwhile).
#[test]
fn a_dead_gateways_flows_move_to_the_survivors_which_serve_them() {
    if !require_root("cluster") || !bird::available("cluster") {
        return;
    }
    let plain = gateway_death("clp", false, cluster::NAT_VIP, 0);
    let resilient = gateway_death("clr", true, cluster::NAT_VIP, 0);
    let dsr = gateway_death("cld", true, cluster::DSR_VIP, 1);
    for d in [&plain, &resilient, &dsr] {
        assert!(
            d.broken.is_empty(),
            "flows never answered after the kill: {:?}",
            d.broken
        );
        assert!(d.dead_flows > 0);
        assert!(
            d.outage < Duration::from_millis(600),
            "requests lost up to {:?} after the kill",
            d.outage
        );
        assert!(
            d.router_drop < Duration::from_secs(1),
            "BFD took {:?}",
            d.router_drop
        );
    }
    assert_eq!(
        resilient.moved_survivors, 0,
        "a resilient group moved survivors' flows"
    );
    assert_eq!(dsr.moved_survivors, 0);
    // DSR replies skip the gateways: the survivors' flows lose nothing.
    assert_eq!(dsr.lost_survivors, 0, "DSR requests lost on the survivors' flows");
}

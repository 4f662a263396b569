//! `cargo xtask lab up|down|status`: the built-in lab as a command.
//!
//! `up` builds the topology the tests, the demo and the benchmarks use
//! (`redirector_tests::lab`), under fixed names `rdr-lab-{client,gw,primary,secondary}`,
//! with addresses only from 198.18.0.0/15 and 2001:2::/48; the far ends' XDP
//! helpers are pinned under `/sys/fs/bpf/rdr-lab` so the lab outlives this
//! command. It is idempotent: a complete lab is left as it is, a partial one
//! (a crash) is removed and rebuilt. `down` removes every `rdr-lab-*`
//! namespace (killing what runs inside) and the pins, whatever state they are
//! in. Run redirector in it with only the network namespace switched:
//! `nsenter --net=/var/run/netns/rdr-lab-gw redirector run --config FILE`.
//!
//! `cluster [--gateways N] [--resilient] [--vrrp] [--secs S]` builds the
//! multi-gateway lab instead (`redirector_tests::cluster`: a router running
//! BIRD with ECMP and N gateways each running redirector and BIRD, or a VRRP
//! pair running redirector and keepalived), prints how to reach every part,
//! and keeps it running until SIGINT/SIGTERM (or S seconds), then removes
//! all of it.
use std::{path::Path, process::Command};

use anyhow::{Result, bail};
use redirector_tests::{
    cluster::{self, Cluster, Front},
    lab::{DsrVips, LAB_CONFIG, Lab},
    netns::NetNs,
};

const NAMES: [&str; 4] = [
    "rdr-lab-client",
    "rdr-lab-gw",
    "rdr-lab-primary",
    "rdr-lab-secondary",
];
const PINS: &str = "/sys/fs/bpf/rdr-lab";

fn existing() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("rdr-lab-"))
        .map(str::to_owned)
        .collect()
}

fn down() {
    for ns in existing() {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) of a process inside our own lab namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        println!("removed namespace {ns}");
    }
    if let Ok(entries) = std::fs::read_dir(PINS) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if std::fs::remove_dir(PINS).is_ok() {
        println!("removed {PINS}");
    }
}

fn up() {
    let have = existing();
    if NAMES.iter().all(|n| have.iter().any(|h| h == n)) && Path::new(PINS).exists() {
        println!("the lab is up (rdr-lab-*); `cargo xtask lab down` removes it");
        return;
    }
    if !have.is_empty() {
        println!("a partial lab is left over; removing it first");
        down();
    }
    let lab = Lab::build(
        NAMES.map(NetNs::named),
        &DsrVips {
            v4: &["198.18.100.2"],
            v6: &["2001:2::200"],
        },
        Some(Path::new(PINS)),
    );
    let Lab {
        client,
        gw,
        primary,
        secondary,
        ..
    } = lab;
    for ns in [client, gw, primary, secondary] {
        ns.keep();
    }
    println!(
        "the lab is up:\n  rdr-lab-client    198.18.1.2  2001:2:0:1::2   (routes 198.18.0.0/15 and 2001:2::/48 via the gateway)\n  \
         rdr-lab-gw        g-c 198.18.1.1, g-p 198.18.2.1, g-s 198.18.3.1 (and 2001:2:0:N::1)\n  \
         rdr-lab-primary   198.18.2.2  2001:2:0:2::2   (DSR VIPs 198.18.100.2, 2001:2::200 on lo)\n  \
         rdr-lab-secondary 198.18.3.2  2001:2:0:3::2\n\
         the services the tests and the demo run (save as lab.toml, add a [control] section):\n{LAB_CONFIG}"
    );
}

fn status() {
    let have = existing();
    if have.is_empty() {
        println!("the lab is down");
        return;
    }
    for ns in &have {
        let out = Command::new("ip").args(["-n", ns, "-brief", "addr"]).output();
        println!("{ns}:");
        if let Ok(o) = out {
            for l in String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.starts_with("lo "))
            {
                println!("  {l}");
            }
        }
        let xdp = Command::new("ip").args(["-n", ns, "link", "show"]).output();
        if let Ok(o) = xdp
            && String::from_utf8_lossy(&o.stdout).contains("prog/xdp")
        {
            println!("  (an XDP program is attached here)");
        }
    }
    if have.len() != NAMES.len() {
        println!("partial: `cargo xtask lab up` rebuilds it, `cargo xtask lab down` removes it");
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts
/// later, so [`wait_for_signal`] takes them (and the lab's drops run).
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it,
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT or SIGTERM, or `secs` seconds.
fn wait_for_signal(set: &libc::sigset_t, secs: Option<u64>) {
    let timeout = libc::timespec {
        tv_sec: secs.map_or(libc::time_t::MAX, |s| {
            libc::time_t::try_from(s).unwrap_or(libc::time_t::MAX)
        }),
        tv_nsec: 0,
    };
    // SAFETY: set is initialised and blocked; sigtimedwait writes nothing
    // through the null info pointer.
    unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
}

fn cluster(args: &[String]) -> Result<()> {
    let (mut n, mut resilient, mut vrrp, mut secs) = (3u8, false, false, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--gateways" => n = it.next().map(|v| v.parse()).transpose()?.unwrap_or(3),
            "--resilient" => resilient = true,
            "--vrrp" => vrrp = true,
            "--secs" => secs = it.next().map(|v| v.parse()).transpose()?,
            other => bail!(
                "unknown argument {other}; usage: lab cluster [--gateways N] [--resilient] [--vrrp] [--secs S]"
            ),
        }
    }
    if vrrp && n != 2 {
        if args.iter().any(|a| a == "--gateways") {
            bail!("a VRRP pair is two gateways");
        }
        n = 2;
    }
    if !(1..=9).contains(&n) {
        bail!("--gateways 1..=9");
    }
    let signals = block_stop_signals();
    let front = if vrrp {
        Front::Vrrp
    } else {
        Front::Bgp { resilient }
    };
    let mut c = Cluster::new("lab", n, front);
    for i in 0..c.gateways.len() {
        c.start_gateway(i);
    }
    println!("the multi-gateway lab is up ({front:?}):");
    println!(
        "  client  {}  198.18.1.2 (routes 198.18.0.0/15 via the router)",
        c.client.name
    );
    println!(
        "  router  {}  198.18.1.1, front 198.18.10.1, lan 198.18.2.1",
        c.router.name
    );
    for (i, g) in c.gateways.iter().enumerate() {
        println!(
            "  gw{}     {}  {} / 198.18.2.{}  config {}  socket {}",
            i + 1,
            g.ns.name,
            g.uplink,
            11 + i,
            g.config.display(),
            g.left.socket.display()
        );
    }
    println!(
        "  primary {}  198.18.2.2, secondary {}  198.18.2.3",
        c.primary.name, c.secondary.name
    );
    println!(
        "VIPs: {} (web4 tcp 80, dns4 udp 53, NAT), {} (dsr-dns4 udp 53, DSR)",
        cluster::NAT_VIP,
        cluster::DSR_VIP
    );
    if let Some(g) = c.gateways.first() {
        println!(
            "try:\n  ip netns exec {} sh -c 'echo seq:1 > /dev/udp/{}/53'\n  redirector --config {} status --all\n  \
             redirector --config {} flip dns4 secondary --for 30s",
            c.client.name,
            cluster::NAT_VIP,
            g.config.display(),
            g.config.display()
        );
    }
    match front {
        Front::Vrrp => println!(
            "  ip -n {} -br addr   (who holds {})",
            c.router.name,
            cluster::VRRP_ADDRESS
        ),
        Front::Bgp { .. } => println!(
            "  ip -n {} route show {}   (the router's next hops)",
            c.router.name,
            cluster::NAT_VIP
        ),
    }
    println!(
        "Ctrl-C (SIGINT) or SIGTERM removes it{}",
        secs.map(|s| format!("; it goes by itself after {s} s"))
            .unwrap_or_default()
    );
    wait_for_signal(&signals, secs);
    drop(c);
    println!("the multi-gateway lab is removed");
    Ok(())
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and loads XDP programs: run it as root");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("up") => up(),
        Some("down") => down(),
        Some("status") => status(),
        Some("cluster") => return cluster(&args[1..]),
        _ => bail!("usage: lab up|down|status|cluster [--gateways N] [--resilient] [--vrrp] [--secs S]"),
    }
    Ok(())
}

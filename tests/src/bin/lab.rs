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
use std::{path::Path, process::Command};

use anyhow::{Result, bail};
use redirector_tests::{
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

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and loads XDP programs: run it as root");
    }
    match std::env::args().nth(1).as_deref() {
        Some("up") => up(),
        Some("down") => down(),
        Some("status") => status(),
        _ => bail!("usage: lab up|down|status"),
    }
    Ok(())
}

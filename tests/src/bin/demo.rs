//! `cargo xtask demo`: the built-in lab with real traffic through redirector.
//! Builds four namespaces (client, gateway, primary, secondary), runs the
//! daemon on the gateway, sends TCP and UDP requests to every VIP and shows
//! who answered, from which address, and what the data plane counted.
use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use redirector_common::Counter;
use redirector_tests::lab::{LAB_CONFIG, Running, tcp_request, udp_request};

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads XDP programs: run it as root");
    }
    println!("building the lab: client ─ gateway (redirector, native XDP) ─ primary / secondary");
    let run = Running::start("demo");
    let lab = &run.lab;
    println!("\nconfiguration (lab.toml):{LAB_CONFIG}");

    println!(
        "{:<28} {:<10} {:<22}",
        "request", "answered by", "answer came from"
    );
    {
        let _in = lab.client.enter();
        for (what, to) in [
            ("TCP nat  198.18.100.1:80", "198.18.100.1:80"),
            ("TCP nat  [2001:2::100]:80", "[2001:2::100]:80"),
            ("TCP dsr  198.18.100.2:80", "198.18.100.2:80"),
        ] {
            let to: SocketAddr = to.parse()?;
            let who = tcp_request(to);
            println!("{what:<28} {who:<10} {to} (TCP handshake with the VIP)");
        }
        let u4 = UdpSocket::bind("0.0.0.0:0")?;
        let u6 = UdpSocket::bind("[::]:0")?;
        for s in [&u4, &u6] {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
        }
        for (what, sock, to) in [
            ("UDP nat  198.18.100.1:53", &u4, "198.18.100.1:53"),
            ("UDP nat  [2001:2::100]:53", &u6, "[2001:2::100]:53"),
            ("UDP dsr  [2001:2::200]:53", &u6, "[2001:2::200]:53"),
        ] {
            let (who, from) = udp_request(sock, to.parse()?);
            println!("{what:<28} {who:<10} {from}");
        }
        let n = 1000;
        let t = Instant::now();
        let vip: SocketAddr = "198.18.100.1:53".parse()?;
        for _ in 0..n {
            let (who, from) = udp_request(&u4, vip);
            if from != vip || who != "primary" {
                bail!("unexpected answer {who} from {from}");
            }
        }
        println!(
            "\n{n} sequential UDP request/answer round trips via {vip}: {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let (dp, lab) = run.stop();
    println!("\ndata plane counters:");
    let names = ["web4", "dns4", "web6", "dns6", "dsr-web4", "dsr-dns6"];
    println!(
        "  {:<10} {:>9} {:>10} {:>9} {:>10}",
        "service", "to backend", "bytes", "replies", "bytes"
    );
    for (id, name) in (0u32..).zip(names) {
        let s = dp.backend_stats(id, 0).context("stats")?;
        println!(
            "  {name:<10} {:>9} {:>10} {:>9} {:>10}",
            s.fwd_packets, s.fwd_bytes, s.rev_packets, s.rev_bytes
        );
    }
    let c = dp.counters()?;
    for k in Counter::ALL {
        println!("  {:<22} {}", k.name(), c[k as usize]);
    }
    println!(
        "\n(unresolved_next_hop: first packets sent before ARP/ND resolved went through the kernel stack)"
    );
    println!("lab removed.");
    drop(dp);
    drop(lab);
    Ok(())
}

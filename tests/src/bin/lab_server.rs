//! `lab-server`: a backend of the lab as a real process (so a test can
//! SIGKILL it). Answers every TCP connection and UDP datagram with its name;
//! a datagram `seq:N` is answered `NAME seq:N` and, with `--log`, its arrival
//! is printed on stdout as `udp N <CLOCK_MONOTONIC ns>` (the failover
//! benchmark compares it with the moment it injected a fault; the clock is
//! shared by all namespaces). TCP connections that send `seq:N` are logged as
//! `tcp N <ns>`.
//!
//! Usage: `lab-server NAME [--tcp ADDR]... [--udp ADDR]... [--log] [--max-secs N]`
//! It prints `ready` on stdout once every socket is bound, and exits after
//! `--max-secs` (default 900) whatever happens, so it never outlives a run.
use std::{
    io::{Read, Write},
    net::{TcpListener, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn seq_of(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload.strip_prefix(b"seq:")?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `bulk:N\n` then N bytes: the server reads them all, answers N bytes.
fn bulk_of(payload: &[u8]) -> Option<(usize, usize)> {
    let rest = payload.strip_prefix(b"bulk:")?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let total = std::str::from_utf8(&rest[..nl]).ok()?.parse().ok()?;
    Some((total, 5 + nl + 1))
}

/// A large transfer each way (path MTU tests); bounded by the read timeout.
fn bulk(c: &mut std::net::TcpStream, total: usize, mut got: usize) {
    let mut chunk = [0u8; 16384];
    while got < total {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(k) => got += k,
        }
    }
    let _ = c.write_all(&vec![b'x'; total]);
}

/// A long-lived connection (`hold…`): every read is answered with the
/// server's name and what was read, until the client closes it or stays
/// silent for two minutes.
fn hold(c: &mut std::net::TcpStream, buf: &mut [u8], first: usize, name: &str) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(120)));
    let mut n = first;
    loop {
        let mut reply = format!("{name} ").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        if c.write_all(&reply).is_err() {
            return;
        }
        n = match c.read(buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => k,
        };
    }
}

/// One TCP connection: a bulk transfer, an HTTP health check, or a request
/// answered with the server's name.
fn serve_tcp(mut c: std::net::TcpStream, name: &str, log: bool) {
    let mut buf = vec![0u8; 65536];
    // Health probes connect and reset at once: never wait long for them.
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    let Ok(n) = c.read(&mut buf) else { return };
    if n == 0 {
        return;
    }
    if let Some((total, head)) = bulk_of(&buf[..n]) {
        bulk(&mut c, total, n - head);
        return;
    }
    if buf[..n].starts_with(b"hold") {
        hold(&mut c, &mut buf, n, name);
        return;
    }
    if buf[..n].starts_with(b"GET ") {
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
            name.len()
        );
        return;
    }
    if log && let Some(seq) = seq_of(&buf[..n]) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "tcp {seq} {}", monotonic_ns());
        let _ = out.flush();
    }
    let _ = c.write_all(name.as_bytes());
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .context("usage: lab-server NAME [--tcp ADDR]... [--udp ADDR]...")?;
    let (mut tcp, mut udp, mut log, mut max_secs) = (Vec::new(), Vec::new(), false, 900u64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tcp" => tcp.push(args.next().context("--tcp ADDR")?),
            "--udp" => udp.push(args.next().context("--udp ADDR")?),
            "--log" => log = true,
            "--max-secs" => max_secs = args.next().context("--max-secs N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let listeners: Vec<TcpListener> = tcp
        .iter()
        .map(|a| {
            let l = TcpListener::bind(a.as_str()).with_context(|| format!("tcp {a}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect::<Result<_>>()?;
    let sockets: Vec<UdpSocket> = udp
        .iter()
        .map(|a| {
            let s = UdpSocket::bind(a.as_str()).with_context(|| format!("udp {a}"))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(AsRawFd::as_raw_fd)
        .chain(sockets.iter().map(AsRawFd::as_raw_fd))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(max_secs);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        // SAFETY: fds is a valid, correctly sized array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if n <= 0 {
            continue;
        }
        for l in &listeners {
            while let Ok((c, _)) = l.accept() {
                // A thread per connection: one slow client (or a prober that
                // sends its request late) never holds up the others or UDP.
                let name = name.clone();
                std::thread::spawn(move || serve_tcp(c, &name, log));
            }
        }
        for s in &sockets {
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let payload = &buf[..n];
                if payload.starts_with(b"echo:") {
                    // Large datagrams (fragment tests): the whole payload back.
                    let mut reply = format!("{name} ").into_bytes();
                    reply.extend_from_slice(payload);
                    let _ = s.send_to(&reply, from);
                    continue;
                }
                match seq_of(payload) {
                    Some(seq) => {
                        if log {
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "udp {seq} {}", monotonic_ns())?;
                            out.flush()?;
                        }
                        let mut reply = format!("{name} ").into_bytes();
                        reply.extend_from_slice(payload);
                        let _ = s.send_to(&reply, from);
                    }
                    None => {
                        let _ = s.send_to(name.as_bytes(), from);
                    }
                }
            }
        }
    }
    Ok(())
}

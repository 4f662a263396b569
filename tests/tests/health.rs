//! Health probes and the probe scheduler against real sockets (root only).
//!
//! Each test runs in its own network namespace: `lo` holds 198.18.0.1 and
//! 2001:2::1; 198.18.5.2 / 2001:2:5::2 sit behind a veth whose far end drops
//! every frame (a silent drop: no answer, ever); 198.18.9.0/24 and
//! 2001:2:9::/64 are unreachable routes. The test thread enters the namespace
//! and runs a current-thread tokio runtime there, as the daemon does.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use redirector::{
    config::{HealthCheck, ProbeKind},
    health::{Outcome, Reason, Report, Scheduler, Target, TargetId, monotonic_ns, probe},
};
use redirector_tests::{
    netns::{NetNs, in_ns},
    require_root,
};
use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Instant,
};

const MS: Duration = Duration::from_millis(1);
const V4: &str = "198.18.0.1";
const V6: &str = "[2001:2::1]";
/// Behind a veth whose far end drops everything.
const SILENT_V4: &str = "198.18.5.2";
const SILENT_V6: &str = "[2001:2:5::2]";
/// Behind an unreachable route.
const UNREACH_V4: &str = "198.18.9.9";
const UNREACH_V6: &str = "[2001:2:9::9]";

fn addr(host: &str, port: u16) -> SocketAddr {
    format!("{host}:{port}").parse().unwrap()
}

/// The namespace described at the top of this file.
fn lab(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    let n = ns.name.as_str();
    in_ns(n, &["ip", "addr", "add", "198.18.0.1/32", "dev", "lo"]);
    in_ns(n, &["ip", "addr", "add", "2001:2::1/128", "dev", "lo", "nodad"]);
    ns.add_veths(&[("rdr-silent", "rdr-sink")]);
    in_ns(n, &["ip", "addr", "add", "198.18.5.1/24", "dev", "rdr-silent"]);
    in_ns(
        n,
        &[
            "ip",
            "addr",
            "add",
            "2001:2:5::1/64",
            "dev",
            "rdr-silent",
            "nodad",
        ],
    );
    // Frames to a MAC the sink does not own: it drops them, nothing answers.
    let mac = "02:00:00:00:05:02";
    for (family, ip) in [("-4", "198.18.5.2"), ("-6", "2001:2:5::2")] {
        in_ns(
            n,
            &[
                "ip",
                family,
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                "rdr-silent",
                "nud",
                "permanent",
            ],
        );
    }
    in_ns(n, &["ip", "route", "add", "unreachable", "198.18.9.0/24"]);
    in_ns(n, &["ip", "-6", "route", "add", "unreachable", "2001:2:9::/64"]);
    ns
}

/// Runs `f` on a current-thread runtime on this thread, inside `ns`.
fn run_in<F: Future>(ns: &NetNs, f: impl FnOnce() -> F) -> F::Output {
    let _inside = ns.enter();
    // Created after entering, dropped before leaving: its sockets live in `ns`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f())
}

fn check(kind: ProbeKind, interval: Duration, timeout: Duration, fall: u32) -> HealthCheck {
    HealthCheck {
        down_interval: kind.default_down_interval(interval),
        kind,
        interval,
        timeout,
        rise: 3,
        fall,
        silence: None,
    }
}

async fn probe_ms(kind: &ProbeKind, target: SocketAddr, timeout_ms: u64) -> Outcome {
    probe(kind, target, Duration::from_millis(timeout_ms)).await
}

fn assert_reason(outcome: &Outcome, reason: Reason) {
    // A timeout the prober only saw late (tests run side by side on two
    // CPUs) is no verdict: as good as a timeout here, never a pass.
    let late = reason == Reason::Timeout && matches!(outcome.reason, Reason::Late(_));
    if !late {
        assert_eq!(outcome.reason, reason, "{outcome:?}");
    }
    assert_eq!(outcome.ok, reason == Reason::Passed, "{outcome:?}");
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A TCP server that accepts everything and waits for the client to close
/// first (so any TIME_WAIT would be the prober's). Returns its accept count.
async fn tcp_server(at: SocketAddr) -> Arc<Mutex<u64>> {
    let listener = TcpListener::bind(at).await.unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(1..) = read_some(&stream, &mut buf).await {}
            });
        }
    });
    accepted
}

/// An HTTP server: `/ok` → 200, anything else → 503. Records the requests.
async fn http_server(at: SocketAddr) -> Arc<Mutex<Vec<String>>> {
    let listener = TcpListener::bind(at).await.unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") && req.len() < 8192 {
                    match read_some(&stream, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req).into_owned();
                let status = if req.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                seen.lock().unwrap().push(req);
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = write_all(&stream, reply.as_bytes()).await;
            });
        }
    });
    requests
}

/// A TCP server that answers `reply` to every connection, whatever was asked.
async fn canned_server(at: SocketAddr, reply: &'static [u8]) {
    let listener = TcpListener::bind(at).await.unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = write_all(&stream, reply).await;
                let mut buf = [0u8; 1024];
                while let Ok(1..) = read_some(&stream, &mut buf).await {}
            });
        }
    });
}

/// A TCP server that accepts and never answers.
async fn mute_server(at: SocketAddr) {
    let listener = TcpListener::bind(at).await.unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
}

/// A UDP server answering `reply` (or the datagram itself when `None`).
async fn udp_server(at: SocketAddr, reply: Option<&'static [u8]>) {
    let sock = UdpSocket::bind(at).await.unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(reply.unwrap_or(&buf[..n]), from).await;
        }
    });
}

/// TIME_WAIT sockets (state 06) in the calling thread's namespace.
fn time_wait_count() -> usize {
    ["tcp", "tcp6"]
        .iter()
        .map(|f| {
            // thread-self: /proc/self/net would show the main thread's namespace.
            let table = std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap();
            table
                .lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(3) == Some("06"))
                .count()
        })
        .sum()
}

#[test]
fn tcp_passed_refused_timeout_unreachable() {
    if !require_root("tcp_passed_refused_timeout_unreachable") {
        return;
    }
    let ns = lab("htcp");
    run_in(&ns, || async {
        for (host, silent, unreach) in [(V4, SILENT_V4, UNREACH_V4), (V6, SILENT_V6, UNREACH_V6)] {
            tcp_server(addr(host, 8001)).await;
            let tcp = ProbeKind::Tcp;
            let passed = probe_ms(&tcp, addr(host, 8001), 500).await;
            assert_reason(&passed, Reason::Passed);
            assert!(passed.latency < 500 * MS);
            assert_reason(&probe_ms(&tcp, addr(host, 8002), 500).await, Reason::Refused);
            assert_reason(&probe_ms(&tcp, addr(unreach, 80), 500).await, Reason::Unreachable);
            let timeout = probe_ms(&tcp, addr(silent, 80), 100).await;
            assert_reason(&timeout, Reason::Timeout);
            assert!(
                timeout.latency >= 100 * MS && timeout.latency < 2000 * MS,
                "{timeout:?}"
            );
        }
    });
}

/// A server that accepts every connection and closes it at once with a
/// RST (SO_LINGER 0), as a load-shedding server does; on a thread of its
/// own, so it answers while the prober's thread is busy.
fn resetting_server(at: SocketAddr) {
    let listener = std::net::TcpListener::bind(at).unwrap();
    std::thread::spawn(move || {
        while let Ok((stream, _)) = listener.accept() {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket fd and a linger struct of the size given.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            drop(stream);
        }
    });
}

/// Issue 11: an application's reset is not a dead listener. A completed
/// handshake proves the port is served (HAProxy's layer-4 check says the
/// same), also when the prober looks only after the server's RST came in
/// (a busy prober: here its thread blocked 5 ms right after the SYN). A
/// closed port still refuses.
#[test]
fn a_tcp_probe_passes_a_listener_that_resets_what_it_accepts() {
    if !require_root("a_tcp_probe_passes_a_listener_that_resets_what_it_accepts") {
        return;
    }
    let ns = lab("hrst");
    run_in(&ns, || async {
        for host in [V4, V6] {
            resetting_server(addr(host, 8011));
            let mut failed = Vec::new();
            for _ in 0..20 {
                let (o, ()) = tokio::join!(probe_ms(&ProbeKind::Tcp, addr(host, 8011), 500), async {
                    tokio::task::yield_now().await;
                    std::thread::sleep(5 * MS);
                });
                if !o.ok {
                    failed.push(o.reason);
                }
            }
            assert!(
                failed.is_empty(),
                "{host}: {} of 20 failed: {failed:?}",
                failed.len()
            );
            assert_reason(
                &probe_ms(&ProbeKind::Tcp, addr(host, 8012), 500).await,
                Reason::Refused,
            );
        }
    });
}

#[test]
fn tcp_probes_leave_no_time_wait() {
    if !require_root("tcp_probes_leave_no_time_wait") {
        return;
    }
    let ns = lab("htw");
    run_in(&ns, || async {
        let accepted = tcp_server(addr(V4, 8100)).await;
        let accepted6 = tcp_server(addr(V6, 8100)).await;
        for i in 0..2500 {
            let target = if i % 5 == 4 {
                addr(V6, 8100)
            } else {
                addr(V4, 8100)
            };
            let outcome = probe_ms(&ProbeKind::Tcp, target, 1000).await;
            assert_reason(&outcome, Reason::Passed);
        }
        // Let the server side finish reading the resets.
        tokio::time::sleep(100 * MS).await;
        assert_eq!(*accepted.lock().unwrap() + *accepted6.lock().unwrap(), 2500);
        assert_eq!(
            time_wait_count(),
            0,
            "probes must close with RST, leaving no TIME_WAIT"
        );
    });
}

#[test]
fn udp_passed_refused_bad_reply_timeout_unreachable() {
    if !require_root("udp_passed_refused_bad_reply_timeout_unreachable") {
        return;
    }
    let ns = lab("hudp");
    run_in(&ns, || async {
        let any = ProbeKind::Udp {
            send: b"ping".to_vec(),
            expect: None,
        };
        let pong = ProbeKind::Udp {
            send: b"ping".to_vec(),
            expect: Some(b"pong".to_vec()),
        };
        for (host, unreach) in [(V4, UNREACH_V4), (V6, UNREACH_V6)] {
            udp_server(addr(host, 9001), None).await;
            udp_server(addr(host, 9002), Some(b"pong")).await;
            udp_server(addr(host, 9003), Some(b"pongpong")).await;
            // Bound, never answers.
            let mute = UdpSocket::bind(addr(host, 9004)).await.unwrap();

            assert_reason(&probe_ms(&any, addr(host, 9001), 500).await, Reason::Passed);
            assert_reason(&probe_ms(&pong, addr(host, 9002), 500).await, Reason::Passed);
            assert_reason(&probe_ms(&pong, addr(host, 9001), 500).await, Reason::BadReply);
            assert_reason(&probe_ms(&pong, addr(host, 9003), 500).await, Reason::BadReply);
            // ICMP port unreachable.
            assert_reason(&probe_ms(&any, addr(host, 9005), 500).await, Reason::Refused);
            assert_reason(
                &probe_ms(&any, addr(unreach, 9001), 500).await,
                Reason::Unreachable,
            );
            let timeout = probe_ms(&any, addr(host, 9004), 100).await;
            assert_reason(&timeout, Reason::Timeout);
            assert!(timeout.latency >= 100 * MS, "{timeout:?}");
            drop(mute);
        }
        assert_reason(&probe_ms(&any, addr(SILENT_V4, 9001), 100).await, Reason::Timeout);
    });
}

#[test]
fn an_answer_that_arrived_while_starved_counts() {
    if !require_root("an_answer_that_arrived_while_starved_counts") {
        return;
    }
    let ns = lab("hstarve");
    run_in(&ns, || async {
        // The server answers from its own thread, 20 ms after the request,
        // while the prober's runtime is blocked far past the 50 ms timeout.
        let server = std::net::UdpSocket::bind(addr(V4, 9100)).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let answer = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            std::thread::sleep(20 * MS);
            server.send_to(&buf[..n], from).unwrap();
        });
        static UDP: std::sync::LazyLock<ProbeKind> = std::sync::LazyLock::new(|| ProbeKind::Udp {
            send: b"ping".to_vec(),
            expect: Some(b"ping".to_vec()),
        });
        let probe = tokio::spawn(probe_ms(&UDP, addr(V4, 9100), 50));
        // Let the probe send, then starve the runtime.
        tokio::time::sleep(MS).await;
        std::thread::sleep(200 * MS);
        let outcome = probe.await.unwrap();
        answer.join().unwrap();
        assert_reason(&outcome, Reason::Passed);
    });
}

/// Issue 10, fault 1: a verdict is about the backend, never the prober's
/// timing. An HTTP probe whose connection was up before the runtime stalled
/// sends its request late and still passes; a silent backend seen only long
/// after the deadline gives no verdict rather than a timeout.
#[test]
fn a_stalled_prober_gives_no_false_verdict() {
    if !require_root("a_stalled_prober_gives_no_false_verdict") {
        return;
    }
    let ns = lab("hstall");
    run_in(&ns, || async {
        let _requests = http_server(addr(V4, 8090)).await;
        static GET: std::sync::LazyLock<ProbeKind> = std::sync::LazyLock::new(|| ProbeKind::Http {
            path: "/ok".into(),
            expect: vec![200],
        });
        for _ in 0..5 {
            let probe = tokio::spawn(probe_ms(&GET, addr(V4, 8090), 30));
            // Let it connect (a local handshake takes microseconds), then
            // stall the runtime far past the timeout.
            tokio::task::yield_now().await;
            std::thread::sleep(MS);
            tokio::task::yield_now().await;
            std::thread::sleep(200 * MS);
            assert_reason(&probe.await.unwrap(), Reason::Passed);
        }
        assert_reason(&probe_ms(&GET, addr(V4, 8090), 30).await, Reason::Passed);

        static UDP: std::sync::LazyLock<ProbeKind> = std::sync::LazyLock::new(|| ProbeKind::Udp {
            send: b"ping".to_vec(),
            expect: None,
        });
        let silent = tokio::spawn(probe_ms(&UDP, addr(SILENT_V4, 9002), 20));
        tokio::time::sleep(MS).await;
        std::thread::sleep(200 * MS);
        let outcome = silent.await.unwrap();
        assert!(matches!(outcome.reason, Reason::Late(_)), "{outcome:?}");
        assert!(!outcome.ok);
        // Seen on time, the same silence is a timeout.
        assert_reason(&probe_ms(&UDP, addr(SILENT_V4, 9002), 20).await, Reason::Timeout);
    });
}

#[test]
fn icmp_passed_unreachable_timeout() {
    if !require_root("icmp_passed_unreachable_timeout") {
        return;
    }
    let ns = lab("hicmp");
    run_in(&ns, || async {
        for (host, unreach, silent) in [(V4, UNREACH_V4, SILENT_V4), (V6, UNREACH_V6, SILENT_V6)] {
            // Several at once: each must pick its own reply out of all of them.
            static ICMP: ProbeKind = ProbeKind::Icmp;
            let probes = (0..8).map(|_| probe_ms(&ICMP, addr(host, 0), 500));
            for outcome in futures_join(probes).await {
                assert_reason(&outcome, Reason::Passed);
            }
            assert_reason(
                &probe_ms(&ProbeKind::Icmp, addr(unreach, 0), 500).await,
                Reason::Unreachable,
            );
            assert_reason(
                &probe_ms(&ProbeKind::Icmp, addr(silent, 0), 100).await,
                Reason::Timeout,
            );
        }
        // The hosts stop answering echo requests.
        in_ns(&ns.name, &["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"]);
        in_ns(&ns.name, &["sysctl", "-qw", "net.ipv6.icmp.echo_ignore_all=1"]);
        for host in [V4, V6] {
            assert_reason(
                &probe_ms(&ProbeKind::Icmp, addr(host, 0), 100).await,
                Reason::Timeout,
            );
        }
    });
}

/// Runs futures concurrently on this task (no `futures` crate here).
async fn futures_join<F: Future + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let local = tokio::task::LocalSet::new();
    let handles: Vec<_> = futures.map(|f| local.spawn_local(f)).collect();
    local
        .run_until(async move {
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        })
        .await
}

#[test]
fn http_status_bad_reply_timeout() {
    if !require_root("http_status_bad_reply_timeout") {
        return;
    }
    let ns = lab("hhttp");
    run_in(&ns, || async {
        let get = |path: &str| ProbeKind::Http {
            path: path.into(),
            expect: vec![200, 204],
        };
        for host in [V4, V6] {
            let requests = http_server(addr(host, 8080)).await;
            assert_reason(
                &probe_ms(&get("/ok"), addr(host, 8080), 500).await,
                Reason::Passed,
            );
            assert_reason(
                &probe_ms(&get("/fail"), addr(host, 8080), 500).await,
                Reason::BadStatus(503),
            );
            let first = requests.lock().unwrap()[0].clone();
            assert_eq!(
                first,
                format!(
                    "GET /ok HTTP/1.1\r\nHost: {host}:8080\r\nUser-Agent: redirector\r\nConnection: close\r\n\r\n"
                )
            );

            canned_server(addr(host, 8081), b"SSH-2.0-OpenSSH_9.2\r\n").await;
            assert_reason(
                &probe_ms(&get("/ok"), addr(host, 8081), 500).await,
                Reason::BadReply,
            );
            mute_server(addr(host, 8082)).await;
            assert_reason(
                &probe_ms(&get("/ok"), addr(host, 8082), 100).await,
                Reason::Timeout,
            );
            assert_reason(
                &probe_ms(&get("/ok"), addr(host, 8083), 500).await,
                Reason::Refused,
            );
        }
        assert_eq!(time_wait_count(), 0, "http probes close with RST too");
    });
}

fn pid_in(file: &std::path::Path) -> u32 {
    std::fs::read_to_string(file).unwrap().trim().parse().unwrap()
}

/// Alive = exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next();
            !matches!(state, Some("Z" | "X"))
        })
        .unwrap_or(false)
}

#[test]
fn exec_passed_exit_timeout() {
    if !require_root("exec_passed_exit_timeout") {
        return;
    }
    let ns = lab("hexec");
    let dir = std::env::temp_dir().join(format!("rdr-health-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    run_in(&ns, || async {
        let sh = |script: &str| ProbeKind::Exec {
            command: vec!["sh".into(), "-c".into(), script.into()],
        };
        let target = addr(V4, 8080);
        let env =
            sh(r#"test "$REDIRECTOR_BACKEND_ADDR" = 198.18.0.1 && test "$REDIRECTOR_BACKEND_PORT" = 8080"#);
        assert_reason(&probe_ms(&env, target, 2000).await, Reason::Passed);
        assert_reason(&probe_ms(&sh("exit 1"), target, 2000).await, Reason::Exit(1));
        assert_reason(
            &probe_ms(&sh("kill -9 $$"), target, 2000).await,
            Reason::Exit(137),
        );
        let missing = ProbeKind::Exec {
            command: vec!["/nonexistent/rdr-check".into()],
        };
        assert!(matches!(
            probe_ms(&missing, target, 2000).await.reason,
            Reason::Error(_)
        ));

        // A hung check (with a child of its own) is killed at the timeout and reaped.
        let (me, kid) = (dir.join("sh.pid"), dir.join("sleep.pid"));
        let script = format!(
            "echo $$ > {}; sleep 30 & echo $! > {}; wait",
            me.display(),
            kid.display()
        );
        let hung = probe_ms(&sh(&script), target, 300).await;
        assert_reason(&hung, Reason::Timeout);
        assert!(hung.latency < 5 * Duration::from_secs(1), "{hung:?}");
        let (me, kid) = (pid_in(&me), pid_in(&kid));
        assert!(
            !std::path::Path::new(&format!("/proc/{me}")).exists(),
            "the killed check must be reaped, not left a zombie"
        );
        let until = Instant::now() + Duration::from_secs(2);
        while alive(kid) && Instant::now() < until {
            tokio::time::sleep(10 * MS).await;
        }
        assert!(
            !alive(kid),
            "the check's own child is killed with its process group"
        );

        // A check that passes but leaves a process behind: the group goes too.
        let script = format!("sleep 30 & echo $! > {}; exit 0", dir.join("sleep.pid").display());
        assert_reason(&probe_ms(&sh(&script), target, 2000).await, Reason::Passed);
        let kid = pid_in(&dir.join("sleep.pid"));
        let until = Instant::now() + Duration::from_secs(2);
        while alive(kid) && Instant::now() < until {
            tokio::time::sleep(10 * MS).await;
        }
        assert!(
            !alive(kid),
            "a finished check's background child is killed (issue 10, fault 11)"
        );
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reports received within `span`.
async fn collect(rx: &mut mpsc::Receiver<Report>, span: Duration) -> Vec<Report> {
    let until = Instant::now() + span;
    let mut out = Vec::new();
    while let Ok(Some(report)) = tokio::time::timeout_at(until, rx.recv()).await {
        out.push(report);
    }
    out
}

fn target(at: SocketAddr, interval: Duration, timeout: Duration, fall: u32) -> Target {
    Target {
        addr: at,
        check: check(ProbeKind::Tcp, interval, timeout, fall),
    }
}

const SEC_NS: u64 = 1_000_000_000;

#[test]
fn scheduler_budget_stretches_intervals_and_spreads_phases() {
    if !require_root("scheduler_budget_stretches_intervals_and_spreads_phases") {
        return;
    }
    let ns = lab("hbudget");
    run_in(&ns, || async {
        tcp_server(addr(V4, 7001)).await;
        let (tx, mut rx) = mpsc::channel(8192);
        let scheduler = Scheduler::spawn(1000, tx).unwrap();
        for i in 0..100 {
            scheduler.set(TargetId(i), target(addr(V4, 7001), MS, 50 * MS, 2));
        }
        for i in 0..100 {
            let eff = scheduler.effective_interval(TargetId(i)).unwrap();
            assert!(eff.abs_diff(100 * MS) < MS, "100 targets, budget 1000/s: {eff:?}");
        }
        let t0 = monotonic_ns();
        let reports = collect(&mut rx, Duration::from_millis(1500)).await;
        assert!(
            reports.iter().all(|r| r.outcome.ok),
            "{:?}",
            reports.iter().find(|r| !r.outcome.ok)
        );
        // Steady state, one second: ≈ 1000 probes (100 targets × 10).
        let window: Vec<u64> = reports
            .iter()
            .map(|r| r.sent)
            .filter(|&s| s >= t0 + 300 * 1_000_000 && s < t0 + 300 * 1_000_000 + SEC_NS)
            .collect();
        assert!(
            (500..=1100).contains(&window.len()),
            "{} probes in 1 s",
            window.len()
        );
        // Spread: a burst would put all 100 targets in the same few ms.
        let mut sent = window.clone();
        sent.sort_unstable();
        let densest = sent
            .iter()
            .enumerate()
            .map(|(i, &s)| sent[i..].iter().take_while(|&&t| t < s + 10_000_000).count())
            .max()
            .unwrap();
        assert!(
            densest <= 60,
            "{densest} probes within 10 ms (perfectly spread: 10)"
        );

        // A bigger budget shortens the intervals again.
        scheduler.set_budget(2000);
        assert!(
            scheduler
                .effective_interval(TargetId(7))
                .unwrap()
                .abs_diff(50 * MS)
                < MS
        );
        let t1 = monotonic_ns();
        let reports = collect(&mut rx, Duration::from_millis(1300)).await;
        let n = reports
            .iter()
            .filter(|r| r.sent >= t1 + 200 * 1_000_000 && r.sent < t1 + 200 * 1_000_000 + SEC_NS)
            .count();
        eprintln!(
            "budget 1000/s: {} probes in 1 s, densest 10 ms: {densest}; budget 2000/s: {n}",
            window.len()
        );
        assert!((1000..=2200).contains(&n), "{n} probes in 1 s at budget 2000");
    });
}

#[test]
fn scheduler_confirms_a_hard_failure_at_once() {
    if !require_root("scheduler_confirms_a_hard_failure_at_once") {
        return;
    }
    let ns = lab("hhard");
    run_in(&ns, || async {
        let (tx, mut rx) = mpsc::channel(1024);
        let scheduler = Scheduler::spawn(5000, tx).unwrap();
        // Interval 1 s: anything sooner is the immediate confirmation.
        scheduler.set(
            TargetId(1),
            target(addr(V4, 7002), Duration::from_secs(1), 100 * MS, 3),
        );
        let reports = collect(&mut rx, Duration::from_millis(500)).await;
        assert_eq!(
            reports.len(),
            3,
            "fall = 3: one probe and two immediate re-probes: {reports:?}"
        );
        assert!(reports.iter().all(|r| r.outcome.reason == Reason::Refused));
        let span = reports[2].sent - reports[0].sent;
        assert!(span < 50_000_000, "fall hard failures within {span} ns");
    });
}

#[test]
fn scheduler_probes_a_down_target_once_per_interval() {
    if !require_root("scheduler_probes_a_down_target_once_per_interval") {
        return;
    }
    let ns = lab("hdown");
    run_in(&ns, || async {
        let (tx, mut rx) = mpsc::channel(1024);
        let scheduler = Scheduler::spawn(5000, tx).unwrap();
        let t0 = monotonic_ns();
        scheduler.set(TargetId(1), target(addr(V4, 7003), 20 * MS, 100 * MS, 2));
        let reports = collect(&mut rx, Duration::from_millis(1200)).await;
        assert!(reports.iter().all(|r| r.outcome.reason == Reason::Refused));
        // 1.2 s / 20 ms = 60 ticks, plus one confirmation: no retry avalanche.
        assert!(
            reports.len() <= 66,
            "{} probes of a down target in 1.2 s",
            reports.len()
        );
        let late = reports
            .iter()
            .filter(|r| r.sent >= t0 + 100 * 1_000_000 && r.sent < t0 + 100 * 1_000_000 + SEC_NS)
            .count();
        assert!(
            (20..=52).contains(&late),
            "{late} probes in 1 s at a 20 ms interval"
        );
    });
}

#[test]
fn scheduler_overlaps_probes_of_a_silent_target() {
    if !require_root("scheduler_overlaps_probes_of_a_silent_target") {
        return;
    }
    let ns = lab("hsilent");
    run_in(&ns, || async {
        let (tx, mut rx) = mpsc::channel(1024);
        let scheduler = Scheduler::spawn(5000, tx).unwrap();
        let start = Instant::now();
        scheduler.set(TargetId(1), target(addr(SILENT_V4, 80), 10 * MS, 50 * MS, 2));
        let first = rx.recv().await.unwrap();
        assert_eq!(first.outcome.reason, Reason::Timeout);
        assert!(start.elapsed() >= 50 * MS);
        let reports = collect(&mut rx, Duration::from_secs(1)).await;
        assert!(
            reports
                .iter()
                .all(|r| matches!(r.outcome.reason, Reason::Timeout | Reason::Late(_)))
        );
        // One verdict per interval although each takes 5 intervals; without
        // overlap there would be at most 1 s / 50 ms = 20.
        assert!(
            (40..=110).contains(&reports.len()),
            "{} timeouts in 1 s",
            reports.len()
        );
    });
}

#[test]
fn scheduler_probe_now_is_rate_limited_and_remove_stops() {
    if !require_root("scheduler_probe_now_is_rate_limited_and_remove_stops") {
        return;
    }
    let ns = lab("hnow");
    run_in(&ns, || async {
        tcp_server(addr(V4, 7004)).await;
        let (tx, mut rx) = mpsc::channel(1024);
        let scheduler = Scheduler::spawn(5000, tx).unwrap();
        let slow = target(addr(V4, 7004), Duration::from_secs(1), 100 * MS, 2);
        scheduler.set(TargetId(1), slow.clone());
        assert!(rx.recv().await.unwrap().outcome.ok);
        let asked = monotonic_ns();
        scheduler.probe_now(TargetId(1));
        scheduler.probe_now(TargetId(1));
        scheduler.probe_now(TargetId(99)); // unknown: ignored
        let reports = collect(&mut rx, Duration::from_millis(300)).await;
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(reports[0].sent - asked < 50_000_000);

        // Replacing restarts the cadence: a fresh first probe at once.
        scheduler.set(TargetId(1), slow);
        assert_eq!(collect(&mut rx, Duration::from_millis(300)).await.len(), 1);

        // After remove, no probe is sent any more.
        scheduler.set(TargetId(2), target(addr(V4, 7004), 10 * MS, 100 * MS, 2));
        assert!(!collect(&mut rx, Duration::from_millis(100)).await.is_empty());
        scheduler.remove(TargetId(2));
        scheduler.remove(TargetId(1));
        let removed = monotonic_ns();
        assert_eq!(scheduler.effective_interval(TargetId(2)), None);
        let after = collect(&mut rx, Duration::from_millis(200)).await;
        assert!(after.iter().all(|r| r.sent < removed), "{after:?}");
        assert!(scheduler.is_running());
    });
}

#[test]
fn scheduler_stops_with_its_receiver() {
    if !require_root("scheduler_stops_with_its_receiver") {
        return;
    }
    let ns = lab("hstop");
    run_in(&ns, || async {
        let (tx, rx) = mpsc::channel(16);
        let scheduler = Scheduler::spawn(5000, tx).unwrap();
        scheduler.set(TargetId(1), target(addr(V4, 7005), 10 * MS, 100 * MS, 2));
        drop(rx);
        tokio::time::sleep(50 * MS).await;
        assert!(!scheduler.is_running());
    });
}

//! The metrics HTTP endpoint over a real socket (root only).
//!
//! Each test runs in its own network namespace with 198.18.0.1 on `lo`; the
//! test thread enters it and runs a current-thread tokio runtime there, as the
//! daemon does, with a task standing in for the event loop.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use redirector::metrics::{CONTENT_TYPE, Live, Metrics, Scrape, Server};
use redirector_tests::{
    netns::{NetNs, in_ns},
    require_root,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
    time::timeout,
};

const ADDR: &str = "198.18.0.1:0";

/// Runs `f` on a current-thread runtime on this thread, inside a fresh
/// namespace with 198.18.0.1 on `lo`.
fn run<F: Future>(tag: &str, f: impl FnOnce() -> F) -> F::Output {
    let ns = NetNs::new(tag);
    in_ns(&ns.name, &["ip", "addr", "add", "198.18.0.1/32", "dev", "lo"]);
    let _inside = ns.enter();
    // Created after entering, dropped before leaving: its sockets live in `ns`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f())
}

/// A parsed HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `raw` on a fresh connection and reads until the server closes.
async fn request(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    read_reply(&mut stream).await
}

async fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts.next().unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let reply = Reply {
        status,
        headers,
        body: body.to_owned(),
    };
    assert_eq!(reply.header("Connection"), Some("close"), "{reply:?}");
    assert_eq!(
        reply.header("Content-Length"),
        Some(reply.body.len().to_string().as_str()),
        "{reply:?}"
    );
    reply
}

/// A rendering with a little of everything.
fn rendering() -> String {
    let mut m = Metrics::new();
    m.probe("web", "primary", "tcp", "pass", "ok", Duration::from_millis(1));
    m.transition("web", "failover", Some(Duration::from_millis(40)));
    m.render(&Live {
        datapath: vec![("passed", 3)],
        flow_entries: Some(2),
        probe_rate: 1.5,
        probe_budget: 10,
        ..Live::default()
    })
}

/// Stands in for the event loop: answers every scrape with `text`.
fn answer_with(text: String) -> mpsc::Sender<Scrape> {
    let (tx, mut rx) = mpsc::channel::<Scrape>(4);
    tokio::spawn(async move {
        while let Some(scrape) = rx.recv().await {
            // A scrape that timed out has dropped its receiver: nothing to do.
            scrape.reply.send(text.clone()).ok();
        }
    });
    tx
}

#[test]
fn serves_metrics_and_refuses_the_rest() {
    if !require_root("serves_metrics_and_refuses_the_rest") {
        return;
    }
    run("metrics-serve", || async {
        let text = rendering();
        let server = Server::bind(ADDR.parse().unwrap(), answer_with(text.clone()))
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_eq!(addr.ip().to_string(), "198.18.0.1");
        assert_ne!(addr.port(), 0);

        let ok = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").await;
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(ok.header("Content-Type"), Some(CONTENT_TYPE));
        assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
        assert_eq!(ok.body, text);
        assert!(
            ok.body
                .contains("\nredirector_datapath_packets_total{reason=\"passed\"} 3\n")
        );
        print!("{}", ok.body);

        // Prometheus may add query parameters; HEAD gets the headers only.
        let query = request(addr, b"GET /metrics?name[]=up HTTP/1.0\r\n\r\n").await;
        assert_eq!(query.status, 200);
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"HEAD /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
        assert!(
            raw.contains(&format!("\r\nContent-Length: {}\r\n", text.len())),
            "{raw}"
        );
        assert!(raw.ends_with("\r\n\r\n"), "{raw}");

        let other = request(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert_eq!(other.status, 404, "{other:?}");
        let post = request(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(post.status, 405, "{post:?}");
        assert_eq!(post.header("Allow"), Some("GET, HEAD"));
        let garbage = request(addr, b"hello\r\n\r\n").await;
        assert_eq!(garbage.status, 400, "{garbage:?}");

        // A head over 8 KiB is refused (the client reads the answer after
        // sending what fits; the rest is never read).
        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        huge.resize(8 * 1024, b'a');
        let big = request(addr, &huge).await;
        assert_eq!(big.status, 431, "{big:?}");

        // Dropping the server closes the listener.
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            tokio::task::yield_now().await;
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                other => assert!(Instant::now() < deadline, "still listening after drop: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

#[test]
fn a_loop_that_does_not_answer_gives_503() {
    if !require_root("a_loop_that_does_not_answer_gives_503") {
        return;
    }
    run("metrics-503", || async {
        // The loop holds its receiver and never reads it.
        let (tx, rx) = mpsc::channel::<Scrape>(4);
        let server = Server::bind(ADDR.parse().unwrap(), tx).await.unwrap();
        let start = Instant::now();
        let reply = request(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n").await;
        let took = start.elapsed();
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
            "{took:?}"
        );

        // A loop that reads the scrape but drops it: 503 at once.
        let (tx, mut rx2) = mpsc::channel::<Scrape>(4);
        tokio::spawn(async move { while rx2.recv().await.is_some() {} });
        let server2 = Server::bind(ADDR.parse().unwrap(), tx).await.unwrap();
        let start = Instant::now();
        let reply = request(server2.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        drop(rx);
    });
}

#[test]
fn at_most_16_connections_are_served() {
    if !require_root("at_most_16_connections_are_served") {
        return;
    }
    run("metrics-limit", || async {
        let text = rendering();
        let server = Server::bind(ADDR.parse().unwrap(), answer_with(text.clone()))
            .await
            .unwrap();
        let addr = server.local_addr();
        // 16 clients that connect and say nothing hold every slot.
        let mut idle = Vec::new();
        for _ in 0..16 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // The 17th connects (listen backlog) but is not served...
        let mut waiting = TcpStream::connect(addr).await.unwrap();
        waiting.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut byte = [0u8; 1];
        let early = timeout(Duration::from_millis(300), waiting.read(&mut byte)).await;
        assert!(early.is_err(), "the 17th connection was served: {early:?}");
        // ... until one slot frees.
        drop(idle.pop());
        let reply = read_reply(&mut waiting).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, text);
        // An idle client is dropped after the 5 s read timeout with a 408.
        let start = Instant::now();
        let reply = read_reply(&mut idle[0]).await;
        assert_eq!(reply.status, 408, "{reply:?}");
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    });
}

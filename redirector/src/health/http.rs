//! HTTP/1.1 probe: `GET path`, judged on the status line alone.
use std::{
    io::{self, Read},
    net::SocketAddr,
    time::Duration,
};

use socket2::Socket;
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

use super::{
    Outcome, Reason,
    sock::{reason_of, until},
    tcp,
};

/// More than any real status line; a peer that sends this much without a
/// line end is not speaking HTTP.
const MAX_STATUS_LINE: usize = 1024;

/// Passed when the status code is in `expect`; the connection closes with RST
/// (see `tcp::connect`), as soon as the status line is read.
pub(super) async fn probe(target: SocketAddr, path: &str, expect: &[u16], timeout: Duration) -> Outcome {
    let start = Instant::now();
    let deadline = start + timeout;
    let result = match tcp::connect(target, deadline).await {
        Ok(fd) => get(&fd, target, path, expect, deadline).await,
        Err(reason) => Err(reason),
    };
    Outcome::finish(result, start)
}

async fn get(
    fd: &AsyncFd<Socket>,
    target: SocketAddr,
    path: &str,
    expect: &[u16],
    deadline: Instant,
) -> Result<(), Reason> {
    // SocketAddr's Display brackets IPv6 addresses, as a Host header needs.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: redirector\r\nConnection: close\r\n\r\n"
    );
    let mut sent = 0;
    while sent < request.len() {
        // MSG_NOSIGNAL: a reset peer must not SIGPIPE the daemon.
        let rest = &request.as_bytes()[sent..];
        match until(fd, Interest::WRITABLE, deadline, |s| {
            s.send_with_flags(rest, libc::MSG_NOSIGNAL)
        })
        .await
        {
            None => return Err(Reason::Timeout),
            Some(Err(e)) => return Err(reason_of(&e)),
            Some(Ok(n)) => sent += n,
        }
    }

    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    loop {
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            return match status_code(&buf[..end]) {
                Some(code) if expect.contains(&code) => Ok(()),
                Some(code) => Err(Reason::BadStatus(code)),
                None => Err(Reason::BadReply),
            };
        }
        if len == buf.len() {
            return Err(Reason::BadReply);
        }
        let free = &mut buf[len..];
        match until(fd, Interest::READABLE, deadline, |s| read(s, free)).await {
            None => return Err(Reason::Timeout),
            Some(Err(e)) => return Err(reason_of(&e)),
            // Closed before a whole status line.
            Some(Ok(0)) => return Err(Reason::BadReply),
            Some(Ok(n)) => len += n,
        }
    }
}

fn read(mut sock: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    sock.read(buf)
}

/// The code of a status line `HTTP/1.x NNN [reason]` (line end excluded).
fn status_code(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let (version, rest) = (&rest[..space], &rest[space + 1..]);
    if version.is_empty() || !version.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return None;
    }
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::status_code;

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 204"), Some(204));
        assert_eq!(status_code(b"HTTP/2 200 "), Some(200));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH_9.2\r"), None);
        assert_eq!(status_code(b"HTTP/1.1 20 OK"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(status_code(b"HTTP/x 200 OK"), None);
        assert_eq!(status_code(b""), None);
    }
}

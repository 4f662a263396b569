//! HTTP/1.1 probe: `GET path`, judged on the status line alone.
//!
//! The timeout bounds the backend's time: its handshake (the kernel's RTT
//! measurement) plus the time from our request to its status line (the
//! kernel's receive time). The prober's own delay between the two — this
//! host busy, the daemon's loop stalled — is not counted: a request sent late
//! gets its full budget, so a stall cannot fail a healthy backend.
use std::{net::SocketAddr, os::fd::AsRawFd as _, time::Duration};

use socket2::Socket;
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

use super::{
    Outcome, Reason,
    sock::{answered, reason_of, recv_stamped, set_timestamps, until},
    tcp,
};

/// More than any real status line; a peer that sends this much without a
/// line end is not speaking HTTP.
const MAX_STATUS_LINE: usize = 1024;

/// Passed when the status code is in `expect`; the connection closes with RST
/// (see `tcp::connect`), as soon as the status line is read.
pub(super) async fn probe(target: SocketAddr, path: &str, expect: &[u16], timeout: Duration) -> Outcome {
    let start = Instant::now();
    let result = match tcp::connect(target, start + timeout).await {
        Ok(fd) => {
            // What is left of the backend's budget once it has answered the
            // handshake, counted from the moment the request goes out.
            let left = timeout.saturating_sub(handshake(&fd).min(start.elapsed()));
            match set_timestamps(fd.get_ref()) {
                Ok(()) => get(&fd, target, path, expect, left).await,
                Err(reason) => Err(reason),
            }
        }
        Err(reason) => Err(reason),
    };
    Outcome::finish(result, start)
}

/// The handshake's round trip as the kernel measured it (`tcpi_rtt`, the
/// SYN → SYN-ACK sample on a fresh connection); 0 if it cannot tell.
fn handshake(fd: &AsyncFd<Socket>) -> Duration {
    // SAFETY: tcp_info is plain data; zeroed is a valid value to overwrite.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid TCP socket fd; `info` and `len` describe a writable
    // buffer that outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.get_ref().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Duration::from_micros(u64::from(info.tcpi_rtt))
    } else {
        Duration::ZERO
    }
}

async fn get(
    fd: &AsyncFd<Socket>,
    target: SocketAddr,
    path: &str,
    expect: &[u16],
    left: Duration,
) -> Result<(), Reason> {
    let deadline = Instant::now() + left;
    // SocketAddr's Display brackets IPv6 addresses, as a Host header needs.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: redirector\r\nConnection: close\r\n\r\n"
    );
    let mut sent = 0;
    while sent < request.len() {
        // MSG_NOSIGNAL: a reset peer must not SIGPIPE the daemon.
        let rest = &request.as_bytes()[sent..];
        sent += until(fd, Interest::WRITABLE, deadline, |s| {
            s.send_with_flags(rest, libc::MSG_NOSIGNAL)
        })
        .await?
        .map_err(|e| reason_of(&e))?;
    }

    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    let mut arrived = None;
    loop {
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            answered(arrived, deadline)?;
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
        let (n, at) = until(fd, Interest::READABLE, deadline, |s| recv_stamped(s, free))
            .await?
            .map_err(|e| reason_of(&e))?;
        if n == 0 {
            // Closed before a whole status line.
            return Err(Reason::BadReply);
        }
        len += n;
        arrived = at;
    }
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

//! Socket plumbing shared by the network probes.
use std::{io, net::SocketAddr, os::fd::AsRawFd};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

use super::Reason;

/// A fresh non-blocking, close-on-exec socket of `target`'s family.
pub(super) fn socket(target: SocketAddr, ty: Type, proto: Protocol) -> Result<Socket, Reason> {
    Socket::new(
        Domain::for_address(target),
        ty.nonblocking().cloexec(),
        Some(proto),
    )
    .map_err(error)
}

/// Makes every ICMP error about this socket's packets a socket error. Without
/// it a connected UDP/raw socket only reports the "fatal" ones (port
/// unreachable) and a host unreachable would look like a timeout.
pub(super) fn set_recverr(sock: &Socket, v6: bool) -> Result<(), Reason> {
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd, and an int option whose value pointer and
    // length describe `on`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(error(io::Error::last_os_error()))
    }
}

/// Runs `op` whenever the socket is ready for `interest` until it gives
/// something other than `WouldBlock`, or `deadline` passes. `None` is a timeout.
///
/// At the deadline `op` runs once more without waiting: when the daemon was
/// starved of CPU, an answer that did arrive in time must count (no false
/// failover on a busy machine), even if its wake-up had not been seen yet.
pub(super) async fn until<T>(
    fd: &AsyncFd<Socket>,
    interest: Interest,
    deadline: Instant,
    mut op: impl FnMut(&Socket) -> io::Result<T>,
) -> Option<io::Result<T>> {
    // Errors (ICMP, RST) only raise EPOLLERR on some sockets: always wait for them too.
    let interest = interest | Interest::ERROR;
    loop {
        match tokio::time::timeout_at(deadline, fd.ready(interest)).await {
            Ok(Ok(mut guard)) => match guard.try_io(|fd| op(fd.get_ref())) {
                Ok(result) => return Some(result),
                Err(_would_block) => continue,
            },
            Ok(Err(e)) => return Some(Err(e)),
            Err(_elapsed) => break,
        }
    }
    match op(fd.get_ref()) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        result => Some(result),
    }
}

/// Registers `sock` with the runtime.
pub(super) fn register(sock: Socket) -> Result<AsyncFd<Socket>, Reason> {
    // SAFETY: a Socket owns its fd: it stays open, and `as_raw_fd` returns the
    // same fd, until the Socket is dropped, which only the AsyncFd can do.
    unsafe { AsyncFd::register(sock) }.map_err(|e| error(e.into_parts().1))
}

/// What a socket error says about the backend.
pub(super) fn reason_of(err: &io::Error) -> Reason {
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => Reason::Refused,
        Some(libc::ECONNRESET | libc::ECONNABORTED | libc::EPIPE) => Reason::Reset,
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN) => Reason::Unreachable,
        Some(libc::ETIMEDOUT) => Reason::Timeout,
        // EPERM (a local firewall), EMFILE, ENOBUFS, EADDRNOTAVAIL …: ours.
        _ => Reason::Error(err.to_string()),
    }
}

/// A local failure to set the probe up (not an answer from the network).
pub(super) fn error(err: io::Error) -> Reason {
    Reason::Error(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_reason() {
        let r = |e| reason_of(&io::Error::from_raw_os_error(e));
        assert_eq!(r(libc::ECONNREFUSED), Reason::Refused);
        assert_eq!(r(libc::ECONNRESET), Reason::Reset);
        assert_eq!(r(libc::EHOSTUNREACH), Reason::Unreachable);
        assert_eq!(r(libc::ENETUNREACH), Reason::Unreachable);
        assert!(matches!(r(libc::EINVAL), Reason::Error(_)));
        for local in [libc::EPERM, libc::EMFILE, libc::ENOBUFS, libc::EADDRNOTAVAIL] {
            assert!(r(local).is_local(), "{local}");
        }
    }
}

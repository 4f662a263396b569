//! Socket plumbing shared by the network probes.
//!
//! A verdict is a fact about the backend, never about this host's timing:
//! answers are judged by the kernel's receive time (`SO_TIMESTAMPNS`), and a
//! prober that only looks long after its deadline (this host busy: the
//! daemon's loop stalled, the CPUs saturated) gives no verdict rather than a
//! timeout it cannot vouch for ([`silence`]).
use std::{
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    time::{Duration, SystemTime},
};

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
    set_on(sock, level, name)
}

/// Turns an int socket option on.
fn set_on(sock: &Socket, level: libc::c_int, name: libc::c_int) -> Result<(), Reason> {
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

/// How long after its deadline a prober may first look and still call a
/// silence a timeout. Later, this host was too busy to vouch for it. A
/// timer on an idle host fires well within 1 ms; 5 ms leaves room for a busy
/// one (a 4 ms scheduler tick here) before a silence goes unjudged.
pub(super) const LATE: Duration = Duration::from_millis(5);

/// What no answer by `deadline` means, seen now: a timeout, or, when the
/// prober looks more than [`LATE`] after it, no verdict ([`Reason::Late`]).
pub(super) fn silence(deadline: Instant) -> Reason {
    let late = Instant::now().saturating_duration_since(deadline);
    if late > LATE {
        Reason::Late(late)
    } else {
        Reason::Timeout
    }
}

/// An answer received (kernel time) at `at` for a probe due by `deadline`.
pub(super) fn answered(at: Option<Instant>, deadline: Instant) -> Result<(), Reason> {
    match at {
        Some(at) if at > deadline => Err(silence(deadline)),
        _ => Ok(()),
    }
}

/// Runs `op` whenever the socket is ready for `interest` until it gives
/// something other than `WouldBlock`, or `deadline` passes: then
/// [`silence`] says what the missing answer means.
///
/// At the deadline `op` runs once more without waiting: when the daemon was
/// starved of CPU, an answer that did arrive in time must count (no false
/// failover on a busy machine), even if its wake-up had not been seen yet.
pub(super) async fn until<T>(
    fd: &AsyncFd<Socket>,
    interest: Interest,
    deadline: Instant,
    mut op: impl FnMut(&Socket) -> io::Result<T>,
) -> Result<io::Result<T>, Reason> {
    // Errors (ICMP, RST) only raise EPOLLERR on some sockets: always wait for them too.
    let interest = interest | Interest::ERROR;
    loop {
        match tokio::time::timeout_at(deadline, fd.ready(interest)).await {
            Ok(Ok(mut guard)) => match guard.try_io(|fd| op(fd.get_ref())) {
                Ok(result) => return Ok(result),
                Err(_would_block) => continue,
            },
            Ok(Err(e)) => return Ok(Err(e)),
            Err(_elapsed) => break,
        }
    }
    match op(fd.get_ref()) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(silence(deadline)),
        result => Ok(result),
    }
}

/// Asks the kernel to stamp received data with its arrival time.
pub(super) fn set_timestamps(sock: &Socket) -> Result<(), Reason> {
    set_on(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS)
}

/// Reads into `buf`; with [`set_timestamps`], also when the kernel received
/// the data (the newest segment's time, for TCP).
pub(super) fn recv_stamped(sock: &Socket, buf: &mut [u8]) -> io::Result<(usize, Option<Instant>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one timespec control message, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: msg describes `buf` and `control`, both alive and writable for
    // the call's duration.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
    let Ok(n) = usize::try_from(n) else {
        return Err(io::Error::last_os_error());
    };
    let mut at = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled
    // within msg_controllen; the payload is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                at = instant_of(ts);
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok((n, at))
}

/// The monotonic instant of a CLOCK_REALTIME kernel timestamp.
fn instant_of(ts: libc::timespec) -> Option<Instant> {
    let stamp = Duration::new(u64::try_from(ts.tv_sec).ok()?, u32::try_from(ts.tv_nsec).ok()?);
    let (now, real) = (Instant::now(), SystemTime::now());
    let real = real.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    now.checked_sub(real.saturating_sub(stamp))
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
    fn a_silence_seen_late_is_no_verdict() {
        let now = Instant::now();
        assert_eq!(silence(now + Duration::from_secs(1)), Reason::Timeout);
        assert!(matches!(
            silence(now - Duration::from_millis(200)),
            Reason::Late(_)
        ));
        assert_eq!(answered(Some(now), now + Duration::from_millis(1)), Ok(()));
        assert_eq!(answered(None, now), Ok(()));
        assert!(matches!(
            answered(Some(now), now - Duration::from_millis(100)),
            Err(Reason::Late(_))
        ));
    }

    #[test]
    fn errno_maps_to_reason() {
        let r = |e| reason_of(&io::Error::from_raw_os_error(e));
        assert_eq!(r(libc::ECONNREFUSED), Reason::Refused);
        assert_eq!(r(libc::ECONNRESET), Reason::Reset);
        assert_eq!(r(libc::EHOSTUNREACH), Reason::Unreachable);
        assert_eq!(r(libc::ENETUNREACH), Reason::Unreachable);
        assert!(matches!(r(libc::EINVAL), Reason::Error(_)));
        assert!(Reason::Late(Duration::from_millis(200)).is_local());
        for local in [libc::EPERM, libc::EMFILE, libc::ENOBUFS, libc::EADDRNOTAVAIL] {
            assert!(r(local).is_local(), "{local}");
        }
    }
}

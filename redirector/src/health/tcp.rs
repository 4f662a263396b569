//! TCP connect probe. Also opens the connection of the HTTP probe.
use std::{io, net::SocketAddr, time::Duration};

use socket2::{Protocol, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

use super::{
    Outcome, Reason,
    sock::{error, reason_of, register, socket, until},
};

/// Passed when the handshake completes; the close is a RST.
///
/// A reset seen by the time the probe looks is a pass too: the kernel
/// reports a RST to a SYN as ECONNREFUSED and one after the handshake as
/// ECONNRESET, so the listener answered. A server that sheds load by
/// resetting what it accepts (SO_LINGER 0) is up, as HAProxy's layer-4 check
/// says; whether it serves well is the HTTP check's question.
pub(super) async fn probe(target: SocketAddr, timeout: Duration) -> Outcome {
    let start = Instant::now();
    // Dropping the socket right away closes it (with RST, see `connect`).
    let result = match connect(target, start + timeout).await {
        Ok(fd) => {
            drop(fd);
            Ok(())
        }
        Err(Reason::Reset) => Ok(()),
        Err(other) => Err(other),
    };
    Outcome::finish(result, start)
}

/// Opens a TCP connection to `target`, by `deadline`.
///
/// The socket closes with SO_LINGER {on, 0}: its close is a RST and leaves no
/// TIME_WAIT, so a probe every millisecond never exhausts local ports. It is
/// set before connecting so every way the probe ends (even an abort) closes so.
pub(super) async fn connect(target: SocketAddr, deadline: Instant) -> Result<AsyncFd<Socket>, Reason> {
    let sock = socket(target, Type::STREAM, Protocol::TCP)?;
    sock.set_linger(Some(Duration::ZERO)).map_err(error)?;
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(reason_of(&e)),
    }
    let fd = register(sock)?;
    until(&fd, Interest::WRITABLE, deadline, established)
        .await?
        .map_err(|e| reason_of(&e))?;
    Ok(fd)
}

/// Whether a non-blocking connect finished: its error, if it failed;
/// `WouldBlock` while the SYN is still unanswered.
fn established(sock: &Socket) -> io::Result<()> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    // getpeername fails with ENOTCONN until the handshake completes.
    match sock.peer_addr() {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => Err(e),
    }
}

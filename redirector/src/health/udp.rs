//! UDP probe: one datagram, one reply.
use std::{net::SocketAddr, time::Duration};

use socket2::{Protocol, Type};
use tokio::{io::Interest, time::Instant};

use super::{
    Outcome, Reason,
    sock::{answered, reason_of, recv_stamped, register, set_recverr, set_timestamps, socket, until},
};

/// Sends `send` from a fresh connected socket; passed on a reply (equal to
/// `expect` when given). An ICMP port unreachable surfaces as ECONNREFUSED on
/// the connected socket: refused.
pub(super) async fn probe(
    target: SocketAddr,
    send: &[u8],
    expect: Option<&[u8]>,
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    // One byte more than expected, so a longer reply is seen as different.
    let room = expect.map_or(1, |e| e.len() + 1);
    let result = exchange(target, send, room, start + timeout, |reply| match expect {
        Some(expect) if reply != expect => Err(Reason::BadReply),
        _ => Ok(()),
    })
    .await;
    Outcome::finish(result, start)
}

/// Sends `send` from a fresh connected socket and judges the first reply
/// (at most `room` bytes of it) with `judge`.
pub(super) async fn exchange(
    target: SocketAddr,
    send: &[u8],
    room: usize,
    deadline: Instant,
    judge: impl FnOnce(&[u8]) -> Result<(), Reason>,
) -> Result<(), Reason> {
    let sock = socket(target, Type::DGRAM, Protocol::UDP)?;
    set_recverr(&sock, target.is_ipv6())?;
    set_timestamps(&sock)?;
    // Connected: the kernel drops datagrams from anyone else and reports ICMP errors.
    sock.connect(&target.into()).map_err(|e| reason_of(&e))?;
    sock.send(send).map_err(|e| reason_of(&e))?;
    let fd = register(sock)?;
    let mut buf = vec![0u8; room];
    let (n, at) = until(&fd, Interest::READABLE, deadline, |s| recv_stamped(s, &mut buf))
        .await?
        .map_err(|e| reason_of(&e))?;
    answered(at, deadline)?;
    judge(buf.get(..n).unwrap_or_default())
}

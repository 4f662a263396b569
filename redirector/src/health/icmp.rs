//! ICMP / ICMPv6 echo probe over raw sockets.
//!
//! Raw rather than ping (`SOCK_DGRAM`) sockets: `net.ipv4.ping_group_range`
//! usually leaves ping sockets disabled, even for root. A raw socket sees every
//! echo reply that reaches the host, so each probe connects its socket to the
//! target (the kernel then drops packets from other sources) and matches the
//! reply on identifier, sequence and a payload token.
use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use socket2::{Protocol, Type};
use tokio::{io::Interest, time::Instant};

use super::{
    Outcome, Reason, monotonic_ns,
    sock::{answered, reason_of, recv_stamped, register, set_recverr, set_timestamps, socket, until},
};

const V4_ECHO_REPLY: u8 = 0;
const V4_DEST_UNREACH: u8 = 3;
const V4_ECHO_REQUEST: u8 = 8;
const V6_DEST_UNREACH: u8 = 1;
const V6_ECHO_REQUEST: u8 = 128;
const V6_ECHO_REPLY: u8 = 129;
/// ICMP header: type, code, checksum, identifier, sequence.
const HEADER: usize = 8;
const IPV6_HEADER: usize = 40;

/// Probes of this process, numbered: identifier and sequence of each echo.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Sends one echo request to `target`; passed on the matching reply,
/// unreachable on a destination-unreachable error about it.
pub(super) async fn probe(target: IpAddr, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let result = echo(target, start + timeout).await;
    Outcome::finish(result, start)
}

/// Identifies one probe's echo among all the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Echo {
    ident: u16,
    seq: u16,
    token: [u8; 16],
}

impl Echo {
    fn next() -> Echo {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // The identifier carries the pid so two redirector processes (or a
        // ping) rarely share one; the token settles any remaining doubt.
        let pid = std::process::id();
        let mut token = [0u8; 16];
        token[..4].copy_from_slice(&n.to_be_bytes());
        token[4..8].copy_from_slice(&pid.to_be_bytes());
        token[8..].copy_from_slice(&monotonic_ns().to_be_bytes());
        Echo {
            ident: (pid as u16) ^ ((n >> 16) as u16),
            seq: n as u16,
            token,
        }
    }

    /// The echo request; IPv4 needs its checksum, the kernel fills ICMPv6's.
    fn request(&self, v6: bool) -> Vec<u8> {
        let mut pkt = Vec::with_capacity(HEADER + self.token.len());
        pkt.extend_from_slice(&[if v6 { V6_ECHO_REQUEST } else { V4_ECHO_REQUEST }, 0, 0, 0]);
        pkt.extend_from_slice(&self.ident.to_be_bytes());
        pkt.extend_from_slice(&self.seq.to_be_bytes());
        pkt.extend_from_slice(&self.token);
        if !v6 {
            let sum = checksum(&pkt);
            pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        pkt
    }

    /// Whether `icmp` (an ICMP message from its header on) carries this echo's
    /// identifier and sequence, and `token` when `with_token` (error messages
    /// quote only the first 8 bytes of the original).
    fn is_in(&self, icmp: &[u8], with_token: bool) -> bool {
        icmp.len() >= HEADER
            && icmp[4..6] == self.ident.to_be_bytes()
            && icmp[6..8] == self.seq.to_be_bytes()
            && (!with_token || icmp.get(HEADER..HEADER + self.token.len()) == Some(&self.token[..]))
    }

    /// What a received packet says about this probe: `None` when it is not ours.
    /// IPv4 raw sockets receive the IP header too; ICMPv6 ones do not.
    fn judge(&self, v6: bool, packet: &[u8]) -> Option<Result<(), Reason>> {
        let icmp = if v6 { packet } else { skip_ipv4_header(packet)? };
        let (reply, unreach, request) = if v6 {
            (V6_ECHO_REPLY, V6_DEST_UNREACH, V6_ECHO_REQUEST)
        } else {
            (V4_ECHO_REPLY, V4_DEST_UNREACH, V4_ECHO_REQUEST)
        };
        match *icmp.first()? {
            t if t == reply && self.is_in(icmp, true) => Some(Ok(())),
            t if t == unreach => {
                // The error quotes our request: its IP header, then its ICMP header.
                let quoted = icmp.get(HEADER..)?;
                let inner = if v6 {
                    quoted.get(IPV6_HEADER..)?
                } else {
                    skip_ipv4_header(quoted)?
                };
                (inner.first() == Some(&request) && self.is_in(inner, false))
                    .then_some(Err(Reason::Unreachable))
            }
            _ => None,
        }
    }
}

/// The payload of an IPv4 packet.
fn skip_ipv4_header(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    packet.get(usize::from(first & 0x0f) * 4..)
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

async fn echo(target: IpAddr, deadline: Instant) -> Result<(), Reason> {
    let v6 = target.is_ipv6();
    let addr = SocketAddr::new(target, 0);
    let proto = if v6 { Protocol::ICMPV6 } else { Protocol::ICMPV4 };
    let sock = socket(addr, Type::RAW, proto)?;
    set_recverr(&sock, v6)?;
    set_timestamps(&sock)?;
    sock.connect(&addr.into()).map_err(|e| reason_of(&e))?;
    let echo = Echo::next();
    sock.send(&echo.request(v6)).map_err(|e| reason_of(&e))?;
    let fd = register(sock)?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, at) = until(&fd, Interest::READABLE, deadline, |s| recv_stamped(s, &mut buf))
            .await?
            .map_err(|e| reason_of(&e))?;
        if let Some(verdict) = echo.judge(v6, &buf[..n]) {
            answered(at, deadline)?;
            return verdict;
        }
        // Someone else's echo (or our own request, looped back): keep waiting.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ];
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn checksum_of_a_request_verifies_to_zero() {
        let req = Echo::next().request(false);
        assert_eq!(checksum(&req), 0);
        // RFC 1071 example.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn matches_own_reply_only() {
        let echo = Echo::next();
        let mut reply = echo.request(false);
        reply[0] = V4_ECHO_REPLY;
        assert_eq!(echo.judge(false, &ipv4(&reply)), Some(Ok(())));
        // Our own request looped back is not a reply.
        assert_eq!(echo.judge(false, &ipv4(&echo.request(false))), None);
        let other = Echo::next();
        assert_eq!(other.judge(false, &ipv4(&reply)), None);
        let mut v6 = echo.request(true);
        v6[0] = V6_ECHO_REPLY;
        assert_eq!(echo.judge(true, &v6), Some(Ok(())));
        assert_eq!(echo.judge(true, &reply), None);
    }

    #[test]
    fn destination_unreachable_quoting_our_request_is_unreachable() {
        let echo = Echo::next();
        let mut err = vec![V4_DEST_UNREACH, 1, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&ipv4(&echo.request(false)[..8]));
        assert_eq!(echo.judge(false, &ipv4(&err)), Some(Err(Reason::Unreachable)));
        assert_eq!(Echo::next().judge(false, &ipv4(&err)), None);

        let mut err6 = vec![V6_DEST_UNREACH, 3, 0, 0, 0, 0, 0, 0];
        err6.extend_from_slice(&[0u8; IPV6_HEADER]);
        err6.extend_from_slice(&echo.request(true)[..8]);
        assert_eq!(echo.judge(true, &err6), Some(Err(Reason::Unreachable)));
    }
}

//! DNS probe: one query over UDP with a fresh id; passed on an answer to it
//! (same id, a response, standard opcode) whose RCODE is an accepted one. A
//! resolver's answer carries the query id and TTLs, so an exact-reply match
//! (`kind = "udp"` with `expect`) cannot judge it.
use std::{net::SocketAddr, time::Duration};

use tokio::time::Instant;

use super::{Outcome, Reason, udp::exchange};

/// RCODE names as configured, by value (RFC 1035 §4.1.1, RFC 6895).
pub const RCODES: &[(&str, u8)] = &[
    ("noerror", 0),
    ("formerr", 1),
    ("servfail", 2),
    ("nxdomain", 3),
    ("notimp", 4),
    ("refused", 5),
];

/// Query types by name.
pub const QTYPES: &[(&str, u16)] = &[
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
];

/// A name in wire form (length-prefixed labels, then the root's 0). A
/// trailing dot is optional; "." is the root.
pub fn encode_name(name: &str) -> Result<Vec<u8>, String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let mut wire = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            let len = u8::try_from(label.len())
                .ok()
                .filter(|l| (1..=63).contains(l))
                .ok_or_else(|| format!("label {label:?} must be 1 to 63 bytes"))?;
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "label {label:?} may hold letters, digits, '-' and '_' only"
                ));
            }
            wire.push(len);
            wire.extend_from_slice(label.as_bytes());
        }
    }
    wire.push(0);
    if wire.len() > 255 {
        return Err("longer than 255 bytes".into());
    }
    Ok(wire)
}

/// The query message for `name` (wire form), `qtype`, class IN, recursion desired.
fn query(id: u16, name: &[u8], qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + name.len() + 4);
    m.extend_from_slice(&id.to_be_bytes());
    // QR 0, opcode 0, RD 1; one question.
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(name);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// Judges an answer to query `id`: `rcodes` is a bit set of accepted RCODEs.
fn judge(reply: &[u8], id: u16, rcodes: u16) -> Result<(), Reason> {
    let [i0, i1, flags, codes, ..] = *reply else {
        return Err(Reason::BadReply);
    };
    let response = flags & 0x80 != 0;
    let opcode = (flags >> 3) & 0x0f;
    if reply.len() < 12 || u16::from_be_bytes([i0, i1]) != id || !response || opcode != 0 {
        return Err(Reason::BadReply);
    }
    match rcodes & (1 << (codes & 0x0f)) {
        0 => Err(Reason::BadReply),
        _ => Ok(()),
    }
}

/// Asks `target` for `name` (wire form) of `qtype`; `rcodes` as in [`judge`].
pub(super) async fn probe(
    target: SocketAddr,
    name: &[u8],
    qtype: u16,
    rcodes: u16,
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    // A fresh id per probe (the socket is fresh too): a stale or forged
    // answer must also guess it.
    let id = (crate::clock::monotonic_ns() ^ u64::from(std::process::id())) as u16;
    let msg = query(id, name, qtype);
    // 512 bytes: a classic UDP answer; only its header is judged.
    let result = exchange(target, &msg, 512, start + timeout, |reply| {
        judge(reply, id, rcodes)
    })
    .await;
    Outcome::finish(result, start)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn names_encode_as_labels() {
        assert_eq!(encode_name(".").unwrap(), [0]);
        assert_eq!(encode_name("").unwrap(), [0]);
        assert_eq!(encode_name("www.lab.").unwrap(), b"\x03www\x03lab\x00");
        assert_eq!(encode_name("www.lab").unwrap(), b"\x03www\x03lab\x00");
        assert!(encode_name("a..b").unwrap_err().contains("1 to 63"));
        assert!(encode_name("a b").unwrap_err().contains("letters"));
        assert!(encode_name(&"x".repeat(64)).is_err());
    }

    #[test]
    fn answers_are_judged_by_id_response_bit_and_rcode() {
        let q = query(0x1234, &encode_name("lab.").unwrap(), 1);
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        let mut answer = q.clone();
        answer[2] |= 0x80;
        let noerror = 1 << 0;
        assert_eq!(judge(&answer, 0x1234, noerror), Ok(()));
        // Our own query echoed back is no answer.
        assert_eq!(judge(&q, 0x1234, noerror), Err(Reason::BadReply));
        assert_eq!(judge(&answer, 0x1235, noerror), Err(Reason::BadReply));
        answer[3] = 3; // NXDOMAIN
        assert_eq!(judge(&answer, 0x1234, noerror), Err(Reason::BadReply));
        assert_eq!(judge(&answer, 0x1234, noerror | 1 << 3), Ok(()));
        assert_eq!(judge(&answer[..11], 0x1234, u16::MAX), Err(Reason::BadReply));
    }
}

//! RFC 1624 incremental Internet checksum updates.
//!
//! XDP has no `bpf_l3/l4_csum_replace`, so rewrites patch checksums with
//! `HC' = ~(~HC + ~m + m')`. The one's-complement sum does not depend on byte
//! order (RFC 1071 §2(B)) as long as every word is read the same way, so callers
//! read the checksum field and the changed words straight from packet memory in
//! native order and write the result back the same way.

/// Adds the one's complement of `old` and `new` itself to an accumulator.
#[inline(always)]
pub fn add_replace32(acc: u64, old: u32, new: u32) -> u64 {
    acc + u64::from(!old) + u64::from(new)
}

/// Same as [`add_replace32`] for a 16-bit word.
#[inline(always)]
pub fn add_replace16(acc: u64, old: u16, new: u16) -> u64 {
    acc + u64::from(!old) + u64::from(new)
}

/// Folds a 64-bit accumulator of 16/32-bit words into 16 bits (end-around carry).
#[inline(always)]
pub fn fold(mut acc: u64) -> u16 {
    // Four folds always suffice for a u64 and keep the loop bounded for the verifier.
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Starts an update of checksum field `csum`: the accumulator holds `~HC`.
#[inline(always)]
pub fn start(csum: u16) -> u64 {
    u64::from(!csum)
}

/// Finishes an update: `HC' = ~fold(acc)`.
#[inline(always)]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Replaces `old` by `new` (same length, 32-bit words) in a checksummed region.
#[inline(always)]
pub fn replace_words<const N: usize>(csum: u16, old: &[u32; N], new: &[u32; N]) -> u16 {
    let mut acc = start(csum);
    let mut i = 0;
    while i < N {
        acc = add_replace32(acc, old[i], new[i]);
        i += 1;
    }
    finish(acc)
}

/// A UDP checksum that computes to zero is sent as all ones (RFC 768); zero
/// on the wire means "no checksum" in IPv4 and is invalid in IPv6.
#[inline(always)]
pub fn udp_nonzero(csum: u16) -> u16 {
    if csum == 0 { 0xffff } else { csum }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// Textbook RFC 1071 checksum over big-endian 16-bit words: the independent reference.
    fn full(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn ne32(b: &[u8]) -> u32 {
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        let mut s = 0x1234_5678_9abc_def1u64;
        for round in 0..20_000 {
            let len = 24 + (rng(&mut s) % 60) as usize * 2;
            let mut buf: Vec<u8> = (0..len).map(|_| rng(&mut s) as u8).collect();
            // Checksum field at 0..2 (native order, as the XDP program reads it).
            buf[0] = 0;
            buf[1] = 0;
            let c = full(&buf).to_be_bytes();
            buf[..2].copy_from_slice(&c);
            assert_eq!(full(&buf), 0, "round {round}: reference sanity");
            // Replace 1..=4 aligned 32-bit words after the checksum field.
            let words = 1 + (rng(&mut s) % 4) as usize;
            let start = 4 + 2 * (rng(&mut s) as usize % ((len - 4 - 4 * words) / 2 + 1));
            let old: Vec<u32> = (0..words).map(|i| ne32(&buf[start + 4 * i..])).collect();
            let new: Vec<u32> = (0..words).map(|_| rng(&mut s) as u32).collect();
            let mut acc = super::start(u16::from_ne_bytes([buf[0], buf[1]]));
            for i in 0..words {
                acc = add_replace32(acc, old[i], new[i]);
                buf[start + 4 * i..start + 4 * i + 4].copy_from_slice(&new[i].to_ne_bytes());
            }
            buf[..2].copy_from_slice(&finish(acc).to_ne_bytes());
            assert_eq!(full(&buf), 0, "round {round}: updated checksum must verify");
        }
    }

    #[test]
    fn sixteen_bit_replace_and_fixed_arrays_agree() {
        let c = 0x1c46u16;
        let a = replace_words(c, &[0x0102_0304], &[0x0a0b_0c0d]);
        let mut acc = start(c);
        acc = add_replace16(acc, 0x0304, 0x0c0d);
        acc = add_replace16(acc, 0x0102, 0x0a0b);
        assert_eq!(a, finish(acc));
        assert_eq!(fold(0xffff_ffff_ffff_ffff), 0xffff);
        assert_eq!(udp_nonzero(0), 0xffff);
        assert_eq!(udp_nonzero(7), 7);
    }
}

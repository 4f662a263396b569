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

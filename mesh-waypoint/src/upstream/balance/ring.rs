//! The consistent-hash ring (Envoy's `RING_HASH`) and the hash it is built with (xxHash64, as
//! Envoy hashes both ring points and request keys).
//!
//! Each endpoint owns a number of points on a 64-bit ring; a request key is hashed and goes to
//! the first point at or after its hash. Envoy gives every endpoint `ceil(min_ring / n)` points,
//! so adding one endpoint changes every endpoint's share of points and moves more keys than the
//! new endpoint takes. Here the per-endpoint count only changes when `n` crosses a power of two
//! (`ceil(min_ring / 2^floor(log2 n))`, which still gives at least `min_ring` points): adding
//! or removing one endpoint then moves only the keys that endpoint gains or loses, about 1/n.

use std::fmt::Write;
use std::net::SocketAddr;

/// Envoy's default `minimum_ring_size` (and Istio's documented default for `minimumRingSize`).
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;

/// Envoy's default `maximum_ring_size`: larger rings are clamped to it.
pub const MAXIMUM_RING_SIZE: u64 = 8 * 1024 * 1024;

/// Points sorted by hash; each names the endpoint (an index into the endpoint list it was
/// built from).
#[derive(Debug)]
pub(crate) struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// A ring over `addrs` (in the order of the endpoint list the indices refer to).
    pub(crate) fn build(addrs: &[SocketAddr], minimum_ring_size: u64) -> Ring {
        let n = addrs.len() as u64;
        if n == 0 {
            return Ring { points: Vec::new() };
        }
        let minimum = minimum_ring_size.clamp(1, MAXIMUM_RING_SIZE);
        // The largest power of two not above n: the per-endpoint count is stable between
        // powers of two.
        let floor_pow2 = 1u64 << (63 - n.leading_zeros());
        let per_endpoint = minimum
            .div_ceil(floor_pow2)
            .min((MAXIMUM_RING_SIZE / n).max(1));
        let mut points = Vec::with_capacity((per_endpoint * n) as usize);
        let mut key = String::new();
        for (index, addr) in addrs.iter().enumerate() {
            for replica in 0..per_endpoint {
                key.clear();
                // Envoy's point key: the address, `_`, the replica number.
                let _ = write!(key, "{addr}_{replica}");
                points.push((xxh64(key.as_bytes(), 0), index as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    /// The endpoint for `hash`: the owner of the first point at or after it (wrapping), skipping
    /// endpoints that are not `usable` — the same result as a ring built without them.
    pub(crate) fn lookup(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let start = self.points.partition_point(|(point, _)| *point < hash);
        (0..len)
            .map(|step| self.points[(start + step) % len].1 as usize)
            .find(|&index| usable(index))
    }
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn merge_round(acc: u64, lane: u64) -> u64 {
    (acc ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P4)
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

/// XXH64, the hash Envoy uses for ring points and hash keys (`HashUtil::xxHash64`).
pub(crate) fn xxh64(data: &[u8], seed: u64) -> u64 {
    let mut rest = data;
    let mut hash = if data.len() >= 32 {
        let mut lanes = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 32 {
            for (i, lane) in lanes.iter_mut().enumerate() {
                *lane = round(*lane, read_u64(&rest[i * 8..]));
            }
            rest = &rest[32..];
        }
        let [v1, v2, v3, v4] = lanes;
        let mut hash = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        for lane in lanes {
            hash = merge_round(hash, lane);
        }
        hash
    } else {
        seed.wrapping_add(P5)
    };
    hash = hash.wrapping_add(data.len() as u64);
    while rest.len() >= 8 {
        hash ^= round(0, read_u64(rest));
        hash = hash.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        hash ^= u64::from(read_u32(rest)).wrapping_mul(P1);
        hash = hash.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        hash ^= u64::from(byte).wrapping_mul(P5);
        hash = hash.rotate_left(11).wrapping_mul(P1);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(P2);
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(P3);
    hash ^= hash >> 32;
    hash
}

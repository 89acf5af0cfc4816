//! Hash maps keyed from the node's seed. Keys here are chosen by peers (node ids, user keys,
//! bundle digests), so the hash must be keyed or a peer could craft collisions offline; and it
//! must be seedable, so that the simulator, which seeds every node, replays a run exactly
//! (iteration order depends on the hash). The daemon seeds from the OS's randomness.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use siphasher::sip::SipHasher13;

/// A keyed SipHash-1-3 builder.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Keyed {
    k0: u64,
    k1: u64,
}

impl Keyed {
    pub(crate) fn new(seed: u64) -> Self {
        // Two keys from one seed (SplitMix64 steps).
        let mix = |mut z: u64| {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            k0: mix(seed),
            k1: mix(seed ^ 0x6a09_e667_f3bc_c908),
        }
    }

    pub(crate) fn map<K, V>(&self) -> Map<K, V> {
        HashMap::with_hasher(*self)
    }

    pub(crate) fn set<T>(&self) -> Set<T> {
        HashSet::with_hasher(*self)
    }
}

impl BuildHasher for Keyed {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// A `HashMap` with a keyed, seedable hash.
pub(crate) type Map<K, V> = HashMap<K, V, Keyed>;
/// A `HashSet` with a keyed, seedable hash.
pub(crate) type Set<T> = HashSet<T, Keyed>;

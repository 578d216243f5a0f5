//! FNV-1a (64 bits): a hash that is the same on every host, build and Rust
//! version (std's hasher is not), for what is compared across processes and
//! runs: a sharded run's config hash, an experiment file's hash, a request's
//! pass tag, the simulator's prefix-cache blocks.

/// FNV-1a's starting state (the hash of nothing).
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// `hash` carried on over `bytes`.
pub fn fnv1a_extend(hash: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(hash, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The FNV-1a hash of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(FNV_OFFSET, bytes.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_test_vectors() {
        assert_eq!(fnv1a(b""), FNV_OFFSET);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a_extend(fnv1a(b"foo"), *b"bar"), fnv1a(b"foobar"));
    }
}

//! `heap::release` in a process of its own, so no other test's allocations move the figures.

use mesh_core::heap::{Usage, release};

const MIB: u64 = 1 << 20;

#[test]
fn release_hands_back_the_pages_of_chunks_freed_between_live_ones() {
    // 64 MiB in 64 KiB chunks (under glibc's mmap threshold, so they come from the arena),
    // written so their pages are resident; then every chunk but one in eight is freed, so the
    // free space lies between live chunks and the arena's top cannot shrink on its own.
    let mut chunks: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; 64 << 10]).collect();
    let mut kept = Vec::new();
    for (i, chunk) in chunks.drain(..).enumerate() {
        if i % 8 == 0 {
            kept.push(chunk);
        }
    }
    let before = Usage::now().expect("mallinfo2 and /proc/self/statm");
    assert!(
        before.wasteful(),
        "56 MiB freed should count as waste: {before:?}"
    );

    release();

    let after = Usage::now().expect("mallinfo2 and /proc/self/statm");
    assert!(
        after.resident_anon + 32 * MIB < before.resident_anon,
        "release gave back less than 32 of the 56 MiB freed: before {before:?}, after {after:?}"
    );
    assert!(!after.wasteful(), "{after:?}");
    assert_eq!(kept.len(), 128);
    assert!(kept.iter().enumerate().all(|(i, c)| c[0] == (i * 8) as u8));
}

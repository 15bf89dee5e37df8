//! `mem`: pages kept uncompressed in process memory, outside the local budget.
//!
//! Also home of the sharding helpers that [`Compressed`](super::Compressed) shares.
//!
//! # Storage
//! ```text
//!  key ──shard_of──▶ shard i of 64 (cache-padded RwLock)
//!                      ├─ map:    PageKey ─▶ slot (u32) | ZERO_SLOT
//!                      ├─ chunks: [1][1][2][4]…[32][64][64]…  pages, allocated as needed
//!                      └─ owners: slot ─▶ PageKey          (for compaction)
//! ```
//! Pages live in 4 KiB slots of per-shard chunks: no allocation per page. The slots in use
//! are always `0..owners.len()`: freeing a slot moves the last page into the hole (one
//! 4 KiB copy, off the fault path), so trailing chunks empty out and are given back.
//! Chunks grow geometrically up to 64 pages (256 KiB) so small tiers stay small.
//! Zero pages take a map entry and no slot.
//!
//! Runs of 8 consecutive pages of a region map to the same shard, so a batch of
//! neighbouring pages takes one lock per run. `fetch` takes a shard's read lock for one
//! lookup and one 4 KiB copy per page and never allocates.

use super::{Backend, PAGE_SIZE, PageKey, TierError, TierStats};
use crossbeam_utils::CachePadded;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

// ---------------------------------------------------------------------------------------
// Shared by the in-memory tiers.
// ---------------------------------------------------------------------------------------

/// log2 of the number of shards.
const SHARD_BITS: u32 = 6;
/// Shards per tier: enough that a handful of faulting threads rarely meet.
pub(super) const SHARDS: usize = 1 << SHARD_BITS;
/// log2 of the run of consecutive pages that share a shard.
const RUN_BITS: u32 = 3;

/// Hashes a [`PageKey`] for the shard maps: one multiply and a shift, enough for keys that
/// come from the engine (not an attacker), much cheaper than SipHash.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `PageKey` (it hashes one u64), kept correct for any other input.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // hashbrown takes the bucket from the low bits and a tag from the top 7 bits:
        // the multiply mixes upwards, the shift brings high bits down.
        let h = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by page, with the cheap hasher.
pub(super) type KeyMap<V> = HashMap<PageKey, V, BuildHasherDefault<KeyHasher>>;

/// The shard of `key`. Uses a different multiplier from [`KeyHasher`] so the keys of one
/// shard still spread over the whole of its map.
/// Gives memory back after mass discards: a large map that is mostly empty shrinks to
/// twice its contents (so that a refill does not thrash).
pub(super) fn shrink_if_sparse<V>(map: &mut KeyMap<V>) {
    let (len, cap) = (map.len(), map.capacity());
    if cap > 1024 && len < cap / 8 {
        map.shrink_to(len * 2);
    }
}

pub(super) fn shard_of(key: PageKey) -> usize {
    ((key.0 >> RUN_BITS).wrapping_mul(0xD6E8_FEB8_6659_FD93) >> (64 - SHARD_BITS)) as usize
}

/// `SHARDS` locks, each on its own cache line.
#[derive(Debug)]
pub(super) struct Shards<S> {
    shards: Box<[CachePadded<RwLock<S>>]>,
}

impl<S: Default> Shards<S> {
    /// `SHARDS` empty shards.
    pub(super) fn new() -> Shards<S> {
        Shards {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(RwLock::new(S::default())))
                .collect(),
        }
    }
}

impl<S> Shards<S> {
    /// Shared access to shard `i`.
    pub(super) fn read(&self, i: usize) -> RwLockReadGuard<'_, S> {
        // Poison only means another thread panicked while holding the lock; every update
        // of a shard leaves it consistent at each step that can panic (allocation aside,
        // which aborts), so its content is still good.
        self.shards[i]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Exclusive access to shard `i`.
    pub(super) fn write(&self, i: usize) -> RwLockWriteGuard<'_, S> {
        // See `read` about poison.
        self.shards[i]
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every shard in turn, for stats.
    pub(super) fn each(&self, mut f: impl FnMut(&S)) {
        for i in 0..SHARDS {
            f(&self.read(i));
        }
    }
}

/// Splits a batch of keys into maximal runs that fall in one shard: `(shard, index range)`.
pub(super) fn runs(keys: &[PageKey]) -> impl Iterator<Item = (usize, Range<usize>)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let first = *keys.get(start)?;
        let shard = shard_of(first);
        let len = keys[start + 1..]
            .iter()
            .take_while(|k| shard_of(**k) == shard)
            .count()
            + 1;
        let range = start..start + len;
        start += len;
        Some((shard, range))
    })
}

/// Whether `page` is all zeros. Reads 64 bytes at a time so the compiler can vectorise
/// and random pages bail out after the first block.
pub(super) fn is_zero(page: &[u8]) -> bool {
    let mut blocks = page.chunks_exact(64);
    for block in &mut blocks {
        let mut acc = 0u64;
        for word in block.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            acc |= u64::from_ne_bytes(w);
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Checks the batch shape the [`Backend`] contract promises.
pub(super) fn check_batch(keys: &[PageKey], bytes: usize) {
    assert_eq!(
        bytes,
        keys.len() * PAGE_SIZE,
        "engine bug: a tier batch of {} keys needs {} bytes of page data",
        keys.len(),
        keys.len() * PAGE_SIZE
    );
}

/// Estimated bytes of a hash map's table holding `capacity` entries of `entry` bytes
/// (hashbrown: a power-of-two number of buckets at most 7/8 full, one control byte each).
pub(super) fn table_bytes(capacity: usize, entry: usize) -> u64 {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).max(4).next_power_of_two();
    (buckets * (entry + 1)) as u64
}

// ---------------------------------------------------------------------------------------
// The slab.
// ---------------------------------------------------------------------------------------

/// Slot index of a page in a shard's slab.
type Slot = u32;

/// Map value of a zero page: it has no slot.
const ZERO_SLOT: Slot = Slot::MAX;

/// Pages of the largest chunk (256 KiB): few allocations for a big tier, and little slack
/// (at most about one chunk per shard, 16 MiB for the whole tier).
const BIG_CHUNK_PAGES: usize = 64;

/// Chunk `c` holds slots `chunk_start(c)..chunk_start(c) + chunk_pages(c)`: sizes 1, 1, 2,
/// 4, ..., 32, then 64 for ever.
fn chunk_pages(c: usize) -> usize {
    match c {
        0 => 1,
        1..=6 => 1 << (c - 1),
        _ => BIG_CHUNK_PAGES,
    }
}

/// First slot of chunk `c`.
fn chunk_start(c: usize) -> usize {
    match c {
        0 => 0,
        1..=6 => 1 << (c - 1),
        _ => BIG_CHUNK_PAGES * (c - 6),
    }
}

/// `(chunk, page offset in chunk)` of slot `slot`.
fn locate(slot: usize) -> (usize, usize) {
    let c = if slot < BIG_CHUNK_PAGES {
        (usize::BITS - slot.leading_zeros()) as usize
    } else {
        6 + slot / BIG_CHUNK_PAGES
    };
    (c, slot - chunk_start(c))
}

/// Densely packed 4 KiB slots, `0..len()` in use.
#[derive(Debug, Default)]
struct Slab {
    chunks: Vec<Box<[u8]>>,
    /// The key held in each slot in use.
    owners: Vec<PageKey>,
}

impl Slab {
    /// Slots in use.
    fn len(&self) -> usize {
        self.owners.len()
    }

    fn page(&self, slot: Slot) -> &[u8] {
        let (c, off) = locate(slot as usize);
        &self.chunks[c][off * PAGE_SIZE..(off + 1) * PAGE_SIZE]
    }

    fn page_mut(&mut self, slot: Slot) -> &mut [u8] {
        let (c, off) = locate(slot as usize);
        &mut self.chunks[c][off * PAGE_SIZE..(off + 1) * PAGE_SIZE]
    }

    /// Puts `data` in a new slot owned by `key`. `None` when the shard has no slot number
    /// left (16 TiB in one shard).
    fn push(&mut self, key: PageKey, data: &[u8]) -> Option<Slot> {
        let slot = Slot::try_from(self.len())
            .ok()
            .filter(|s| *s != ZERO_SLOT)?;
        let (c, _) = locate(slot as usize);
        if c == self.chunks.len() {
            self.chunks
                .push(vec![0u8; chunk_pages(c) * PAGE_SIZE].into_boxed_slice());
        }
        self.owners.push(key);
        self.page_mut(slot).copy_from_slice(data);
        Some(slot)
    }

    /// Frees `slot` by moving the last page into it. Returns the key of the moved page (its
    /// map entry must now say `slot`), or `None` when `slot` was the last one.
    fn remove(&mut self, slot: Slot) -> Option<PageKey> {
        let last = self.len() - 1;
        let s = slot as usize;
        let moved = if s != last {
            let (lc, loff) = locate(last);
            let (sc, soff) = locate(s);
            let src = loff * PAGE_SIZE..(loff + 1) * PAGE_SIZE;
            let dst = soff * PAGE_SIZE;
            if lc == sc {
                self.chunks[lc].copy_within(src, dst);
            } else {
                // `last > s`, so the last page is in a later chunk.
                let (head, tail) = self.chunks.split_at_mut(lc);
                head[sc][dst..dst + PAGE_SIZE].copy_from_slice(&tail[0][src]);
            }
            let key = self.owners[last];
            self.owners[s] = key;
            Some(key)
        } else {
            None
        };
        self.owners.pop();
        self.trim();
        moved
    }

    /// Gives back trailing chunks, keeping half a chunk of slack so a page stored and
    /// discarded over and over at a boundary does not map and unmap a chunk each time.
    fn trim(&mut self) {
        while self.chunks.len() > 1 {
            let c = self.chunks.len() - 1;
            if self.len() + chunk_pages(c) / 2 > chunk_start(c) {
                break;
            }
            self.chunks.pop();
        }
        if self.chunks.len() == 1 && self.owners.is_empty() {
            self.chunks.clear();
        }
        if self.owners.capacity() > 64 && self.owners.len() < self.owners.capacity() / 4 {
            self.owners.shrink_to(self.owners.len() * 2);
        }
    }

    /// Bytes allocated.
    fn bytes(&self) -> u64 {
        let chunks: usize = self.chunks.iter().map(|c| c.len()).sum();
        (chunks + self.owners.capacity() * size_of::<PageKey>()) as u64
    }
}

/// One shard of [`Memory`].
#[derive(Debug, Default)]
struct Shard {
    map: KeyMap<Slot>,
    slab: Slab,
    zero_pages: u64,
}

impl Shard {
    /// Stores one page; `Err` only when the shard has no slot number left.
    fn store(&mut self, key: PageKey, data: &[u8]) -> Result<(), TierError> {
        let zero = is_zero(data);
        match self.map.get(&key).copied() {
            Some(ZERO_SLOT) if zero => {}
            Some(ZERO_SLOT) => {
                let slot = self.push(key, data)?;
                self.map.insert(key, slot);
                self.zero_pages -= 1;
            }
            Some(slot) if zero => {
                self.free(slot);
                self.map.insert(key, ZERO_SLOT);
                self.zero_pages += 1;
            }
            Some(slot) => self.slab.page_mut(slot).copy_from_slice(data),
            None if zero => {
                self.map.insert(key, ZERO_SLOT);
                self.zero_pages += 1;
            }
            None => {
                let slot = self.push(key, data)?;
                self.map.insert(key, slot);
            }
        }
        Ok(())
    }

    fn push(&mut self, key: PageKey, data: &[u8]) -> Result<Slot, TierError> {
        self.slab.push(key, data).ok_or(TierError::Full {
            used: self.slab.len() as u64 * PAGE_SIZE as u64,
            capacity: ZERO_SLOT as u64 * PAGE_SIZE as u64,
        })
    }

    /// Frees a slot whose map entry is about to be removed or replaced.
    fn free(&mut self, slot: Slot) {
        if let Some(moved) = self.slab.remove(slot) {
            // The slab moved `moved`'s page into `slot`.
            self.map.insert(moved, slot);
        }
    }

    fn discard(&mut self, key: PageKey) {
        match self.map.remove(&key) {
            Some(ZERO_SLOT) => self.zero_pages -= 1,
            Some(slot) => self.free(slot),
            None => {}
        }
    }

    fn fetch(&self, key: PageKey, out: &mut [u8]) -> Result<(), TierError> {
        match self.map.get(&key) {
            Some(&ZERO_SLOT) => out.fill(0),
            Some(&slot) => out.copy_from_slice(self.slab.page(slot)),
            None => return Err(TierError::Missing { key }),
        }
        Ok(())
    }

    fn stored_bytes(&self) -> u64 {
        self.slab.bytes() + table_bytes(self.map.capacity(), size_of::<(PageKey, Slot)>())
    }
}

/// Uncompressed in-memory tier (`mem`): pages copied into sharded slabs of 4 KiB slots,
/// zero pages free. See the module docs for the layout.
#[derive(Debug)]
pub struct Memory {
    shards: Shards<Shard>,
}

impl Memory {
    /// An empty tier. Allocates only the 64 shard headers; storage grows with use.
    pub fn new() -> Memory {
        Memory {
            shards: Shards::new(),
        }
    }
}

impl Default for Memory {
    fn default() -> Memory {
        Memory::new()
    }
}

impl Backend for Memory {
    fn name(&self) -> &str {
        "mem"
    }

    fn store(&self, keys: &[PageKey], data: &[u8]) -> Result<(), TierError> {
        check_batch(keys, data.len());
        for (shard, range) in runs(keys) {
            let mut s = self.shards.write(shard);
            for i in range {
                // On error, earlier pages of the batch hold their new content, which the
                // contract allows: the engine assumes none of them stored.
                s.store(keys[i], &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])?;
            }
        }
        Ok(())
    }

    fn fetch(&self, keys: &[PageKey], out: &mut [u8]) -> Result<(), TierError> {
        check_batch(keys, out.len());
        for (shard, range) in runs(keys) {
            let s = self.shards.read(shard);
            for i in range {
                s.fetch(keys[i], &mut out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])?;
            }
        }
        Ok(())
    }

    fn discard(&self, keys: &[PageKey]) {
        for (shard, range) in runs(keys) {
            let mut s = self.shards.write(shard);
            for key in &keys[range] {
                s.discard(*key);
            }
            shrink_if_sparse(&mut s.map);
        }
    }

    fn stats(&self) -> TierStats {
        let mut st = TierStats::default();
        self.shards.each(|s| {
            st.pages += s.map.len() as u64;
            st.zero_pages += s.zero_pages;
            st.stored_bytes += s.stored_bytes();
        });
        st.logical_bytes = st.pages * PAGE_SIZE as u64;
        st
    }
}

/// Page generators and tier-generic checks shared by the tests of every tier.
#[cfg(test)]
pub(super) mod testutil {
    use super::super::{Backend, PAGE_SIZE, PageKey, TierError};
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    /// splitmix64: a tiny deterministic generator.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        pub(crate) fn fill(&mut self, buf: &mut [u8]) {
            for chunk in buf.chunks_mut(8) {
                let v = self.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
    }

    /// What a test page looks like.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Kind {
        /// All zeros.
        Zero,
        /// Incompressible.
        Random(u64),
        /// Words from a small vocabulary: compresses several times.
        Text(u64),
        /// Alternating 64-byte blocks of random bytes and text: compresses about 2x.
        Half(u64),
    }

    pub(crate) fn page(kind: Kind) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_SIZE];
        match kind {
            Kind::Zero => {}
            Kind::Random(seed) => Rng(seed).fill(&mut p),
            Kind::Text(seed) => text(&mut Rng(seed), &mut p),
            Kind::Half(seed) => {
                let mut rng = Rng(seed);
                for (i, block) in p.chunks_mut(64).enumerate() {
                    if i % 2 == 0 {
                        rng.fill(block)
                    } else {
                        text(&mut rng, block)
                    }
                }
            }
        }
        p
    }

    fn text(rng: &mut Rng, buf: &mut [u8]) {
        const WORDS: [&[u8]; 8] = [
            b"page ", b"fault ", b"memory ", b"far ", b"tier ", b"lz4 ", b"zstd ", b"swap ",
        ];
        let mut i = 0;
        while i < buf.len() {
            let w = WORDS[(rng.next() % 8) as usize];
            let n = w.len().min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
    }

    pub(crate) fn key(i: u64) -> PageKey {
        PageKey::new((i % 3) as u32, i / 3)
    }

    fn fetch1(t: &dyn Backend, k: PageKey) -> Result<Vec<u8>, TierError> {
        let mut out = vec![0xEEu8; PAGE_SIZE];
        t.fetch(&[k], &mut out)?;
        Ok(out)
    }

    /// Random, compressible, half and zero pages in one batch come back intact, in one
    /// batch and one by one.
    pub(crate) fn round_trips(t: &dyn Backend) {
        let kinds: Vec<Kind> = (0..64)
            .map(|i| match i % 4 {
                0 => Kind::Zero,
                1 => Kind::Random(i),
                2 => Kind::Text(i),
                _ => Kind::Half(i),
            })
            .collect();
        let keys: Vec<PageKey> = (0..64).map(key).collect();
        let data: Vec<u8> = kinds.iter().flat_map(|k| page(*k)).collect();
        t.store(&keys, &data).unwrap();
        let mut out = vec![0xEEu8; data.len()];
        t.fetch(&keys, &mut out).unwrap();
        assert!(out == data, "{}: batch fetch differs", t.name());
        // Reversed order crosses shards differently.
        let rkeys: Vec<PageKey> = keys.iter().rev().copied().collect();
        t.fetch(&rkeys, &mut out).unwrap();
        for (i, k) in kinds.iter().rev().enumerate() {
            assert!(
                out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] == page(*k)[..],
                "{}: page {i}",
                t.name()
            );
        }
        for (i, k) in kinds.iter().enumerate() {
            assert!(
                fetch1(t, keys[i]).unwrap() == page(*k),
                "{}: page {i} alone",
                t.name()
            );
        }
        let st = t.stats();
        assert_eq!(
            (st.pages, st.zero_pages, st.logical_bytes),
            (64, 16, 64 * PAGE_SIZE as u64)
        );
        // Empty batches are fine.
        t.store(&[], &[]).unwrap();
        t.fetch(&[], &mut []).unwrap();
        t.discard(&[]);
    }

    /// Overwrites in every direction between zero and non-zero content.
    pub(crate) fn overwrite(t: &dyn Backend) {
        let k = key(7);
        let seq = [
            Kind::Half(1),
            Kind::Half(2),
            Kind::Zero,
            Kind::Zero,
            Kind::Random(3),
            Kind::Text(4),
            Kind::Zero,
            Kind::Half(5),
        ];
        for kind in seq {
            t.store(&[k], &page(kind)).unwrap();
            assert!(
                fetch1(t, k).unwrap() == page(kind),
                "{}: after storing {kind:?}",
                t.name()
            );
            let st = t.stats();
            assert_eq!(st.pages, 1);
            assert_eq!(st.zero_pages, u64::from(kind == Kind::Zero));
        }
        // The same key twice in one batch: the later copy wins.
        let data = [page(Kind::Text(8)), page(Kind::Random(9))].concat();
        t.store(&[k, k], &data).unwrap();
        assert!(fetch1(t, k).unwrap() == page(Kind::Random(9)));
        assert_eq!(t.stats().pages, 1);
    }

    /// Discard forgets pages, ignores unknown keys, and leaves the others intact; stats
    /// follow. Many pages so slabs compact across chunks.
    pub(crate) fn discard(t: &dyn Backend) {
        let n = 1000u64;
        let keys: Vec<PageKey> = (0..n).map(key).collect();
        let kind = |i: u64| {
            if i.is_multiple_of(5) {
                Kind::Zero
            } else {
                Kind::Half(i)
            }
        };
        let data: Vec<u8> = (0..n).flat_map(|i| page(kind(i))).collect();
        t.store(&keys, &data).unwrap();
        let full = t.stats();
        assert_eq!((full.pages, full.zero_pages), (n, n / 5));
        let gone: Vec<PageKey> = (0..n).filter(|i| !i.is_multiple_of(3)).map(key).collect();
        t.discard(&gone);
        t.discard(&gone); // unknown now: ignored
        t.discard(&[key(n + 5)]);
        let kept: Vec<u64> = (0..n).filter(|i| i.is_multiple_of(3)).collect();
        let st = t.stats();
        assert_eq!(st.pages, kept.len() as u64);
        assert_eq!(
            st.zero_pages,
            kept.iter().filter(|i| i.is_multiple_of(5)).count() as u64
        );
        assert!(st.stored_bytes < full.stored_bytes);
        for &i in &kept {
            assert!(
                fetch1(t, key(i)).unwrap() == page(kind(i)),
                "{}: kept page {i}",
                t.name()
            );
        }
        for k in &gone[..20] {
            assert!(matches!(fetch1(t, *k), Err(TierError::Missing { key }) if key == *k));
        }
        let kept_keys: Vec<PageKey> = kept.iter().map(|i| key(*i)).collect();
        t.discard(&kept_keys);
        let empty = t.stats();
        assert_eq!(
            (empty.pages, empty.zero_pages, empty.logical_bytes),
            (0, 0, 0)
        );
        // Only (shrunk) map tables may remain.
        assert!(
            empty.stored_bytes < 64 * 1024 * 8,
            "{}: {empty:?}",
            t.name()
        );
    }

    /// Unknown keys are Missing, also in the middle of a batch.
    pub(crate) fn missing(t: &dyn Backend) {
        assert!(matches!(fetch1(t, key(1)), Err(TierError::Missing { key: k }) if k == key(1)));
        t.store(
            &[key(1), key(2)],
            &[page(Kind::Half(1)), page(Kind::Zero)].concat(),
        )
        .unwrap();
        let mut out = vec![0; 3 * PAGE_SIZE];
        let e = t.fetch(&[key(1), key(3), key(2)], &mut out).unwrap_err();
        assert!(
            matches!(e, TierError::Missing { key: k } if k == key(3)),
            "{e}"
        );
        assert!(e.to_string().contains("page 1 of region 0"), "{e}");
    }

    /// The content of the page `key` at `version`: a header naming both, then data derived
    /// from them, so a reader can tell a torn or misplaced page.
    fn versioned(key: PageKey, version: u64) -> Vec<u8> {
        let mut p = page(Kind::Half(key.0.wrapping_mul(31).wrapping_add(version)));
        p[..8].copy_from_slice(&key.0.to_le_bytes());
        p[8..16].copy_from_slice(&version.to_le_bytes());
        p
    }

    fn check_versioned(p: &[u8], key: PageKey) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&p[..8]);
        assert_eq!(u64::from_le_bytes(b), key.0, "page of another key");
        b.copy_from_slice(&p[8..16]);
        let version = u64::from_le_bytes(b);
        assert!(p == versioned(key, version), "torn page {key:?} v{version}");
        version
    }

    /// 4 threads store, fetch, overwrite and discard at once: shared keys are overwritten
    /// by all and must always read back whole; each thread's own keys read back exactly.
    pub(crate) fn concurrent(t: Arc<dyn Backend>, rounds: u64) {
        const SHARED: u64 = 96;
        let shared: Vec<PageKey> = (0..SHARED).map(key).collect();
        let data: Vec<u8> = shared.iter().flat_map(|k| versioned(*k, 0)).collect();
        t.store(&shared, &data).unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|id| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    let mut rng = Rng(id);
                    let mut out = vec![0u8; 16 * PAGE_SIZE];
                    for round in 1..=rounds {
                        // Overwrite a run of shared pages.
                        let start = rng.next() % (SHARED - 16);
                        let keys: Vec<PageKey> = (start..start + 16).map(key).collect();
                        let v = round * 4 + id;
                        let data: Vec<u8> = keys.iter().flat_map(|k| versioned(*k, v)).collect();
                        t.store(&keys, &data).unwrap();
                        // Read random shared pages: whole, some version.
                        let keys: Vec<PageKey> =
                            (0..16).map(|_| key(rng.next() % SHARED)).collect();
                        t.fetch(&keys, &mut out).unwrap();
                        for (i, k) in keys.iter().enumerate() {
                            check_versioned(&out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], *k);
                        }
                        // Own pages: exact version, then gone after discard.
                        let own: Vec<PageKey> = (0..8)
                            .map(|i| key(1000 + id * 1000 + (round % 50) * 8 + i))
                            .collect();
                        let data: Vec<u8> = own.iter().flat_map(|k| versioned(*k, round)).collect();
                        t.store(&own, &data).unwrap();
                        t.fetch(&own, &mut out[..8 * PAGE_SIZE]).unwrap();
                        for (i, k) in own.iter().enumerate() {
                            assert_eq!(
                                check_versioned(&out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], *k),
                                round
                            );
                        }
                        if round.is_multiple_of(3) {
                            t.discard(&own);
                            assert!(matches!(
                                t.fetch(&own[..1], &mut out[..PAGE_SIZE]),
                                Err(TierError::Missing { .. })
                            ));
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let mut out = vec![0u8; PAGE_SIZE];
        for k in &shared {
            t.fetch(&[*k], &mut out).unwrap();
            check_versioned(&out, *k);
        }
    }

    /// One step of the model test.
    #[derive(Clone, Debug)]
    pub(crate) enum Op {
        Store(Vec<(u64, Kind)>),
        Fetch(Vec<u64>),
        Discard(Vec<u64>),
    }

    pub(crate) fn op() -> impl Strategy<Value = Op> {
        // Few keys so stores, fetches and discards meet; 3 regions and 20 pages per region
        // so batches cross shards.
        let k = 0u64..60;
        let kind = prop_oneof![
            Just(Kind::Zero),
            (0u64..4).prop_map(Kind::Random),
            (0u64..4).prop_map(Kind::Text),
            (0u64..4).prop_map(Kind::Half),
        ];
        prop_oneof![
            3 => prop::collection::vec((k.clone(), kind), 0..12).prop_map(Op::Store),
            3 => prop::collection::vec(k.clone(), 0..12).prop_map(Op::Fetch),
            1 => prop::collection::vec(k, 0..12).prop_map(Op::Discard),
        ]
    }

    /// Runs `ops` on `t` and on a `HashMap` model; they must agree on content and stats.
    pub(crate) fn run_model(t: &dyn Backend, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut model: HashMap<PageKey, Kind> = HashMap::new();
        for op in ops {
            match op {
                Op::Store(pages) => {
                    let keys: Vec<PageKey> = pages.iter().map(|(i, _)| key(*i)).collect();
                    let data: Vec<u8> = pages.iter().flat_map(|(_, k)| page(*k)).collect();
                    t.store(&keys, &data)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.extend(keys.iter().zip(pages).map(|(k, (_, kind))| (*k, *kind)));
                }
                Op::Fetch(idx) => {
                    let keys: Vec<PageKey> = idx.iter().map(|i| key(*i)).collect();
                    let mut out = vec![0xEEu8; keys.len() * PAGE_SIZE];
                    let r = t.fetch(&keys, &mut out);
                    match keys.iter().find(|k| !model.contains_key(k)) {
                        Some(_) => {
                            let missing = matches!(r, Err(TierError::Missing { key }) if !model.contains_key(&key));
                            prop_assert!(missing, "{:?}", r);
                        }
                        None => {
                            prop_assert!(r.is_ok(), "{:?}", r);
                            for (i, k) in keys.iter().enumerate() {
                                prop_assert!(
                                    out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] == page(model[k])[..]
                                );
                            }
                        }
                    }
                }
                Op::Discard(idx) => {
                    let keys: Vec<PageKey> = idx.iter().map(|i| key(*i)).collect();
                    t.discard(&keys);
                    for k in &keys {
                        model.remove(k);
                    }
                }
            }
            let st = t.stats();
            prop_assert_eq!(st.pages, model.len() as u64);
            prop_assert_eq!(
                st.zero_pages,
                model.values().filter(|k| **k == Kind::Zero).count() as u64
            );
            prop_assert_eq!(st.logical_bytes, st.pages * PAGE_SIZE as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{self, Kind, key, page};
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn chunk_layout_is_contiguous() {
        for slot in 0..2000 {
            let (c, off) = locate(slot);
            assert!(off < chunk_pages(c), "slot {slot}");
            assert_eq!(chunk_start(c) + off, slot);
        }
        for c in 0..20 {
            assert_eq!(chunk_start(c) + chunk_pages(c), chunk_start(c + 1));
        }
    }

    #[test]
    fn zero_detection() {
        let mut p = vec![0u8; PAGE_SIZE];
        assert!(is_zero(&p));
        for at in [0, 7, 63, 64, 2048, PAGE_SIZE - 1] {
            p[at] = 1;
            assert!(!is_zero(&p), "byte {at}");
            p[at] = 0;
        }
        assert!(is_zero(&[0; 100]) && !is_zero(&[0, 0, 0, 1]));
    }

    #[test]
    fn runs_group_keys_by_shard() {
        let keys: Vec<PageKey> = (0..200).map(|i| PageKey::new(1, i)).collect();
        let runs: Vec<_> = runs(&keys).collect();
        assert_eq!(runs.iter().map(|(_, r)| r.len()).sum::<usize>(), keys.len());
        let mut next = 0;
        for (shard, r) in &runs {
            assert_eq!(r.start, next);
            next = r.end;
            assert!(keys[r.clone()].iter().all(|k| shard_of(*k) == *shard));
        }
        // Aligned runs of 8 share a shard, and 200 pages use many shards.
        assert!(runs.len() <= 26);
        let used: std::collections::HashSet<usize> = runs.iter().map(|(s, _)| *s).collect();
        assert!(used.len() > 10, "{used:?}");
    }

    #[test]
    fn round_trips() {
        testutil::round_trips(&Memory::new());
    }

    #[test]
    fn overwrite() {
        testutil::overwrite(&Memory::new());
    }

    #[test]
    fn discard() {
        testutil::discard(&Memory::new());
    }

    #[test]
    fn missing() {
        testutil::missing(&Memory::new());
    }

    #[test]
    fn concurrent() {
        testutil::concurrent(Arc::new(Memory::new()), 150);
    }

    #[test]
    fn stats_count_slots_and_zero_pages() {
        let t = Memory::new();
        assert_eq!(t.name(), "mem");
        assert_eq!(t.stats(), TierStats::default());
        let keys: Vec<PageKey> = (0..100).map(key).collect();
        let data: Vec<u8> = (0..100)
            .flat_map(|i| page(if i < 50 { Kind::Zero } else { Kind::Random(i) }))
            .collect();
        t.store(&keys, &data).unwrap();
        let st = t.stats();
        assert_eq!(
            (st.pages, st.zero_pages, st.logical_bytes),
            (100, 50, 100 * PAGE_SIZE as u64)
        );
        // 50 data pages, at most a chunk of slack per shard, plus tables.
        assert!(st.stored_bytes >= 50 * PAGE_SIZE as u64);
        assert!(st.stored_bytes < 100 * PAGE_SIZE as u64, "{st:?}");
        // Only zero pages: no slab at all.
        t.discard(&keys[50..]);
        let st = t.stats();
        assert_eq!((st.pages, st.zero_pages), (50, 50));
        assert!(st.stored_bytes < 16 * 1024, "{st:?}");
    }

    #[test]
    #[should_panic(expected = "engine bug")]
    fn wrong_batch_shape_is_a_bug() {
        let _ = Memory::new().store(&[key(1)], &[0; 100]);
    }

    proptest! {
        #[test]
        fn matches_model(ops in prop::collection::vec(testutil::op(), 1..40)) {
            testutil::run_model(&Memory::new(), &ops)?;
        }
    }
}

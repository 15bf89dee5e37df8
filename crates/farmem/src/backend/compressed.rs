//! `compressed`: pages compressed (lz4 or zstd) in process memory, like zram.
//!
//! # Storage
//! The same 64 shards as [`Memory`](super::Memory) (runs of 8 neighbouring pages per
//! shard, cache-padded `RwLock`s), each a map from key to one exactly sized heap blob:
//!
//! | blob length            | meaning                                          |
//! |------------------------|--------------------------------------------------|
//! | 0                      | zero page: no allocation                         |
//! | 1 ..= `PAGE_SIZE - 64` | the page compressed with the tier's codec        |
//! | `PAGE_SIZE`            | raw page: it did not compress below the limit    |
//!
//! Compressed pages vary in size from tens of bytes to 4 KiB, so the blobs go to the
//! allocator (one `malloc` per stored page, off the fault path) rather than to fixed
//! slots: its size classes waste less than a home-made slab would, and its overhead
//! (about 16 bytes a page) is counted in [`TierStats::stored_bytes`].
//!
//! # Cost
//! `store` encodes the whole batch before taking any lock, then inserts under each shard's
//! write lock and frees replaced blobs after the locks are released. `fetch` decodes
//! under the shard's read lock (readers do not wait for each other), straight into the
//! caller's buffer: lz4 fetch never allocates. zstd needs a decompression context: each
//! thread keeps one, created (allocated) on its first zstd fetch, and a fetch that
//! interrupts another zstd call on the same thread (a signal handler) makes a temporary one.

use super::memory::{KeyMap, Shards, check_batch, is_zero, runs, shrink_if_sparse, table_bytes};
use super::{Backend, PAGE_SIZE, PageKey, TierError, TierStats};
use lz4_flex::block::{CompressTable, compress_into_with_table, decompress_into};
use std::cell::Cell;
use std::io;

/// Compression codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    /// lz4 (lz4_flex): fast, the default.
    #[default]
    Lz4,
    /// zstd at the given level (1 to 22, or negative for faster and larger; 0 means
    /// zstd's default, 3). Compresses better than lz4 at several times the cost.
    Zstd(i32),
}

/// Largest compressed page kept compressed: anything bigger is stored raw, since it would
/// save too little to pay for decoding.
const MAX_PACKED: usize = PAGE_SIZE - 64;

/// lz4's worst case for one page.
const LZ4_BOUND: usize = lz4_flex::block::get_maximum_output_size(PAGE_SIZE);

/// One stored page; its length says how it is encoded (see the module docs).
type Blob = Box<[u8]>;

/// Estimated bytes the allocator uses for a blob of `len` bytes (glibc: 8 bytes of
/// header, 16-byte granules, 32 bytes at least).
fn alloc_bytes(len: usize) -> u64 {
    if len == 0 {
        0
    } else {
        ((len + 8 + 15) & !15).max(32) as u64
    }
}

/// One shard of [`Compressed`].
#[derive(Debug, Default)]
struct Shard {
    map: KeyMap<Blob>,
    zero_pages: u64,
    /// Sum of [`alloc_bytes`] over the blobs.
    blob_bytes: u64,
}

impl Shard {
    /// Inserts `blob` for `key`, returning the blob it replaces so the caller can free it
    /// outside the lock.
    fn insert(&mut self, key: PageKey, blob: Blob) -> Option<Blob> {
        self.account(&blob, true);
        let old = self.map.insert(key, blob);
        if let Some(old) = &old {
            self.account(old, false);
        }
        old
    }

    fn remove(&mut self, key: PageKey) -> Option<Blob> {
        let old = self.map.remove(&key);
        if let Some(old) = &old {
            self.account(old, false);
        }
        old
    }

    fn account(&mut self, blob: &[u8], add: bool) {
        let (zero, bytes) = (u64::from(blob.is_empty()), alloc_bytes(blob.len()));
        if add {
            self.zero_pages += zero;
            self.blob_bytes += bytes;
        } else {
            self.zero_pages -= zero;
            self.blob_bytes -= bytes;
        }
    }
}

/// Compressed in-memory tier (`compressed:lz4`, `compressed:zstd`): each page is compressed
/// into its own heap blob, zero pages are free, and pages that do not compress are kept
/// raw. See the module docs for the layout and costs.
#[derive(Debug)]
pub struct Compressed {
    codec: Codec,
    shards: Shards<Shard>,
}

impl Compressed {
    /// An empty tier that compresses with `codec`.
    pub fn new(codec: Codec) -> Compressed {
        Compressed {
            codec,
            shards: Shards::new(),
        }
    }

    /// An empty lz4 tier: the fast choice.
    pub fn lz4() -> Compressed {
        Compressed::new(Codec::Lz4)
    }

    /// An empty zstd tier at `level` (see [`Codec::Zstd`]).
    pub fn zstd(level: i32) -> Compressed {
        Compressed::new(Codec::Zstd(level))
    }

    /// The tier's codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Encodes every page of `data` into a blob.
    fn encode(&self, data: &[u8]) -> Result<Vec<Blob>, TierError> {
        let mut blobs = Vec::with_capacity(data.len() / PAGE_SIZE);
        match self.codec {
            Codec::Lz4 => with_scratch(&LZ4_ENCODER, Lz4Encoder::new, |enc| {
                blobs.extend(data.chunks_exact(PAGE_SIZE).map(|page| enc.encode(page)));
                Ok(())
            })?,
            Codec::Zstd(level) => with_scratch(&ZSTD_ENCODER, ZstdEncoder::new, |enc| {
                for page in data.chunks_exact(PAGE_SIZE) {
                    blobs.push(enc.encode(level, page)?);
                }
                Ok(())
            })?,
        }
        Ok(blobs)
    }

    /// Decodes `blob`, the copy of `key`, into `out`.
    fn decode(&self, key: PageKey, blob: &[u8], out: &mut [u8]) -> Result<(), TierError> {
        let decoded = match blob.len() {
            0 => {
                out.fill(0);
                return Ok(());
            }
            PAGE_SIZE => {
                out.copy_from_slice(blob);
                return Ok(());
            }
            _ => match self.codec {
                Codec::Lz4 => decompress_into(blob, out).map_err(|e| e.to_string()),
                Codec::Zstd(_) => with_scratch(&ZSTD_DECODER, ZstdDecoder::new, |dec| {
                    Ok(dec
                        .0
                        .decompress_to_buffer(blob, out)
                        .map_err(|e| e.to_string()))
                })?,
            },
        };
        match decoded {
            Ok(PAGE_SIZE) => Ok(()),
            Ok(n) => Err(TierError::Corrupt {
                key,
                detail: format!(
                    "{} bytes of {} decode to {n} bytes, not {PAGE_SIZE}",
                    blob.len(),
                    self.name()
                ),
            }),
            Err(e) => Err(TierError::Corrupt {
                key,
                detail: format!("{} bytes of {} do not decode: {e}", blob.len(), self.name()),
            }),
        }
    }
}

impl Backend for Compressed {
    fn name(&self) -> &str {
        match self.codec {
            Codec::Lz4 => "compressed:lz4",
            Codec::Zstd(_) => "compressed:zstd",
        }
    }

    fn store(&self, keys: &[PageKey], data: &[u8]) -> Result<(), TierError> {
        check_batch(keys, data.len());
        // Encode first: a codec error leaves the tier as it was, and no lock is held
        // while compressing.
        let mut blobs = self.encode(data)?.into_iter();
        let mut replaced = Vec::new();
        for (shard, range) in runs(keys) {
            let mut s = self.shards.write(shard);
            for (key, blob) in keys[range].iter().zip(&mut blobs) {
                replaced.extend(s.insert(*key, blob));
            }
        }
        // `replaced` is freed here, after the locks.
        Ok(())
    }

    fn fetch(&self, keys: &[PageKey], out: &mut [u8]) -> Result<(), TierError> {
        check_batch(keys, out.len());
        for (shard, range) in runs(keys) {
            let s = self.shards.read(shard);
            for i in range {
                let key = keys[i];
                let blob = s.map.get(&key).ok_or(TierError::Missing { key })?;
                self.decode(key, blob, &mut out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])?;
            }
        }
        Ok(())
    }

    fn discard(&self, keys: &[PageKey]) {
        let mut removed = Vec::new();
        for (shard, range) in runs(keys) {
            let mut s = self.shards.write(shard);
            removed.extend(keys[range].iter().filter_map(|k| s.remove(*k)));
            shrink_if_sparse(&mut s.map);
        }
    }

    fn stats(&self) -> TierStats {
        let mut st = TierStats::default();
        self.shards.each(|s| {
            st.pages += s.map.len() as u64;
            st.zero_pages += s.zero_pages;
            st.stored_bytes +=
                s.blob_bytes + table_bytes(s.map.capacity(), size_of::<(PageKey, Blob)>());
        });
        st.logical_bytes = st.pages * PAGE_SIZE as u64;
        st
    }
}

// ---------------------------------------------------------------------------------------
// Per-thread codec state.
// ---------------------------------------------------------------------------------------

thread_local! {
    static LZ4_ENCODER: Cell<Option<Box<Lz4Encoder>>> = const { Cell::new(None) };
    static ZSTD_ENCODER: Cell<Option<Box<ZstdEncoder>>> = const { Cell::new(None) };
    static ZSTD_DECODER: Cell<Option<Box<ZstdDecoder>>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's cached `T`, made by `make` when there is none. The cache is
/// emptied while `f` runs, so a nested call (a signal handler interrupting `f`, or a
/// thread being torn down) makes its own instead of sharing one in use.
fn with_scratch<T, R>(
    slot: &'static std::thread::LocalKey<Cell<Option<Box<T>>>>,
    make: fn() -> io::Result<Box<T>>,
    f: impl FnOnce(&mut T) -> Result<R, TierError>,
) -> Result<R, TierError> {
    let mut scratch = match slot.try_with(Cell::take).ok().flatten() {
        Some(s) => s,
        None => make()?,
    };
    let r = f(&mut scratch);
    // Fails only while the thread is exiting; the scratch is then simply dropped.
    let _ = slot.try_with(|c| c.set(Some(scratch)));
    r
}

/// lz4 compression state: the match table and an output buffer of the worst-case size.
struct Lz4Encoder {
    table: CompressTable,
    buf: [u8; LZ4_BOUND],
}

impl Lz4Encoder {
    fn new() -> io::Result<Box<Lz4Encoder>> {
        Ok(Box::new(Lz4Encoder {
            table: CompressTable::default(),
            buf: [0; LZ4_BOUND],
        }))
    }

    fn encode(&mut self, page: &[u8]) -> Blob {
        if is_zero(page) {
            return Blob::default();
        }
        match compress_into_with_table(page, &mut self.buf, &mut self.table) {
            Ok(n) if n <= MAX_PACKED => self.buf[..n].into(),
            // Too big to be worth it. (An error cannot happen: `buf` has lz4's worst-case
            // size; storing raw would be right anyway.)
            _ => page.into(),
        }
    }
}

/// zstd compression state: a context and an output buffer of the worst-case size.
struct ZstdEncoder {
    level: i32,
    ctx: zstd::bulk::Compressor<'static>,
    buf: Box<[u8]>,
}

impl ZstdEncoder {
    fn new() -> io::Result<Box<ZstdEncoder>> {
        Ok(Box::new(ZstdEncoder {
            level: 0,
            ctx: zstd::bulk::Compressor::new(0)?,
            buf: vec![0; zstd::zstd_safe::compress_bound(PAGE_SIZE)].into_boxed_slice(),
        }))
    }

    fn encode(&mut self, level: i32, page: &[u8]) -> Result<Blob, TierError> {
        if is_zero(page) {
            return Ok(Blob::default());
        }
        if level != self.level {
            self.ctx
                .set_compression_level(level)
                .map_err(|e| zstd_error(level, e))?;
            self.level = level;
        }
        let n = self
            .ctx
            .compress_to_buffer(page, &mut self.buf[..])
            .map_err(|e| zstd_error(level, e))?;
        Ok(if n <= MAX_PACKED {
            self.buf[..n].into()
        } else {
            page.into()
        })
    }
}

fn zstd_error(level: i32, e: io::Error) -> TierError {
    TierError::Io(io::Error::other(format!(
        "zstd compression at level {level} failed ({e}): use a level from 1 to 22, or lz4"
    )))
}

/// A zstd decompression context.
struct ZstdDecoder(zstd::bulk::Decompressor<'static>);

impl ZstdDecoder {
    fn new() -> io::Result<Box<ZstdDecoder>> {
        Ok(Box::new(ZstdDecoder(zstd::bulk::Decompressor::new()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::shard_of;
    use super::super::memory::testutil::{self, Kind, key, page};
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn tiers() -> Vec<Compressed> {
        vec![
            Compressed::lz4(),
            Compressed::zstd(3),
            Compressed::zstd(-1),
            Compressed::new(Codec::Zstd(0)),
        ]
    }

    fn store_all(t: &Compressed, kinds: &[Kind]) -> Vec<PageKey> {
        let keys: Vec<PageKey> = (0..kinds.len() as u64).map(key).collect();
        let data: Vec<u8> = kinds.iter().flat_map(|k| page(*k)).collect();
        t.store(&keys, &data).unwrap();
        keys
    }

    fn blob_len(t: &Compressed, k: PageKey) -> usize {
        t.shards.read(shard_of(k)).map[&k].len()
    }

    #[test]
    fn names() {
        assert_eq!(Compressed::lz4().name(), "compressed:lz4");
        assert_eq!(Compressed::zstd(3).name(), "compressed:zstd");
        assert_eq!(Compressed::new(Codec::default()).codec(), Codec::Lz4);
        assert_eq!(Compressed::zstd(7).codec(), Codec::Zstd(7));
    }

    #[test]
    fn round_trips() {
        for t in tiers() {
            testutil::round_trips(&t);
        }
    }

    #[test]
    fn overwrite() {
        for t in tiers() {
            testutil::overwrite(&t);
        }
    }

    #[test]
    fn discard() {
        for t in tiers() {
            testutil::discard(&t);
        }
    }

    #[test]
    fn missing() {
        for t in tiers() {
            testutil::missing(&t);
        }
    }

    #[test]
    fn concurrent_lz4() {
        testutil::concurrent(Arc::new(Compressed::lz4()), 60);
    }

    #[test]
    fn concurrent_zstd() {
        testutil::concurrent(Arc::new(Compressed::zstd(1)), 60);
    }

    #[test]
    fn compressible_pages_compress() {
        for t in tiers() {
            let kinds: Vec<Kind> = (0..256).map(Kind::Text).collect();
            let keys = store_all(&t, &kinds);
            let st = t.stats();
            assert_eq!(st.pages, 256);
            assert!(
                st.ratio() > 1.5,
                "{}: {st:?} ratio {}",
                t.name(),
                st.ratio()
            );
            assert!(blob_len(&t, keys[0]) < PAGE_SIZE * 2 / 3);

            let half = Compressed::new(t.codec());
            let kinds: Vec<Kind> = (0..256).map(Kind::Half).collect();
            store_all(&half, &kinds);
            let st = half.stats();
            assert!(
                st.ratio() > 1.2,
                "{}: half pages {st:?} ratio {}",
                t.name(),
                st.ratio()
            );
        }
    }

    #[test]
    fn incompressible_pages_are_stored_raw() {
        for t in tiers() {
            let kinds: Vec<Kind> = (0..64).map(Kind::Random).collect();
            let keys = store_all(&t, &kinds);
            for (k, kind) in keys.iter().zip(&kinds) {
                assert_eq!(blob_len(&t, *k), PAGE_SIZE, "{}", t.name());
                let mut out = vec![0; PAGE_SIZE];
                t.fetch(&[*k], &mut out).unwrap();
                assert!(out == page(*kind));
            }
            let st = t.stats();
            assert!(st.stored_bytes >= 64 * PAGE_SIZE as u64);
            assert!(
                st.ratio() > 0.9 && st.ratio() <= 1.0,
                "{}: {st:?}",
                t.name()
            );
        }
    }

    #[test]
    fn zero_pages_cost_nothing() {
        for t in tiers() {
            let keys = store_all(&t, &[Kind::Zero; 100]);
            let st = t.stats();
            assert_eq!((st.pages, st.zero_pages), (100, 100));
            assert_eq!(blob_len(&t, keys[3]), 0);
            // Only the map tables.
            assert_eq!(t.shards.read(shard_of(keys[3])).blob_bytes, 0);
            assert!(st.stored_bytes < 100 * 64, "{st:?}");
        }
    }

    #[test]
    fn stats_track_blob_sizes() {
        let t = Compressed::lz4();
        let keys = store_all(
            &t,
            &[Kind::Half(1), Kind::Random(2), Kind::Zero, Kind::Text(3)],
        );
        let blobs: u64 = keys.iter().map(|k| alloc_bytes(blob_len(&t, *k))).sum();
        let mut sum = 0;
        t.shards.each(|s| sum += s.blob_bytes);
        assert_eq!(sum, blobs);
        assert!(t.stats().stored_bytes > blobs);
        t.store(&keys[..2], &page(Kind::Zero).repeat(2)).unwrap();
        t.discard(&keys[3..]);
        let mut sum = 0;
        t.shards.each(|s| sum += s.blob_bytes);
        assert_eq!(sum, 0);
        assert_eq!(t.stats().zero_pages, 3);
    }

    #[test]
    fn damaged_copies_are_corrupt() {
        for t in tiers() {
            let keys = store_all(&t, &[Kind::Half(1), Kind::Text(2)]);
            for (k, bad) in keys.iter().zip([vec![0xFFu8; 10], vec![0x10, b'a']]) {
                t.shards.write(shard_of(*k)).map.insert(*k, bad.into());
                let mut out = vec![0; PAGE_SIZE];
                let e = t.fetch(&[*k], &mut out).unwrap_err();
                assert!(
                    matches!(e, TierError::Corrupt { key, .. } if key == *k),
                    "{}: {e}",
                    t.name()
                );
                assert!(e.to_string().contains("corrupt"), "{e}");
            }
        }
        // A valid lz4 block of the wrong length.
        let t = Compressed::lz4();
        let k = store_all(&t, &[Kind::Text(5)])[0];
        let mut short = vec![0; LZ4_BOUND];
        let n = lz4_flex::block::compress_into(&page(Kind::Text(5))[..100], &mut short).unwrap();
        t.shards.write(shard_of(k)).map.insert(k, short[..n].into());
        let e = t.fetch(&[k], &mut [0; PAGE_SIZE]).unwrap_err();
        assert!(matches!(e, TierError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn zstd_levels_share_a_thread() {
        // One thread's cached compressor switches level between tiers.
        let (fast, slow) = (Compressed::zstd(1), Compressed::zstd(19));
        for i in 0..4 {
            for t in [&fast, &slow] {
                let k = store_all(t, &[Kind::Text(i)])[0];
                let mut out = vec![0; PAGE_SIZE];
                t.fetch(&[k], &mut out).unwrap();
                assert!(out == page(Kind::Text(i)));
            }
        }
    }

    proptest! {
        // Fewer cases than the default 256: lz4_flex is slow in unoptimised test builds.
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn lz4_matches_model(ops in prop::collection::vec(testutil::op(), 1..40)) {
            testutil::run_model(&Compressed::lz4(), &ops)?;
        }

        #[test]
        fn zstd_matches_model(ops in prop::collection::vec(testutil::op(), 1..40)) {
            testutil::run_model(&Compressed::zstd(3), &ops)?;
        }
    }
}

//! A heap's counters, sharded by thread so that threads allocating at once do not share
//! one cache line.

use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    live: AtomicI64,
    blocks: AtomicI64,
    requested: AtomicU64,
    handed_out: AtomicU64,
}

#[derive(Default)]
pub(super) struct Counters {
    shards: [CachePadded<Shard>; SHARDS],
}

/// The sum of the shards.
#[derive(Debug, Default)]
pub(super) struct Sum {
    pub live: i64,
    pub blocks: i64,
    pub requested: u64,
    pub handed_out: u64,
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX
        .try_with(|i| {
            if i.get() == usize::MAX {
                i.set(NEXT.fetch_add(1, Relaxed) % SHARDS);
            }
            i.get()
        })
        .unwrap_or(0)
}

impl Counters {
    #[inline]
    pub fn alloc(&self, requested: usize, usable: usize) {
        let s = &self.shards[shard_index()];
        s.live.fetch_add(usable as i64, Relaxed);
        s.blocks.fetch_add(1, Relaxed);
        s.requested.fetch_add(requested as u64, Relaxed);
        s.handed_out.fetch_add(usable as u64, Relaxed);
    }

    #[inline]
    pub fn free(&self, usable: usize) {
        let s = &self.shards[shard_index()];
        s.live.fetch_sub(usable as i64, Relaxed);
        s.blocks.fetch_sub(1, Relaxed);
    }

    pub fn sum(&self) -> Sum {
        let mut t = Sum::default();
        for s in &self.shards {
            t.live += s.live.load(Relaxed);
            t.blocks += s.blocks.load(Relaxed);
            t.requested += s.requested.load(Relaxed);
            t.handed_out += s.handed_out.load(Relaxed);
        }
        t
    }
}

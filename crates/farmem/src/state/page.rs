//! The page-state word: one `AtomicU64` per page decides everything.
//!
//! ```text
//!                 first touch (ZEROPAGE)
//!   UNTOUCHED ──────────────────────────────┐
//!       ▲                                   ▼
//!       │ evicted all-zero          ┌──► ACTIVE ◄─────────────┐
//!       │                           │  (mapped,   minor fault │
//!   ┌───┴──┐   major fault (COPY)   │  referenced) (CONTINUE) │
//!   │ FAR  │────────────────────────┘      │                  │
//!   │      │                               │ demote (zap PTE, │
//!   │      │◄──────── evict ──────── INACTIVE  data stays)    │
//!   └──────┘   (write back if dirty,  (in page cache,  ───────┘
//!       │       punch hole)            unmapped)
//!       └── prefetch (pwrite, unmapped) ──► INACTIVE|PREFETCHED
//! ```
//!
//! Every transition goes through LOCKED, taken with a compare-and-swap by exactly one
//! actor (a faulting thread, a handler thread, the reclaimer); anyone else who meets a
//! LOCKED page waits for it. Bits of the word:
//!
//! | bits  | meaning |
//! |-------|---------|
//! | 0..3  | tag: UNTOUCHED, ACTIVE, INACTIVE, FAR, LOCKED |
//! | 3     | HAS_FAR: the far tier holds a copy whose checksum is in the far-hash table |
//! | 4     | PREFETCHED: brought in by a prefetch, unmapped, and not touched since |
//! | 5     | AHEAD: mapped ahead of a stream by a prefetch, not yet confirmed used |
//! | 6     | YOUNG: an unmapped prefetched page the CLOCK hand has not passed yet (its reference bit) |
//! | 7     | KEPT: in the hot set: left mapped by the hand, which reads its chunk's accessed bits |
//! | 8     | WARM: touched after one test (mapped again by a minor fault after the hand unmapped it), or, unmapped, being tested a second time |
//! | 32..64| generation: bumped each time the page becomes resident, so that stale queue entries of the eviction policy can be recognised |

use std::sync::atomic::{AtomicU64, Ordering};

/// The tag of a page-state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// Never touched, or evicted while all zeros: reads as zeros, costs nothing.
    Untouched = 0,
    /// Mapped in the region: accessible without a fault ("referenced").
    Active = 1,
    /// In local memory (the memfd's page cache) but unmapped: the next touch takes a
    /// cheap minor fault ("not referenced since the last sweep").
    Inactive = 2,
    /// Only in the far tier.
    Far = 3,
    /// In transition; whoever holds it will store the next state.
    Locked = 4,
}

const TAG_MASK: u64 = 0b111;
/// A valid far copy exists.
pub const HAS_FAR: u64 = 1 << 3;
/// Brought in by prefetch, unmapped, untouched since.
pub const PREFETCHED: u64 = 1 << 4;
/// Mapped ahead of a stream by a prefetch; cleared when the stream reaches the run's end.
pub const AHEAD: u64 = 1 << 5;
/// Prefetched, unmapped, and not yet passed by the CLOCK hand: it gets one lap of grace,
/// as a mapped page does.
pub const YOUNG: u64 = 1 << 6;
/// In the hot set (ACTIVE): the CLOCK hand leaves it mapped and learns whether it is
/// still used from its chunk's count of hardware accessed bits (`reclaim/age.rs`).
pub const KEPT: u64 = 1 << 7;
/// Passed one test: unmapped by the CLOCK hand and touched again within a lap. On an
/// ACTIVE page: the next pass tests it once more. On an INACTIVE page: the second test
/// is running; a touch now puts it in the hot set (KEPT).
pub const WARM: u64 = 1 << 8;
const FLAG_MASK: u64 = HAS_FAR | PREFETCHED | AHEAD | YOUNG | KEPT | WARM;
const GEN_SHIFT: u32 = 32;

/// A decoded page-state word.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct State(pub u64);

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.tag())?;
        if self.has_far() {
            f.write_str("|HAS_FAR")?;
        }
        if self.prefetched() {
            f.write_str("|PREFETCHED")?;
        }
        if self.ahead() {
            f.write_str("|AHEAD")?;
        }
        if self.0 & KEPT != 0 {
            f.write_str("|KEPT")?;
        }
        if self.0 & WARM != 0 {
            f.write_str("|WARM")?;
        }
        write!(f, " gen {}", self.generation())
    }
}

impl State {
    /// A word with the given parts.
    pub fn new(tag: Tag, flags: u64, generation: u32) -> State {
        debug_assert_eq!(flags & !FLAG_MASK, 0);
        State(tag as u64 | flags | ((generation as u64) << GEN_SHIFT))
    }

    /// The tag.
    pub fn tag(self) -> Tag {
        match self.0 & TAG_MASK {
            0 => Tag::Untouched,
            1 => Tag::Active,
            2 => Tag::Inactive,
            3 => Tag::Far,
            _ => Tag::Locked,
        }
    }

    /// Flag bits (HAS_FAR, PREFETCHED).
    pub fn flags(self) -> u64 {
        self.0 & FLAG_MASK
    }

    /// Whether a far copy exists.
    pub fn has_far(self) -> bool {
        self.0 & HAS_FAR != 0
    }

    /// Whether the page came in by prefetch and is untouched.
    pub fn prefetched(self) -> bool {
        self.0 & PREFETCHED != 0
    }

    /// Whether the page is an unmapped prefetch the CLOCK hand has not passed yet.
    pub fn young(self) -> bool {
        self.0 & YOUNG != 0
    }

    /// Whether the page was mapped ahead of a stream and not yet confirmed used.
    pub fn ahead(self) -> bool {
        self.0 & AHEAD != 0
    }

    /// The generation.
    pub fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) as u32
    }

    /// Whether the page occupies local memory (counts against the budget).
    pub fn is_resident(self) -> bool {
        matches!(self.tag(), Tag::Active | Tag::Inactive)
    }

    /// The same word with another tag.
    pub fn with_tag(self, tag: Tag) -> State {
        State((self.0 & !TAG_MASK) | tag as u64)
    }

    /// The same word with flags replaced.
    pub fn with_flags(self, flags: u64) -> State {
        State((self.0 & !FLAG_MASK) | flags)
    }

    /// The locked form of this word (keeps flags and generation).
    pub fn locked(self) -> State {
        self.with_tag(Tag::Locked)
    }
}

/// The state word of one page. All-zero bytes are a valid word (UNTOUCHED, generation 0),
/// so tables of them can come from lazily zeroed memory.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct PageWord(AtomicU64);

/// Marks types whose all-zero bytes are a valid value.
///
/// # Safety
/// An implementor must be valid when every byte is zero.
pub(crate) unsafe trait Zeroable: Sized {}

// SAFETY: AtomicU64 has the layout of u64; zero is a valid u64.
unsafe impl Zeroable for AtomicU64 {}
// SAFETY: AtomicU8 has the layout of u8; zero is a valid u8.
unsafe impl Zeroable for std::sync::atomic::AtomicU8 {}
// SAFETY: PageWord is a transparent AtomicU64, and zero is UNTOUCHED, generation 0.
unsafe impl Zeroable for PageWord {}

/// A table of `n` zeroed values. The memory comes from the allocator's zeroed path
/// (fresh anonymous pages for large tables), so a huge, sparsely used region costs
/// memory only for the parts of its tables that are touched.
/// `None` if the memory cannot be had.
pub(crate) fn zeroed_table<T: Zeroable>(n: usize) -> Option<Box<[T]>> {
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Some(
            (0..n)
                .map(|_| {
                    // SAFETY: T is Zeroable, so the all-zero value is valid.
                    unsafe { std::mem::zeroed() }
                })
                .collect(),
        );
    }
    let layout = std::alloc::Layout::array::<T>(n).ok()?;
    // SAFETY: layout has a non-zero size (n > 0, T not zero-sized).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: ptr points to n zeroed, properly aligned T, valid because T is Zeroable, and
    // was allocated by the global allocator with the layout of [T; n], as Box expects.
    Some(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n)) })
}

impl PageWord {
    /// Reads the state.
    #[inline]
    pub fn load(&self) -> State {
        State(self.0.load(Ordering::Acquire))
    }

    /// Takes the lock if the word still reads `seen`. Returns whether it did.
    #[inline]
    pub fn try_lock(&self, seen: State) -> bool {
        debug_assert_ne!(seen.tag(), Tag::Locked);
        self.0
            .compare_exchange(seen.0, seen.locked().0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Releases the lock with the next state. Only the lock holder may call this.
    #[inline]
    pub fn unlock(&self, next: State) {
        debug_assert_eq!(self.load().tag(), Tag::Locked);
        debug_assert_ne!(next.tag(), Tag::Locked);
        self.0.store(next.0, Ordering::Release);
    }

    /// Replaces an unlocked state with another unlocked one (flag changes that need no
    /// lock). Returns whether the word still read `seen`.
    #[inline]
    pub fn replace(&self, seen: State, next: State) -> bool {
        debug_assert!(seen.tag() != Tag::Locked && next.tag() != Tag::Locked);
        self.0
            .compare_exchange(seen.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Waits until the page is not locked and returns what it then reads.
    #[inline]
    pub fn wait_unlocked(&self) -> State {
        self.wait_unlocked_or(|| {})
    }

    /// `wait_unlocked`, calling `long_wait` once if the holder does not let go within a
    /// short spin (the fault path raises the reclaimer then: it may be the holder).
    #[inline]
    pub fn wait_unlocked_or(&self, long_wait: impl FnOnce()) -> State {
        let mut long_wait = Some(long_wait);
        let mut spins = 0u32;
        loop {
            let s = self.load();
            if s.tag() != Tag::Locked {
                return s;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                if let Some(f) = long_wait.take() {
                    f();
                }
                // The holder may be descheduled on this very CPU: let it run.
                std::thread::yield_now();
            }
        }
    }

    /// Locks the page whatever its state, waiting for another holder first; returns the
    /// state it had. Used by region teardown.
    pub fn lock_any(&self) -> State {
        loop {
            let s = self.wait_unlocked();
            if self.try_lock(s) {
                return s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_their_parts() {
        let s = State::new(Tag::Inactive, HAS_FAR | PREFETCHED, 7);
        assert_eq!(s.tag(), Tag::Inactive);
        assert!(s.has_far() && s.prefetched());
        assert_eq!(s.generation(), 7);
        let l = s.locked();
        assert_eq!(l.tag(), Tag::Locked);
        assert_eq!(l.flags(), s.flags());
        assert_eq!(l.generation(), 7);
        assert_eq!(s.with_flags(0).flags(), 0);
        assert!(s.is_resident());
        assert!(!State::new(Tag::Far, HAS_FAR, 0).is_resident());
    }

    #[test]
    fn only_one_locker_wins() {
        let w = PageWord::default();
        let s = w.load();
        assert!(w.try_lock(s));
        assert!(!w.try_lock(s));
        w.unlock(State::new(Tag::Active, 0, 1));
        assert_eq!(w.load().tag(), Tag::Active);
        let prev = w.lock_any();
        assert_eq!(prev.tag(), Tag::Active);
        assert_eq!(w.load().tag(), Tag::Locked);
    }
}

//! One size class's slabs: which objects of each slab are free, as bitmaps in local memory.
//!
//! Nothing here is written into the slab itself, so freeing an object never touches its
//! page (which may be far). A class hands out objects from its lowest-addressed slab with
//! room first, which keeps the live objects packed into few slabs.

use std::collections::{BTreeSet, HashMap};

use super::classes::{self, SIZES, SLAB};

/// Empty slabs a class keeps for reuse before it gives one back. Programs free and
/// allocate again at once (Redis's reply buffers); a slab given back costs zero-fill
/// faults when the class grows again.
pub(super) const KEEP_EMPTY: u32 = 2;

struct Slab {
    /// One bit per object; set = free.
    free_bits: Box<[u64]>,
    free: u32,
}

/// A class's slabs, under the class's lock.
#[derive(Default)]
pub(super) struct Class {
    slabs: HashMap<u32, Slab>,
    /// Slabs with a free object, by unit (address order).
    partial: BTreeSet<u32>,
    /// Slabs with every object free.
    empty: u32,
}

impl Class {
    /// Takes up to `out.len()` free objects of class `c` (their offsets from the slab
    /// area's base); returns how many. 0: the class needs a new slab.
    pub fn take(&mut self, c: usize, out: &mut [usize]) -> usize {
        let size = SIZES[c] as usize;
        let per = classes::per_slab(c) as u32;
        let mut n = 0;
        while n < out.len() {
            let Some(&unit) = self.partial.first() else {
                break;
            };
            let slab = self.slabs.get_mut(&unit).expect("a partial slab is known");
            if slab.free == per {
                self.empty -= 1;
            }
            'words: for (w, word) in slab.free_bits.iter_mut().enumerate() {
                while *word != 0 {
                    let b = word.trailing_zeros() as usize;
                    *word &= *word - 1;
                    out[n] = unit as usize * SLAB + (w * 64 + b) * size;
                    n += 1;
                    slab.free -= 1;
                    if n == out.len() || slab.free == 0 {
                        break 'words;
                    }
                }
            }
            if slab.free == 0 {
                self.partial.pop_first();
            }
        }
        n
    }

    /// Adds a fresh slab at `unit`, every object free.
    pub fn add(&mut self, c: usize, unit: u32) {
        let per = classes::per_slab(c);
        let mut bits = vec![0u64; per.div_ceil(64)].into_boxed_slice();
        for i in 0..per {
            bits[i / 64] |= 1 << (i % 64);
        }
        self.slabs.insert(
            unit,
            Slab {
                free_bits: bits,
                free: per as u32,
            },
        );
        self.partial.insert(unit);
        self.empty += 1;
    }

    /// Frees the object at offset `off` of the slab area (an object of class `c` handed
    /// out by `take`). Returns a slab unit that is now empty and no longer the class's (to
    /// give back), if any.
    pub fn put(&mut self, c: usize, off: usize) -> Option<u32> {
        let unit = (off / SLAB) as u32;
        let i = (off % SLAB) / SIZES[c] as usize;
        let per = classes::per_slab(c) as u32;
        let slab = self.slabs.get_mut(&unit).unwrap_or_else(|| {
            crate::fatal::die_msg(
                "internal error: farslab freed an object of no slab; please report this bug",
            )
        });
        let bit = 1u64 << (i % 64);
        if slab.free_bits[i / 64] & bit != 0 {
            crate::fatal::die_msg("the program freed a far heap block twice");
        }
        slab.free_bits[i / 64] |= bit;
        slab.free += 1;
        if slab.free == 1 {
            self.partial.insert(unit);
        }
        if slab.free < per {
            return None;
        }
        if self.empty < KEEP_EMPTY {
            self.empty += 1;
            return None;
        }
        self.slabs.remove(&unit);
        self.partial.remove(&unit);
        Some(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_come_lowest_slab_first_and_empty_slabs_go_back_beyond_the_reserve() {
        let c = classes::of(4096);
        let per = classes::per_slab(c);
        let mut k = Class::default();
        k.add(c, 7);
        k.add(c, 3);
        let mut out = vec![0; per + 1];
        assert_eq!(k.take(c, &mut out), per + 1);
        assert!(out[..per].iter().all(|o| o / SLAB == 3));
        assert_eq!(out[per] / SLAB, 7);
        // Freeing everything: the first two slabs to empty stay (KEEP_EMPTY), so nothing
        // goes back; a third would.
        let given: Vec<_> = out.iter().filter_map(|&o| k.put(c, o)).collect();
        assert!(given.is_empty());
        k.add(c, 9);
        // Three slabs in use, then all freed: the third to empty goes back.
        let mut all = vec![0; 3 * per];
        assert_eq!(k.take(c, &mut all), 3 * per);
        let back: Vec<_> = all.iter().filter_map(|&o| k.put(c, o)).collect();
        assert_eq!(back, [9], "one slab beyond the reserve goes back");
    }
}

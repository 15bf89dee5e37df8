//! farslab's size classes: 40 classes from 16 bytes to 8 KiB, each served from 64 KiB
//! slabs that hold only that class.
//!
//! Steps of 16 bytes up to 128, then four classes per doubling up to 2 KiB, then eight
//! (256 and 512 bytes apart) up to 8 KiB: a value of 4 KiB and a few bytes of header (a
//! Redis string) takes 4,608 bytes, not 5,120. A slab wastes at most 8.6% at its end (the
//! 6,656-byte class: 9 objects in 64 KiB).

/// Bytes of one slab.
pub(super) const SLAB: usize = 64 << 10;
/// The largest small object; larger blocks are page-aligned runs of pages.
pub(super) const SMALL_MAX: usize = 8 << 10;
/// Number of classes.
pub(super) const N: usize = 40;
/// Classes below this one (objects up to 128 bytes) share mixed units, carved in the
/// order they are allocated (see `super`).
pub(super) const MIXED: usize = 8;

/// Each class's object size.
pub(super) const SIZES: [u32; N] = [
    16, 32, 48, 64, 80, 96, 112, 128, //
    160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, //
    2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, //
    4608, 5120, 5632, 6144, 6656, 7168, 7680, 8192,
];

/// The class of each size, by `(size + 15) / 16`.
static LOOKUP: [u8; SMALL_MAX / 16 + 1] = {
    let mut t = [0u8; SMALL_MAX / 16 + 1];
    let mut i = 0;
    let mut c = 0;
    while i < t.len() {
        while (SIZES[c] as usize) < i * 16 {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
};

/// The class of an object of `size` bytes (1 ..= SMALL_MAX).
#[inline]
pub(super) fn of(size: usize) -> usize {
    LOOKUP[size.div_ceil(16)] as usize
}

/// The smallest slab class for `size` bytes whose objects are all aligned to `align`
/// (slabs are 64 KiB-aligned, so a class aligns to `align` when its size is a multiple of
/// it; mixed units pack objects of every size, so they align nothing above 16).
pub(super) fn aligned(size: usize, align: usize) -> Option<usize> {
    (of(size).max(MIXED)..N).find(|&c| (SIZES[c] as usize).is_multiple_of(align))
}

/// Objects in one slab of class `c`.
#[inline]
pub(super) fn per_slab(c: usize) -> usize {
    SLAB / SIZES[c] as usize
}

/// Objects a thread may keep of class `c`: about 32 KiB worth, between 4 and 64.
#[inline]
pub(super) fn cache_cap(c: usize) -> usize {
    ((32 << 10) / SIZES[c] as usize).clamp(4, super::cache::CAP_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_gets_the_smallest_class_that_holds_it() {
        for size in 1..=SMALL_MAX {
            let c = of(size);
            assert!(SIZES[c] as usize >= size, "size {size} class {c}");
            assert!(
                c == 0 || (SIZES[c - 1] as usize) < size,
                "size {size} class {c}"
            );
        }
        assert!(SIZES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(SIZES[N - 1] as usize, SMALL_MAX);
    }

    #[test]
    fn aligned_classes_are_aligned() {
        for align in [32, 64, 128, 256, 512, 1024, 2048, 4096] {
            for size in [1, 17, 100, 1000, 4000, 8000] {
                if let Some(c) = aligned(size, align) {
                    assert!(SIZES[c] as usize >= size);
                    assert_eq!(SIZES[c] as usize % align, 0);
                }
            }
        }
        assert_eq!(aligned(100, 64), Some(of(192)));
        assert!(aligned(1, 32).unwrap() >= MIXED);
        assert_eq!(aligned(8000, 8192), Some(N - 1));
    }

    #[test]
    fn slabs_waste_little() {
        for (c, &size) in SIZES.iter().enumerate() {
            let used = per_slab(c) * size as usize;
            assert!(
                (SLAB - used) * 1000 <= SLAB * 86,
                "class {c} wastes {}",
                SLAB - used
            );
        }
    }
}

//! The two datasets and their deterministic contents.
//!
//! - **get-mix**: strings of 4, 8, 16, 32, 64 and 128 KiB in equal shares (key `i` has
//!   size index `i % 6`), read with `GET`.
//! - **lrange**: lists of [`LIST_LEN`] elements of 64 to 1024 bytes each, read with
//!   `LRANGE key 0 99`.
//!
//! Every byte stored is a function of (seed, key index, element index), so every reply can
//! be checked byte for byte without keeping a copy. Each 64-byte line of a value or element
//! holds:
//!
//! ```text
//! word:  0       1       2       3          4              5  6  7
//!        random  random  random  key index  element index  0  0  0
//! ```
//!
//! The random words come from an xorshift stream seeded by (seed, key, element). The key
//! index in every line makes a value returned for the wrong key, or a page of one value
//! inside another, fail the check with a message that names whose data it was. The three
//! repeating words make the data compress about 2.2x with lz4, like the access benchmark's
//! pages and like real heaps, so neither zram nor a compressed far tier is flattered or
//! punished.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::RedisError;
use crate::pattern::mix64;

/// Value sizes of the get-mix dataset; key `i` has size `GET_MIX_SIZES[i % 6]`.
pub const GET_MIX_SIZES: [usize; 6] = [4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10];
/// Elements per list in the lrange dataset.
pub const LIST_LEN: usize = 200;
/// Elements one `LRANGE key 0 99` returns.
pub const LRANGE_COUNT: usize = 100;
/// The smallest element of the lrange dataset, bytes.
pub const MIN_ELEMENT: usize = 64;
/// The largest element of the lrange dataset, bytes.
pub const MAX_ELEMENT: usize = 1024;

const LINE_WORDS: usize = 8;
const GET_MIX_TAG: u64 = 0x6E7_3A1C_0000_0001;
const LRANGE_TAG: u64 = 0x15A_36E0_0000_0002;
const LEN_TAG: u64 = 0x1E6_7000_0000_0003;

/// Which dataset and access: get-mix or lrange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// `GET` of strings of 4 to 128 KiB.
    #[serde(rename = "get-mix")]
    GetMix,
    /// `LRANGE key 0 99` over lists of 200 elements.
    #[serde(rename = "lrange")]
    Lrange,
}

impl WorkloadKind {
    /// The name used on the command line and in records.
    pub const fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::GetMix => "get-mix",
            WorkloadKind::Lrange => "lrange",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown workload name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Redis workload {0:?}: use get-mix or lrange")]
pub struct UnknownWorkload(pub String);

impl FromStr for WorkloadKind {
    type Err = UnknownWorkload;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "get-mix" | "get_mix" | "getmix" | "get" => Ok(WorkloadKind::GetMix),
            "lrange" => Ok(WorkloadKind::Lrange),
            _ => Err(UnknownWorkload(s.to_owned())),
        }
    }
}

/// A dataset: which kind, how many keys, and the seed that fixes every byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    kind: WorkloadKind,
    seed: u64,
    keys: u64,
    bytes: u64,
}

impl Dataset {
    /// As many keys as fit in `target_bytes` of values (list elements for lrange), so the
    /// total is at most `target_bytes` and short of it by less than one key's worth.
    pub fn new(kind: WorkloadKind, target_bytes: u64, seed: u64) -> Result<Self, RedisError> {
        let mut me = Self {
            kind,
            seed,
            keys: 0,
            bytes: 0,
        };
        if kind == WorkloadKind::GetMix {
            // Whole cycles of the six sizes at once, then key by key.
            let cycle: u64 = GET_MIX_SIZES.iter().map(|&s| s as u64).sum();
            me.keys = target_bytes / cycle * GET_MIX_SIZES.len() as u64;
            me.bytes = target_bytes / cycle * cycle;
        }
        loop {
            let next = me.item_bytes(me.keys);
            if me.bytes + next > target_bytes {
                break;
            }
            me.bytes += next;
            me.keys += 1;
        }
        if me.keys == 0 {
            return Err(RedisError::Usage(format!(
                "a {kind} dataset of {target_bytes} bytes holds no key: the first key alone takes {} bytes",
                me.item_bytes(0)
            )));
        }
        Ok(me)
    }

    /// The dataset's kind.
    pub fn kind(&self) -> WorkloadKind {
        self.kind
    }

    /// The seed every byte depends on.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// How many keys.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Total bytes of values (list elements), keys and Redis's overhead not included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The name of key `i`: `gm:<i>` or `lr:<i>`.
    pub fn key(&self, i: u64) -> String {
        let prefix = match self.kind {
            WorkloadKind::GetMix => "gm",
            WorkloadKind::Lrange => "lr",
        };
        format!("{prefix}:{i}")
    }

    /// Value bytes of key `i`: its string's length, or the sum of its list's elements.
    pub fn item_bytes(&self, i: u64) -> u64 {
        match self.kind {
            WorkloadKind::GetMix => self.value_len(i) as u64,
            WorkloadKind::Lrange => (0..LIST_LEN).map(|j| self.element_len(i, j) as u64).sum(),
        }
    }

    /// Length of key `i`'s string (get-mix).
    pub fn value_len(&self, i: u64) -> usize {
        GET_MIX_SIZES[(i % GET_MIX_SIZES.len() as u64) as usize]
    }

    /// Elements in key `i`'s list (lrange).
    pub fn list_len(&self, _i: u64) -> usize {
        LIST_LEN
    }

    /// Length of element `j` of key `i`'s list: a multiple of 8 in 64..=1024.
    pub fn element_len(&self, i: u64, j: usize) -> usize {
        let h = mix64(self.seed ^ LEN_TAG ^ mix64(i) ^ (j as u64).rotate_left(40));
        let steps = ((MAX_ELEMENT - MIN_ELEMENT) / 8 + 1) as u64;
        MIN_ELEMENT + 8 * (h % steps) as usize
    }

    /// Key `i`'s string (get-mix), written into `out` (replacing its contents).
    pub fn fill_value(&self, i: u64, out: &mut Vec<u8>) {
        out.resize(self.value_len(i), 0);
        fill_content(self.stream_seed(), i, 0, out);
    }

    /// Element `j` of key `i`'s list (lrange), written into `out` (replacing its contents).
    pub fn fill_element(&self, i: u64, j: usize, out: &mut Vec<u8>) {
        out.resize(self.element_len(i, j), 0);
        fill_content(self.stream_seed(), i, j as u64 + 1, out);
    }

    /// Checks `data` against key `i`'s string.
    pub fn check_value(&self, i: u64, data: &[u8]) -> Result<(), Mismatch> {
        check_content(self.stream_seed(), i, 0, self.value_len(i), data).map_err(|m| m.at(i, None))
    }

    /// Checks `data` against element `j` of key `i`'s list.
    pub fn check_element(&self, i: u64, j: usize, data: &[u8]) -> Result<(), Mismatch> {
        check_content(
            self.stream_seed(),
            i,
            j as u64 + 1,
            self.element_len(i, j),
            data,
        )
        .map_err(|m| m.at(i, Some(j)))
    }

    fn stream_seed(&self) -> u64 {
        let tag = match self.kind {
            WorkloadKind::GetMix => GET_MIX_TAG,
            WorkloadKind::Lrange => LRANGE_TAG,
        };
        mix64(self.seed ^ tag)
    }
}

/// A value or element that differs from what was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The key index.
    pub key: u64,
    /// The element index, for lists.
    pub element: Option<usize>,
    /// The length stored.
    pub expected_len: usize,
    /// The length returned.
    pub found_len: usize,
    /// The first differing byte, if the lengths allow a comparison up to there.
    pub first_diff: Option<usize>,
    /// The key and element indexes written in the line that differs, if they name another
    /// key's data (a swapped value or page).
    pub looks_like: Option<(u64, u64)>,
}

impl Mismatch {
    fn at(mut self, key: u64, element: Option<usize>) -> Self {
        self.key = key;
        self.element = element;
        self
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}", self.key)?;
        if let Some(j) = self.element {
            write!(f, " element {j}")?;
        }
        if self.expected_len != self.found_len {
            write!(
                f,
                ": {} bytes returned, {} stored",
                self.found_len, self.expected_len
            )?;
        }
        if let Some(at) = self.first_diff {
            write!(f, ": differs from what was stored at byte {at}")?;
        }
        if let Some((k, e)) = self.looks_like {
            write!(f, " (the line there belongs to key {k}")?;
            if e > 0 {
                write!(f, " element {}", e - 1)?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl std::error::Error for Mismatch {}

/// The xorshift64 stream for (seed, a, b); never zero.
fn stream(seed: u64, a: u64, b: u64) -> u64 {
    mix64(seed ^ mix64(a).wrapping_add(b.wrapping_mul(0x9E37_79B9_7F4A_7C15))) | 1
}

#[inline]
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[inline]
fn word(state: &mut u64, index: usize, a: u64, b: u64) -> u64 {
    match index % LINE_WORDS {
        0..=2 => next(state),
        3 => a,
        4 => b,
        _ => 0,
    }
}

/// Fills `out` with the content for (seed, a, b); see the module docs.
pub fn fill_content(seed: u64, a: u64, b: u64, out: &mut [u8]) {
    let mut state = stream(seed, a, b);
    let mut chunks = out.chunks_exact_mut(8);
    let mut k = 0;
    for c in &mut chunks {
        c.copy_from_slice(&word(&mut state, k, a, b).to_le_bytes());
        k += 1;
    }
    let tail = chunks.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&word(&mut state, k, a, b).to_le_bytes()[..n]);
}

/// Checks `data` against `len` bytes of the content for (seed, a, b).
fn check_content(seed: u64, a: u64, b: u64, len: usize, data: &[u8]) -> Result<(), Mismatch> {
    let mut m = Mismatch {
        key: a,
        element: None,
        expected_len: len,
        found_len: data.len(),
        first_diff: None,
        looks_like: None,
    };
    let mut state = stream(seed, a, b);
    let common = len.min(data.len());
    let mut chunks = data[..common].chunks_exact(8);
    let mut k = 0;
    for c in &mut chunks {
        let want = word(&mut state, k, a, b);
        // The slice has exactly 8 bytes, so the conversion cannot fail.
        let got = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        if got != want {
            m.first_diff = Some(k * 8 + ((got ^ want).trailing_zeros() / 8) as usize);
            m.looks_like = owner_of_line(data, k / LINE_WORDS).filter(|&o| o != (a, b));
            return Err(m);
        }
        k += 1;
    }
    let tail = chunks.remainder();
    let want = word(&mut state, k, a, b).to_le_bytes();
    if let Some(i) = tail.iter().zip(want).position(|(x, y)| *x != y) {
        m.first_diff = Some(k * 8 + i);
        return Err(m);
    }
    if len != data.len() {
        return Err(m);
    }
    Ok(())
}

/// The (key, element) written in line `line` of `data`, if the line is whole.
fn owner_of_line(data: &[u8], line: usize) -> Option<(u64, u64)> {
    let at = line * LINE_WORDS * 8;
    let w = |i: usize| {
        data.get(at + i * 8..at + i * 8 + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    Some((w(3)?, w(4)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_mix_sizes_cycle_and_total_fits() {
        let d = Dataset::new(WorkloadKind::GetMix, 24 << 20, 1).unwrap();
        for i in 0..12 {
            assert_eq!(d.value_len(i), GET_MIX_SIZES[(i % 6) as usize]);
        }
        let total: u64 = (0..d.keys()).map(|i| d.item_bytes(i)).sum();
        assert_eq!(total, d.bytes());
        assert!(d.bytes() <= 24 << 20);
        assert!(d.bytes() + (128 << 10) > 24 << 20, "{}", d.bytes());
        // Equal shares: every size appears about keys/6 times.
        assert!(d.keys() >= 6 * 97);
        let big = Dataset::new(WorkloadKind::GetMix, 1 << 30, 1).unwrap();
        assert!(big.bytes() <= 1 << 30 && big.bytes() + (128 << 10) > 1 << 30);
        assert_eq!(d.key(5), "gm:5");
    }

    #[test]
    fn lrange_lists_and_elements() {
        let d = Dataset::new(WorkloadKind::Lrange, 8 << 20, 2).unwrap();
        assert_eq!(d.key(3), "lr:3");
        let total: u64 = (0..d.keys()).map(|i| d.item_bytes(i)).sum();
        assert_eq!(total, d.bytes());
        assert!(d.bytes() <= 8 << 20 && d.bytes() + 200 * 1024 > 8 << 20);
        let mut lens = Vec::new();
        for i in 0..20 {
            for j in 0..LIST_LEN {
                let n = d.element_len(i, j);
                assert!(
                    (MIN_ELEMENT..=MAX_ELEMENT).contains(&n) && n.is_multiple_of(8),
                    "{n}"
                );
                lens.push(n);
            }
        }
        assert!(lens.contains(&MIN_ELEMENT) && lens.contains(&MAX_ELEMENT));
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        assert!((500.0..590.0).contains(&mean), "mean element {mean}");
    }

    #[test]
    fn too_small_a_dataset_is_refused() {
        let e = Dataset::new(WorkloadKind::GetMix, 4095, 1).unwrap_err();
        assert!(e.to_string().contains("holds no key"), "{e}");
        assert!(Dataset::new(WorkloadKind::GetMix, 4096, 1).is_ok());
    }

    #[test]
    fn contents_are_deterministic_and_checked() {
        let d = Dataset::new(WorkloadKind::GetMix, 1 << 20, 7).unwrap();
        let mut v = Vec::new();
        d.fill_value(3, &mut v);
        assert_eq!(v.len(), 32 << 10);
        let mut again = Vec::new();
        d.fill_value(3, &mut again);
        assert_eq!(v, again);
        d.check_value(3, &v).unwrap();
        // The key index is in every line.
        for line in v.chunks(64) {
            assert_eq!(u64::from_le_bytes(line[24..32].try_into().unwrap()), 3);
        }
        // One flipped bit.
        let mut bad = v.clone();
        bad[20_000] ^= 0x10;
        let m = d.check_value(3, &bad).unwrap_err();
        assert_eq!(m.first_diff, Some(20_000));
        assert!(m.to_string().contains("byte 20000"), "{m}");
        // Truncated, and too long.
        let m = d.check_value(3, &v[..100]).unwrap_err();
        assert_eq!(
            (m.expected_len, m.found_len, m.first_diff),
            (32 << 10, 100, None)
        );
        let mut long = v.clone();
        long.push(0);
        assert!(d.check_value(3, &long).is_err());
        // Another seed gives other bytes.
        let other = Dataset::new(WorkloadKind::GetMix, 1 << 20, 8).unwrap();
        assert!(other.check_value(3, &v).is_err());
    }

    #[test]
    fn swapped_values_and_pages_name_their_owner() {
        let d = Dataset::new(WorkloadKind::GetMix, 4 << 20, 7).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        d.fill_value(1, &mut a);
        d.fill_value(7, &mut b); // same size as key 1
        let m = d.check_value(1, &b).unwrap_err();
        assert_eq!(m.first_diff, Some(0));
        assert_eq!(m.looks_like, Some((7, 0)));
        assert!(m.to_string().contains("belongs to key 7"), "{m}");
        // A page of key 7 inside key 1.
        let mut mixed = a.clone();
        mixed[4096..8192].copy_from_slice(&b[4096..8192]);
        let m = d.check_value(1, &mixed).unwrap_err();
        assert_eq!(m.first_diff, Some(4096));
        assert_eq!(m.looks_like, Some((7, 0)));
    }

    #[test]
    fn list_elements_are_distinct_and_checked() {
        let d = Dataset::new(WorkloadKind::Lrange, 4 << 20, 9).unwrap();
        let (mut e0, mut e1) = (Vec::new(), Vec::new());
        d.fill_element(4, 0, &mut e0);
        d.fill_element(4, 1, &mut e1);
        d.check_element(4, 0, &e0).unwrap();
        d.check_element(4, 1, &e1).unwrap();
        let m = d.check_element(4, 1, &e0).unwrap_err();
        assert_eq!(m.element, Some(1));
        let s = m.to_string();
        assert!(s.starts_with("key 4 element 1"), "{s}");
        // Same key, element 0 in place of element 1.
        if e0.len() == e1.len() {
            assert_eq!(m.looks_like, Some((4, 1)));
        }
        let mut odd = vec![0u8; 13];
        fill_content(1, 2, 3, &mut odd);
        check_content(1, 2, 3, 13, &odd).unwrap();
        odd[12] ^= 1;
        assert_eq!(
            check_content(1, 2, 3, 13, &odd).unwrap_err().first_diff,
            Some(12)
        );
    }

    #[test]
    fn workload_names() {
        for k in [WorkloadKind::GetMix, WorkloadKind::Lrange] {
            assert_eq!(k.to_string().parse::<WorkloadKind>(), Ok(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        let e = "scan".parse::<WorkloadKind>().unwrap_err().to_string();
        assert!(e.contains("get-mix or lrange"), "{e}");
    }
}

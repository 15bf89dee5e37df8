//! Replaying a fault trace (`farmem::trace`) under other policies: how many faults an
//! eviction policy and a prefetcher would have taken on the same references with a given
//! budget, beside exact LRU and Belady's optimum (`farmem replay`).
//!
//! The references are the pages the live run was seen touching: its major faults, first
//! touches, prefetch hits, the pages mapped ahead that a prefetch hit found used, and the
//! touches of local pages the reclaimer had unmapped to test them. Other touches of
//! mapped pages are invisible to a fault trace, so the replay sees a thinned stream: the figures are for comparing policies on the same
//! trace, and `farmem replay` prints how far the live policy's replay sits from the live
//! run.
//!
//! The model: `budget` frames; a reference to a resident page is a hit (the first to a
//! prefetched one a prefetch hit), to a page never seen a first touch (a frame, no
//! fetch), to any other page a major fault. The prefetcher (farmem's own code) is asked
//! on major faults and prefetch hits, as in the engine; it brings in pages that were seen
//! before and are not resident, evicting for them as for a fault. Eviction takes the victim the policy names: LRU (least recently referenced),
//! FIFO (first in), CLOCK (first in, a referenced page gets a second chance) or Belady
//! (referenced again farthest in the future, or never).

use std::collections::{BTreeSet, HashMap};

use farmem::prefetch::{Candidates, FaultInfo, Majority, Prefetcher, Readahead};
use farmem::trace::{Kind, OBJECT, Trace};

/// Eviction policies the replay knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evict {
    /// Least recently referenced.
    Lru,
    /// First in, first out.
    Fifo,
    /// FIFO with a second chance for referenced pages.
    Clock,
    /// The page referenced again farthest in the future: the optimum.
    Belady,
}

impl Evict {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Evict::Lru => "lru",
            Evict::Fifo => "fifo",
            Evict::Clock => "clock",
            Evict::Belady => "belady",
        }
    }
}

impl std::str::FromStr for Evict {
    type Err = String;
    fn from_str(s: &str) -> Result<Evict, String> {
        Ok(match s {
            "lru" => Evict::Lru,
            "fifo" => Evict::Fifo,
            "clock" => Evict::Clock,
            "belady" | "opt" => Evict::Belady,
            _ => {
                return Err(format!(
                    "unknown eviction policy `{s}` for a replay: use lru, fifo, clock or belady"
                ));
            }
        })
    }
}

/// What one replay counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// References replayed.
    pub references: u64,
    /// References to resident pages.
    pub hits: u64,
    /// First touches (a frame, no fetch).
    pub first_touches: u64,
    /// References that had to fetch the page.
    pub major_faults: u64,
    /// Pages the prefetcher brought in as guesses (not the rests of objects, whose use
    /// is not tracked, as in the engine's statistics).
    pub prefetched: u64,
    /// Prefetched pages referenced before eviction.
    pub prefetch_hits: u64,
}

impl Replayed {
    /// Prefetched pages used, over those brought in (0 with none).
    pub fn accuracy(&self) -> f64 {
        ratio(self.prefetch_hits, self.prefetched)
    }

    /// Faults the prefetcher saved, over the faults there would have been.
    pub fn coverage(&self) -> f64 {
        ratio(self.prefetch_hits, self.prefetch_hits + self.major_faults)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The pages a trace references, in order, and for each the pages the live run brought
/// in right after it (its prefetchers' and object prefetch's decisions, which the
/// `traced` prefetcher replays).
pub struct References {
    /// The referenced pages.
    pub pages: Vec<u64>,
    /// For reference `i`, `prefetched[after[i]..after[i + 1]]`.
    after: Vec<usize>,
    prefetched: Vec<u64>,
}

impl References {
    /// Reads them out of a trace.
    pub fn of(t: &Trace) -> References {
        let mut r = References {
            pages: Vec::new(),
            after: vec![0],
            prefetched: Vec::new(),
        };
        for e in &t.events {
            match e.kind {
                Kind::Major | Kind::Hit | Kind::Minor | Kind::Zero | Kind::Used => {
                    if !r.pages.is_empty() {
                        r.after.push(r.prefetched.len());
                    }
                    r.pages.push(e.a);
                }
                Kind::Prefetch if !r.pages.is_empty() => r.prefetched.push(e.a),
                _ => {}
            }
        }
        r.after.push(r.prefetched.len());
        r
    }

    fn traced(&self, i: usize) -> &[u64] {
        &self.prefetched[self.after[i]..self.after[i + 1]]
    }
}

/// What brings pages in with a fault in a replay.
pub enum Prefetch {
    /// Nothing.
    None,
    /// One of farmem's prefetchers, asked on major faults and prefetch hits.
    Engine(Box<dyn Prefetcher>),
    /// What the live run brought in after each reference (all its prefetching,
    /// the object prefetch and upcalls included).
    Traced,
}

struct Frame {
    key: u64,
    referenced: bool,
    prefetched: bool,
}

/// Replays `refs` with `budget` frames, evicting by `evict`, prefetching with `prefetch`.
pub fn replay(all: &References, budget: usize, evict: Evict, mut prefetch: Prefetch) -> Replayed {
    let refs = &all.pages[..];
    let budget = budget.max(1);
    let region_pages = refs.iter().max().map_or(1, |m| m + 1);
    // Belady: for each reference, where its page is referenced next.
    let next_use: Vec<u64> = if evict == Evict::Belady {
        let mut next = vec![u64::MAX; refs.len()];
        let mut last: HashMap<u64, usize> = HashMap::new();
        for (i, &p) in refs.iter().enumerate().rev() {
            if let Some(&j) = last.get(&p) {
                next[i] = j as u64;
            }
            last.insert(p, i);
        }
        next
    } else {
        Vec::new()
    };
    // For a page prefetched at position i, its next use after i (Belady only).
    let positions: HashMap<u64, Vec<usize>> = if evict == Evict::Belady {
        let mut m: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, &p) in refs.iter().enumerate() {
            m.entry(p).or_default().push(i);
        }
        m
    } else {
        HashMap::new()
    };
    let next_after = |p: u64, i: usize| -> u64 {
        positions
            .get(&p)
            .and_then(|v| v.get(v.partition_point(|&x| x <= i)).copied())
            .map_or(u64::MAX, |x| x as u64)
    };
    let mut out = Replayed::default();
    let mut resident: HashMap<u64, Frame> = HashMap::new();
    let mut order: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let mut clock = 0u64;
    let mut cands = Candidates::new();
    for (i, &page) in refs.iter().enumerate() {
        clock += 1;
        out.references += 1;
        let mut ask = None;
        if let Some(f) = resident.get_mut(&page) {
            out.hits += 1;
            if f.prefetched {
                f.prefetched = false;
                out.prefetch_hits += 1;
                ask = Some(true);
            }
            f.referenced = true;
            let newkey = match evict {
                Evict::Lru => Some(clock),
                Evict::Belady => Some(next_use[i]),
                Evict::Fifo | Evict::Clock => None,
            };
            if let Some(k) = newkey {
                order.remove(&(f.key, page));
                f.key = k;
                order.insert((k, page));
            }
        } else {
            if seen.insert(page) {
                out.first_touches += 1;
            } else {
                out.major_faults += 1;
                ask = Some(false);
            }
            make_room(&mut resident, &mut order, budget, evict);
            let key = match evict {
                Evict::Belady => next_use[i],
                _ => clock,
            };
            resident.insert(
                page,
                Frame {
                    key,
                    referenced: false,
                    prefetched: false,
                },
            );
            order.insert((key, page));
        }
        cands.clear();
        let list: &[u64] = match (&mut prefetch, ask) {
            (Prefetch::Engine(p), Some(hit)) => {
                p.on_fault(
                    &FaultInfo {
                        page,
                        region_pages,
                        write: false,
                        hit,
                    },
                    &mut cands,
                );
                cands.as_slice()
            }
            (Prefetch::Traced, _) => all.traced(i),
            _ => &[],
        };
        let traced = matches!(prefetch, Prefetch::Traced);
        for &c in list {
            // The live run fetched what it traced: those pages were far, seen or not (an
            // object's pages are touched without a fault, so a trace never sees them).
            let object = c & OBJECT != 0;
            let c = c & !OBJECT;
            if c == page || resident.contains_key(&c) || !(traced || seen.contains(&c)) {
                continue;
            }
            seen.insert(c);
            // A guess evicts like a fault, as the engine's readahead does.
            make_room(&mut resident, &mut order, budget, evict);
            clock += 1;
            let key = match evict {
                Evict::Belady => next_after(c, i),
                _ => clock,
            };
            // An object's rest is mapped whole, its use not tracked (as live).
            resident.insert(
                c,
                Frame {
                    key,
                    referenced: object,
                    prefetched: !object,
                },
            );
            order.insert((key, c));
            out.prefetched += u64::from(!object);
        }
    }
    out
}

/// Evicts until a frame is free.
fn make_room(
    resident: &mut HashMap<u64, Frame>,
    order: &mut BTreeSet<(u64, u64)>,
    budget: usize,
    evict: Evict,
) {
    while resident.len() >= budget {
        let victim = match evict {
            Evict::Belady => order.pop_last(),
            _ => order.pop_first(),
        };
        let Some((key, page)) = victim else { return };
        if evict == Evict::Clock {
            let f = resident.get_mut(&page).expect("ordered pages are resident");
            if f.referenced {
                // A second chance: to the back of the queue, unreferenced.
                f.referenced = false;
                let k = order.last().map_or(key, |&(k, _)| k + 1);
                f.key = k;
                order.insert((k, page));
                continue;
            }
        }
        resident.remove(&page);
    }
}

/// A fresh prefetcher for a replay, by name: none, readahead (the in-thread mode's
/// window), majority, or traced (the live run's own decisions).
pub fn prefetcher(name: &str) -> Result<Prefetch, String> {
    Ok(match name {
        "none" => Prefetch::None,
        "readahead" => Prefetch::Engine(Box::<Readahead>::default()),
        "majority" => Prefetch::Engine(Box::<Majority>::default()),
        "traced" => Prefetch::Traced,
        _ => {
            return Err(format!(
                "unknown prefetcher `{name}` for a replay: use none, readahead, majority or traced"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(pages: Vec<u64>) -> References {
        let n = pages.len();
        References {
            pages,
            after: vec![0; n + 1],
            prefetched: Vec::new(),
        }
    }

    /// A loop over 10 pages with 8 frames: LRU and FIFO miss every time after the first
    /// lap; Belady keeps most of the loop.
    #[test]
    fn belady_beats_lru_on_a_loop_and_lru_matches_a_hand_count() {
        let refs = refs((0..100).map(|i| i % 10).collect());
        let lru = replay(&refs, 8, Evict::Lru, Prefetch::None);
        assert_eq!(lru.first_touches, 10);
        assert_eq!(
            lru.major_faults, 90,
            "LRU thrashes on a loop larger than memory"
        );
        let opt = replay(&refs, 8, Evict::Belady, Prefetch::None);
        assert!(opt.major_faults < 30, "{opt:?}");
        let fifo = replay(&refs, 8, Evict::Fifo, Prefetch::None);
        assert_eq!(fifo.major_faults, 90);
        // Everything fits: no faults past the first touches, whatever the policy.
        for e in [Evict::Lru, Evict::Fifo, Evict::Clock, Evict::Belady] {
            let r = replay(&refs, 10, e, Prefetch::None);
            assert_eq!((r.first_touches, r.major_faults), (10, 0), "{e:?}");
        }
    }

    #[test]
    fn clock_gives_referenced_pages_a_second_chance() {
        // Page 0 is referenced between every new page; FIFO evicts it, CLOCK keeps it.
        let mut pages = Vec::new();
        for _ in 0..3 {
            for p in 1..20u64 {
                pages.push(0);
                pages.push(p);
            }
        }
        let refs = refs(pages);
        let fifo = replay(&refs, 4, Evict::Fifo, Prefetch::None);
        let clock = replay(&refs, 4, Evict::Clock, Prefetch::None);
        assert!(clock.major_faults < fifo.major_faults, "{clock:?} {fifo:?}");
    }

    #[test]
    fn readahead_on_a_sequential_rescan_is_accurate_and_covers_it() {
        let refs = refs((0..2).flat_map(|_| 0..4000u64).collect());
        let none = replay(&refs, 1000, Evict::Lru, Prefetch::None);
        let ra = replay(&refs, 1000, Evict::Lru, prefetcher("readahead").unwrap());
        assert_eq!(none.major_faults, 4000);
        assert!(ra.major_faults < 1000, "{ra:?}");
        assert!(ra.accuracy() > 0.9 && ra.coverage() > 0.7, "{ra:?}");
    }

    /// The traced prefetcher brings in what followed each reference in the trace.
    #[test]
    fn the_traced_prefetcher_replays_the_live_decisions() {
        // Two laps of 0..8 with 4 frames: in the second, each major fault on an even page
        // brought the next page live.
        let mut r = refs((0..2).flat_map(|_| 0..8u64).collect());
        r.after = vec![0];
        for i in 0..16 {
            if i >= 8 && i % 2 == 0 {
                r.prefetched.push(i as u64 - 8 + 1);
            }
            r.after.push(r.prefetched.len());
        }
        // 4 frames: the second lap misses everything without prefetch, half with it.
        let none = replay(&r, 4, Evict::Fifo, Prefetch::None);
        let traced = replay(&r, 4, Evict::Fifo, Prefetch::Traced);
        assert_eq!(none.major_faults, 8);
        assert_eq!(
            (traced.major_faults, traced.prefetch_hits),
            (4, 4),
            "{traced:?}"
        );
    }
}

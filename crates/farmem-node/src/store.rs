//! Sessions and their pages, and the node's capacity.
//!
//! ```text
//!  Registry (one mutex, taken on Hello, on a connection's end and by the reaper)
//!    id -> Arc<Session>
//!             |-- life: connections, free-on-last, orphaned-at, freed   (its own mutex)
//!             `-- 64 shards: Mutex<HashMap<key, Box<[u8; 4096]>>>       (the pages)
//!  Capacity: one atomic byte count; a store reserves before it inserts anything
//! ```
//!
//! A connection holds an `Arc<Session>` once its Hello is accepted, so requests never
//! touch the registry: they lock only the shard of each key they name, and connections of
//! different sessions share no lock at all. Keys are looked up in the connection's own
//! session, so no request can name another session's pages.
//!
//! A session lives while it has connections. When its last one ends, it is freed at once
//! if one of them said `Bye { free: true }` (or the grace is zero); otherwise it is
//! *orphaned* and the reaper frees it when the grace period runs out, unless a `Join`
//! adopts it first.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use farmem_wire::PAGE;

/// Shards per session.
const SHARDS: usize = 64;

/// One stored page.
type Page = Box<[u8; PAGE]>;

/// Locks `m`, ignoring poison: every critical section here leaves its data consistent
/// at each step (a panic would only lose the step in progress).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The node's capacity and what is used of it.
#[derive(Debug)]
pub(crate) struct Capacity {
    /// Bytes the node may hold.
    pub total: u64,
    /// Bytes of pages held (and reserved by stores in progress).
    used: AtomicU64,
}

/// A reservation that did not fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Full {
    /// Bytes used when it was tried.
    pub used: u64,
    /// Bytes the node may hold.
    pub total: u64,
    /// Bytes that were asked for.
    pub wanted: u64,
}

impl Capacity {
    pub fn new(total: u64) -> Capacity {
        Capacity {
            total,
            used: AtomicU64::new(0),
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    /// Takes `bytes` if they fit, all or nothing.
    fn reserve(&self, bytes: u64) -> Result<(), Full> {
        if bytes == 0 {
            return Ok(());
        }
        let mut cur = self.used.load(Relaxed);
        loop {
            if cur.saturating_add(bytes) > self.total {
                return Err(Full {
                    used: cur,
                    total: self.total,
                    wanted: bytes,
                });
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + bytes, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }

    fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Relaxed);
        }
    }

    /// Adds bytes without checking: only for the reconciliation after a race that the
    /// session's own connections made (see [`Session::store`]).
    fn force(&self, bytes: u64) {
        if bytes > 0 {
            self.used.fetch_add(bytes, Relaxed);
        }
    }
}

/// Whether a session is wanted, and by how many connections.
#[derive(Debug, Default)]
pub(crate) struct Life {
    /// Connections attached (and clones copying from it).
    pub conns: usize,
    /// A connection said `Bye { free: true }`: free when the last one goes.
    pub free_on_last: bool,
    /// When the last connection went without freeing it.
    pub orphaned_at: Option<Instant>,
    /// Its pages are gone; it can no longer be joined.
    pub freed: bool,
}

/// One client's pages.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: u64,
    pub secret: u64,
    /// Who made it (the Hello's name).
    pub name: String,
    pub life: Mutex<Life>,
    pages: AtomicU64,
    shards: Box<[Mutex<HashMap<u64, Page>>]>,
}

/// What a fetch could not find.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Missing(pub u64);

impl Session {
    fn new(id: u64, secret: u64, name: String) -> Session {
        Session {
            id,
            secret,
            name,
            life: Mutex::new(Life {
                conns: 1,
                ..Life::default()
            }),
            pages: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, Page>> {
        // Fibonacci hashing: keys are often consecutive page numbers.
        let h = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58;
        &self.shards[h as usize % SHARDS]
    }

    /// Pages held.
    pub fn pages(&self) -> u64 {
        self.pages.load(Relaxed)
    }

    /// Stores `data` (whole pages, one per key) under `keys`, overwriting. All or
    /// nothing: if the new pages do not fit, nothing is stored.
    ///
    /// The new pages are counted and reserved first, then inserted. Only a race between
    /// two connections of this session on the same key (a store against a discard) can
    /// make the count wrong; the difference is settled after the inserts, so the byte
    /// count stays exact and can pass the capacity by at most what that race added.
    pub fn store(&self, cap: &Capacity, keys: &[u64], data: &[u8]) -> Result<(), Full> {
        debug_assert_eq!(data.len(), keys.len() * PAGE);
        let pages: Vec<Page> = data
            .chunks_exact(PAGE)
            .map(|c| {
                c.to_vec()
                    .into_boxed_slice()
                    .try_into()
                    .expect("chunks_exact gives PAGE bytes")
            })
            .collect();
        let mut seen = HashSet::with_capacity(keys.len());
        let mut counted = 0u64;
        for &k in keys {
            if seen.insert(k) && !lock(self.shard(k)).contains_key(&k) {
                counted += 1;
            }
        }
        cap.reserve(counted * PAGE as u64)?;
        let mut added = 0u64;
        for (&k, p) in keys.iter().zip(pages) {
            if lock(self.shard(k)).insert(k, p).is_none() {
                added += 1;
            }
        }
        if added > counted {
            cap.force((added - counted) * PAGE as u64);
        } else {
            cap.release((counted - added) * PAGE as u64);
        }
        self.pages.fetch_add(added, Relaxed);
        Ok(())
    }

    /// Appends the pages of `keys`, in order, to `out`; stops at the first missing one.
    pub fn fetch(&self, keys: &[u64], out: &mut Vec<u8>) -> Result<(), Missing> {
        for &k in keys {
            match lock(self.shard(k)).get(&k) {
                Some(p) => out.extend_from_slice(&p[..]),
                None => return Err(Missing(k)),
            }
        }
        Ok(())
    }

    /// Forgets `keys` (absent ones are fine).
    pub fn discard(&self, cap: &Capacity, keys: &[u64]) {
        let mut gone = 0u64;
        for &k in keys {
            // Dropped outside the shard lock.
            let old = lock(self.shard(k)).remove(&k);
            gone += old.is_some() as u64;
        }
        self.pages.fetch_sub(gone, Relaxed);
        cap.release(gone * PAGE as u64);
    }

    /// Drops every page.
    fn clear(&self, cap: &Capacity) {
        for s in self.shards.iter() {
            let map = std::mem::take(&mut *lock(s));
            let n = map.len() as u64;
            drop(map);
            self.pages.fetch_sub(n, Relaxed);
            cap.release(n * PAGE as u64);
        }
    }

    /// Copies every page of `self` into `dst`, shard by shard, reserving as it goes; on
    /// `Full` what was copied stays in `dst` (the caller drops it).
    fn copy_into(&self, dst: &Session, cap: &Capacity) -> Result<(), Full> {
        for (from, to) in self.shards.iter().zip(dst.shards.iter()) {
            let copy: HashMap<u64, Page> = {
                let src = lock(from);
                cap.reserve(src.len() as u64 * PAGE as u64)?;
                src.iter().map(|(k, p)| (*k, p.clone())).collect()
            };
            dst.pages.fetch_add(copy.len() as u64, Relaxed);
            *lock(to) = copy;
        }
        Ok(())
    }
}

/// Why a Hello could not attach.
#[derive(Debug)]
pub(crate) enum AttachError {
    /// No such session, or the secret is wrong.
    NoSession(u64),
    /// A clone does not fit.
    Full(Full),
    /// No randomness for a secret.
    Random(String),
}

/// Every live or orphaned session.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub map: HashMap<u64, Arc<Session>>,
    next_id: u64,
    /// Sessions ever made (a refused clone is not counted).
    pub created: u64,
}

impl Registry {
    /// A new session (not yet registered) with a fresh id and a random secret.
    fn make(&mut self, name: &str) -> Result<Session, AttachError> {
        let secret = getrandom::u64().map_err(|e| AttachError::Random(e.to_string()))?;
        self.next_id += 1;
        Ok(Session::new(self.next_id, secret, name.to_string()))
    }

    fn insert(&mut self, s: Session) -> Arc<Session> {
        self.created += 1;
        let s = Arc::new(s);
        self.map.insert(s.id, s.clone());
        s
    }

    /// Looks up `id` and checks `secret`; counts one more connection on it.
    fn adopt(&mut self, id: u64, secret: u64) -> Result<Arc<Session>, AttachError> {
        let s = self.map.get(&id).ok_or(AttachError::NoSession(id))?;
        if s.secret != secret {
            return Err(AttachError::NoSession(id));
        }
        let mut l = lock(&s.life);
        if l.freed {
            return Err(AttachError::NoSession(id));
        }
        l.conns += 1;
        l.orphaned_at = None;
        drop(l);
        Ok(s.clone())
    }
}

/// The node's pages: the registry and the capacity.
#[derive(Debug)]
pub(crate) struct Store {
    pub cap: Capacity,
    pub registry: Mutex<Registry>,
    /// Told when a session is orphaned (and on shutdown).
    pub reaper: std::sync::Condvar,
}

impl Store {
    pub fn new(capacity: u64) -> Store {
        Store {
            cap: Capacity::new(capacity),
            registry: Mutex::new(Registry::default()),
            reaper: std::sync::Condvar::new(),
        }
    }

    /// A new, empty session with one connection.
    pub fn create(&self, name: &str) -> Result<Arc<Session>, AttachError> {
        let mut reg = lock(&self.registry);
        let s = reg.make(name)?;
        Ok(reg.insert(s))
    }

    /// One more connection on an existing session.
    pub fn join(&self, id: u64, secret: u64) -> Result<Arc<Session>, AttachError> {
        lock(&self.registry).adopt(id, secret)
    }

    /// A new session (with one connection) holding a copy of `id`'s pages.
    pub fn clone_session(
        &self,
        id: u64,
        secret: u64,
        name: &str,
    ) -> Result<Arc<Session>, AttachError> {
        // Held as a connection while copying, so that it cannot be freed under the copy.
        let src = self.join(id, secret)?;
        let dst = match lock(&self.registry).make(name) {
            Ok(d) => d,
            Err(e) => {
                self.detach(&src);
                return Err(e);
            }
        };
        let copied = src.copy_into(&dst, &self.cap);
        self.detach(&src);
        if let Err(full) = copied {
            dst.clear(&self.cap);
            return Err(AttachError::Full(full));
        }
        Ok(lock(&self.registry).insert(dst))
    }

    /// Marks `s` to be freed when its last connection goes.
    pub fn free_on_last(&self, s: &Session) {
        lock(&s.life).free_on_last = true;
    }

    /// A connection of `s` ends: frees `s` if it was the last one and freeing was asked
    /// for (or there is no grace), else starts its grace period. Returns whether it
    /// was freed.
    pub fn detach(&self, s: &Arc<Session>) -> bool {
        self.detach_with(s, false)
    }

    /// [`Store::detach`], with `no_grace` meaning the session is freed when it is left
    /// without connections.
    pub fn detach_with(&self, s: &Arc<Session>, no_grace: bool) -> bool {
        let mut reg = lock(&self.registry);
        let mut l = lock(&s.life);
        debug_assert!(l.conns > 0);
        l.conns = l.conns.saturating_sub(1);
        if l.conns > 0 || l.freed {
            return false;
        }
        if l.free_on_last || no_grace {
            l.freed = true;
            drop(l);
            reg.map.remove(&s.id);
            drop(reg);
            s.clear(&self.cap);
            true
        } else {
            l.orphaned_at = Some(Instant::now());
            drop(l);
            drop(reg);
            self.reaper.notify_all();
            false
        }
    }

    /// Frees the sessions whose grace ended by `now`. Called with the registry locked;
    /// returns them (to be cleared outside the lock) and the next deadline.
    pub fn expire(
        reg: &mut Registry,
        grace: std::time::Duration,
        now: Instant,
    ) -> (Vec<Arc<Session>>, Option<Instant>) {
        let mut dead = Vec::new();
        let mut next: Option<Instant> = None;
        reg.map.retain(|_, s| {
            let mut l = lock(&s.life);
            match l.orphaned_at {
                Some(t) if l.conns == 0 && !l.freed => {
                    let deadline = t + grace;
                    if deadline <= now {
                        l.freed = true;
                        dead.push(s.clone());
                        false
                    } else {
                        next = Some(next.map_or(deadline, |n| n.min(deadline)));
                        true
                    }
                }
                _ => true,
            }
        });
        (dead, next)
    }

    /// Drops an expired session's pages.
    pub fn clear(&self, s: &Session) {
        s.clear(&self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(b: u8) -> Vec<u8> {
        vec![b; PAGE]
    }

    #[test]
    fn store_counts_new_distinct_keys_only() {
        let st = Store::new(3 * PAGE as u64);
        let s = st.create("t").unwrap();
        let mut two = page(1);
        two.extend(page(2));
        s.store(&st.cap, &[5, 5], &two).unwrap();
        assert_eq!((s.pages(), st.cap.used()), (1, PAGE as u64));
        let mut out = vec![];
        s.fetch(&[5], &mut out).unwrap();
        assert_eq!(out, page(2), "the last of a duplicated key wins");
        // Overwriting needs no room.
        s.store(&st.cap, &[5], &page(3)).unwrap();
        let mut three = page(4);
        three.extend(page(4));
        three.extend(page(4));
        let full = s.store(&st.cap, &[5, 6, 7, 8], &[three, page(4)].concat());
        let f = full.unwrap_err();
        assert_eq!((f.used, f.wanted), (PAGE as u64, 3 * PAGE as u64));
        assert_eq!(s.pages(), 1, "nothing of a refused batch is stored");
        out.clear();
        s.fetch(&[5], &mut out).unwrap();
        assert_eq!(out, page(3));
        s.discard(&st.cap, &[5, 99]);
        assert_eq!((s.pages(), st.cap.used()), (0, 0));
    }

    #[test]
    fn clone_copies_and_refuses_what_does_not_fit() {
        let st = Store::new(3 * PAGE as u64);
        let a = st.create("a").unwrap();
        a.store(&st.cap, &[1, 2], &[page(1), page(2)].concat())
            .unwrap();
        assert!(matches!(
            st.clone_session(a.id, a.secret, "b"),
            Err(AttachError::Full(_))
        ));
        assert_eq!(
            st.cap.used(),
            2 * PAGE as u64,
            "a refused clone holds nothing"
        );
        a.discard(&st.cap, &[2]);
        let b = st.clone_session(a.id, a.secret, "b").unwrap();
        assert_eq!((b.pages(), st.cap.used()), (1, 2 * PAGE as u64));
        assert!(matches!(
            st.clone_session(a.id, a.secret ^ 1, "c"),
            Err(AttachError::NoSession(_))
        ));
        assert_eq!(lock(&a.life).conns, 1, "the clone let go of its source");
    }

    #[test]
    fn last_detach_frees_or_orphans() {
        let st = Store::new(1 << 20);
        let a = st.create("a").unwrap();
        a.store(&st.cap, &[1], &page(1)).unwrap();
        let a2 = st.join(a.id, a.secret).unwrap();
        st.free_on_last(&a);
        assert!(!st.detach(&a), "another connection still holds it");
        assert!(st.detach(&a2));
        assert_eq!(st.cap.used(), 0);
        assert!(st.join(a.id, a.secret).is_err());

        let b = st.create("b").unwrap();
        b.store(&st.cap, &[1], &page(1)).unwrap();
        assert!(!st.detach(&b));
        let now = Instant::now();
        let grace = std::time::Duration::from_secs(30);
        let (dead, next) = Store::expire(&mut lock(&st.registry), grace, now);
        assert!(dead.is_empty() && next.is_some());
        let b2 = st.join(b.id, b.secret).unwrap();
        assert!(lock(&b2.life).orphaned_at.is_none());
        st.detach(&b2);
        let (dead, _) = Store::expire(&mut lock(&st.registry), grace, now + grace * 2);
        assert_eq!(dead.len(), 1);
        st.clear(&dead[0]);
        assert_eq!(st.cap.used(), 0);
    }
}

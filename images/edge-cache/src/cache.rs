//! The cache's store and its freshness rules, without any IO (unit-tested on their own).
//!
//! An entry's *age* is the time since its content was fetched from the origin.
//! - age < `ttl`: **fresh**, served without asking the origin (a hit);
//! - otherwise the origin is asked; if it answers, the entry is replaced (a miss);
//! - if it cannot be reached (refused, timed out, 5xx) and age ≤ `max_stale`: **stale**, served
//!   anyway, with its age recorded;
//! - beyond `max_stale`: an error, never data older than the bound.
//!
//! Eviction is first-in-first-out by the time a key was first stored, at `capacity` entries.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A cached response.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub body: Bytes,
    pub content_type: Option<String>,
    pub fetched: Instant,
}

/// What the cache can do for a key right now.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Fresh: serve it.
    Fresh(Entry),
    /// Expired: ask the origin; serve this if the origin fails and it is within the bound.
    Expired(Entry),
    /// Not cached.
    Absent,
}

/// Whether an expired entry may still be served when the origin fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StaleVerdict {
    /// Within `max_stale`: serve, age given.
    Serve(Duration),
    /// Beyond it: refuse, age given.
    TooOld(Duration),
}

/// The cache store.
#[derive(Debug)]
pub struct Cache {
    ttl: Duration,
    max_stale: Duration,
    capacity: usize,
    map: HashMap<String, Entry>,
    order: VecDeque<String>,
}

impl Cache {
    /// An empty cache.
    pub fn new(ttl: Duration, max_stale: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            max_stale,
            capacity: capacity.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// What the cache holds for `key` at `now`.
    pub fn lookup(&self, key: &str, now: Instant) -> Lookup {
        match self.map.get(key) {
            Some(e) if now.saturating_duration_since(e.fetched) < self.ttl => {
                Lookup::Fresh(e.clone())
            }
            Some(e) => Lookup::Expired(e.clone()),
            None => Lookup::Absent,
        }
    }

    /// Whether `e` may be served at `now` when the origin cannot be reached.
    pub fn stale_verdict(&self, e: &Entry, now: Instant) -> StaleVerdict {
        let age = now.saturating_duration_since(e.fetched);
        if age <= self.max_stale {
            StaleVerdict::Serve(age)
        } else {
            StaleVerdict::TooOld(age)
        }
    }

    /// Stores a fresh copy of `key`, evicting the oldest key when full.
    pub fn insert(&mut self, key: &str, e: Entry) {
        if self.map.insert(key.to_string(), e).is_none() {
            self.order.push_back(key.to_string());
            while self.map.len() > self.capacity {
                match self.order.pop_front() {
                    Some(old) => {
                        self.map.remove(&old);
                    }
                    None => break,
                }
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: Instant) -> Entry {
        Entry {
            body: Bytes::from_static(b"x"),
            content_type: None,
            fetched: at,
        }
    }

    #[test]
    fn fresh_then_expired_then_too_old() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(5), Duration::from_secs(30), 10);
        assert_eq!(c.lookup("a", t0), Lookup::Absent);
        c.insert("a", entry(t0));
        assert!(matches!(
            c.lookup("a", t0 + Duration::from_secs(4)),
            Lookup::Fresh(_)
        ));
        let Lookup::Expired(e) = c.lookup("a", t0 + Duration::from_secs(5)) else {
            panic!()
        };
        assert_eq!(
            c.stale_verdict(&e, t0 + Duration::from_secs(30)),
            StaleVerdict::Serve(Duration::from_secs(30))
        );
        assert_eq!(
            c.stale_verdict(&e, t0 + Duration::from_secs(31)),
            StaleVerdict::TooOld(Duration::from_secs(31))
        );
        // A refresh makes it fresh again.
        c.insert("a", entry(t0 + Duration::from_secs(40)));
        assert!(matches!(
            c.lookup("a", t0 + Duration::from_secs(41)),
            Lookup::Fresh(_)
        ));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn evicts_first_in_first_out() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(5), Duration::from_secs(30), 2);
        c.insert("a", entry(t0));
        c.insert("b", entry(t0));
        c.insert("a", entry(t0)); // a refresh does not reorder
        c.insert("c", entry(t0));
        assert_eq!(c.lookup("a", t0), Lookup::Absent);
        assert!(matches!(c.lookup("b", t0), Lookup::Fresh(_)));
        assert!(matches!(c.lookup("c", t0), Lookup::Fresh(_)));
        assert_eq!(c.len(), 2);
    }
}

//! Per-device accounting of which sequence numbers arrived.
//!
//! Each device's received sequence numbers are kept as a set of disjoint, non-adjacent
//! inclusive ranges (`start → end`), so a device that delivered a million readings in order
//! costs one map entry, and a partition that left holes costs one entry per hole. From it:
//! duplicates (a number already inside a range), the highest number seen, and the *gaps*: the
//! numbers between the first sequence number and the highest one that never arrived. Readings
//! above the highest are not gaps: they may still be in a collector's queue.

use std::collections::BTreeMap;

/// What arrived from one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceLedger {
    ranges: BTreeMap<u64, u64>,
    unique: u64,
    duplicates: u64,
}

impl DeviceLedger {
    /// Whether `seq` is already recorded.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end >= seq)
    }

    /// Records `seq`; returns `false` (and counts a duplicate) when it was already there.
    pub fn record(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            self.duplicates += 1;
            return false;
        }
        let prev = self
            .ranges
            .range(..seq)
            .next_back()
            .map(|(&s, &e)| (s, e))
            .filter(|&(_, e)| e.checked_add(1) == Some(seq));
        let next = seq
            .checked_add(1)
            .and_then(|n| self.ranges.get(&n).map(|&e| (n, e)));
        match (prev, next) {
            (Some((ps, _)), Some((ns, ne))) => {
                self.ranges.remove(&ns);
                self.ranges.insert(ps, ne);
            }
            (Some((ps, _)), None) => {
                self.ranges.insert(ps, seq);
            }
            (None, Some((ns, ne))) => {
                self.ranges.remove(&ns);
                self.ranges.insert(seq, ne);
            }
            (None, None) => {
                self.ranges.insert(seq, seq);
            }
        }
        self.unique += 1;
        true
    }

    /// Distinct sequence numbers received.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Readings received again after the first time.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The highest sequence number received.
    pub fn highest(&self) -> Option<u64> {
        self.ranges.last_key_value().map(|(_, &e)| e)
    }

    /// How many numbers in `first..=highest` never arrived (numbers below `first` are not
    /// recorded: the sink rejects them).
    pub fn missing(&self, first: u64) -> u64 {
        match self.highest() {
            Some(h) if h >= first => (h - first + 1).saturating_sub(self.unique),
            _ => 0,
        }
    }

    /// The missing ranges in `first..=highest`, lowest first, at most `limit` of them.
    pub fn gaps(&self, first: u64, limit: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut expect = first;
        for (&s, &e) in &self.ranges {
            if out.len() >= limit {
                break;
            }
            if s > expect {
                out.push((expect, s - 1));
            }
            expect = e.saturating_add(1);
        }
        out
    }

    /// How many missing ranges there are.
    pub fn gap_count(&self, first: u64) -> usize {
        let starts_late = self
            .ranges
            .first_key_value()
            .is_some_and(|(&s, _)| s > first);
        self.ranges.len().saturating_sub(1) + usize::from(starts_late)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_one_range() {
        let mut l = DeviceLedger::default();
        for s in 1..=1000 {
            assert!(l.record(s));
        }
        assert_eq!(l.ranges.len(), 1);
        assert_eq!(l.unique(), 1000);
        assert_eq!(l.highest(), Some(1000));
        assert_eq!(l.missing(1), 0);
        assert!(l.gaps(1, 10).is_empty());
        assert_eq!(l.gap_count(1), 0);
    }

    #[test]
    fn gaps_duplicates_and_filling() {
        let mut l = DeviceLedger::default();
        for s in [1, 2, 3, 7, 8, 12] {
            l.record(s);
        }
        assert_eq!(l.missing(1), 12 - 6);
        assert_eq!(l.gaps(1, 10), vec![(4, 6), (9, 11)]);
        assert_eq!(l.gap_count(1), 2);
        assert!(!l.record(2));
        assert!(!l.record(12));
        assert_eq!(l.duplicates(), 2);
        // Late arrivals fill the holes and merge ranges on both sides.
        for s in [5, 4, 6, 9, 11, 10] {
            assert!(l.record(s));
        }
        assert_eq!(l.missing(1), 0);
        assert_eq!(l.ranges.len(), 1);
        assert_eq!(l.unique(), 12);
    }

    #[test]
    fn a_late_start_is_a_gap_and_limit_truncates() {
        let mut l = DeviceLedger::default();
        for s in [5, 10, 15] {
            l.record(s);
        }
        assert_eq!(l.missing(1), 12);
        assert_eq!(l.gaps(1, 2), vec![(1, 4), (6, 9)]);
        assert_eq!(l.gap_count(1), 3);
    }

    #[test]
    fn matches_a_naive_set_on_a_shuffled_stream() {
        let mut rng = edge_common::rng::SeededRng::new(42);
        let mut l = DeviceLedger::default();
        let mut naive = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            let s = 1 + rng.next_u64() % 3000;
            assert_eq!(l.record(s), naive.insert(s));
        }
        let h = *naive.last().unwrap();
        assert_eq!(l.highest(), Some(h));
        assert_eq!(l.missing(1), h - naive.len() as u64);
        let gaps: u64 = l.gaps(1, usize::MAX).iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(gaps, l.missing(1));
        assert_eq!(l.gaps(1, usize::MAX).len(), l.gap_count(1));
    }
}

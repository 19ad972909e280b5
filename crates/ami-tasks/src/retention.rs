//! Which bins the global reducer has written to Results, so that it can delete the oldest once
//! more than `retained_bins` are kept.
//!
//! The list travels in the global reducer's state, that is in its future, from one reduction to
//! the next. Legion copies a future up to its inline size (`LEGION_MAX_RETURN_SIZE`, 2 KiB) into
//! a plain buffer and makes a Realm instance for a larger one, at the end of the task and again
//! when the next reducer is mapped. A plain list of 200 bins, each with its result names, was
//! 2.8 KiB: every reduction of a long run paid for those instances. Here consecutive bins that
//! publish the same results are one run, and each set of names is kept once.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::stores::{parse_result_key, result_key};

/// Bins written to Results, oldest first (see the [module docs](self)).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WrittenBins {
    runs: VecDeque<Run>,
    /// The distinct sets of result names the runs refer to (a graph's published results).
    name_sets: Vec<Vec<String>>,
    bins: u64,
}

/// `count` consecutive bins from `first`, each with the results `name_sets[names]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Run {
    first: u64,
    count: u64,
    names: usize,
}

impl WrittenBins {
    /// The bins of the result keys `keys` (Results as a restarted service finds it on disk);
    /// other keys are left out.
    pub fn from_result_keys(keys: impl IntoIterator<Item = String>) -> Self {
        let mut bins: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for key in keys {
            if let Some((name, bin)) = parse_result_key(&key) {
                bins.entry(bin).or_default().push(name.to_string());
            }
        }
        let mut written = WrittenBins::default();
        for (bin, mut names) in bins {
            // In the order the global reducer publishes them (its values are sorted by name).
            names.sort();
            written.push(bin, names);
        }
        written
    }

    /// Number of bins written and not yet removed.
    pub fn len(&self) -> u64 {
        self.bins
    }

    pub fn is_empty(&self) -> bool {
        self.bins == 0
    }

    /// The oldest bin held.
    pub fn oldest(&self) -> Option<u64> {
        self.runs.front().map(|run| run.first)
    }

    /// Records that `bin` was written with the results `names`.
    pub fn push(&mut self, bin: u64, names: Vec<String>) {
        let set = match self.name_sets.iter().position(|known| *known == names) {
            Some(set) => set,
            None => {
                self.name_sets.push(names);
                self.name_sets.len() - 1
            }
        };
        self.bins += 1;
        if let Some(last) = self.runs.back_mut() {
            if last.names == set && last.first.checked_add(last.count) == Some(bin) {
                last.count += 1;
                return;
            }
        }
        self.runs.push_back(Run {
            first: bin,
            count: 1,
            names: set,
        });
    }

    /// Removes the oldest bin and returns the keys of its results.
    pub fn pop_oldest_keys(&mut self) -> Option<Vec<String>> {
        let (bin, names) = self.pop_oldest()?;
        Some(names.iter().map(|name| result_key(name, bin)).collect())
    }

    /// Removes the oldest bin and returns it with its result names.
    pub fn pop_oldest(&mut self) -> Option<(u64, Vec<String>)> {
        let run = self.runs.front_mut()?;
        let (bin, set) = (run.first, run.names);
        run.first += 1;
        run.count -= 1;
        if run.count == 0 {
            self.runs.pop_front();
        }
        self.bins -= 1;
        let names = if self.runs.iter().any(|run| run.names == set) {
            self.name_sets[set].clone()
        } else {
            // No bin left with these names: forget them, and renumber the sets after them.
            for run in &mut self.runs {
                if run.names > set {
                    run.names -= 1;
                }
            }
            self.name_sets.remove(set)
        };
        Some((bin, names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bins_come_back_oldest_first_with_their_names() {
        let mut written = WrittenBins::default();
        let (a, b) = (names(&["roi_mean", "energy_hist"]), names(&["doubled"]));
        // A run, a gap, a graph change, and the first graph again.
        let pushed: Vec<(u64, Vec<String>)> = [(3, &a), (4, &a), (5, &a), (9, &a), (10, &b), (11, &b), (12, &a)]
            .into_iter()
            .map(|(bin, n)| (bin, n.clone()))
            .collect();
        for (bin, n) in &pushed {
            written.push(*bin, n.clone());
        }
        assert_eq!(written.len(), 7);
        assert_eq!(written.runs.len(), 4);
        assert_eq!(written.name_sets.len(), 2);
        let mut popped = Vec::new();
        while let Some(bin) = written.pop_oldest() {
            popped.push(bin);
        }
        assert_eq!(popped, pushed);
        assert!(written.is_empty() && written.name_sets.is_empty());
        assert_eq!(written.pop_oldest(), None);
    }

    #[test]
    fn a_set_of_names_no_bin_uses_is_forgotten_and_the_others_stay_right() {
        let mut written = WrittenBins::default();
        written.push(1, names(&["old"]));
        written.push(2, names(&["new"]));
        written.push(3, names(&["newer"]));
        assert_eq!(written.pop_oldest(), Some((1, names(&["old"]))));
        assert_eq!(written.name_sets, vec![names(&["new"]), names(&["newer"])]);
        written.push(4, names(&["newer"]));
        assert_eq!(written.pop_oldest(), Some((2, names(&["new"]))));
        assert_eq!(written.pop_oldest(), Some((3, names(&["newer"]))));
        assert_eq!(written.pop_oldest(), Some((4, names(&["newer"]))));
    }

    #[test]
    fn bins_found_in_results_are_read_back_from_their_keys() {
        use crate::stores::result_key;
        let keys = vec![
            result_key("roi_mean", 41),
            result_key("energy_hist", 40),
            result_key("roi_mean", 40),
            "/results/not_a_bin/abc".to_string(),
            result_key("energy_hist", 41),
            result_key("doubled", 43),
        ];
        let mut written = WrittenBins::from_result_keys(keys);
        assert_eq!(written.len(), 3);
        assert_eq!(written.pop_oldest(), Some((40, names(&["energy_hist", "roi_mean"]))));
        assert_eq!(written.pop_oldest(), Some((41, names(&["energy_hist", "roi_mean"]))));
        assert_eq!(written.pop_oldest(), Some((43, names(&["doubled"]))));
        assert!(written.is_empty());
    }

    #[test]
    fn a_long_run_of_retained_bins_stays_far_below_legions_inline_future_size() {
        // 200 bins (the default retention) of a graph publishing five results, bin numbers of
        // time stamps in nanoseconds since 1970 at 20 Hz.
        let mut written = WrittenBins::default();
        let results = names(&["roi_mean", "roi_std", "energy_hist", "projection_x", "strip_chart"]);
        let first = 1_795_000_000_000_000_000 / 50_000_000;
        for bin in first..first + 200 {
            written.push(bin, results.clone());
        }
        let bytes = legion_bridge::task::result_bytes(&written).unwrap();
        assert!(bytes < 256, "{bytes} bytes");
    }
}

//! The last few RTT samples to each of a bounded number of peers: a moving median over them
//! keeps one probe that waited for a busy CPU, or behind a queue, from moving what decisions see.

use super::NodeIndex;

/// Probes per peer a gateway's measured RTT is the median of.
pub const MEASURED_SAMPLES: usize = 3;

/// The recent samples to one peer.
#[derive(Debug, Clone)]
struct Recent {
    peer: NodeIndex,
    /// In arrival order, at most `keep`.
    samples: Vec<f64>,
    /// When it was last updated, in the filter's count of samples (the least recent goes first).
    seen: u64,
}

/// Recent samples per peer.
#[derive(Debug, Clone)]
pub struct PeerFilter {
    keep: usize,
    max_peers: usize,
    recent: Vec<Recent>,
    pushed: u64,
    sorted: Vec<f64>,
}

impl PeerFilter {
    /// Keeps the last `keep` samples of each of at most `max_peers` peers (the least recently
    /// sampled peer is dropped for a new one).
    pub fn new(keep: usize, max_peers: usize) -> Self {
        Self {
            keep: keep.max(1),
            max_peers: max_peers.max(1),
            recent: Vec::new(),
            pushed: 0,
            sorted: Vec::new(),
        }
    }

    /// Takes a sample of `ms` to `peer`; returns that peer's recent samples, this one included,
    /// sorted.
    pub fn push(&mut self, peer: NodeIndex, ms: f64) -> &[f64] {
        self.pushed += 1;
        let at = match self.recent.iter().position(|r| r.peer == peer) {
            Some(i) => i,
            None if self.recent.len() >= self.max_peers => {
                // The least recently sampled peer's place, and its buffer, go to the new one.
                let oldest = (0..self.recent.len()).min_by_key(|&i| self.recent[i].seen).unwrap_or(0);
                let r = &mut self.recent[oldest];
                r.peer = peer;
                r.samples.clear();
                oldest
            }
            None => {
                self.recent.push(Recent { peer, samples: Vec::with_capacity(self.keep), seen: 0 });
                self.recent.len() - 1
            }
        };
        let r = &mut self.recent[at];
        r.seen = self.pushed;
        if r.samples.len() >= self.keep {
            r.samples.remove(0);
        }
        r.samples.push(ms);
        self.sorted.clear();
        self.sorted.extend_from_slice(&r.samples);
        self.sorted.sort_by(f64::total_cmp);
        &self.sorted
    }

    /// [`push`](Self::push), returning the lower median: what a gateway records as the RTT it
    /// measured (of two samples the smaller, so one late probe is not taken over a good one).
    pub fn push_median(&mut self, peer: NodeIndex, ms: f64) -> f64 {
        let sorted = self.push(peer, ms);
        sorted[(sorted.len() - 1) / 2]
    }

    /// Drops what it kept about `peer` (it left the fleet).
    pub fn forget(&mut self, peer: NodeIndex) {
        self.recent.retain(|r| r.peer != peer);
    }

    /// Peers it keeps samples of.
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    /// True when it keeps nothing.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// Whether it keeps samples of `peer`.
    pub fn has(&self, peer: NodeIndex) -> bool {
        self.recent.iter().any(|r| r.peer == peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_samples_sorted() {
        let mut f = PeerFilter::new(3, 8);
        assert_eq!(f.push(1, 5.0), &[5.0]);
        assert_eq!(f.push(1, 50.0), &[5.0, 50.0]);
        assert_eq!(f.push(1, 6.0), &[5.0, 6.0, 50.0]);
        assert_eq!(f.push(1, 7.0), &[6.0, 7.0, 50.0], "the first sample went");
        assert_eq!(f.push(2, 1.0), &[1.0], "peers apart");
        assert_eq!(f.push_median(2, 9.0), 1.0, "of two, the smaller");
        assert_eq!(f.push_median(2, 2.0), 2.0);
    }

    #[test]
    fn keeps_a_bounded_number_of_peers_and_forgets_on_request() {
        let mut f = PeerFilter::new(3, 4);
        for p in 0..10 {
            f.push(p, 5.0);
        }
        assert_eq!(f.len(), 4);
        assert!((6..10).all(|p| f.has(p)), "the least recent went first");
        assert_eq!(f.push(20, 7.0), &[7.0], "a new peer starts without the dropped one's samples");
        f.forget(9);
        assert_eq!(f.len(), 3);
        assert!(!f.has(9));
    }
}

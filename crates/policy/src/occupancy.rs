//! How many instances a revision has on each node, and how much room each node has left for it:
//! pure functions of where instances are (one `(revision, node)` record per instance), so both
//! runtimes and the simulator count the same way.

/// The revision's instances on each of `nodes` nodes; records of other revisions, or of nodes
/// beyond `nodes`, do not count.
pub fn instances_per_node<K: PartialEq>(placed: &[(K, usize)], revision: &K, nodes: usize) -> Vec<u32> {
    let mut count = vec![0; nodes];
    for (key, node) in placed {
        if key == revision
            && let Some(c) = count.get_mut(*node)
        {
            *c += 1;
        }
    }
    count
}

/// Room for the revision on each node: the node's capacity less every other revision's instances
/// there, never below zero (the revision's own are what the placement decides, so they leave room).
pub fn room_per_node<K: PartialEq>(placed: &[(K, usize)], revision: &K, capacity: &[u32]) -> Vec<u32> {
    let mut others = vec![0u32; capacity.len()];
    for (key, node) in placed {
        if key != revision
            && let Some(c) = others.get_mut(*node)
        {
            *c += 1;
        }
    }
    capacity.iter().zip(others).map(|(cap, others)| cap.saturating_sub(others)).collect()
}

/// Room for the revision on each node, both ways it is counted while other revisions hold
/// headroom (`headroom(other, node)`: how many of its instances there are headroom). `free`: as
/// [`room_per_node`] counts it over `occupied` (instances running, starting or still stopping).
/// `claimable`: capacity less other revisions' instances in `placed` (running or starting) that
/// are not headroom — headroom yields to another revision's need, and its holder gives it back at
/// its next decision, when that room is no longer its own; an instance on its way out is room
/// already. Returns (claimable, free).
pub fn rooms_with_headroom<K: PartialEq>(
    placed: &[(K, usize)],
    occupied: &[(K, usize)],
    revision: &K,
    capacity: &[u32],
    headroom: impl Fn(&K, usize) -> u32,
) -> (Vec<u32>, Vec<u32>) {
    let free = room_per_node(occupied, revision, capacity);
    // Each other revision's instances per node, at most its headroom of them yielding.
    let mut seen: Vec<(&K, usize, u32)> = Vec::new();
    for (key, node) in placed.iter().filter(|(key, node)| key != revision && *node < capacity.len()) {
        match seen.iter_mut().find(|(k, n, _)| *k == key && n == node) {
            Some((_, _, count)) => *count += 1,
            None => seen.push((key, *node, 1)),
        }
    }
    let mut claimable = capacity.to_vec();
    for (key, node, count) in seen {
        claimable[node] = claimable[node].saturating_sub(count - count.min(headroom(key, node)));
    }
    (claimable, free)
}

/// Which instances of one revision on one node to stop to come down to `want`: those not ready
/// before ready ones, then the newest (largest `age` key) first.
pub fn surplus<T, K: Ord>(instances: impl IntoIterator<Item = (T, bool, K)>, want: usize) -> Vec<T> {
    let mut ranked: Vec<(T, bool, K)> = instances.into_iter().collect();
    let excess = ranked.len().saturating_sub(want);
    ranked.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| b.2.cmp(&a.2)));
    ranked.into_iter().take(excess).map(|(t, _, _)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_per_node_counts_the_revisions_own_on_each_node() {
        let placed = [("a", 0), ("a", 0), ("b", 0), ("a", 2), ("b", 1), ("a", 5)];
        assert_eq!(instances_per_node(&placed, &"a", 3), [2, 0, 1]);
        assert_eq!(instances_per_node(&placed, &"b", 3), [1, 1, 0]);
        assert_eq!(instances_per_node(&placed, &"c", 2), [0, 0]);
    }

    #[test]
    fn room_per_node_is_capacity_less_other_revisions_never_below_zero() {
        let placed = [("a", 0), ("a", 0), ("b", 0), ("b", 1), ("b", 1), ("c", 2), ("b", 7)];
        assert_eq!(room_per_node(&placed, &"a", &[3, 1, 4]), [2, 0, 3]);
        assert_eq!(room_per_node(&placed, &"b", &[3, 1, 4]), [1, 1, 3]);
        assert_eq!(room_per_node(&placed, &"a", &[]), Vec::<u32>::new());
    }

    #[test]
    fn other_revisions_headroom_is_room_to_claim_but_not_free() {
        let placed = [("a", 0), ("a", 0), ("b", 0), ("b", 1), ("b", 1), ("c", 1)];
        // b holds one of its two on node 1 as headroom, and claims one more than it has on node 0.
        let headroom = |k: &&str, node: usize| {
            if *k == "b" && node == 1 {
                1
            } else if *k == "b" {
                3
            } else {
                0
            }
        };
        let (claimable, free) = rooms_with_headroom(&placed, &placed, &"a", &[3, 4], headroom);
        assert_eq!(free, [2, 1]);
        assert_eq!(claimable, [3, 2], "b's headroom yields, at most its instances there");
        // Its own headroom is no room for itself to claim.
        let (claimable, free) = rooms_with_headroom(&placed, &placed, &"b", &[3, 4], headroom);
        assert_eq!((claimable, free), (vec![1, 3], vec![1, 3]));
        assert_eq!(rooms_with_headroom(&placed, &placed, &"a", &[3, 4], |_, _| 0), (vec![2, 1], vec![2, 1]));
        // c's instance on node 1 is stopping: not free yet, but no longer in the way of a claim.
        let live: Vec<_> = placed.iter().copied().filter(|p| *p != ("c", 1)).collect();
        assert_eq!(rooms_with_headroom(&live, &placed, &"a", &[3, 4], headroom), (vec![3, 3], vec![2, 1]));
    }

    #[test]
    fn surplus_stops_the_unready_then_the_newest() {
        let instances = [("old-ready", true, 1), ("new-ready", true, 3), ("starting", false, 2)];
        assert_eq!(surplus(instances, 3), Vec::<&str>::new());
        assert_eq!(surplus(instances, 2), ["starting"]);
        assert_eq!(surplus(instances, 1), ["starting", "new-ready"]);
        assert_eq!(surplus(instances, 0).len(), 3);
    }
}

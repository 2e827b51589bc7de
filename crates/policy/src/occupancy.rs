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
    fn surplus_stops_the_unready_then_the_newest() {
        let instances = [("old-ready", true, 1), ("new-ready", true, 3), ("starting", false, 2)];
        assert_eq!(surplus(instances, 3), Vec::<&str>::new());
        assert_eq!(surplus(instances, 2), ["starting"]);
        assert_eq!(surplus(instances, 1), ["starting", "new-ready"]);
        assert_eq!(surplus(instances, 0).len(), 3);
    }
}

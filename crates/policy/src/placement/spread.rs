//! `spread`: what Kubernetes' default scheduler ends up doing for a Deployment — instances spread
//! evenly over the nodes with room, blind to where requests come from.
//!
//! Existing instances stay where they are; a scale-up adds to the node with the fewest instances
//! (ties: lower index), a scale-down removes from the node with the most (ties: higher index).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Placement, PlacementInput};

/// Even spreading.
#[derive(Debug, Default)]
pub struct SpreadPlacement;

impl Placement for SpreadPlacement {
    fn name(&self) -> &'static str {
        "spread"
    }

    fn place(&mut self, input: &PlacementInput<'_>) -> Vec<u32> {
        let mut out = input.current_within_capacity();
        let target = input.reachable_total();
        let mut sum: u32 = out.iter().sum();
        if sum > target {
            let mut heap: BinaryHeap<(u32, usize)> =
                out.iter().enumerate().filter(|(_, n)| **n > 0).map(|(j, &n)| (n, j)).collect();
            while sum > target {
                let Some((n, j)) = heap.pop() else { break };
                out[j] = n - 1;
                sum -= 1;
                if n > 1 {
                    heap.push((n - 1, j));
                }
            }
        } else if sum < target {
            let mut heap: BinaryHeap<Reverse<(u32, usize)>> = out
                .iter()
                .enumerate()
                .filter(|(j, n)| **n < input.capacity[*j])
                .map(|(j, &n)| Reverse((n, j)))
                .collect();
            while sum < target {
                let Some(Reverse((n, j))) = heap.pop() else { break };
                out[j] = n + 1;
                sum += 1;
                if n + 1 < input.capacity[j] {
                    heap.push(Reverse((n + 1, j)));
                }
            }
        }
        out
    }
}

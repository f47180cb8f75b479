//! Round robin: each endpoint in turn.

use super::Picker;

/// Cycles through the endpoints from a starting offset.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: u64,
}

impl RoundRobin {
    /// Starts at endpoint `offset % len` (then goes round from there).
    pub fn starting_at(offset: u64) -> Self {
        RoundRobin { next: offset }
    }
}

impl Picker for RoundRobin {
    fn pick(&mut self, endpoints: &[String]) -> Option<usize> {
        let len = u64::try_from(endpoints.len()).ok().filter(|&n| n > 0)?;
        let index = usize::try_from(self.next % len).ok()?;
        self.next = self.next.wrapping_add(1);
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn cycles_through_every_endpoint_in_order() {
        let eps = endpoints(3);
        let mut rr = RoundRobin::default();
        let picks: Vec<usize> = (0..7).filter_map(|_| rr.pick(&eps)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn starts_at_the_offset() {
        let eps = endpoints(4);
        let mut rr = RoundRobin::starting_at(6);
        let picks: Vec<usize> = (0..4).filter_map(|_| rr.pick(&eps)).collect();
        assert_eq!(picks, vec![2, 3, 0, 1]);
    }

    #[test]
    fn even_spread() {
        let eps = endpoints(5);
        let mut rr = RoundRobin::starting_at(u64::MAX - 2);
        let mut counts = [0usize; 5];
        for _ in 0..1000 {
            counts[rr.pick(&eps).expect("endpoints exist")] += 1;
        }
        // Wrapping past u64::MAX shifts the cycle once; the spread stays within one.
        assert!(counts.iter().all(|&c| (199..=201).contains(&c)), "{counts:?}");
    }

    #[test]
    fn nothing_to_pick() {
        assert_eq!(RoundRobin::default().pick(&[]), None);
    }
}

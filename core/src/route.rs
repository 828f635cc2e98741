//! Where a mail's attachment goes for one recipient, and when a storage node that could not
//! take it is tried again.
//!
//! The sender's node always keeps its own copy until every recipient has the file (it is
//! the source of last resort). Besides that copy, [`route_attachment`] decides per
//! recipient and per file:
//!
//! | recipient's storage node | recipient | file size      | placement                                   |
//! |--------------------------|-----------|----------------|---------------------------------------------|
//! | none                     | online    | any            | the recipient pulls it from the sender      |
//! | none                     | offline   | ≤ inline limit | the relay keeps a copy                      |
//! | none                     | offline   | larger         | only the sender's copy (fetched later)      |
//! | available                | any       | any            | the node pulls it now (and the recipient may pull it too) |
//! | unavailable              | online    | any            | the recipient pulls it; the node is retried |
//! | unavailable              | offline   | ≤ inline limit | the relay keeps a copy; the node is retried (the relay also hands it over when the node is back) |
//! | unavailable              | offline   | larger         | only the sender's copy; the node is retried |
//!
//! Retries follow [`RetryPolicy`]: exponential backoff from a first delay up to a ceiling,
//! until a deadline after the first attempt; after that the file stays where the table put
//! it (the relay, or the sender's node) and the node is no longer asked.

use crate::mail::Millis;

/// What the location registry says about a recipient's storage node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// The recipient has no storage node.
    None,
    /// Paired, signed in and heard from on time.
    Available,
    /// Paired but not available now.
    Unavailable,
}

/// What to do with the recipient's storage node for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// The recipient has no node: nothing.
    Nothing,
    /// Tell the node to pull the file from the sender's node now.
    PullNow,
    /// The node is unavailable: try again by the [`RetryPolicy`].
    RetryLater,
}

/// Where one file of a mail goes for one recipient, besides the sender's own copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub node: NodeAction,
    /// Leave a copy at the relay (only files up to its inline limit, for an offline
    /// recipient whose node cannot take the file now).
    pub relay: bool,
    /// The recipient is online and pulls the file from the sender's node itself.
    pub direct: bool,
}

/// The decision table of this module's documentation.
pub fn route_attachment(
    size: u64,
    inline_limit: u64,
    node: NodeStatus,
    recipient_online: bool,
) -> Placement {
    let inline = size <= inline_limit;
    let node_action = match node {
        NodeStatus::None => NodeAction::Nothing,
        NodeStatus::Available => NodeAction::PullNow,
        NodeStatus::Unavailable => NodeAction::RetryLater,
    };
    Placement {
        node: node_action,
        relay: !recipient_online && inline && node != NodeStatus::Available,
        direct: recipient_online,
    }
}

/// When to try an unavailable storage node again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the second attempt.
    pub first_delay: Millis,
    /// Each later wait is this many times the one before…
    pub factor: u32,
    /// …up to this.
    pub max_delay: Millis,
    /// No attempt starts this long after the first one.
    pub deadline: Millis,
}

impl Default for RetryPolicy {
    /// 5 s, doubling up to 5 minutes, for 3 days.
    fn default() -> Self {
        RetryPolicy {
            first_delay: 5_000,
            factor: 2,
            max_delay: 5 * 60_000,
            deadline: 3 * 24 * 3_600_000,
        }
    }
}

impl RetryPolicy {
    /// The wait after attempt number `attempts` (1 for the first attempt).
    pub fn delay(&self, attempts: u32) -> Millis {
        let mut delay = self.first_delay;
        for _ in 1..attempts {
            delay = delay.saturating_mul(u64::from(self.factor));
            if delay >= self.max_delay {
                return self.max_delay;
            }
        }
        delay.min(self.max_delay)
    }

    /// When to make the next attempt, after `attempts` attempts of which the first was at
    /// `first` and the last at `last`; `None` once that would be past the deadline.
    pub fn next_attempt(&self, attempts: u32, first: Millis, last: Millis) -> Option<Millis> {
        let at = last.saturating_add(self.delay(attempts.max(1)));
        (at <= first.saturating_add(self.deadline)).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 8 << 20;

    fn p(node: NodeAction, relay: bool, direct: bool) -> Placement {
        Placement {
            node,
            relay,
            direct,
        }
    }

    /// Every row of the decision table, at and around the inline limit.
    #[test]
    fn decision_table() {
        use NodeAction::*;
        use NodeStatus as N;
        let small = LIMIT;
        let large = LIMIT + 1;
        let rows = [
            // (node, online, size) → placement
            (N::None, true, small, p(Nothing, false, true)),
            (N::None, true, large, p(Nothing, false, true)),
            (N::None, false, small, p(Nothing, true, false)),
            (N::None, false, large, p(Nothing, false, false)),
            (N::Available, true, small, p(PullNow, false, true)),
            (N::Available, true, large, p(PullNow, false, true)),
            (N::Available, false, small, p(PullNow, false, false)),
            (N::Available, false, large, p(PullNow, false, false)),
            (N::Unavailable, true, small, p(RetryLater, false, true)),
            (N::Unavailable, true, large, p(RetryLater, false, true)),
            (N::Unavailable, false, small, p(RetryLater, true, false)),
            (N::Unavailable, false, large, p(RetryLater, false, false)),
        ];
        for (node, online, size, want) in rows {
            assert_eq!(
                route_attachment(size, LIMIT, node, online),
                want,
                "node {node:?}, recipient online {online}, {size} bytes"
            );
        }
        // An empty file is inline-size; a relay that keeps nothing keeps no file.
        assert!(route_attachment(0, LIMIT, N::None, false).relay);
        assert!(!route_attachment(1, 0, N::None, false).relay);
    }

    /// Simulated time: attempts at 0, 5 s, 15 s, 35 s, … with waits doubling up to five
    /// minutes, and none after the deadline.
    #[test]
    fn retries_back_off_and_stop_at_the_deadline() {
        let policy = RetryPolicy::default();
        let start: Millis = 1_000_000;
        let mut attempts = 1;
        let mut at = start;
        let mut times = vec![at];
        while let Some(next) = policy.next_attempt(attempts, start, at) {
            assert!(next > at, "time moves on");
            at = next;
            attempts += 1;
            times.push(at);
        }
        let waits: Vec<Millis> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            &waits[..8],
            &[5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]
        );
        assert!(waits.iter().all(|w| *w <= policy.max_delay));
        // The last attempt is within the deadline, and the next one would not be.
        let last = *times.last().unwrap();
        assert!(last <= start + policy.deadline);
        assert!(last + policy.max_delay > start + policy.deadline);
        // About one attempt per five minutes for three days.
        assert!((860..=870).contains(&times.len()), "{}", times.len());

        // A custom policy: 1 s, tripling, at most 10 s, for one minute.
        let quick = RetryPolicy {
            first_delay: 1_000,
            factor: 3,
            max_delay: 10_000,
            deadline: 60_000,
        };
        assert_eq!(
            (1..=5).map(|n| quick.delay(n)).collect::<Vec<_>>(),
            [1_000, 3_000, 9_000, 10_000, 10_000]
        );
        assert_eq!(quick.next_attempt(1, 0, 0), Some(1_000));
        assert_eq!(quick.next_attempt(9, 0, 55_000), None);
        // Huge attempt counts do not overflow.
        assert_eq!(quick.delay(u32::MAX), 10_000);
    }
}

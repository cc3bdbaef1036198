//! Hybrid logical clock (HLC) timestamps for ordering weak writes.
//!
//! A timestamp is one `u64`: milliseconds since the Unix epoch in the high 48 bits and a logical
//! counter in the low 16. It orders like wall-clock time when clocks agree, and never goes
//! backwards on one node even when the wall clock does, because every new timestamp is above the
//! last one issued and above every one received. A version is a timestamp with the id of the node
//! that issued it, which breaks ties between nodes.
//!
//! The rule that keeps a node's own writes in order: the version a write gets must exceed the
//! version of the value it overwrites (`next_for`). A timestamp taken later, when a change is
//! shipped, could invert two writes of one field made within the same millisecond on two
//! sessions. This is pure arithmetic; the state (the last timestamp) lives with the caller.
//!
//! Weak capture computes exactly this inside Postgres, in the writer's transaction (see
//! `replicate::capture`): `greatest(wall clock, floor + 1, row's top + 1)`, where the floor is the
//! highest timestamp received from peers (`observe`) and the row's top bounds every version it
//! holds (`next_for`).

/// Bits of the logical counter.
const LOGICAL_BITS: u32 = 16;

/// A hybrid logical clock timestamp.
pub type Hlc = u64;

/// The timestamp of a wall-clock reading with a zero counter.
pub fn from_millis(ms: u64) -> Hlc {
    ms << LOGICAL_BITS
}

/// The wall-clock part, in milliseconds since the Unix epoch.
pub fn millis(t: Hlc) -> u64 {
    t >> LOGICAL_BITS
}

/// The next timestamp after `last`, given the wall clock: the wall clock when it is ahead, else
/// `last` with the counter moved on (which carries into the milliseconds when it is full, so
/// the result is always above `last`).
pub fn tick(last: Hlc, wall_ms: u64) -> Hlc {
    from_millis(wall_ms).max(last + 1)
}

/// The clock after receiving a timestamp from a peer: never below what was received.
pub fn observe(last: Hlc, received: Hlc) -> Hlc {
    last.max(received)
}

/// The timestamp for a write that overwrites a value stamped `overwritten`: after both the
/// clock and that value.
pub fn next_for(last: Hlc, wall_ms: u64, overwritten: Option<Hlc>) -> Hlc {
    tick(observe(last, overwritten.unwrap_or(0)), wall_ms)
}

/// A timestamp and the node that issued it: versions of weak values, ordered by timestamp, then
/// by node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    pub hlc: Hlc,
    pub node: u32,
}

impl Version {
    pub fn new(hlc: Hlc, node: u32) -> Self {
        Self { hlc, node }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_wall_clock_and_never_go_back() {
        let t1 = tick(0, 1_000);
        assert_eq!(millis(t1), 1_000);
        let t2 = tick(t1, 1_000);
        assert!(t2 > t1, "same millisecond: the counter moves");
        let t3 = tick(t2, 900);
        assert!(t3 > t2, "the wall clock went back; the clock did not");
        assert_eq!(millis(tick(t3, 5_000)), 5_000);
    }

    #[test]
    fn a_full_counter_carries_into_the_milliseconds() {
        let last = from_millis(7) | 0xffff;
        assert_eq!(tick(last, 7), from_millis(8));
    }

    #[test]
    fn received_timestamps_push_the_clock_forward() {
        let remote = from_millis(10_000) + 3;
        let local = observe(from_millis(5), remote);
        assert!(tick(local, 5) > remote);
    }

    #[test]
    fn a_write_is_stamped_after_the_value_it_overwrites_even_from_a_fast_peer() {
        // The overwritten value came from a peer whose clock runs a minute ahead.
        let overwritten = from_millis(60_000);
        let v = next_for(from_millis(1_000), 1_000, Some(overwritten));
        assert!(v > overwritten);
    }

    #[test]
    fn versions_order_by_timestamp_then_node() {
        assert!(Version::new(5, 9) < Version::new(6, 1));
        assert!(Version::new(5, 1) < Version::new(5, 2));
    }
}

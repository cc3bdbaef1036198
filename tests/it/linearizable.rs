//! A linearizability checker for histories of registers (Wing and Gong's search, with Lowe's
//! memoization), for the strong path's tests: clients on every node write and read registers,
//! record when each operation was invoked and when it returned, and the history must have a
//! legal sequential order that respects real time.
//!
//! Registers are independent, and linearizability is local, so each key is checked on its own.
//! An operation whose outcome the client never learned (a timeout, a 40003) has no return time:
//! a write of that kind may have taken effect at any point after its invocation, or never; a read
//! of that kind tells nothing and is dropped.

use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Write(i64),
    /// The value read; None for a register never written.
    Read(Option<i64>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    pub kind: Kind,
    /// When the client sent it and when the answer came (any clock the clients share).
    pub invoked: u64,
    /// None: the outcome is unknown.
    pub returned: Option<u64>,
}

/// Ok, or the key whose history has no linearization.
pub fn check(history: &[Op]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        // A read with no answer constrains nothing.
        if matches!(op.kind, Kind::Read(_)) && op.returned.is_none() {
            continue;
        }
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        if !linearizable(&ops) {
            return Err(format!("the history of key {key:?} is not linearizable: {ops:#?}"));
        }
    }
    Ok(())
}

/// One register's history: depth-first search over which operation takes effect next, never
/// visiting the same (done set, value) twice.
fn linearizable(ops: &[&Op]) -> bool {
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let end = |o: &Op| o.returned.unwrap_or(u64::MAX);
    // Operations that must take effect: every one with a known outcome.
    let required: Vec<bool> = ops.iter().map(|o| o.returned.is_some()).collect();
    let mut seen: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(Vec<u64>, Option<i64>)> = vec![(vec![0; words], None)];
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    while let Some((done, value)) = stack.pop() {
        if (0..n).all(|i| !required[i] || is_done(&done, i)) {
            return true;
        }
        if !seen.insert((done.clone(), value)) {
            continue;
        }
        // An operation may go next if none still pending returned before it was invoked.
        let horizon = (0..n).filter(|i| !is_done(&done, *i)).map(|i| end(ops[i])).min().unwrap_or(u64::MAX);
        for i in (0..n).filter(|i| !is_done(&done, *i) && ops[*i].invoked <= horizon) {
            let next = match &ops[i].kind {
                Kind::Write(v) => Some(*v),
                Kind::Read(r) if *r == value => value,
                Kind::Read(_) => continue,
            };
            let mut d = done.clone();
            d[i / 64] |= 1 << (i % 64);
            stack.push((d, next));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, v: i64, invoked: u64, returned: Option<u64>) -> Op {
        Op { key: key.into(), kind: Kind::Write(v), invoked, returned }
    }

    fn r(key: &str, v: Option<i64>, invoked: u64, returned: u64) -> Op {
        Op { key: key.into(), kind: Kind::Read(v), invoked, returned: Some(returned) }
    }

    #[test]
    fn sequential_and_overlapping_histories_that_have_an_order_pass() {
        assert!(check(&[w("x", 1, 0, Some(1)), r("x", Some(1), 2, 3)]).is_ok());
        assert!(check(&[r("x", None, 0, 1), w("x", 1, 2, Some(3))]).is_ok());
        // Overlapping writes: either order, and the reads agree with one of them.
        let h = [w("x", 1, 0, Some(10)), w("x", 2, 1, Some(9)), r("x", Some(1), 11, 12), r("x", Some(1), 13, 14)];
        assert!(check(&h).is_ok());
        // A read overlapping a write may see the old or the new value.
        assert!(check(&[w("x", 1, 0, Some(1)), w("x", 2, 2, Some(6)), r("x", Some(1), 3, 4)]).is_ok());
        // Keys are independent.
        assert!(
            check(&[w("x", 1, 0, Some(1)), w("y", 2, 0, Some(1)), r("x", Some(1), 2, 3), r("y", Some(2), 2, 3)])
                .is_ok()
        );
    }

    #[test]
    fn stale_reads_lost_writes_and_flip_flops_fail() {
        // A read after a completed write sees an older value: stale.
        assert!(check(&[w("x", 1, 0, Some(1)), w("x", 2, 2, Some(3)), r("x", Some(1), 4, 5)]).is_err());
        // A value nobody wrote.
        assert!(check(&[w("x", 1, 0, Some(1)), r("x", Some(7), 2, 3)]).is_err());
        // Two later reads disagree about the order of two writes (new, then old again).
        let h = [w("x", 1, 0, Some(10)), w("x", 2, 0, Some(10)), r("x", Some(2), 11, 12), r("x", Some(1), 13, 14)];
        assert!(check(&h).is_err());
        // A write acknowledged, then a read of the initial state: lost.
        assert!(check(&[w("x", 1, 0, Some(1)), r("x", None, 2, 3)]).is_err());
    }

    #[test]
    fn a_write_with_an_unknown_outcome_may_or_may_not_have_happened() {
        // It took effect...
        assert!(check(&[w("x", 1, 0, Some(1)), w("x", 2, 2, None), r("x", Some(2), 5, 6)]).is_ok());
        // ...or it did not.
        assert!(check(&[w("x", 1, 0, Some(1)), w("x", 2, 2, None), r("x", Some(1), 5, 6)]).is_ok());
        // But not both: once seen, it cannot be unseen.
        let h = [w("x", 1, 0, Some(1)), w("x", 2, 2, None), r("x", Some(2), 5, 6), r("x", Some(1), 7, 8)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_longer_history_with_many_concurrent_clients_is_checked() {
        // 3 clients, 60 operations each, overlapping in pairs: correct by construction (each
        // write takes effect at its invocation time, each read sees the latest effect).
        let mut h = Vec::new();
        let mut effects: Vec<(u64, i64)> = Vec::new();
        for i in 0..180u64 {
            let t = i * 10;
            if i % 3 == 0 {
                h.push(w("x", i as i64, t, Some(t + 15)));
                effects.push((t, i as i64));
            } else {
                let seen = effects.iter().rev().find(|(at, _)| *at <= t).map(|(_, v)| *v);
                h.push(r("x", seen, t, t + 15));
            }
        }
        assert!(check(&h).is_ok());
        // One read that no write explains makes it fail.
        h.push(r("x", Some(-1), 5000, 5001));
        assert!(check(&h).is_err());
    }
}

//! The merge rule for weak data: how every node arrives at the same row from the same changes,
//! whatever order they arrive in and however often.
//!
//! A row's replicated state is a join of three parts, each merged by taking the maximum:
//!
//! - each column's value with its version (last writer wins per column, not per row, so two
//!   transactions on two nodes that write different columns of one row both survive);
//! - the version of the latest insert of the row's key;
//! - the version of the latest delete of that key (its tombstone).
//!
//! The row exists when its latest insert is newer than its latest delete. So a delete removes the
//! row whatever concurrent updates wrote (an update never revives a row), and an insert of the
//! same key revives it only when it is newer than the delete: an insert that raced the delete and
//! lost stays deleted. Column values are kept under a tombstone, so that the order in which a
//! delete and the updates around it arrive does not matter.
//!
//! Maxima are commutative, associative and idempotent, so replaying, reordering or duplicating
//! changes cannot make two nodes differ: the property test below checks exactly that.

use std::collections::BTreeMap;

use crate::clock::Version;

/// A column value as it travels: Postgres's text form, or NULL.
pub type Value = Option<String>;

/// One captured change to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// INSERT, or an upsert that inserted: every column of the new row, all at one version.
    Insert {
        version: Version,
        columns: BTreeMap<String, Value>,
    },
    /// UPDATE: the columns written, each at its own version.
    Update {
        columns: BTreeMap<String, (Value, Version)>,
    },
    Delete {
        version: Version,
    },
}

/// What a node knows of one row of a weak table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowState {
    pub columns: BTreeMap<String, (Value, Version)>,
    pub inserted: Option<Version>,
    pub deleted: Option<Version>,
}

impl RowState {
    /// Merges one change in; returns whether anything changed (false for a duplicate or a
    /// change that lost to what is already here).
    pub fn apply(&mut self, change: &Change) -> bool {
        match change {
            Change::Insert { version, columns } => {
                let mut changed = raise(&mut self.inserted, *version);
                for (name, value) in columns {
                    changed |= self.set(name, value, *version);
                }
                changed
            }
            Change::Update { columns } => {
                let mut changed = false;
                for (name, (value, version)) in columns {
                    changed |= self.set(name, value, *version);
                }
                changed
            }
            Change::Delete { version } => raise(&mut self.deleted, *version),
        }
    }

    /// Per column the higher version wins; equal versions (which a node's clock does not issue
    /// twice, but a bug or a restored backup might) are settled by the value, so that the result
    /// still does not depend on the order of arrival.
    fn set(&mut self, name: &str, value: &Value, version: Version) -> bool {
        match self.columns.get(name) {
            Some((have_value, have)) if (*have, have_value) >= (version, value) => false,
            _ => {
                self.columns.insert(name.to_owned(), (value.clone(), version));
                true
            }
        }
    }

    /// Whether `change` is already here or lost to what is here, judged by versions alone (so
    /// it can be decided from `pgmix.versions` without reading or locking the row). A version is
    /// issued once per field by one node, so an equal version is the same write arriving again.
    pub fn dominates(&self, change: &Change) -> bool {
        let col = |name: &str, v: Version| self.columns.get(name).is_some_and(|(_, have)| *have >= v);
        match change {
            Change::Insert { version, columns } => {
                self.inserted >= Some(*version) && columns.keys().all(|k| col(k, *version))
            }
            Change::Update { columns } => columns.iter().all(|(k, (_, v))| col(k, *v)),
            Change::Delete { version } => self.deleted >= Some(*version),
        }
    }

    /// Whether the row exists.
    pub fn visible(&self) -> bool {
        self.inserted > self.deleted
    }

    /// The row as it should read, or None when it does not exist.
    pub fn row(&self) -> Option<BTreeMap<&str, &Value>> {
        self.visible().then(|| self.columns.iter().map(|(k, (v, _))| (k.as_str(), v)).collect())
    }
}

/// Raises `slot` to `v`; returns whether it moved.
fn raise(slot: &mut Option<Version>, v: Version) -> bool {
    if *slot >= Some(v) {
        return false;
    }
    *slot = Some(v);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_already_merged_is_dominated_and_a_newer_one_is_not() {
        let mut st = RowState::default();
        let ins = Change::Insert { version: v(10, 1), columns: cols(&[("a", "x"), ("b", "y")]) };
        assert!(!st.dominates(&ins));
        st.apply(&ins);
        assert!(st.dominates(&ins), "a duplicate");
        let upd = |h, val: &str| Change::Update {
            columns: [("a".to_string(), (Some(val.to_string()), v(h, 2)))].into_iter().collect(),
        };
        assert!(!st.dominates(&upd(11, "z")));
        st.apply(&upd(11, "z"));
        assert!(st.dominates(&upd(11, "z")) && st.dominates(&upd(9, "old")));
        assert!(!st.dominates(&Change::Delete { version: v(12, 3) }));
        assert!(!st.dominates(&Change::Insert { version: v(10, 1), columns: cols(&[("c", "new")]) }));
    }
    use crate::testrng::Rng;

    fn v(hlc: u64, node: u32) -> Version {
        Version::new(hlc, node)
    }

    fn cols(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
        pairs.iter().map(|(k, x)| (k.to_string(), Some(x.to_string()))).collect()
    }

    fn update(pairs: &[(&str, &str, Version)]) -> Change {
        Change::Update {
            columns: pairs.iter().map(|(k, x, ver)| (k.to_string(), (Some(x.to_string()), *ver))).collect(),
        }
    }

    #[test]
    fn writes_to_different_columns_of_one_row_both_survive() {
        let insert = Change::Insert { version: v(1, 1), columns: cols(&[("a", "0"), ("b", "0")]) };
        let on_node_2 = update(&[("a", "from 2", v(5, 2))]);
        let on_node_3 = update(&[("b", "from 3", v(4, 3))]);
        for order in [[&insert, &on_node_2, &on_node_3], [&on_node_3, &on_node_2, &insert]] {
            let mut row = RowState::default();
            for c in order {
                row.apply(c);
            }
            let r = row.row().expect("visible");
            assert_eq!(r["a"].as_deref(), Some("from 2"));
            assert_eq!(r["b"].as_deref(), Some("from 3"));
        }
    }

    #[test]
    fn the_higher_version_wins_a_column_and_ties_go_to_the_higher_node() {
        let mut row = RowState::default();
        row.apply(&Change::Insert { version: v(1, 1), columns: cols(&[("a", "0")]) });
        row.apply(&update(&[("a", "node 1", v(7, 1))]));
        assert!(row.apply(&update(&[("a", "node 2", v(7, 2))])));
        assert!(!row.apply(&update(&[("a", "older", v(6, 3))])));
        assert_eq!(row.row().unwrap()["a"].as_deref(), Some("node 2"));
    }

    #[test]
    fn a_delete_beats_concurrent_updates_and_only_a_newer_insert_revives_the_key() {
        let mut row = RowState::default();
        row.apply(&Change::Insert { version: v(1, 1), columns: cols(&[("a", "0")]) });
        row.apply(&Change::Delete { version: v(5, 1) });
        row.apply(&update(&[("a", "late", v(9, 2))]));
        assert!(!row.visible(), "an update does not revive a deleted row");
        row.apply(&Change::Insert { version: v(4, 3), columns: cols(&[("a", "raced")]) });
        assert!(!row.visible(), "an insert older than the delete stays deleted");
        row.apply(&Change::Insert { version: v(10, 3), columns: cols(&[("a", "again")]) });
        assert_eq!(row.row().unwrap()["a"].as_deref(), Some("again"));
    }

    #[test]
    fn duplicates_change_nothing() {
        let mut row = RowState::default();
        let c = Change::Insert { version: v(3, 1), columns: cols(&[("a", "x")]) };
        assert!(row.apply(&c));
        let before = row.clone();
        assert!(!row.apply(&c));
        assert_eq!(row, before);
    }

    /// A set of changes as three nodes could have made them: versions unique per node.
    fn changes(r: &mut Rng) -> Vec<Change> {
        let names = ["a", "b", "c"];
        let mut out = Vec::new();
        for i in 0..(2 + r.below(12)) {
            let node = 1 + r.below(3) as u32;
            let ver = v(1 + r.below(20) as u64 * 4 + node as u64, node);
            let value = format!("{i}");
            out.push(match r.below(4) {
                0 => Change::Insert {
                    version: ver,
                    columns: names.iter().map(|n| (n.to_string(), Some(value.clone()))).collect(),
                },
                1 => Change::Delete { version: ver },
                _ => {
                    let n = names[r.below(3)];
                    let value = if r.below(5) == 0 { None } else { Some(value) };
                    Change::Update { columns: [(n.to_string(), (value, ver))].into_iter().collect() }
                }
            });
        }
        out
    }

    #[test]
    fn any_order_and_any_duplication_of_the_same_changes_gives_the_same_row() {
        let mut r = Rng(0x9e3779b97f4a7c15);
        for _ in 0..2000 {
            let set = changes(&mut r);
            let mut reference = RowState::default();
            for c in &set {
                reference.apply(c);
            }
            for _ in 0..5 {
                // A shuffled copy with some changes delivered twice or three times.
                let mut delivery: Vec<&Change> = set.iter().collect();
                for _ in 0..r.below(4) {
                    delivery.push(&set[r.below(set.len())]);
                }
                for i in (1..delivery.len()).rev() {
                    let j = r.below(i + 1);
                    delivery.swap(i, j);
                }
                let mut row = RowState::default();
                for c in &delivery {
                    row.apply(c);
                }
                assert_eq!(row, reference, "changes {set:?} delivered as {delivery:?}");
            }
        }
    }
}

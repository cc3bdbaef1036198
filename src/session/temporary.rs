//! The temporary relations this session made in its own backend. While one exists, its name
//! means it (Postgres looks in the session's temporary schema first), so statements on it run
//! here, never on the strong path, whose sessions on the leader do not have it.
//!
//! Remembering a name that is gone would run statements on a real table of that name here, as
//! if it were temporary; forgetting one only sends its statements to the strong path, where they
//! fail with "relation does not exist". So a name made is tentative until the session is next
//! idle with no error or rollback on the way (the statement, or its transaction, may fail), ON
//! COMMIT DROP names end there, a name dropped is forgotten at once, and a transaction that ran
//! on the strong path takes its tentative names with it.

use std::collections::HashSet;

#[derive(Debug, Default)]
pub struct Temporary {
    settled: HashSet<String>,
    /// Made since the session was last idle, with ON COMMIT DROP.
    tentative: Vec<(String, bool)>,
    /// An error, or a rollback, since the session was last idle.
    failed: bool,
    /// Bumped on every change, so that a copy of the schema made for the names can be reused.
    version: u64,
}

impl Temporary {
    pub fn is_empty(&self) -> bool {
        self.settled.is_empty() && self.tentative.is_empty()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn contains(&self, name: &str) -> bool {
        self.settled.contains(name) || self.tentative.iter().any(|(n, _)| n == name)
    }

    pub fn names(&self) -> HashSet<String> {
        self.settled.iter().cloned().chain(self.tentative.iter().map(|(n, _)| n.clone())).collect()
    }

    /// Whether `sql` may name one of them (a cheap over-approximation: a name anywhere in it, in
    /// any case).
    pub fn mentioned(&self, sql: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        let lower = sql.to_lowercase();
        self.names().iter().any(|n| lower.contains(&n.to_lowercase()))
    }

    pub fn made(&mut self, name: String, drop_at_commit: bool) {
        self.tentative.push((name, drop_at_commit));
        self.version += 1;
    }

    pub fn dropped(&mut self, names: &[String]) {
        for n in names {
            self.settled.remove(n);
            self.tentative.retain(|(t, _)| t != n);
        }
        self.version += 1;
    }

    pub fn renamed(&mut self, from: &str, to: String) {
        // Tentative: the rename may fail or be rolled back, and the old name is forgotten anyway.
        let drop_at_commit = self.tentative.iter().find(|(n, _)| n == from).is_some_and(|(_, d)| *d);
        self.dropped(&[from.to_owned()]);
        self.made(to, drop_at_commit);
    }

    pub fn discard(&mut self) {
        self.settled.clear();
        self.tentative.clear();
        self.version += 1;
    }

    /// The backend reported an error, or a ROLLBACK completed.
    pub fn failed(&mut self) {
        self.failed |= !self.tentative.is_empty();
    }

    /// The session is idle (outside a transaction block) on its own backend.
    pub fn idle(&mut self) {
        if self.tentative.is_empty() {
            self.failed = false;
            return;
        }
        let failed = std::mem::take(&mut self.failed);
        for (name, drop_at_commit) in std::mem::take(&mut self.tentative) {
            if !failed && !drop_at_commit {
                self.settled.insert(name);
            }
        }
        self.version += 1;
    }

    /// A transaction ran on the strong path: what it made is not in this backend.
    pub fn ran_elsewhere(&mut self) {
        if !self.tentative.is_empty() {
            self.tentative.clear();
            self.failed = false;
            self.version += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_only_when_what_made_them_committed_here() {
        let mut t = Temporary::default();
        t.made("a".into(), false);
        assert!(t.contains("a"), "a name counts inside its own transaction");
        t.idle();
        assert!(t.contains("a"));

        t.made("b".into(), false);
        t.failed();
        t.idle();
        assert!(!t.contains("b"), "a failed CREATE or a rolled-back transaction leaves no table");
        assert!(t.contains("a"), "what was settled before stays");

        t.made("c".into(), true);
        assert!(t.mentioned("select * from C"));
        t.idle();
        assert!(!t.contains("c"), "ON COMMIT DROP ends with the transaction");

        t.made("d".into(), false);
        t.ran_elsewhere();
        t.idle();
        assert!(!t.contains("d"));

        let v = t.version();
        t.renamed("a", "e".into());
        assert!(t.version() > v);
        t.idle();
        assert!(!t.contains("a") && t.contains("e"));
        t.dropped(&["e".into()]);
        assert!(t.is_empty() && !t.mentioned("select * from e"));
    }

    #[test]
    fn an_error_with_nothing_tentative_is_forgotten_at_idle() {
        let mut t = Temporary::default();
        t.failed();
        t.idle();
        t.made("a".into(), false);
        t.idle();
        assert!(t.contains("a"));
        t.discard();
        assert!(t.is_empty());
    }
}

//! Classes of recently seen SQL texts. Applications send the same texts again and again, and
//! parsing is the expensive part of classification.
//!
//! Entries are found by exact text and by shape (`split::shape`: the tokens with every literal
//! replaced by one mark). Simple-protocol clients that put values into the text (psql scripts,
//! psycopg2, pgbench -M simple) send a new text each time but few shapes, so a shape hit costs a
//! tokenization instead of a parse. A class does not depend on literal values, except for the
//! value of a search_path being set, so entries that change the search_path are kept by exact
//! text only.
//!
//! Bounded with two generations: new entries go into `young`; when it is full it becomes `old`
//! and the previous `old` is dropped. A hit in `old` moves the entry back into `young`, so texts
//! in steady use survive and a burst of one-off texts evicts only other one-off texts.
//!
//! A schema change installs the new schema and then bumps `epoch` (`clear`). A lookup reads the
//! epoch before it reads the schema, and stores its class only if the epoch has not moved since:
//! so a class computed against the old schema while the new one was being installed is returned
//! to its caller but never lingers in the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::quick_shape::quick_key;
use super::words::Words;
use super::{Class, SearchPathChange, SqlPrepared, classify, classify_tokens, split, strongest};
use crate::schema::Schema;

/// Entries per generation; the cache holds at most twice this.
const GENERATION: usize = 2048;

/// Longer texts are classified but not kept: a bulk INSERT of many rows is rarely sent twice, and
/// its keys (text and shapes) would hold megabytes each.
const CACHEABLE_BYTES: usize = 16 * 1024;

/// What the node keeps of a classified text.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The strongest class of its statements, EXECUTE counted as a strong write.
    pub class: Class,
    /// The strongest class of its statements other than EXECUTE (Local if there are none); the
    /// session adds what each EXECUTE runs, from `sql_prepared`.
    pub class_without_execute: Class,
    pub reason: Arc<str>,
    /// The statement's effects on SQL-level prepared statements, in order.
    pub sql_prepared: Arc<[SqlPrepared]>,
    /// The last change the text makes to the session's search_path.
    pub search_path: Option<SearchPathChange>,
    /// How many statements the text holds.
    pub statements: usize,
    /// What its words say about transactions and the log.
    pub words: super::words::Words,
}

#[derive(Default)]
struct Generations {
    young: HashMap<Box<str>, Entry>,
    old: HashMap<Box<str>, Entry>,
    epoch: u64,
}

#[derive(Default)]
pub struct ClassCache {
    inner: Mutex<Generations>,
}

impl ClassCache {
    /// The combined class of `sql` and the reasons, from the cache or freshly classified against
    /// the schema `current` returns (asked only on a miss, and only after the epoch is read).
    pub fn get_or_classify(&self, sql: &str, current: impl FnOnce() -> Arc<Schema>) -> Entry {
        if sql.len() > CACHEABLE_BYTES {
            return fresh(sql, &current());
        }
        let epoch = match self.lookup(sql) {
            Ok(hit) => return hit,
            Err(epoch) => epoch,
        };
        // Keys of the three kinds cannot collide: a Query text never holds a NUL. A text without
        // literals is its own quick key, and its exact entry serves.
        let quick = quick_key(sql, "\u{0}q");
        if let Some(hit) = quick.as_deref().and_then(|q| self.lookup(q).ok()) {
            return hit;
        }
        // Tokenized and classified outside the lock: the slow parts, and other sessions need the
        // cache meanwhile.
        let Ok(tokens) = split::tokenize(sql) else {
            let entry = entry_of(classify(sql, &current()), Words::OTHER);
            self.store(sql, entry.clone(), epoch);
            return entry;
        };
        let shape = format!("\u{0}s{}", split::shape(&tokens));
        let hit = self.lookup(&shape).ok();
        let classified_now = hit.is_none();
        let entry = hit.unwrap_or_else(|| {
            let words = Words::of(&tokens);
            entry_of(classify_tokens(tokens, &current()), words)
        });
        if classified_now {
            // By exact text too, so that a text sent again verbatim costs one lookup. A text that
            // is only ever a shape hit is not stored: one-off texts would crowd out the shapes.
            self.store(sql, entry.clone(), epoch);
        }
        if entry.search_path.is_none() {
            if classified_now {
                self.store(&shape, entry.clone(), epoch);
            }
            if let Some(q) = &quick {
                self.store(q, entry.clone(), epoch);
            }
        }
        entry
    }

    /// A cached entry, or the epoch to store a fresh one under.
    fn lookup(&self, sql: &str) -> Result<Entry, u64> {
        let Ok(mut g) = self.inner.lock() else { return Err(u64::MAX) };
        if let Some(hit) = g.young.get(sql) {
            return Ok(hit.clone());
        }
        if let Some((key, hit)) = g.old.remove_entry(sql) {
            g.insert(key, hit.clone());
            return Ok(hit);
        }
        Err(g.epoch)
    }

    fn store(&self, sql: &str, entry: Entry, epoch: u64) {
        if let Ok(mut g) = self.inner.lock()
            && g.epoch == epoch
        {
            g.insert(sql.into(), entry);
        }
    }

    /// Forgets everything: the schema the classes were computed against has changed.
    pub fn clear(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.young.clear();
            g.old.clear();
            g.epoch += 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|g| g.young.len() + g.old.len()).unwrap_or(0)
    }
}

impl Generations {
    fn insert(&mut self, key: Box<str>, entry: Entry) {
        if self.young.len() >= GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, entry);
    }
}

/// Classifies without the cache: for a schema of one session's own.
pub fn fresh(sql: &str, schema: &Schema) -> Entry {
    match split::tokenize(sql) {
        Ok(tokens) => {
            let words = Words::of(&tokens);
            entry_of(classify_tokens(tokens, schema), words)
        }
        Err(_) => entry_of(classify(sql, schema), Words::OTHER),
    }
}

fn entry_of(all: Vec<super::Classification>, words: Words) -> Entry {
    let reason = all.iter().map(|c| c.reason.as_str()).collect::<Vec<_>>().join("; ");
    let is_execute = |c: &&super::Classification| matches!(c.sql_prepared, Some(SqlPrepared::Execute { .. }));
    Entry {
        class: strongest(all.iter().map(|c| c.class)),
        class_without_execute: strongest(all.iter().filter(|c| !is_execute(c)).map(|c| c.class)),
        reason: Arc::from(reason),
        sql_prepared: all.iter().filter_map(|c| c.sql_prepared.clone()).collect(),
        search_path: all.iter().rev().find_map(|c| c.search_path.clone()),
        statements: all.len(),
        words,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas() -> (impl Fn() -> Arc<Schema>, impl Fn() -> Arc<Schema>) {
        let weak = Arc::new(Schema::from_toml_str("default = \"weak\"", "s.toml").unwrap());
        let strong = Arc::new(Schema::default());
        (move || weak.clone(), move || strong.clone())
    }

    #[test]
    fn cached_class_is_the_classified_one_until_cleared() {
        let cache = ClassCache::default();
        let (weak, strong) = schemas();
        assert_eq!(cache.get_or_classify("SELECT a FROM t", &weak).class, Class::WeakRead);
        // A hit does not look at the schema again...
        assert_eq!(cache.get_or_classify("SELECT a FROM t", &strong).class, Class::WeakRead);
        // ...which is why a schema change must clear the cache.
        cache.clear();
        assert_eq!(cache.get_or_classify("SELECT a FROM t", &strong).class, Class::StrongRead);
    }

    #[test]
    fn bounded_and_texts_in_use_survive_a_flood_of_one_off_texts() {
        let cache = ClassCache::default();
        let (weak, strong) = schemas();
        cache.get_or_classify("SELECT hot FROM t", &weak);
        for i in 0..10 * GENERATION {
            cache.get_or_classify(&format!("SELECT c{i} FROM t"), &weak);
            if i % (GENERATION / 2) == 0 {
                cache.get_or_classify("SELECT hot FROM t", &weak);
            }
            assert!(cache.len() <= 2 * GENERATION);
        }
        // Still cached: a lookup under another schema returns the class computed under `weak`.
        assert_eq!(cache.get_or_classify("SELECT hot FROM t", &strong).class, Class::WeakRead);
        // A one-off text from the start of the flood is gone and is classified afresh.
        assert_eq!(cache.get_or_classify("SELECT c0 FROM t", &strong).class, Class::StrongRead);
    }

    #[test]
    fn a_class_computed_before_a_schema_change_is_not_stored() {
        let cache = ClassCache::default();
        let (weak, strong) = schemas();
        // A session missed and read the epoch; then the schema changed while it classified.
        let epoch = cache.lookup("SELECT a FROM t").expect_err("a miss");
        cache.clear();
        cache.store("SELECT a FROM t", fresh("SELECT a FROM t", &weak()), epoch);
        assert_eq!(cache.get_or_classify("SELECT a FROM t", &strong).class, Class::StrongRead);
        // Without a change in between, the entry is kept.
        let epoch = cache.lookup("SELECT b FROM t").expect_err("a miss");
        cache.store("SELECT b FROM t", fresh("SELECT b FROM t", &weak()), epoch);
        assert_eq!(cache.get_or_classify("SELECT b FROM t", &strong).class, Class::WeakRead);
    }

    #[test]
    fn texts_that_differ_only_in_literals_share_an_entry_but_not_a_search_path() {
        let cache = ClassCache::default();
        let (weak, strong) = schemas();
        cache.get_or_classify("SELECT a FROM t WHERE id = 1 AND s = 'x' -- first", &weak);
        // Another literal, other spacing and comments: a shape hit, not a fresh classification.
        let hit = cache.get_or_classify("SELECT a  FROM t WHERE id = 22 AND s = E'y'", &strong);
        assert_eq!(hit.class, Class::WeakRead);
        // The same spacing and plain literals: found by the quick key, without the tokenizer.
        let quick = cache.get_or_classify("SELECT a FROM t WHERE id = 7 AND s = 'q''r' -- first", &strong);
        assert_eq!(quick.class, Class::WeakRead);
        // Another identifier is another shape.
        assert_eq!(cache.get_or_classify("SELECT b FROM t WHERE id = 1 AND s = 'x'", &strong).class, Class::StrongRead);
        // The value being set is a literal that matters.
        cache.get_or_classify("SET search_path TO 'alpha'", &weak);
        let b = cache.get_or_classify("SET search_path TO 'beta'", &weak);
        assert_eq!(b.search_path, Some(SearchPathChange::Set(vec!["beta".into()])));
    }

    #[test]
    fn long_texts_are_classified_but_not_kept() {
        let cache = ClassCache::default();
        let (weak, strong) = schemas();
        let values = vec!["(1, 'x')"; 3000].join(", ");
        let bulk = format!("INSERT INTO t (a, b) VALUES {values}");
        assert!(bulk.len() > CACHEABLE_BYTES);
        assert_eq!(cache.get_or_classify(&bulk, &weak).class, Class::WeakWrite);
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.get_or_classify(&bulk, &strong).class, Class::StrongWrite);
    }
}

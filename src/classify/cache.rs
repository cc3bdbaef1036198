//! Classes of recently seen SQL texts. Applications send the same texts again and again, and
//! parsing is the expensive part of classification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Class, classify, combined};
use crate::schema::Schema;

const ENTRIES: usize = 4096;

#[derive(Default)]
pub struct ClassCache {
    map: Mutex<HashMap<Box<str>, (Class, Arc<str>)>>,
}

impl ClassCache {
    /// The combined class of `sql` and the reasons, from the cache or freshly classified.
    pub fn get_or_classify(&self, sql: &str, schema: &Schema) -> (Class, Arc<str>) {
        if let Some(hit) = self.map.lock().ok().and_then(|m| m.get(sql).cloned()) {
            return hit;
        }
        let all = classify(sql, schema);
        let class = combined(&all);
        let reason: Arc<str> = Arc::from(all.iter().map(|c| c.reason.as_str()).collect::<Vec<_>>().join("; "));
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= ENTRIES {
                // Crude but bounded: a workload with more distinct texts than this re-parses.
                m.clear();
            }
            m.insert(sql.into(), (class, reason.clone()));
        }
        (class, reason)
    }

    /// Forgets everything: the schema the classes were computed against has changed.
    pub fn clear(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_class_is_the_classified_one_until_cleared() {
        let cache = ClassCache::default();
        let weak = Schema::from_toml_str("default = \"weak\"", "s.toml").unwrap();
        let strong = Schema::default();
        assert_eq!(cache.get_or_classify("SELECT a FROM t", &weak).0, Class::WeakRead);
        // A hit does not look at the schema again...
        assert_eq!(cache.get_or_classify("SELECT a FROM t", &strong).0, Class::WeakRead);
        // ...which is why a schema change must clear the cache.
        cache.clear();
        assert_eq!(cache.get_or_classify("SELECT a FROM t", &strong).0, Class::StrongRead);
    }
}

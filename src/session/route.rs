//! The session's one routing point. Every statement passes through here before it goes anywhere.
//!
//! Each Query and Parse is classified (strong or weak, see `classify`) against the node's schema;
//! the class is counted in a metric and logged at debug level. Statements pgmix refuses (client
//! two-phase commit) are turned into an error here. The class decides the rest: in a cluster the
//! session sends strong statements to the strong path (`session::strong`); the others run on the
//! local Postgres.
//!
//! SQL-level prepared statements (`PREPARE name AS ...`, `EXECUTE name`) live in the session, so
//! the router keeps the class of each by name: an EXECUTE has the class of what it runs. A name
//! prepared again without DEALLOCATE keeps the stronger of its classes (Postgres refuses the
//! second PREPARE, but pgmix cannot tell whether the first one succeeded). An EXECUTE in a Parse
//! stays a strong write: the statement it names may be replaced before the Parse is executed.
//!
//! Unqualified table names are resolved along the schema file's search_path. A session whose own
//! search_path resolves differently may mean other tables by the same names, so whenever pgmix
//! cannot be sure that the session's path resolves as the file's does, every weak class of that
//! session is made strong: safe, if pessimistic. The rule:
//!
//! - pgmix knows the session's path at start-up: it asks Postgres once per backend connection,
//!   so server, database and role defaults and start-up options are all accounted for.
//! - The path is *sure* when it resolves like the file's: `"$user"` stands for the session's role
//!   and counts only if a schema of that name exists, and schemas that do not exist are skipped,
//!   as in Postgres. This is re-judged whenever the catalog is re-read (a schema created later).
//! - `SET search_path`, `RESET`, or `DISCARD ALL`, alone in a Query between transactions, give a
//!   known path again: the value set, or the start-up value (which may itself not be sure).
//! - Anything else that may change it makes the path unknown until then: a SET inside a
//!   transaction or a Parse (it can be rolled back, or run later), `SET LOCAL`, `SET SCHEMA`,
//!   `set_config()`, SET ROLE and SET SESSION AUTHORIZATION (they change what `"$user"` means),
//!   and any user code pgmix cannot see into: DO, CALL, functions that are not built-in, and
//!   writes to tables with user triggers. Functions (and trigger functions) that the schema file
//!   lists under `[functions] weak` are trusted not to change it.
//!
//! What the rule cannot see is user code that runs without being named in the statement:
//! column DEFAULTs, operators, casts and row-level security policies that call a function which
//! changes the session's search_path. Postgres re-analyses a prepared statement when the
//! search_path has changed since its Parse, so a Bind is routed by the class stored at Parse
//! strengthened by the same rule, judged at the Bind (`bound_class`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::temporary::Temporary;
use crate::classify::temporary::{TempStatement, temp_statement};
use crate::classify::{Class, SearchPathChange, SqlPrepared, Words, strongest};
use crate::metrics::Metrics;
use crate::schema::Schema;
use crate::schema::live::LiveSchema;

/// Where a statement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Forward to this node's local Postgres.
    Local,
    /// Answer with an error instead of running it.
    Refuse,
}

/// Per-session routing decisions.
pub struct Router {
    schema: Arc<LiveSchema>,
    metrics: Arc<Metrics>,
    /// SQL-level prepared statements of this session, by name, with their class.
    sql_prepared: HashMap<String, Class>,
    /// The session's search_path, when pgmix knows it.
    path: Option<Vec<String>>,
    /// What RESET and DISCARD ALL return to.
    start_path: Option<Vec<String>>,
    /// What `"$user"` means.
    role: String,
    /// Whether `path` resolves like the file's path, judged against this generation of the
    /// schema.
    sure: Option<(u64, bool)>,
    /// A statement prepared in this session (Parse, or SQL PREPARE) runs user code that may
    /// change the search_path whenever it is executed, which pgmix does not see.
    prepared_user_code: bool,
    /// The client_encoding, as the backend last reported it; None while it is UTF8 or SQL_ASCII,
    /// the encodings whose bytes pgmix reads as they are.
    foreign_encoding: Option<String>,
    /// standard_conforming_strings is off: backslashes escape inside '...'.
    backslash_escapes: bool,
    /// In a cluster: each prepared statement's class, Parse message and text, by name, so that
    /// a Bind is routed by its statement's class and the statement can be prepared on the
    /// leader too. None on a node of its own.
    parsed: Option<HashMap<Bytes, Parsed>>,
    /// Parse messages remembered so far.
    parses: u64,
    /// Custom (dotted) settings the session set, which Postgres lists nowhere: a relay session
    /// on the leader is given them too.
    custom: std::collections::BTreeSet<String>,
    /// The temporary relations this session made, and the schema they were last put in:
    /// (schema generation, their version, the schema with them).
    temporary: Temporary,
    overlay: Option<(u64, u64, Arc<Schema>)>,
}

/// A statement a Parse prepared.
pub struct Parsed {
    pub class: Class,
    pub words: Words,
    pub message: Bytes,
    /// Which Parse of the session it was: a name prepared again is another statement.
    pub seq: u64,
}

/// What the router decided about one statement text.
#[derive(Debug, Clone)]
pub struct Decision {
    pub class: Class,
    pub route: Route,
    pub reason: Arc<str>,
    pub words: Words,
}

impl Router {
    /// `search_path`: the session's path as Postgres reported it at start-up; `role`: the role
    /// the session logged in as.
    pub fn new(schema: Arc<LiveSchema>, metrics: Arc<Metrics>, search_path: Option<&str>, role: &str) -> Self {
        let start_path = search_path.and_then(parse_path_param);
        Self {
            schema,
            metrics,
            sql_prepared: HashMap::new(),
            path: start_path.clone(),
            start_path,
            role: role.to_owned(),
            sure: None,
            prepared_user_code: false,
            foreign_encoding: None,
            backslash_escapes: false,
            parsed: None,
            parses: 0,
            custom: std::collections::BTreeSet::new(),
            temporary: Temporary::default(),
            overlay: None,
        }
    }

    /// Keep what Parse messages prepared (a node in a cluster needs it, see `parsed`).
    pub fn track_parses(&mut self) {
        self.parsed = Some(HashMap::new());
    }

    fn remember_parsed(&mut self, name: &[u8], msg: &[u8], class: Class, words: Words) {
        if let Some(map) = &mut self.parsed {
            self.parses += 1;
            let p = Parsed { class, words, message: Bytes::copy_from_slice(msg), seq: self.parses };
            map.insert(Bytes::copy_from_slice(name), p);
        }
    }

    /// The statement `name` prepared, when known.
    pub fn parsed(&self, name: &[u8]) -> Option<&Parsed> {
        self.parsed.as_ref()?.get(name)
    }

    /// The custom settings the session set (see `custom`).
    pub fn custom_settings(&self) -> Vec<String> {
        self.custom.iter().cloned().collect()
    }

    /// The class a Bind of statement `name` runs with: its class at Parse, made strong when the
    /// session's search_path is not sure now. Postgres analyses a prepared statement again when
    /// the search_path changed since its Parse, so its tables may be others than at Parse.
    pub fn bound_class(&mut self, name: &[u8]) -> Option<Class> {
        let class = self.parsed(name)?.class;
        if self.path_is_sure() {
            return Some(class);
        }
        Some(match class {
            Class::WeakRead => Class::StrongRead,
            Class::WeakWrite => Class::StrongWrite,
            other => other,
        })
    }

    /// The words of a text, for a text pgmix reads again (a strong unit's statements).
    pub fn words(&self, raw: &[u8]) -> Words {
        let (sql, _) = self.text(raw);
        self.schema.classify(&sql).words
    }

    /// Whether the session's path is known and resolves like the schema file's.
    fn path_is_sure(&mut self) -> bool {
        let Some(path) = &self.path else { return false };
        if self.prepared_user_code {
            return false;
        }
        // One atomic load per statement; the schema is looked at only when it changed.
        let generation = self.schema.generation();
        if let Some((judged, sure)) = self.sure
            && judged == generation
        {
            return sure;
        }
        let schema = self.schema.current();
        let sure = resolves_alike(path, &schema.search_path, &self.role, &schema);
        self.sure = Some((generation, sure));
        sure
    }

    /// After DDL has finished in this session: the catalog may have changed.
    pub fn ddl_done(&self) {
        self.schema.refresh_in_background();
    }

    /// A setting the backend reported (at start-up or after a SET) that decides how pgmix must
    /// read statement text: the client_encoding, and standard_conforming_strings.
    pub fn set_parameter(&mut self, name: &[u8], value: &str) {
        match name {
            b"client_encoding" => {
                let utf8 = ["UTF8", "UTF-8", "UNICODE", "SQL_ASCII"].iter().any(|n| n.eq_ignore_ascii_case(value));
                self.foreign_encoding = (!utf8).then(|| value.to_owned());
            }
            b"standard_conforming_strings" => self.backslash_escapes = !value.eq_ignore_ascii_case("on"),
            _ => {}
        }
    }

    /// The statement text as pgmix can read it, and why its class cannot be trusted when it
    /// cannot. Text in the client's encoding that is not plain ASCII is not necessarily what it
    /// looks like as UTF-8 (in SJIS or BIG5 an ASCII byte such as a backslash can be half of a
    /// character), so it is read with its undecodable bytes masked, which keeps a refusal
    /// recognisable, and its class is made strong: never weak, never skipped.
    fn text<'a>(&self, raw: &'a [u8]) -> (Cow<'a, str>, Option<String>) {
        // With standard_conforming_strings off, a backslash in '...' escapes the next character,
        // which pgmix's tokenizer does not do: where the strings end is not known.
        if self.backslash_escapes && raw.contains(&b'\\') {
            let why = "standard_conforming_strings is off and the text holds a backslash".to_owned();
            return (String::from_utf8_lossy(raw), Some(why));
        }
        if raw.is_ascii() {
            // ASCII reads the same in every encoding Postgres accepts from clients.
            return (Cow::Borrowed(std::str::from_utf8(raw).unwrap_or_default()), None);
        }
        match (&self.foreign_encoding, std::str::from_utf8(raw)) {
            (None, Ok(text)) => (Cow::Borrowed(text), None),
            (None, Err(_)) => (String::from_utf8_lossy(raw), Some("the text is not valid UTF-8".to_owned())),
            (Some(enc), _) => (
                String::from_utf8_lossy(raw),
                Some(format!("the text is in client_encoding {enc}, which pgmix does not decode")),
            ),
        }
    }

    /// `at_rest`: a simple Query sent between transactions with nothing outstanding; None for a
    /// Parse (run later, perhaps never, perhaps many times).
    fn decide(&mut self, raw: &[u8], at_rest: Option<bool>) -> Decision {
        let (sql, unreadable) = self.text(raw);
        let sql = sql.as_ref();
        let entry = self.classify_text(sql);
        let mut reason = entry.reason;
        let mut class = entry.class;
        if entry.statements == 1 {
            self.temporary_statement(sql, &mut class, &mut reason);
        } else if (!self.temporary.is_empty() || sql.to_ascii_lowercase().contains("temp"))
            && let Some(texts) = crate::classify::statement_texts(sql)
        {
            // A temporary table made by one statement of a Query is the next ones' too.
            let mut strongest_seen: Option<(Class, Arc<str>)> = None;
            for text in &texts {
                let e = self.classify_text(text);
                let (mut c, mut r) = (e.class, e.reason);
                self.temporary_statement(text, &mut c, &mut r);
                if strongest_seen.as_ref().is_none_or(|(s, _)| strongest([*s, c]) != *s) {
                    strongest_seen = Some((c, r));
                }
            }
            if let Some((c, r)) = strongest_seen {
                class = c;
                reason = r;
            }
        }
        if !entry.sql_prepared.is_empty() {
            let executed = self.apply(&entry.sql_prepared);
            if at_rest.is_some() {
                class = strongest(std::iter::once(entry.class_without_execute).chain(executed));
            }
        }
        let differed = !self.path_is_sure();
        // A prepared statement whose text may change the path does so at each execution.
        if matches!(entry.search_path, Some(SearchPathChange::Unknown))
            && (at_rest.is_none() || !entry.sql_prepared.is_empty())
        {
            self.prepared_user_code = true;
        }
        if let Some(change) = &entry.search_path {
            // Only a change that cannot be rolled back or deferred gives a known path.
            let settled = at_rest == Some(true) && entry.statements == 1;
            self.path = match change {
                SearchPathChange::Set(path) if settled => Some(path.clone()),
                SearchPathChange::Reset if settled => self.start_path.clone(),
                _ => None,
            };
            self.sure = None;
        }
        // Statements after a change in the same text were classified with the file's path.
        let changed_mid_text = entry.search_path.is_some() && entry.statements > 1;
        if (differed || (changed_mid_text && !self.path_is_sure()))
            && matches!(class, Class::WeakRead | Class::WeakWrite)
        {
            class = if class == Class::WeakRead { Class::StrongRead } else { Class::StrongWrite };
            Metrics::inc(&self.metrics.strengthened_for_search_path_total);
            reason = Arc::from(format!(
                "{reason}; but this session's search_path may resolve differently from the schema file's, so its unqualified table names may mean other tables: treated as strong"
            ));
        }
        if let Some(why) = unreadable {
            // The parse may have put statement boundaries in the wrong places, so a refused
            // statement could hide inside what looked like a string: look for its words anywhere.
            if may_hold_refused(sql) {
                class = Class::Refused;
                reason = Arc::from(format!(
                    "{why}, so pgmix cannot tell where its statements end, and it may hold client two-phase commit, which pgmix refuses"
                ));
            } else if !matches!(class, Class::Refused | Class::Ddl | Class::StrongWrite) {
                class = Class::StrongWrite;
                reason = Arc::from(format!("{reason}; but {why}: treated as a strong write"));
            }
        }
        self.metrics.count_class(class);
        tracing::debug!(class = class.as_str(), %reason, sql, "classified");
        if class == Class::Local && at_rest.is_some() {
            use crate::classify::words::{CustomSetting, custom_setting};
            match custom_setting(sql) {
                Some(CustomSetting::Set(name)) => {
                    self.custom.insert(name);
                }
                Some(CustomSetting::Reset(None)) => self.custom.clear(),
                Some(CustomSetting::Reset(Some(name))) => {
                    self.custom.remove(&name);
                }
                None => {}
            }
        }
        let route = if class == Class::Refused { Route::Refuse } else { Route::Local };
        Decision { class, route, reason, words: entry.words }
    }

    /// `sql` classified against the schema, with this session's temporary relations in it
    /// when it names one (not cached: the cache is the node's, shared by every session).
    fn classify_text(&mut self, sql: &str) -> crate::classify::cache::Entry {
        if self.temporary.mentioned(sql) {
            crate::classify::cache::fresh(sql, &self.with_temporary())
        } else {
            self.schema.classify(sql)
        }
    }

    /// The schema with this session's temporary relations in it.
    fn with_temporary(&mut self) -> Arc<Schema> {
        let key = (self.schema.generation(), self.temporary.version());
        if let Some((g, v, schema)) = &self.overlay
            && (*g, *v) == key
        {
            return schema.clone();
        }
        let mut schema = (*self.schema.current()).clone();
        schema.temporary = self.temporary.names();
        let schema = Arc::new(schema);
        self.overlay = Some((key.0, key.1, schema.clone()));
        schema
    }

    /// Follows what a statement does to the session's temporary relations; one that changes
    /// only them runs here.
    fn temporary_statement(&mut self, sql: &str, class: &mut Class, reason: &mut Arc<str>) {
        let first = sql.trim_start().get(..8).unwrap_or_default().to_ascii_uppercase();
        let may = first.starts_with("CREATE") || first.starts_with("DISCARD");
        if !may && (self.temporary.is_empty() || !["DROP", "ALTER", "TRUNCATE"].iter().any(|w| first.starts_with(w))) {
            return;
        }
        let Some(statement) = crate::classify::split::tokenize(sql).ok().and_then(|t| temp_statement(&t)) else {
            return;
        };
        match statement {
            TempStatement::Create { name, drop_at_commit } => {
                self.temporary.made(name, drop_at_commit);
                *class = Class::Local;
            }
            TempStatement::Change { targets, drops, renamed } if targets.iter().all(|t| self.temporary.contains(t)) => {
                *class = Class::Local;
                *reason = Arc::from("changes only this session's temporary relations");
                if drops {
                    self.temporary.dropped(&targets);
                }
                if let Some(to) = renamed {
                    self.temporary.renamed(&targets[0], to);
                }
            }
            TempStatement::Change { .. } => {}
            TempStatement::Discard => self.temporary.discard(),
        }
    }

    /// The backend reported an error, or a ROLLBACK completed: what the session made since it
    /// was last idle may not be there.
    pub fn backend_failed(&mut self) {
        self.temporary.failed();
    }

    /// The session is idle on its own backend.
    pub fn backend_idle(&mut self) {
        self.temporary.idle();
    }

    /// A transaction ran on the strong path.
    pub fn ran_elsewhere(&mut self) {
        self.temporary.ran_elsewhere();
    }

    /// A simple-protocol Query (possibly several statements).
    pub fn route_query(&mut self, sql: &[u8], at_rest: bool) -> Decision {
        self.decide(sql, Some(at_rest))
    }

    /// An extended-protocol Parse (`msg`, whole) of statement `name`; the decision is kept
    /// with the prepared statement.
    pub fn route_parse(&mut self, name: &[u8], sql: &[u8], msg: &[u8]) -> Decision {
        let decided = self.decide(sql, None);
        self.remember_parsed(name, msg, decided.class, decided.words);
        decided
    }

    /// A fast-path FunctionCall message: it names a function by OID, which pgmix does not look
    /// up, and large-object writes come this way, so it is a strong write (the safe default).
    pub fn route_function_call(&mut self) {
        self.metrics.count_class(Class::StrongWrite);
        tracing::debug!(class = Class::StrongWrite.as_str(), "fast-path function call: treated as a strong write");
    }

    /// Applies PREPARE and DEALLOCATE in order; returns the class of each EXECUTE (its prepared
    /// statement's and its parameters', or a strong write when the name is unknown).
    fn apply(&mut self, effects: &[SqlPrepared]) -> Vec<Class> {
        let mut executed = Vec::new();
        for e in effects {
            match e {
                SqlPrepared::Prepare(name, class) => {
                    let c = self.sql_prepared.get(name).map_or(*class, |old| strongest([*old, *class]));
                    self.sql_prepared.insert(name.clone(), c);
                }
                SqlPrepared::Execute { name, params } => {
                    let runs = self.sql_prepared.get(name).copied().unwrap_or(Class::StrongWrite);
                    executed.push(strongest([runs, *params]));
                }
                SqlPrepared::Deallocate(Some(name)) => {
                    self.sql_prepared.remove(name);
                }
                SqlPrepared::Deallocate(None) => self.sql_prepared.clear(),
            }
        }
        executed
    }
}

/// Whether text may hold PREPARE TRANSACTION, COMMIT PREPARED or ROLLBACK PREPARED anywhere.
fn may_hold_refused(sql: &str) -> bool {
    let upper = sql.to_ascii_uppercase();
    upper.contains("PREPARED") || (upper.contains("PREPARE") && upper.contains("TRANSACTION"))
}

/// Whether unqualified names resolve along `session` as along `file`: both with `"$user"` read as
/// `role` and, when the catalog is known, without the schemas that do not exist.
fn resolves_alike(session: &[String], file: &[String], role: &str, schema: &Schema) -> bool {
    let effective = |path: &[String]| -> Vec<String> {
        path.iter()
            .map(|s| if s == "$user" { role.to_owned() } else { s.clone() })
            .filter(|s| schema.namespaces.as_ref().is_none_or(|ns| ns.contains(s)))
            .collect()
    };
    session == file || effective(session) == effective(file)
}

/// A search_path setting (`a, "B", public`) as Postgres folds it; None when it holds anything
/// pgmix does not read with confidence.
fn parse_path_param(v: &str) -> Option<Vec<String>> {
    v.split(',')
        .map(|item| {
            let item = item.trim();
            match item.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                Some(q) if !q.is_empty() && !q.contains('"') => Some(q.to_owned()),
                Some(_) => None,
                None if !item.is_empty()
                    && item.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !item.starts_with(|c: char| c.is_ascii_digit()) =>
                {
                    Some(item.to_ascii_lowercase())
                }
                None => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_path_param;

    #[test]
    fn search_path_parameters_fold_like_postgres_or_are_not_trusted() {
        let v = |s: &[&str]| Some(s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(parse_path_param("public"), v(&["public"]));
        assert_eq!(parse_path_param("App, \"Mixed\" ,public"), v(&["app", "Mixed", "public"]));
        assert_eq!(parse_path_param("\"$user\", public"), v(&["$user", "public"]));
        assert_eq!(parse_path_param("a b"), None);
        assert_eq!(parse_path_param(""), None);
        assert_eq!(parse_path_param("$user"), None);
    }
}

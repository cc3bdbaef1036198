//! The decision: from what a statement touches (see `walk`) and the schema, its class and why.

use std::collections::BTreeSet;

use sqlparser::ast::Statement;

use super::walk::{self, Collected, WriteKind};
use super::{Class, Classification, Kind, SearchPathChange, SqlPrepared, functions};
use crate::schema::{Consistency, Schema, TableName, TableRule};

pub fn statement(ast: &Statement, schema: &Schema) -> Classification {
    match ast {
        Statement::Prepare { name, statement: inner, .. } => {
            let mut c = statement(inner, schema);
            c.reason = format!("PREPARE {}: {}", walk::fold(name), c.reason);
            let class = c.class;
            c.with_sql_prepared(SqlPrepared::Prepare(walk::fold(name), class))
        }
        Statement::Execute { name: Some(name), .. }
            if let [part] = name.0.as_slice()
                && part.as_ident().is_some() =>
        {
            let params = data(&walk::collect(ast), schema).class;
            let name = part.as_ident().map(walk::fold).unwrap_or_default();
            Classification::simple(
                Kind::Write,
                Class::StrongWrite,
                "EXECUTE of an SQL-level prepared statement: its text is not in this statement; a strong write unless the session knows its PREPARE",
            )
            .with_sql_prepared(SqlPrepared::Execute { name, params })
        }
        Statement::Execute { .. } => Classification::simple(
            Kind::Write,
            Class::StrongWrite,
            "EXECUTE of an SQL-level prepared statement: its text is not in this statement; treated as a strong write",
        ),
        Statement::Explain { analyze: true, statement: inner, .. } => {
            let mut c = statement(inner, schema);
            c.reason = format!("EXPLAIN ANALYZE runs the statement: {}", c.reason);
            c
        }
        Statement::Explain { .. } | Statement::ExplainTable { .. } => {
            Classification::simple(Kind::Utility, Class::Local, "EXPLAIN without ANALYZE only plans")
        }
        Statement::Fetch { .. } | Statement::Close { .. } => Classification::simple(
            Kind::Utility,
            Class::Local,
            "cursor operation; the cursor's query was classified at DECLARE",
        ),
        Statement::Call(_) => {
            let mut c = Classification::simple(
                Kind::Write,
                Class::StrongWrite,
                "CALL runs a procedure that may write; treated as a strong write",
            );
            c.search_path = Some(SearchPathChange::Unknown);
            c
        }
        Statement::Lock(_) | Statement::LockTables { .. } => {
            let c = walk::collect(ast);
            let strong = c.relations.iter().find(|r| schema.resolve(r).1.has_strong());
            match strong {
                Some(t) => Classification::simple(
                    Kind::Write,
                    Class::StrongWrite,
                    format!("locks table {t}, which holds strong data"),
                ),
                None => Classification::simple(Kind::Utility, Class::Local, "locks only weak tables, on this node"),
            }
        }
        Statement::Query(_)
        | Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_)
        | Statement::Truncate(_)
        | Statement::Copy { .. }
        | Statement::Declare { .. } => data(&walk::collect(ast), schema),
        _ => Classification::simple(
            Kind::Write,
            Class::StrongWrite,
            "statement kind not handled by the classifier; treated as a strong write, the safe default",
        ),
    }
}

struct Resolved {
    /// As the statement named it, for matching qualifiers.
    written: TableName,
    display: String,
    rule: TableRule,
}

fn display(name: &TableName, schema: &Schema) -> String {
    match &name.schema {
        Some(s) if *s == schema.search_path[0] => TableName::new(None, &name.name).to_string(),
        _ => name.to_string(),
    }
}

/// Reads, writes, functions and locks of a DML or query statement.
pub fn data(c: &Collected, schema: &Schema) -> Classification {
    if let Some(word) = &c.reserved_as_name {
        return Classification::simple(
            Kind::Write,
            Class::StrongWrite,
            format!(
                "the parser read the reserved word {word} as a name, which Postgres rejects: not understood, so treated as a strong write"
            ),
        );
    }
    if c.creates_table {
        return Classification::simple(Kind::Ddl, Class::Ddl, "SELECT ... INTO creates a table: DDL is always strong");
    }
    let mut rels: Vec<Resolved> = Vec::new();
    for r in &c.relations {
        if (r.schema.is_none() && c.ctes.contains(&r.name)) || c.table_functions.contains(r) {
            continue;
        }
        if rels.iter().any(|x| &x.written == r) {
            continue;
        }
        let (name, rule) = schema.resolve(r);
        rels.push(Resolved { written: r.clone(), display: display(&name, schema), rule });
    }
    let find = |q: &[String]| -> Option<Vec<&Resolved>> {
        let target = match q {
            [] => return Some(rels.iter().collect()),
            [t] => {
                if let Some(a) = c.aliases.get(t) {
                    a.clone()
                } else if c.ctes.contains(t) {
                    return Some(Vec::new());
                } else {
                    TableName::new(None, t)
                }
            }
            [.., s, t] => TableName::new(Some(s), t),
        };
        let hits: Vec<&Resolved> = rels
            .iter()
            .filter(|r| r.written == target || (target.schema.is_none() && r.written.name == target.name))
            .collect();
        (!hits.is_empty()).then_some(hits)
    };

    let mut reads = BTreeSet::new();
    let mut strong_read: Option<String> = None;
    // Unqualified names count against the tables visible where they stand; CTE names are not
    // tables (their own bodies were walked).
    let visible =
        |names: &[TableName]| -> Vec<&Resolved> { rels.iter().filter(|r| names.contains(&r.written)).collect() };
    for (q, col, scope) in &c.columns {
        // A whole-row reference (`u` for an alias, `app.users` for a table, as in `row_to_json(u)`)
        // reads every column of that table.
        let whole_row: Vec<&Resolved> = match q.as_slice() {
            [] if c.aliases.contains_key(col) || rels.iter().any(|r| r.written.name == *col) => {
                find(std::slice::from_ref(col)).unwrap_or_default()
            }
            [.., s] => {
                rels.iter().filter(|r| r.written.name == *col && r.written.schema.as_deref() == Some(s)).collect()
            }
            _ => Vec::new(),
        };
        for r in whole_row {
            reads.insert(format!("{}.*", r.display));
            if strong_read.is_none() && r.rule.has_strong() {
                strong_read = Some(format!("reads whole rows of {}, which has strong columns", r.display));
            }
        }
        // An unresolvable qualifier (a row variable, a function result) counts against every table.
        let targets = if q.is_empty() { visible(scope) } else { find(q).unwrap_or_else(|| rels.iter().collect()) };
        for r in targets {
            reads.insert(format!("{}.{col}", r.display));
            if strong_read.is_none() && r.rule.column(col) == Consistency::Strong {
                strong_read = Some(format!("reads strong column {}.{col}", r.display));
            }
        }
    }
    for (q, scope) in &c.wildcards {
        let targets = match q {
            None => visible(scope),
            Some(q) => find(q).unwrap_or_else(|| rels.iter().collect()),
        };
        for r in targets {
            reads.insert(format!("{}.*", r.display));
            if strong_read.is_none() && r.rule.has_strong() {
                strong_read = Some(format!("reads every column of {}, which has strong columns", r.display));
            }
        }
    }
    if strong_read.is_none()
        && let Some(r) = rels.iter().find(|r| r.rule.consistency == Consistency::Strong)
    {
        strong_read = Some(format!("touches rows of strong table {}", r.display));
    }

    let mut writes = BTreeSet::new();
    let mut strong_write: Option<String> = None;
    for (t, kind) in &c.writes {
        let (name, rule) = schema.resolve(t);
        let d = display(&name, schema);
        match kind {
            WriteKind::Update(cols) => {
                for col in cols {
                    writes.insert(format!("{d}.{col}"));
                    if strong_write.is_none() && rule.column(col) == Consistency::Strong {
                        strong_write = Some(format!("writes strong column {d}.{col}"));
                    }
                }
            }
            WriteKind::Insert(cols) if !cols.is_empty() => {
                writes.extend(cols.iter().map(|col| format!("{d}.{col}")));
            }
            _ => {
                writes.insert(format!("{d}.*"));
            }
        }
        if strong_write.is_none() && !matches!(kind, WriteKind::Update(_)) && rule.has_strong() {
            let verb = match kind {
                WriteKind::Insert(_) => "inserts rows into",
                WriteKind::Delete => "deletes rows of",
                _ => "merges rows into",
            };
            strong_write = Some(format!("{verb} {d}, which has strong columns"));
        }
    }
    let mut writing_function = false;
    // User code may run set_config('search_path', ...) or SET: the session's path is then unknown.
    // Functions the schema file lists as weak are trusted not to (see `[functions]`).
    let mut runs_user_code = c.functions.iter().any(|f| f == "set_config");
    for (t, _) in &c.writes {
        let (name, _) = schema.resolve(t);
        if let Some(fs) = schema.trigger_functions.get(&name) {
            runs_user_code |= fs.iter().any(|f| !schema.weak_functions.contains(f));
        }
    }
    for f in &c.functions {
        if schema.weak_functions.contains(f) {
            continue;
        }
        runs_user_code |= !functions::writes(f) && !functions::read_only(f);
        if functions::writes(f) {
            writing_function = true;
            strong_write.get_or_insert_with(|| format!("calls {f}(), which writes outside any weak table"));
        } else if !functions::read_only(f) {
            writing_function = true;
            strong_write.get_or_insert_with(|| {
                format!("calls {f}(), which may write (a volatile user function?); list it under [functions] weak in the schema file if it does not touch strong data")
            });
        }
    }
    if c.has_lock {
        let locked: Vec<&Resolved> = if c.locks.iter().any(Option::is_none) {
            rels.iter().collect()
        } else {
            c.locks
                .iter()
                .flatten()
                .filter_map(|t| find(std::slice::from_ref(&t.name)).map(|v| v.into_iter()))
                .flatten()
                .collect()
        };
        if let Some(r) = locked.iter().find(|r| r.rule.has_strong()) {
            strong_write.get_or_insert_with(|| {
                format!("locks rows of {}, which has strong columns (FOR UPDATE/SHARE)", r.display)
            });
        }
    }

    let kind = if !c.writes.is_empty() || writing_function { Kind::Write } else { Kind::Read };
    let (class, reason) = match (strong_write, strong_read, c.writes.is_empty()) {
        (Some(w), _, _) => (Class::StrongWrite, w),
        (None, Some(r), false) => (Class::StrongWrite, format!("a weak write that {r}: it runs on the strong path")),
        (None, None, false) => (Class::WeakWrite, "writes only weak columns".to_owned()),
        (None, Some(r), true) => (Class::StrongRead, r),
        // `SELECT current_setting(...)`, `SELECT 1`: nothing here is data, so it does not decide
        // where a transaction runs, and it runs the same on any node.
        (None, None, true) if rels.is_empty() && !c.has_lock => (Class::Local, "reads no table".to_owned()),
        (None, None, true) => (Class::WeakRead, "reads only weak columns".to_owned()),
    };
    let search_path = runs_user_code.then_some(SearchPathChange::Unknown);
    Classification { kind, class, reads, writes, reason, tx: None, sql_prepared: None, search_path }
}

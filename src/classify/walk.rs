//! One pass over a parsed statement (sqlparser's `Visitor`) collecting everything the decision
//! needs: relations and their aliases, column references, wildcards, function calls, write
//! targets (also inside data-modifying CTEs), and row locks. Nothing is decided here.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::rc::Rc;

use sqlparser::ast::{
    AssignmentTarget, CopySource, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Insert,
    ObjectName, OnConflictAction, OnInsert, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    Statement, TableFactor, TableObject, TableWithJoins, UpdateTableFromKind, Visit, Visitor,
};

use crate::schema::TableName;

pub fn fold(id: &Ident) -> String {
    if id.quote_style.is_some() { id.value.clone() } else { id.value.to_lowercase() }
}

fn idents(name: &ObjectName) -> Vec<String> {
    name.0.iter().map(|p| p.as_ident().map(fold).unwrap_or_default()).collect()
}

pub fn table_name(name: &ObjectName) -> TableName {
    let parts = idents(name);
    match parts.as_slice() {
        [t] => TableName { schema: None, name: t.clone() },
        [.., s, t] => TableName { schema: Some(s.clone()), name: t.clone() },
        [] => TableName { schema: None, name: String::new() },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteKind {
    /// Inserts rows; the listed columns, or all of them when empty.
    Insert(Vec<String>),
    /// Changes these columns of existing rows.
    Update(Vec<String>),
    /// Deletes rows (DELETE, TRUNCATE).
    Delete,
    /// MERGE may insert, update and delete.
    Merge,
}

#[derive(Debug, Default)]
pub struct Collected {
    pub relations: Vec<TableName>,
    pub aliases: HashMap<String, TableName>,
    pub ctes: HashSet<String>,
    /// (qualifier parts, column, tables an unqualified column may belong to).
    pub columns: Vec<(Vec<String>, String, Rc<Vec<TableName>>)>,
    /// Wildcards: `t.*` with its qualifier, or `*` with the tables of its FROM.
    pub wildcards: Vec<(Option<Vec<String>>, Vec<TableName>)>,
    /// Name scopes: the tables each enclosing SELECT/UPDATE/DELETE/INSERT/MERGE brings.
    scopes: Vec<Scope>,
    /// `visible()` for the current scope stack, shared by the identifiers within it.
    visible_now: Option<Rc<Vec<TableName>>>,
    pub functions: Vec<String>,
    pub writes: Vec<(TableName, WriteKind)>,
    /// Row locks (FOR UPDATE/SHARE); `Some(t)` when restricted with OF.
    pub locks: Vec<Option<TableName>>,
    pub has_lock: bool,
    /// Names in FROM that are set-returning function calls, not tables.
    pub table_functions: Vec<TableName>,
    /// SELECT ... INTO creates a table.
    pub creates_table: bool,
    /// An unquoted word that Postgres reserves, where sqlparser took it for a name (`SELECT FROM
    /// FROM`): Postgres rejects such text, so the parse cannot be trusted.
    pub reserved_as_name: Option<String>,
}

/// The tables one clause makes visible to unqualified column names.
#[derive(Debug)]
struct Scope {
    tables: Vec<TableName>,
    /// An INSERT target is visible in RETURNING and ON CONFLICT, but not inside its source query.
    opaque: bool,
    /// A query's own scope (all its SELECTs) serves only its ORDER BY/LIMIT; the SELECTs inside
    /// it have scopes of their own.
    query: bool,
}

fn from_tables(from: &[TableWithJoins], out: &mut Vec<TableName>) {
    for t in from {
        factor_tables(&t.relation, out);
        for j in &t.joins {
            factor_tables(&j.relation, out);
        }
    }
}

fn body_tables(body: &SetExpr, out: &mut Vec<TableName>) {
    match body {
        SetExpr::Select(s) => from_tables(&s.from, out),
        SetExpr::SetOperation { left, right, .. } => {
            body_tables(left, out);
            body_tables(right, out);
        }
        SetExpr::Query(q) => body_tables(&q.body, out),
        _ => {}
    }
}

fn factor_tables(f: &TableFactor, out: &mut Vec<TableName>) {
    match f {
        TableFactor::Table { name, .. } => out.push(table_name(name)),
        TableFactor::NestedJoin { table_with_joins, .. } => from_tables(std::slice::from_ref(table_with_joins), out),
        _ => {}
    }
}

impl Collected {
    /// Tables an unqualified column at this point may belong to: the innermost scope and every
    /// enclosing one it may correlate with. Without a catalog the classifier cannot tell which of
    /// them has the column, so it counts it against all of them (the safe side).
    fn visible(&self) -> Vec<TableName> {
        let mut out = Vec::new();
        for (i, scope) in self.scopes.iter().rev().enumerate() {
            if i > 0 && scope.opaque {
                break;
            }
            if i > 0 && scope.query {
                continue;
            }
            out.extend(scope.tables.iter().cloned());
        }
        out
    }

    /// Write targets are relations too, but their columns are write positions, not reads.
    fn target(&mut self, name: &ObjectName, kind: WriteKind) {
        self.writes.push((table_name(name), kind));
    }
}

impl Visitor for Collected {
    type Break = ();

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        self.visible_now = None;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        // ORDER BY, LIMIT and the like belong to the query, outside its SELECT: they see the
        // tables of every SELECT in the body.
        let mut tables = Vec::new();
        body_tables(&q.body, &mut tables);
        self.scopes.push(Scope { tables, opaque: false, query: true });
        self.visible_now = None;
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.insert(fold(&cte.alias.name));
            }
        }
        for lock in &q.locks {
            self.has_lock = true;
            self.locks.push(lock.of.as_ref().map(table_name));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        self.creates_table |= s.into.is_some();
        let mut tables = Vec::new();
        from_tables(&s.from, &mut tables);
        for item in &s.projection {
            match item {
                SelectItem::Wildcard(_) => self.wildcards.push((None, tables.clone())),
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(n), _) => {
                    self.wildcards.push((Some(idents(n)), Vec::new()))
                }
                _ => {}
            }
        }
        self.scopes.push(Scope { tables, opaque: false, query: false });
        self.visible_now = None;
        ControlFlow::Continue(())
    }

    fn post_visit_select(&mut self, _s: &Select) -> ControlFlow<()> {
        self.scopes.pop();
        self.visible_now = None;
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        if scope_of(s).is_some() {
            self.scopes.pop();
            self.visible_now = None;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        // Only the first part: after a dot Postgres accepts any word (`s.select`).
        if let Some(first) = r.0.first().and_then(|p| p.as_ident()) {
            self.check_name(first);
        }
        self.relations.push(table_name(r));
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            // `FROM f(...)`: a set-returning function, not a table. It is judged as a function
            // call (a user function may write), and its name is not a relation.
            TableFactor::Table { name, args: Some(_), .. } => {
                if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                    self.functions.push(fold(last));
                }
                self.table_functions.push(table_name(name));
            }
            TableFactor::Table { name, alias: Some(alias), .. } => {
                self.check_name(&alias.name);
                self.aliases.insert(fold(&alias.name), table_name(name));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Identifier(id) => {
                // Where an expression may stand, Postgres takes these reserved words as values
                // (`VALUES (DEFAULT)`, `SET c = DEFAULT`, `current_role`), never as columns, and
                // sqlparser reads some of them as names.
                if id.quote_style.is_none() && is_value_keyword(&id.value) {
                    return ControlFlow::Continue(());
                }
                self.check_name(id);
                let visible = match &self.visible_now {
                    Some(v) => v.clone(),
                    None => {
                        let v = Rc::new(self.visible());
                        self.visible_now = Some(v.clone());
                        v
                    }
                };
                self.columns.push((Vec::new(), fold(id), visible));
            }
            Expr::CompoundIdentifier(parts) => {
                if let Some(first) = parts.first() {
                    self.check_name(first);
                }
                let mut parts: Vec<String> = parts.iter().map(fold).collect();
                if let Some(col) = parts.pop() {
                    self.columns.push((parts, col, Rc::default()));
                }
            }
            Expr::Function(f) => {
                if let Some(last) = f.name.0.last().and_then(|p| p.as_ident()) {
                    self.functions.push(fold(last));
                }
                // `f(u.*)` passes whole rows; `count(*)` reads no column.
                if let FunctionArguments::List(list) = &f.args {
                    for arg in &list.args {
                        if let FunctionArg::Unnamed(FunctionArgExpr::QualifiedWildcard(n))
                        | FunctionArg::Named { arg: FunctionArgExpr::QualifiedWildcard(n), .. } = arg
                        {
                            self.wildcards.push((Some(idents(n)), Vec::new()));
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        if let Some(scope) = scope_of(s) {
            // `RETURNING *` reads every column of the tables the statement sees.
            let returning = match s {
                Statement::Insert(i) => i.returning.as_ref(),
                Statement::Update(u) => u.returning.as_ref(),
                Statement::Delete(d) => d.returning.as_ref(),
                _ => None,
            };
            for item in returning.into_iter().flatten() {
                match item {
                    SelectItem::Wildcard(_) => self.wildcards.push((None, scope.tables.clone())),
                    SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(n), _) => {
                        self.wildcards.push((Some(idents(n)), Vec::new()))
                    }
                    _ => {}
                }
            }
            self.scopes.push(scope);
            self.visible_now = None;
        }
        match s {
            Statement::Insert(Insert { table: TableObject::TableName(name), columns, on, table_alias, .. }) => {
                let cols = columns.iter().filter_map(|c| c.0.last().and_then(|p| p.as_ident()).map(fold)).collect();
                self.target(name, WriteKind::Insert(cols));
                // ON CONFLICT ... DO UPDATE may refer to the target by alias or as EXCLUDED.
                self.aliases.insert("excluded".into(), table_name(name));
                if let Some(a) = table_alias {
                    self.aliases.insert(fold(&a.alias), table_name(name));
                }
                if let Some(OnInsert::OnConflict(oc)) = on
                    && let OnConflictAction::DoUpdate(du) = &oc.action
                {
                    let cols = du.assignments.iter().flat_map(|a| assigned(&a.target)).collect();
                    self.target(name, WriteKind::Update(cols));
                }
            }
            Statement::Update(u) => {
                if let TableFactor::Table { name, .. } = &u.table.relation {
                    let cols = u.assignments.iter().flat_map(|a| assigned(&a.target)).collect();
                    self.target(name, WriteKind::Update(cols));
                }
            }
            Statement::Delete(d) => {
                let from = match &d.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                for t in from {
                    if let TableFactor::Table { name, .. } = &t.relation {
                        self.target(name, WriteKind::Delete);
                    }
                }
                for name in &d.tables {
                    self.target(name, WriteKind::Delete);
                }
            }
            Statement::Merge(m) => {
                if let TableFactor::Table { name, .. } = &m.table {
                    self.target(name, WriteKind::Merge);
                }
            }
            Statement::Truncate(t) => {
                for target in &t.table_names {
                    self.target(&target.name, WriteKind::Delete);
                }
            }
            Statement::Copy { source: CopySource::Table { table_name: name, columns }, to: false, .. } => {
                let cols = columns.iter().map(fold).collect();
                self.target(name, WriteKind::Insert(cols));
            }
            Statement::Copy { source: CopySource::Table { table_name: name, columns }, to: true, .. } => {
                // sqlparser does not visit the table of a COPY as a relation; it is read.
                self.relations.push(table_name(name));
                if columns.is_empty() {
                    self.wildcards.push((Some(idents(name)), Vec::new()));
                } else {
                    let q = idents(name);
                    self.columns.extend(columns.iter().map(|c| (q.clone(), fold(c), Rc::default())));
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// The name scope a data-modifying statement opens, if any.
fn scope_of(s: &Statement) -> Option<Scope> {
    let mut tables = Vec::new();
    let opaque = match s {
        Statement::Insert(Insert { table: TableObject::TableName(name), .. }) => {
            tables.push(table_name(name));
            true
        }
        Statement::Update(u) => {
            from_tables(std::slice::from_ref(&u.table), &mut tables);
            if let Some(UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) = &u.from {
                from_tables(f, &mut tables);
            }
            false
        }
        Statement::Delete(d) => {
            match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => from_tables(t, &mut tables),
            }
            if let Some(using) = &d.using {
                from_tables(using, &mut tables);
            }
            false
        }
        Statement::Merge(m) => {
            factor_tables(&m.table, &mut tables);
            factor_tables(&m.source, &mut tables);
            false
        }
        _ => return None,
    };
    Some(Scope { tables, opaque, query: false })
}

fn assigned(t: &AssignmentTarget) -> Vec<String> {
    let last = |n: &ObjectName| n.0.last().and_then(|p| p.as_ident()).map(fold).unwrap_or_default();
    match t {
        AssignmentTarget::ColumnName(n) => vec![last(n)],
        AssignmentTarget::Tuple(ns) => ns.iter().map(last).collect(),
    }
}

impl Collected {
    fn check_name(&mut self, id: &Ident) {
        if id.quote_style.is_none() && self.reserved_as_name.is_none() && is_reserved(&id.value) {
            self.reserved_as_name = Some(id.value.clone());
        }
    }
}

/// Reserved words that stand for a value where an expression may be.
fn is_value_keyword(word: &str) -> bool {
    const VALUES: &[&str] = &[
        "DEFAULT",
        "CURRENT_CATALOG",
        "CURRENT_DATE",
        "CURRENT_ROLE",
        "CURRENT_TIME",
        "CURRENT_TIMESTAMP",
        "CURRENT_USER",
        "LOCALTIME",
        "LOCALTIMESTAMP",
        "SESSION_USER",
        "SYSTEM_USER",
        "USER",
        "TRUE",
        "FALSE",
        "NULL",
    ];
    VALUES.iter().any(|v| v.eq_ignore_ascii_case(word))
}

/// Postgres's fully reserved key words (the `reserved_keyword` list of its grammar): never a
/// table, column or alias name unless quoted.
fn is_reserved(word: &str) -> bool {
    const RESERVED: &[&str] = &[
        "ALL",
        "ANALYSE",
        "ANALYZE",
        "AND",
        "ANY",
        "ARRAY",
        "AS",
        "ASC",
        "ASYMMETRIC",
        "BOTH",
        "CASE",
        "CAST",
        "CHECK",
        "COLLATE",
        "COLUMN",
        "CONSTRAINT",
        "CREATE",
        "CURRENT_CATALOG",
        "CURRENT_DATE",
        "CURRENT_ROLE",
        "CURRENT_TIME",
        "CURRENT_TIMESTAMP",
        "CURRENT_USER",
        "DEFAULT",
        "DEFERRABLE",
        "DESC",
        "DISTINCT",
        "DO",
        "ELSE",
        "END",
        "EXCEPT",
        "FALSE",
        "FETCH",
        "FOR",
        "FOREIGN",
        "FROM",
        "GRANT",
        "GROUP",
        "HAVING",
        "IN",
        "INITIALLY",
        "INTERSECT",
        "INTO",
        "LATERAL",
        "LEADING",
        "LIMIT",
        "LOCALTIME",
        "LOCALTIMESTAMP",
        "NOT",
        "NULL",
        "OFFSET",
        "ON",
        "ONLY",
        "OR",
        "ORDER",
        "PLACING",
        "PRIMARY",
        "REFERENCES",
        "RETURNING",
        "SELECT",
        "SESSION_USER",
        "SOME",
        "SYMMETRIC",
        "SYSTEM_USER",
        "TABLE",
        "THEN",
        "TO",
        "TRAILING",
        "TRUE",
        "UNION",
        "UNIQUE",
        "USER",
        "USING",
        "VARIADIC",
        "WHEN",
        "WHERE",
        "WINDOW",
        "WITH",
    ];
    word.len() <= 17 && RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

pub fn collect(stmt: &Statement) -> Collected {
    let mut c = Collected::default();
    let _ = stmt.visit(&mut c);
    c
}

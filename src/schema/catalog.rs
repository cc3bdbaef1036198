//! Reads a [`Catalog`] snapshot from a live Postgres.

use std::collections::HashMap;

use super::TableName;
use super::lint::{Catalog, CatalogColumn, CatalogForeignKey, CatalogTable};

// Other sessions' temporary tables are theirs: neither replicated nor checked.
const RELATIONS: &str = "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind IN ('r','p','v','m','f') AND n.nspname NOT IN ('pg_catalog','information_schema') \
    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname <> 'pgmix' AND c.relpersistence <> 't'";

const COLUMNS: &str = "SELECT n.nspname::text, c.relname::text, a.attname::text, pg_get_expr(d.adbin, d.adrelid), a.attidentity <> '', a.attgenerated <> '' \
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
    WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p') AND c.relpersistence <> 't' \
    AND n.nspname NOT IN ('pg_catalog','information_schema') ORDER BY a.attnum";

/// User triggers; pgmix's own (functions in its `pgmix` schema, such as change capture) excluded.
const TRIGGERS: &str = "SELECT n.nspname::text, c.relname::text, t.tgname::text, f.proname::text FROM pg_trigger t \
    JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_proc f ON f.oid = t.tgfoid JOIN pg_namespace fn ON fn.oid = f.pronamespace \
    WHERE NOT t.tgisinternal AND fn.nspname <> 'pgmix' AND c.relpersistence <> 't' \
    AND n.nspname NOT IN ('pg_catalog','information_schema') ORDER BY t.tgname";

const CONSTRAINTS: &str = "SELECT n.nspname::text, c.relname::text, con.contype::text, con.conname::text, \
    ARRAY(SELECT a.attname::text FROM unnest(con.conkey) k JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k), \
    fn.nspname::text, fc.relname::text, con.confdeltype::text, con.confupdtype::text \
    FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
    LEFT JOIN pg_class fc ON fc.oid = con.confrelid LEFT JOIN pg_namespace fn ON fn.oid = fc.relnamespace \
    WHERE con.contype IN ('p','u','f','c') AND c.relpersistence <> 't' AND n.nspname NOT IN ('pg_catalog','information_schema')";

pub async fn read(client: &tokio_postgres::Client) -> Result<Catalog, tokio_postgres::Error> {
    let mut cat = Catalog::default();
    let mut tables: HashMap<TableName, CatalogTable> = HashMap::new();
    for row in client.query(RELATIONS, &[]).await? {
        let name = TableName::new(Some(row.get::<_, &str>(0)), row.get::<_, &str>(1));
        match row.get::<_, &str>(2) {
            "v" | "m" => {
                cat.views.insert(name);
            }
            _ => {
                tables.insert(name, CatalogTable::default());
            }
        }
    }
    for row in client.query(COLUMNS, &[]).await? {
        let name = TableName::new(Some(row.get::<_, &str>(0)), row.get::<_, &str>(1));
        if let Some(t) = tables.get_mut(&name) {
            t.columns.push(CatalogColumn {
                name: row.get(2),
                default: row.get(3),
                identity: row.get(4),
                generated: row.get(5),
            });
        }
    }
    for row in client.query(CONSTRAINTS, &[]).await? {
        let name = TableName::new(Some(row.get::<_, &str>(0)), row.get::<_, &str>(1));
        let Some(t) = tables.get_mut(&name) else {
            continue;
        };
        let cols: Vec<String> = row.get(4);
        match row.get::<_, &str>(2) {
            "p" => t.primary_key = cols,
            "u" => t.uniques.push(cols),
            "c" => t.checks.push((row.get(3), cols)),
            "f" => {
                let target =
                    TableName::new(row.get::<_, Option<&str>>(5), row.get::<_, Option<&str>>(6).unwrap_or_default());
                let on_change = match (row.get::<_, &str>(7), row.get::<_, &str>(8)) {
                    ("c", _) => Some("ON DELETE CASCADE"),
                    ("n", _) => Some("ON DELETE SET NULL"),
                    ("d", _) => Some("ON DELETE SET DEFAULT"),
                    (_, "c") => Some("ON UPDATE CASCADE"),
                    (_, "n") => Some("ON UPDATE SET NULL"),
                    (_, "d") => Some("ON UPDATE SET DEFAULT"),
                    _ => None,
                };
                t.foreign_keys.push(CatalogForeignKey { columns: cols, target, on_change });
            }
            _ => {}
        }
    }
    for row in client.query(TRIGGERS, &[]).await? {
        let name = TableName::new(Some(row.get::<_, &str>(0)), row.get::<_, &str>(1));
        if let Some(t) = tables.get_mut(&name) {
            t.triggers.push(row.get(2));
            t.trigger_functions.push(row.get(3));
        }
    }
    cat.tables = tables;
    for row in client.query("SELECT nspname::text FROM pg_namespace", &[]).await? {
        cat.namespaces.insert(row.get(0));
    }
    Ok(cat)
}

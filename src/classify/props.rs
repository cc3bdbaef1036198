//! Property: a statement that writes a strong column is never classified weak, whatever its shape,
//! spelling, quoting, aliases or nesting. Statements and schemas are generated from a fixed seed so
//! a failure reproduces; the failing statement and schema are printed.
//!
//! That text Postgres cannot parse is never weak is checked against Postgres's own parser, in
//! tests/it/classify.rs (`text_that_postgres_cannot_parse_is_never_classified_weak`).

use super::{Class, classify};
use crate::schema::Schema;
use crate::testrng::Rng;

const TABLES: usize = 4;
const COLUMNS: usize = 6;

struct World {
    strong_table: [bool; TABLES],
    strong_col: [[bool; COLUMNS]; TABLES],
}

impl World {
    fn random(r: &mut Rng) -> Self {
        let mut w = World { strong_table: [false; TABLES], strong_col: [[false; COLUMNS]; TABLES] };
        for t in 0..TABLES {
            w.strong_table[t] = r.chance(25);
            if !w.strong_table[t] {
                for c in 0..COLUMNS {
                    w.strong_col[t][c] = r.chance(25);
                }
            }
        }
        w
    }

    fn toml(&self) -> String {
        let mut s = String::from("default = \"weak\"\nsearch_path = [\"app\", \"public\"]\n");
        for t in 0..TABLES {
            let cols: Vec<String> =
                (0..COLUMNS).filter(|&c| self.strong_col[t][c]).map(|c| format!("\"c{c}\"")).collect();
            let consistency = if self.strong_table[t] { "strong" } else { "weak" };
            let key = if t % 2 == 0 { format!("app.t{t}") } else { format!("t{t}") };
            s.push_str(&format!("[tables.\"{key}\"]\nconsistency = \"{consistency}\"\n"));
            if !cols.is_empty() {
                s.push_str(&format!("strong_columns = [{}]\n", cols.join(", ")));
            }
        }
        s
    }

    fn strong(&self, t: usize, c: usize) -> bool {
        self.strong_table[t] || self.strong_col[t][c]
    }

    fn has_strong(&self, t: usize) -> bool {
        self.strong_table[t] || self.strong_col[t].iter().any(|s| *s)
    }
}

/// The table as a statement may spell it.
fn table(r: &mut Rng, t: usize) -> String {
    let bare = match r.below(3) {
        0 => format!("t{t}"),
        1 => format!("T{t}"),
        _ => format!("\"t{t}\""),
    };
    if t.is_multiple_of(2) && r.chance(50) {
        format!("{}.{bare}", r.pick(&["app", "APP", "\"app\""]))
    } else if t % 2 == 1 && r.chance(30) {
        format!("public.{bare}")
    } else {
        bare
    }
}

fn col(r: &mut Rng, c: usize, alias: Option<&str>) -> String {
    let bare = match r.below(3) {
        0 => format!("c{c}"),
        1 => format!("C{c}"),
        _ => format!("\"c{c}\""),
    };
    match alias {
        Some(a) if r.chance(40) => format!("{a}.{bare}"),
        _ => bare,
    }
}

fn value(r: &mut Rng) -> String {
    r.pick(&["1", "'x'", "$1", "now()", "DEFAULT", "NULL", "(SELECT 2)", "c0 + 1", "lower('A')"]).to_string()
}

fn noise(r: &mut Rng) -> &'static str {
    const NOISE: [&str; 5] = [" ", "  ", "\n", " /* note; with semicolon */ ", " -- c\n"];
    NOISE[r.below(NOISE.len())]
}

/// A write statement with its target and written columns; `None` columns means "rows" (insert/delete).
fn statement(r: &mut Rng) -> (String, usize, Option<Vec<usize>>) {
    let t = r.below(TABLES);
    let u = (t + 1 + r.below(TABLES - 1)) % TABLES;
    let n = 1 + r.below(3);
    let cols: Vec<usize> = (0..n).map(|_| r.below(COLUMNS)).collect();
    let sp = noise(r);
    let tt = table(r, t);
    let uu = table(r, u);
    let alias = if r.chance(50) { Some("a") } else { None };
    let as_alias = alias.map(|a| format!(" AS {a}")).unwrap_or_default();
    let sets = |r: &mut Rng| {
        cols.iter().map(|&c| format!("{} = {}", col(r, c, None), value(r))).collect::<Vec<_>>().join(", ")
    };
    match r.below(9) {
        0 => {
            let s = sets(r);
            let wherec = col(r, 0, alias);
            (format!("UPDATE{sp}{tt}{as_alias} SET {s} WHERE {wherec} = 1"), t, Some(cols))
        }
        1 => {
            let names: Vec<String> = cols.iter().map(|&c| col(r, c, None)).collect();
            let vals: Vec<String> = cols.iter().map(|_| value(r)).collect();
            (format!("UPDATE {tt} SET ({}) = ({}) RETURNING *", names.join(", "), vals.join(", ")), t, Some(cols))
        }
        2 => {
            let s = sets(r);
            let jc = col(r, 1, Some("b"));
            (format!("UPDATE {tt}{as_alias} SET {s} FROM {uu} b WHERE {jc} = 2"), t, Some(cols))
        }
        3 => {
            let s = sets(r);
            (format!("WITH x AS (UPDATE {tt} SET {s} RETURNING *){sp}SELECT * FROM x"), t, Some(cols))
        }
        4 => {
            let s = sets(r);
            (format!("MERGE INTO {tt} m USING {uu} s ON m.c0 = s.c0 WHEN MATCHED THEN UPDATE SET {s}"), t, Some(cols))
        }
        5 => {
            let names: Vec<String> = cols.iter().map(|&c| col(r, c, None)).collect();
            let vals: Vec<String> = cols.iter().map(|_| value(r)).collect();
            (format!("INSERT INTO {tt} ({}) VALUES ({}){sp}", names.join(", "), vals.join(", ")), t, None)
        }
        6 => {
            let s: Vec<String> = cols.iter().map(|&c| format!("{} = EXCLUDED.c{c}", col(r, c, None))).collect();
            (format!("INSERT INTO {tt} (c0) VALUES (1) ON CONFLICT (c0) DO UPDATE SET {}", s.join(", ")), t, None)
        }
        7 => (format!("DELETE FROM{sp}{tt}{as_alias} WHERE c1 IN (SELECT c1 FROM {uu})"), t, None),
        _ => {
            let names: Vec<String> = cols.iter().map(|&c| format!("c{c}")).collect();
            (format!("COPY {tt} ({}) FROM STDIN", names.join(", ")), t, None)
        }
    }
}

#[test]
fn a_statement_writing_a_strong_column_is_never_weak() {
    let mut r = Rng(0x9E3779B97F4A7C15);
    let mut checked = 0;
    for _ in 0..300 {
        let world = World::random(&mut r);
        let toml = world.toml();
        let schema = Schema::from_toml_str(&toml, "generated.toml").unwrap();
        for _ in 0..40 {
            let (sql, t, cols) = statement(&mut r);
            let writes_strong = match &cols {
                Some(cols) => cols.iter().any(|&c| world.strong(t, c)),
                None => world.has_strong(t),
            };
            if !writes_strong {
                continue;
            }
            // Also inside a multi-statement query, after a weak statement.
            let sql = if r.chance(20) { format!("SELECT 1; {sql}") } else { sql };
            let got = classify(&sql, &schema);
            let class = super::combined(&got);
            checked += 1;
            assert_eq!(
                class,
                Class::StrongWrite,
                "writes a strong column but classified {}:\n{sql}\nschema:\n{toml}\nreasons: {:?}",
                class.as_str(),
                got.iter().map(|c| &c.reason).collect::<Vec<_>>()
            );
        }
    }
    assert!(checked > 3000, "only {checked} strong writes generated");
}

//! Cost of classification: `cargo bench --bench classify`.
//!
//! Reports the median time per call for (1) a repeated statement (a Query or Parse whose text the
//! node has classified before: a hit in the node-wide class cache, `ClassCache`, which is what
//! `LiveSchema::classify` asks on every Query and Parse), (2) fresh pgbench and ORM statements,
//! and (3) a fresh statement of about 1 kB. The targets are under 5 µs for a cached statement and
//! under 50 µs for a fresh 1 kB statement.

use std::cell::Cell;
use std::hint::black_box;
use std::time::Instant;
// The same allocator as the pgmix binary, so the figures are the node's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pgmix::classify::cache::ClassCache;
use pgmix::classify::classify;
use pgmix::schema::Schema;

const SCHEMA: &str = r#"
default = "strong"
[tables.pgbench_history]
consistency = "weak"
[tables.posts]
consistency = "weak"
[tables."app.users"]
consistency = "weak"
strong_columns = ["email", "balance"]
"#;

fn time_per_call(iters: u32, mut f: impl FnMut()) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6 / iters as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn one_kb_statement() -> String {
    let mut cols = Vec::new();
    for i in 0..40 {
        cols.push(format!("p.column_number_{i}"));
    }
    let sql = format!(
        "SELECT {} FROM posts p JOIN app.users u ON u.id = p.author_id LEFT JOIN comments c ON c.post_id = p.id \
         WHERE p.published = true AND u.name ILIKE $1 AND p.created > now() - interval '7 days' \
         AND p.id IN (SELECT post_id FROM tags WHERE name = ANY($2)) ORDER BY p.created DESC LIMIT 50",
        cols.join(", ")
    );
    assert!(sql.len() >= 1000, "{}", sql.len());
    sql
}

fn main() {
    let schema = Schema::from_toml_str(SCHEMA, "bench.toml").expect("schema");
    let statements = [
        ("pgbench select", "SELECT abalance FROM pgbench_accounts WHERE aid = $1".to_owned()),
        ("pgbench update", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2".to_owned()),
        (
            "pgbench insert",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
                .to_owned(),
        ),
        (
            "django select",
            "SELECT \"posts\".\"id\", \"posts\".\"title\" FROM \"posts\" WHERE \"posts\".\"published\" = $1 LIMIT 21"
                .to_owned(),
        ),
        ("fresh 1 kB", one_kb_statement()),
    ];

    // What a repeated statement pays: the routing point classifies every Query and Parse through
    // the node's class cache (`LiveSchema::classify` is `ClassCache::get_or_classify` with the
    // current schema), and a text it has seen before is a hit. The schema is asked for only on a
    // miss, so counting those asks proves every timed call was a hit.
    let shared = std::sync::Arc::new(schema.clone());
    let misses = Cell::new(0u32);
    let current = || {
        misses.set(misses.get() + 1);
        shared.clone()
    };
    let node_cache = ClassCache::default();
    for (_, sql) in &statements {
        node_cache.get_or_classify(sql, current);
    }
    assert_eq!(misses.get(), statements.len() as u32, "each text classified once");
    for (name, sql) in [&statements[0], &statements[4]] {
        let per = time_per_call(200_000, || {
            black_box(node_cache.get_or_classify(black_box(sql), current).class);
        });
        let bytes = sql.len();
        let name = name.trim_start_matches("fresh ");
        println!("classify: repeated {name} ({bytes} bytes, class cache hit): {per:.3} µs/statement (target < 5 µs)");
    }
    assert_eq!(misses.get(), statements.len() as u32, "every timed call was a cache hit");
    if std::env::var_os("PGMIX_BENCH_PARTS").is_some() {
        parts(&statements[4].1);
    }
    for (name, sql) in &statements {
        let per = time_per_call(2_000, || {
            black_box(classify(black_box(sql), &schema));
        });
        let target = if *name == "fresh 1 kB" { " (target < 50 µs)" } else { "" };
        println!("classify: {name} ({} bytes): {per:.1} µs/statement{target}", sql.len());
    }
    // What the node's cache pays for a text it has not seen whose shape it has: the 1 kB
    // statement again with another literal each time (simple-protocol clients that inline values).
    let cache = pgmix::classify::cache::ClassCache::default();
    let shared = std::sync::Arc::new(schema.clone());
    let one_kb = &statements[4].1;
    cache.get_or_classify(one_kb, || shared.clone());
    let texts: Vec<String> = (0..2_000).map(|i| one_kb.replace("LIMIT 50", &format!("LIMIT {}", 100 + i))).collect();
    let mut next = texts.iter().cycle();
    let per = time_per_call(2_000, || {
        let sql = next.next().expect("cycle");
        black_box(cache.get_or_classify(sql, || shared.clone()));
    });
    println!("classify: 1 kB text of a known shape (new literal, node cache): {per:.1} µs/statement");
}

#[allow(dead_code)]
fn parts(sql: &str) {
    use sqlparser::dialect::PostgreSqlDialect;
    let tok = time_per_call(500, || {
        black_box(sqlparser::tokenizer::Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().unwrap());
    });
    let parse = time_per_call(500, || {
        black_box(sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap());
    });
    println!("parts: tokenize {tok:.1} µs, tokenize+parse {parse:.1} µs");
}

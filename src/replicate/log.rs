//! The change log as it travels between nodes, and the read a node serves to its peers.
//!
//! A node's log (`pgmix.changes`) holds its own captured writes and the changes it applied from
//! peers, in (xid, seq) order. A reader only ever sees rows below the oldest transaction still
//! running: every transaction there has ended, so no row can later appear behind a reader's
//! cursor. (Reading by `seq` alone would skip a row whose transaction took its number first and
//! committed last.) The cost is that one long transaction holds back what peers can read, never
//! what they get in the end.

use serde::{Deserialize, Serialize};

/// A place in one node's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pos {
    pub xid: i64,
    pub seq: i64,
}

/// One change as logged and shipped. `key` and `cols` are JSON text as Postgres wrote it
/// (`{column: value}` and `{column: [hlc, node, value]}`), carried verbatim so that no value is
/// reinterpreted on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChange {
    pub origin: i32,
    pub hlc: i64,
    pub tbl: String,
    pub key: String,
    pub ins: Option<(i64, i32)>,
    pub del: Option<(i64, i32)>,
    pub cols: String,
}

impl LogChange {
    /// Reads `origin, hlc, tbl, key::text, ins, ins_node, del, del_node, cols::text` from `at` on.
    pub fn from_row(r: &tokio_postgres::Row, at: usize) -> Self {
        let pair = |a: Option<i64>, b: Option<i32>| a.zip(b);
        LogChange {
            origin: r.get(at),
            hlc: r.get(at + 1),
            tbl: r.get(at + 2),
            key: r.get(at + 3),
            ins: pair(r.get(at + 4), r.get(at + 5)),
            del: pair(r.get(at + 6), r.get(at + 7)),
            cols: r.get(at + 8),
        }
    }
}

/// A peer asks for the changes after `after` in this node's log of `db`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pull {
    pub db: String,
    /// The log `after` points into, when the puller knows it.
    pub log: Option<String>,
    pub after: Pos,
    pub limit: i64,
}

/// The answer: up to `limit` changes, how many more the log holds after them (committed or not
/// yet), and the timestamp of the oldest of those, for the lag.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Batch {
    /// The identity of the log read (`pgmix.node.log_id`).
    pub log: String,
    pub changes: Vec<(Pos, LogChange)>,
    pub remaining: i64,
    pub oldest_pending_hlc: Option<i64>,
}

const READ: &str = "SELECT xid, seq, origin, hlc, tbl, key::text, ins, ins_node, del, del_node, cols::text \
    FROM pgmix.changes WHERE (xid, seq) > ($1, $2) AND xid < pgmix.log_horizon() ORDER BY xid, seq LIMIT $3";

/// A batch stops growing past this many bytes of change text (at least one change is sent), so
/// that wide rows do not make a frame too large for the peer link.
const BATCH_BYTES: usize = 8 << 20;

/// Counting stops here: a lag this large is reported as at least this.
const COUNT_LIMIT: i64 = 100_000;

const PENDING: &str = "SELECT count(*), min(hlc), (SELECT log_id::text FROM pgmix.node) FROM \
    (SELECT hlc FROM pgmix.changes WHERE (xid, seq) > ($1, $2) LIMIT 100000) p";

/// Reads a batch from `client`'s log for a peer.
pub async fn read(client: &tokio_postgres::Client, pull: &Pull) -> Result<Batch, tokio_postgres::Error> {
    let limit = pull.limit.clamp(1, 10_000);
    let rows = client.query(READ, &[&pull.after.xid, &pull.after.seq, &limit]).await?;
    let mut bytes = 0;
    let changes: Vec<(Pos, LogChange)> = rows
        .iter()
        .take_while(|r| {
            let fits = bytes < BATCH_BYTES;
            bytes += r.get::<_, &str>(5).len() + r.get::<_, &str>(10).len();
            fits
        })
        .map(|r| (Pos { xid: r.get(0), seq: r.get(1) }, LogChange::from_row(r, 2)))
        .collect();
    let last = changes.last().map_or(pull.after, |(p, _)| *p);
    let row = client.query_one(PENDING, &[&last.xid, &last.seq]).await?;
    let remaining: i64 = row.get(0);
    debug_assert!(remaining <= COUNT_LIMIT);
    Ok(Batch { log: row.get(2), changes, remaining, oldest_pending_hlc: row.get(1) })
}

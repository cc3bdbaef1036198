//! Weak replication: every node captures its weak writes into its change log (`capture`), pulls
//! the logs of its peers over the peer links (`log`, service [`SERVICE`]) and applies what it
//! gets with the merge rule (`merge`, `apply`).
//!
//! Each node pulls from every peer, for every database it replicates, with a durable cursor per
//! peer. Because a node's log also holds what it applied from others, a node that was down
//! catches up from any live peer, including the changes of a third node that is down now.
//! Duplicates and reordering are harmless: the merge rule takes maxima.
//!
//! A database is replicated once it is opened on this node (at start-up for `backend.database`,
//! by a client, or by a peer asking for its log), and only then: capture is installed and the
//! pgmix schema migrated when it is opened.
//!
//! Crash meaning: nothing here is held only in memory. A captured change is in the log with the
//! user's commit; a pulled batch is applied with its cursor in one transaction, so a crash before
//! that commit means the batch is asked for again.

pub mod apply;
mod bulk;
pub mod capture;
pub mod log;
pub mod merge;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::BackendConfig;
use crate::metrics::MetricsHandle;
use crate::peer::{PeerUp, Peers};
use log::{Batch, Pos, Pull};

/// The settings capture runs with (see `pgmix.install_capture`): JSON text of keys and values
/// must not depend on a session's time zone or float and interval styles.
pub const JSON_SETTINGS: &str =
    "SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET DateStyle = 'ISO, MDY'";

/// The peer-link service number of weak replication.
pub const SERVICE: u8 = 1;
/// Changes asked for at once.
const BATCH: i64 = 2_000;
/// How long a puller that is caught up waits before asking again: the floor of the lag.
const POLL: Duration = Duration::from_millis(50);
/// How long a pull may take before it is asked again.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a puller waits after a pull failed (the peer cannot serve that database yet).
const PULL_RETRY: Duration = Duration::from_secs(1);
const RETRY_PARKED: Duration = Duration::from_secs(2);
/// How often the log is pruned of what every peer has, and how much one pass deletes at once.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
const PRUNE_CHUNK: i64 = 10_000;

/// One node's weak replication.
pub struct Replicator {
    backend: BackendConfig,
    peers: Arc<Peers>,
    metrics: MetricsHandle,
    stop: CancellationToken,
    dbs: Mutex<HashMap<String, Arc<Db>>>,
    /// Per database, how far each peer has applied this node's log (the `after` of its last
    /// pull, which is its durable cursor): what every peer has is pruned.
    acks: Mutex<HashMap<String, HashMap<u32, Pos>>>,
    /// Databases to open (migrate and install capture) before they are served or pulled.
    open: mpsc::UnboundedSender<String>,
    /// Databases a peer asked for that are not open here, and when they were last asked for.
    asked_to_open: Mutex<HashMap<String, std::time::Instant>>,
}

/// One replicated database: a connection that serves peers' pulls and one that applies, each
/// made again when it breaks. Applies from different peers take turns, so that they do not
/// deadlock each other on the same rows.
struct Db {
    name: String,
    serve: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    apply: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Replicator {
    /// Starts replication: offers this node's logs to its peers and replicates every database
    /// sent on `opened` (databases this node has opened, schema migrated and capture installed).
    /// `open` asks for a database to be opened (a peer asked for it); it comes back on `opened`.
    pub fn start(
        backend: BackendConfig,
        peers: Arc<Peers>,
        metrics: MetricsHandle,
        stop: CancellationToken,
        open: mpsc::UnboundedSender<String>,
        mut opened: mpsc::UnboundedReceiver<String>,
    ) -> Arc<Self> {
        let me = Arc::new(Self {
            backend,
            peers: peers.clone(),
            metrics,
            stop,
            dbs: Mutex::new(HashMap::new()),
            acks: Mutex::new(HashMap::new()),
            open,
            asked_to_open: Mutex::new(Default::default()),
        });
        let weak = Arc::downgrade(&me);
        peers.serve(
            SERVICE,
            Arc::new(move |from, payload| {
                let weak = weak.clone();
                Box::pin(async move {
                    let Some(me) = weak.upgrade() else { return Err("this node is stopping".to_owned()) };
                    me.serve_pull(from, payload).await
                })
            }),
        );
        let me2 = me.clone();
        tokio::spawn(async move {
            loop {
                let db = tokio::select! {
                    _ = me2.stop.cancelled() => return,
                    db = opened.recv() => match db { Some(db) => db, None => return },
                };
                me2.ensure(&db);
            }
        });
        me
    }

    /// Replicates `db` from now on (once is enough).
    fn ensure(self: &Arc<Self>, db: &str) -> Arc<Db> {
        let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dbs.get(db) {
            return d.clone();
        }
        let d = Arc::new(Db {
            name: db.to_owned(),
            serve: tokio::sync::Mutex::new(None),
            apply: tokio::sync::Mutex::new(None),
        });
        dbs.insert(db.to_owned(), d.clone());
        info!(database = db, peers = self.peers.list.len(), "weak replication started");
        for peer in &self.peers.list {
            tokio::spawn(self.clone().pull_loop(d.clone(), peer.clone()));
        }
        tokio::spawn(self.clone().parked_loop(d.clone()));
        tokio::spawn(self.clone().prune_loop(d.clone()));
        d
    }

    /// Deletes from the log what every peer has applied. A peer that has not pulled since this
    /// node started, or that is down, holds everything after its last known cursor: a node
    /// that comes back catches up from any live peer, so every peer keeps what it lacks.
    async fn prune_loop(self: Arc<Self>, db: Arc<Db>) {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
            }
            let upto = {
                let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
                let Some(by_peer) = acks.get(&db.name) else { continue };
                let all: Option<Vec<Pos>> = self.peers.list.iter().map(|p| by_peer.get(&p.id).copied()).collect();
                all.and_then(|a| a.into_iter().min())
            };
            let Some(upto) = upto.filter(|p| *p > Pos::default()) else { continue };
            let mut conn = db.serve.lock().await;
            let client = match self.apply_client(&mut conn, &db.name).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(database = %db.name, error = %pg_text(&e), "cannot prune the change log now");
                    continue;
                }
            };
            let deleted = client
                .execute(
                    "DELETE FROM pgmix.changes WHERE ctid = ANY(ARRAY(SELECT ctid FROM pgmix.changes \
                     WHERE (xid, seq) <= ($1, $2) ORDER BY xid, seq LIMIT $3))",
                    &[&upto.xid, &upto.seq, &PRUNE_CHUNK],
                )
                .await;
            match deleted {
                Ok(n) if n > 0 => debug!(database = %db.name, deleted = n, "change log pruned"),
                Ok(_) => {}
                Err(e) => debug!(database = %db.name, error = %pg_text(&e), "pruning the change log failed"),
            }
        }
    }

    async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        // Keys and values are compared as JSON text: the same settings as capture's.
        self.backend.connect(db, JSON_SETTINGS).await
    }

    /// A peer's pull: a batch from this node's log.
    async fn serve_pull(self: Arc<Self>, from: u32, payload: Bytes) -> Result<Bytes, String> {
        let pull: Pull = serde_json::from_slice(&payload).map_err(|e| format!("malformed pull: {e}"))?;
        let db = {
            let dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
            dbs.get(&pull.db).cloned()
        };
        let Some(db) = db else {
            // Not opened here yet: open it (a peer replicates it), and ask the peer to come back.
            // Asked again now and then: the database may be created here later.
            let now = std::time::Instant::now();
            let ask = {
                let mut asked = self.asked_to_open.lock().unwrap_or_else(|p| p.into_inner());
                let due = asked.get(&pull.db).is_none_or(|t| now.duration_since(*t) > Duration::from_secs(10));
                if due {
                    asked.insert(pull.db.clone(), now);
                }
                due
            };
            if ask {
                let _ = self.open.send(pull.db.clone());
            }
            return Err(format!("database `{}` is being opened on this node; ask again", pull.db));
        };
        let mut conn = db.serve.lock().await;
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            *conn = Some(self.connect(&db.name).await.map_err(|e| format!("database `{}`: {}", db.name, pg_text(&e)))?);
        }
        let Some(client) = conn.as_ref() else { return Err("no connection".into()) };
        let batch = log::read(client, &pull).await.map_err(|e| {
            debug!(peer = from, error = %pg_text(&e), "serving a pull failed");
            format!("reading the change log of `{}`: {}", db.name, pg_text(&e))
        })?;
        // The peer has applied up to its cursor, if the cursor is into this very log (a cursor
        // into a log this database had before it was set up anew says nothing about this one).
        if pull.log.as_deref() == Some(batch.log.as_str()) {
            let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            acks.entry(pull.db.clone()).or_default().insert(from, pull.after);
        }
        serde_json::to_vec(&batch).map(Bytes::from).map_err(|e| e.to_string())
    }

    /// Pulls `db` from `peer` for as long as the node runs.
    async fn pull_loop(self: Arc<Self>, db: Arc<Db>, peer: Arc<PeerUp>) {
        // The place in the peer's log, and that log's identity once known.
        let mut cursor: Option<(Pos, Option<String>)> = None;
        let mut quiet = false;
        loop {
            if quiet || cursor.is_none() {
                let wait = if cursor.is_none() { Duration::from_millis(200) } else { POLL };
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            quiet = true;
            if !peer.is_up() {
                continue;
            }
            let Some((after, log)) = cursor.clone() else {
                match self.load_cursor(&db, peer.id).await {
                    Ok(c) => cursor = Some(c),
                    Err(e) => debug!(database = %db.name, error = %e, "cannot read the cursor yet"),
                }
                continue;
            };
            let pull = Pull { db: db.name.clone(), log: log.clone(), after, limit: BATCH };
            let Ok(payload) = serde_json::to_vec(&pull) else { continue };
            let batch: Batch = match peer.call(SERVICE, payload.into(), CALL_TIMEOUT).await {
                Ok(b) => match serde_json::from_slice(&b) {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(peer = %peer.name, error = %e, "a malformed batch; asking again");
                        continue;
                    }
                },
                Err(e) => {
                    debug!(peer = %peer.name, database = %db.name, error = %e, "pull failed");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(PULL_RETRY) => {}
                    }
                    continue;
                }
            };
            if log.as_ref().is_some_and(|l| *l != batch.log) {
                // The peer's database was set up anew: its log starts again from nothing.
                warn!(peer = %peer.name, database = %db.name, "the peer's change log is a new one; reading it from its start");
                cursor = Some((Pos::default(), Some(batch.log)));
                quiet = false;
                continue;
            }
            if let Some((to, _)) = batch.changes.last() {
                let to = *to;
                match self.apply(&db, peer.id, &batch).await {
                    Ok(a) => {
                        cursor = Some((to, Some(batch.log.clone())));
                        self.metrics.weak_applied_total.fetch_add(a.changed, Relaxed);
                        if a.careful {
                            self.metrics.weak_batches_change_by_change_total.fetch_add(1, Relaxed);
                        }
                        if a.parked > 0 {
                            self.metrics.weak_parked_add(&db.name, a.parked);
                        }
                        quiet = batch.changes.len() < BATCH as usize;
                    }
                    Err(e) => {
                        warn!(peer = %peer.name, database = %db.name, error = %e, "applying a batch failed; it will be asked for again");
                        cursor = None;
                    }
                }
            }
            let lag_ms =
                batch.oldest_pending_hlc.map_or(0, |h| now_ms().saturating_sub(crate::clock::millis(h as u64)));
            self.metrics.set_weak_lag(&peer.name, &db.name, batch.remaining as u64, lag_ms);
        }
    }

    async fn load_cursor(&self, db: &Db, source: u32) -> Result<(Pos, Option<String>), tokio_postgres::Error> {
        let mut conn = db.apply.lock().await;
        let client = self.apply_client(&mut conn, &db.name).await?;
        let row = client
            .query_opt("SELECT xid, seq, log_id FROM pgmix.cursors WHERE source = $1", &[&(source as i32)])
            .await?;
        Ok(row.map_or((Pos::default(), None), |r| (Pos { xid: r.get(0), seq: r.get(1) }, Some(r.get(2)))))
    }

    async fn apply_client<'a>(
        &self,
        conn: &'a mut Option<tokio_postgres::Client>,
        db: &str,
    ) -> Result<&'a mut tokio_postgres::Client, tokio_postgres::Error> {
        if conn.as_ref().is_some_and(|c| c.is_closed()) {
            *conn = None;
        }
        match conn {
            Some(c) => Ok(c),
            None => Ok(conn.insert(self.connect(db).await?)),
        }
    }

    async fn apply(&self, db: &Db, source: u32, batch: &Batch) -> Result<apply::Applied, apply::ApplyError> {
        let Some((to, _)) = batch.changes.last() else { return Ok(apply::Applied::default()) };
        let mut conn = db.apply.lock().await;
        let client = self.apply_client(&mut conn, &db.name).await?;
        let result = apply::batch(client, source, &batch.log, &batch.changes, *to).await;
        if let Ok(a) = &result {
            debug!(database = %db.name, source, changed = a.changed, stale = a.stale, parked = a.parked, "batch applied");
        }
        result
    }

    /// Retries parked changes every few seconds and keeps `pgmix_weak_conflicts_parked` true.
    async fn parked_loop(self: Arc<Self>, db: Arc<Db>) {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY_PARKED) => {}
            }
            let mut conn = db.apply.lock().await;
            let result = match self.apply_client(&mut conn, &db.name).await {
                Ok(client) => apply::retry_parked(client).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok((applied, left)) => {
                    if applied > 0 {
                        info!(database = %db.name, applied, left, "parked changes applied");
                        self.metrics.weak_applied_total.fetch_add(applied, Relaxed);
                    }
                    self.metrics.weak_parked_set(&db.name, left);
                }
                Err(e) => debug!(database = %db.name, error = %e, "retrying parked changes failed"),
            }
        }
    }
}

/// A Postgres error with the server's message, which `Display` leaves out.
fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

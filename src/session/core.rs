//! The session's core: what to do with each framed client message and each framed backend
//! message, with no I/O. The drivers (`pump` for the forwarding data path, `strong` for the
//! strong path) read and write the sockets and ask the core; the core says forward, replace,
//! answer, hold, or divert to the strong path, and on the strong path it gathers the client's
//! messages into units.
//!
//! Its one mode says where the session is (see [`Mode`]); everything else it keeps is protocol
//! bookkeeping: the transaction status and the replies in flight (`SessionState`), the
//! prepared statements (`Router`), pgmix's own stand-ins in the reply stream (`Answers`), and
//! the replies to messages pgmix injected, which the client must not see.
//!
//! Crash meaning: none; this is per-session protocol state.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::answer::Answers;
use super::begin::{Deferred, Replay};
use super::route::{Decision, Route, Router};
use super::state::{SessionState, TxStatus};
use super::unit::{Unit, Units};
use crate::classify::{Class, TxWord};
use crate::metrics::Metrics;
use crate::protocol::{codec, messages};
use crate::sqlstate::{ClientError, code};

/// Where the session is.
#[derive(Debug)]
pub enum Mode {
    /// Statements go to the local Postgres as they come.
    Forwarding,
    /// The statement at the front of the client's bytes waits, unread, for the replies in flight.
    Holding,
    /// In a cluster, the client's BEGIN is held: the transaction's first statement that reads or
    /// writes data decides where it runs.
    Deferred(Deferred),
    /// The transaction began here with statements that do not decide where it runs (SET LOCAL,
    /// SAVEPOINT, SHOW, ...), recorded: a strong statement moves it to the strong path, where
    /// they run again first and must give the same replies. `holding`: a strong statement
    /// waits, unread, for the replies in flight.
    Undecided { replay: Replay, holding: bool },
    /// The transaction runs on the strong path (on the leader, here or relayed): the client's
    /// messages are gathered into units that the strong driver runs.
    Strong(StrongTx),
}

/// A transaction on the strong path.
#[derive(Debug, Default)]
pub struct StrongTx {
    /// The class of the statement that sent it there.
    pub class: Option<Class>,
    /// Its BEGIN, when pgmix held and answered it (the strong path begins with its text).
    pub begin: Option<Deferred>,
    /// What ran here before it turned strong, to run again there.
    pub replay: Option<Replay>,
    pub units: Units,
}

/// What the forwarding driver does with one client message.
#[derive(Debug)]
pub enum Action {
    Forward,
    /// Send this to the backend instead.
    Replace(BytesMut),
    /// Send nothing to the backend; send this to the client.
    Answer(BytesMut),
    /// Send nothing anywhere: the core holds the message (a BEGIN).
    Absorb,
    /// Leave it unread until the replies in flight are in, then ask again.
    Hold,
    /// Leave it unread: the strong path takes it (`Core::strong`).
    Divert,
}

/// What the forwarding driver does with one backend message.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Pass,
    /// The reply to a message pgmix sent itself: not the client's.
    Drop,
    /// pgmix's own error in place of a stand-in's.
    Replace(BytesMut),
}

pub struct Core {
    mode: Mode,
    pub state: SessionState,
    pub router: Router,
    answers: Answers,
    metrics: Arc<Metrics>,
    /// A node of a cluster: strong statements take the strong path.
    cluster: bool,
    /// A transaction of this session turned strong after it had begun here: its next
    /// transactions go to the strong path from their first statement on.
    leader_first: bool,
    /// Whole replies (each up to its ReadyForQuery) to pgmix's own statements, not the client's.
    swallow: usize,
    /// Single replies to messages pgmix put into the client's stream (a Parse the local backend
    /// lacked): the sync group they come in, and their type.
    drops: VecDeque<(u64, u8)>,
    /// Sync groups sent to the backend (Sync, Query, FunctionCall) and ReadyForQuery seen.
    groups_sent: u64,
    groups_done: u64,
    /// Named statements the client prepared that the local backend does not have: pgmix answered
    /// their Parse itself (a held BEGIN), or they went to the strong path.
    unsent: HashSet<Bytes>,
    /// Type of the last whole message the backend sent, to know whether it already said goodbye.
    pub last_backend_tag: u8,
    /// Statements went to the local Postgres since `take_ran_locally` was last asked: the
    /// session's settings may have changed.
    ran_locally: bool,
}

impl Core {
    pub fn new(router: Router, metrics: Arc<Metrics>, cluster: bool) -> Self {
        Self {
            mode: Mode::Forwarding,
            state: SessionState::default(),
            router,
            answers: Answers::default(),
            metrics,
            cluster,
            leader_first: false,
            swallow: 0,
            drops: VecDeque::new(),
            groups_sent: 0,
            groups_done: 0,
            unsent: HashSet::new(),
            last_backend_tag: 0,
            ran_locally: true,
        }
    }

    /// Whether statements went to the local Postgres since the last ask.
    pub fn take_ran_locally(&mut self) -> bool {
        std::mem::take(&mut self.ran_locally)
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Between transactions, with nothing outstanding: where a session may be closed.
    pub fn at_rest(&self) -> bool {
        self.state.is_quiet() && matches!(self.mode, Mode::Forwarding)
    }

    /// The held statement may be decided now (its replies in flight are in).
    pub fn hold_over(&mut self) -> bool {
        let settled = self.state.awaiting_ready == 0 && !self.state.unsynced;
        if matches!(self.mode, Mode::Holding) && settled {
            self.mode = Mode::Forwarding;
            return true;
        }
        if let Mode::Undecided { holding, .. } = &mut self.mode
            && *holding
            && settled
        {
            *holding = false;
            return true;
        }
        false
    }

    pub fn holding(&self) -> bool {
        matches!(self.mode, Mode::Holding | Mode::Undecided { holding: true, .. })
    }

    pub fn diverted(&self) -> bool {
        matches!(self.mode, Mode::Strong(_))
    }

    /// Whether a message of this type must reach the core whole (everything else may stream
    /// through in pieces).
    pub fn inspects(&self, tag: u8) -> bool {
        matches!(tag, b'Q' | b'P' | b'S' | b'X' | b'H' | b'F')
            || (self.cluster && matches!(tag, b'B' | b'D' | b'E' | b'C'))
    }

    /// One whole client message on the forwarding path; `can_answer`: the reply stream to the
    /// client is between messages and not backed up, so an answer may go into it.
    pub fn on_client(&mut self, tag: u8, body: &[u8], msg: &[u8], can_answer: bool) -> Action {
        match tag {
            b'Q' => self.on_query(body, msg, can_answer),
            b'P' => self.on_parse(body, msg),
            b'B' if self.cluster => self.on_bind(body, msg),
            b'S' => self.on_sync(msg, can_answer),
            b'F' => {
                // A fast-path function call (libpq's large-object API uses them) is answered with
                // its own ReadyForQuery, and is a statement too.
                self.router.route_function_call();
                self.state.awaiting_ready += 1;
                self.groups_sent += 1;
                self.release(msg)
            }
            other => self.on_other(other, body, msg, can_answer),
        }
    }

    fn on_query(&mut self, body: &[u8], msg: &[u8], can_answer: bool) -> Action {
        Metrics::inc(&self.metrics.queries_total);
        let text = messages::query_text(body);
        let at_rest = self.at_rest();
        let d = self.router.route_query(text, at_rest);
        let d = self.per_node(d);
        if self.cluster && can_answer {
            let waits = self.waits_for_quiet();
            match (&mut self.mode, d.words.word) {
                (Mode::Deferred(def), TxWord::Commit | TxWord::Rollback) if def.answered => {
                    // The transaction pgmix deferred never ran a statement.
                    let Mode::Deferred(def) = std::mem::replace(&mut self.mode, Mode::Forwarding) else {
                        unreachable!("matched above")
                    };
                    self.forget_held(&def);
                    let mut out = BytesMut::new();
                    codec::command_complete(
                        if d.words.word == TxWord::Commit { "COMMIT" } else { "ROLLBACK" },
                        &mut out,
                    );
                    codec::ready(b'I', &mut out);
                    return Action::Answer(out);
                }
                (Mode::Forwarding, TxWord::Begin) if self.state.is_quiet() => {
                    let mut def = Deferred::query(msg, text);
                    let out = def.answer(true);
                    self.mode = Mode::Deferred(def);
                    return Action::Answer(out);
                }
                (Mode::Forwarding, TxWord::Begin) if waits => {
                    self.mode = Mode::Holding;
                    return Action::Hold;
                }
                _ => {}
            }
        }
        if let Some(a) = self.route(&d, |answers, e| answers.stand_in_query(e)) {
            if matches!(a, Action::Replace(_)) {
                self.state.awaiting_ready += 1;
                self.groups_sent += 1;
            }
            return a;
        }
        self.state.ddl_pending |= d.class == Class::Ddl;
        self.state.awaiting_ready += 1;
        if d.route == Route::Refuse {
            let e = refusal(&d.reason);
            if at_rest && can_answer {
                self.state.awaiting_ready -= 1;
                return Action::Answer(Answers::direct(&e, b'I'));
            }
            let stand_in = self.answers.stand_in_query(e);
            let a = self.release(&stand_in);
            self.groups_sent += 1;
            return replaced(a, &stand_in);
        }
        let a = self.release_as(msg, undecides(&d));
        self.groups_sent += 1;
        a
    }

    fn on_parse(&mut self, body: &[u8], msg: &[u8]) -> Action {
        Metrics::inc(&self.metrics.parses_total);
        let (name, sql) = messages::parse_message(body);
        let d = self.router.route_parse(name, sql, msg);
        let d = self.per_node(d);
        if self.cluster && d.words.word == TxWord::Begin && matches!(self.mode, Mode::Forwarding) {
            if self.state.is_quiet() {
                self.mode = Mode::Deferred(Deferred::extended(msg, sql));
                return Action::Absorb;
            }
            if self.waits_for_quiet() {
                self.mode = Mode::Holding;
                return Action::Hold;
            }
        }
        let name = Bytes::copy_from_slice(name);
        if let Some(a) = self.route(&d, |answers, e| answers.stand_in_parse(&name, e)) {
            if matches!(a, Action::Replace(_)) {
                self.state.unsynced = true;
            } else if matches!(a, Action::Divert) {
                // Prepared on the strong path, not here.
                self.unsent.insert(name);
            }
            return a;
        }
        self.state.unsynced = true;
        self.state.ddl_pending |= d.class == Class::Ddl;
        self.unsent.remove(&name);
        if d.route == Route::Refuse {
            let stand_in = self.answers.stand_in_parse(&name, refusal(&d.reason));
            return replaced(self.release(&stand_in), &stand_in);
        }
        self.release_as(msg, undecides(&d))
    }

    fn on_bind(&mut self, body: &[u8], msg: &[u8]) -> Action {
        let name = messages::bind_statement(body);
        let is_begin = |r: &Router, n: &[u8]| r.parsed(n).is_some_and(|p| p.words.word == TxWord::Begin);
        if let Mode::Deferred(def) = &mut self.mode
            && def.takes(b'B', body, |n| is_begin(&self.router, n))
        {
            def.hold(msg);
            return Action::Absorb;
        }
        if matches!(self.mode, Mode::Forwarding) && is_begin(&self.router, name) {
            if self.state.is_quiet() {
                let text = self.router.parsed(name).map(|p| parse_text(&p.message)).unwrap_or_default();
                self.mode = Mode::Deferred(Deferred::extended(msg, &text));
                return Action::Absorb;
            }
            if self.waits_for_quiet() {
                self.mode = Mode::Holding;
                return Action::Hold;
            }
        }
        let mut undecided = false;
        if let Some(class) = self.router.bound_class(name) {
            let words = self.router.parsed(name).map_or(crate::classify::Words::OTHER, |p| p.words);
            let d = Decision { class, route: Route::Local, reason: Arc::from(""), words };
            if let Some(a) = self.route(&d, |answers, e| answers.stand_in_parse(b"", e)) {
                if matches!(a, Action::Replace(_)) {
                    self.state.unsynced = true;
                }
                return a;
            }
            undecided = undecides(&d);
        }
        self.state.note_extended(b'B');
        self.release_as(msg, undecided)
    }

    fn on_sync(&mut self, msg: &[u8], can_answer: bool) -> Action {
        if let Mode::Deferred(def) = &mut self.mode
            && can_answer
            && (def.answered || def.executed)
        {
            // The client's BEGIN, alone before its Sync: pgmix answers it.
            let out = def.answer(true);
            let def = def.clone();
            self.note_unsent(&def);
            return Action::Answer(out);
        }
        self.state.awaiting_ready += 1;
        self.state.unsynced = false;
        let undecided = matches!(self.mode, Mode::Undecided { .. });
        let a = self.release_as(msg, undecided);
        self.groups_sent += 1;
        a
    }

    fn on_other(&mut self, tag: u8, body: &[u8], msg: &[u8], can_answer: bool) -> Action {
        let is_begin = |r: &Router, n: &[u8]| r.parsed(n).is_some_and(|p| p.words.word == TxWord::Begin);
        if let Mode::Deferred(def) = &mut self.mode {
            if def.takes(tag, body, |n| is_begin(&self.router, n)) {
                def.hold(msg);
                return Action::Absorb;
            }
            if tag == b'H' && can_answer && def.executed {
                // The client wants the replies so far: pgmix's own, as for a Sync.
                let out = def.answer(false);
                let def = def.clone();
                self.note_unsent(&def);
                return Action::Answer(out);
            }
        }
        if tag == b'C' && messages::target(body).0 == b'S' {
            self.unsent.remove(messages::target(body).1);
        }
        // A Describe of a statement prepared on the strong path goes where it is prepared.
        if self.cluster
            && tag == b'D'
            && let (b'S', name) = messages::target(body)
            && self.unsent.contains(name)
            && let Some(class) = self.router.bound_class(name)
        {
            let d =
                Decision { class, route: Route::Local, reason: Arc::from(""), words: crate::classify::Words::OTHER };
            if let Some(a) = self.route(&d, |answers, e| answers.stand_in_parse(b"", e)) {
                if matches!(a, Action::Replace(_)) {
                    self.state.unsynced = true;
                }
                return a;
            }
        }
        self.state.note_extended(tag);
        let undecided = matches!(self.mode, Mode::Undecided { .. });
        self.release_as(msg, undecided)
    }

    /// In a cluster, a statement about a tablespace is refused: a tablespace is a directory of one
    /// node's, which no other node has.
    fn per_node(&self, d: Decision) -> Decision {
        if !self.cluster || d.words.global != Some(crate::classify::Global::Tablespace) {
            return d;
        }
        let reason = "tablespaces are directories of one node's Postgres, which pgmix cannot create on the others";
        Decision { class: Class::Refused, route: Route::Refuse, reason: Arc::from(reason), ..d }
    }

    /// Whether a statement that must start at a quiet point waits for the replies in flight
    /// (the transaction status they bring decides): only when every message in flight is synced
    /// (a pipeline without its Sync would never be answered).
    fn waits_for_quiet(&self) -> bool {
        self.state.awaiting_ready > 0 && !self.state.unsynced
    }

    /// Where a statement of this decision goes; None: on, to the local Postgres. `stand_in`
    /// makes the error it gets in place of its reply.
    fn route(&mut self, d: &Decision, stand_in: impl FnOnce(&mut Answers, ClientError) -> BytesMut) -> Option<Action> {
        if !self.cluster || d.route == Route::Refuse {
            return None;
        }
        let class = d.class;
        // A session whose transaction could not move runs its next ones on the leader from
        // their first statement, whatever it is.
        let leader_first = self.leader_first
            && (matches!(class, Class::WeakRead | Class::WeakWrite)
                || (class == Class::Local && matches!(self.mode, Mode::Deferred(_)) && d.words.word == TxWord::Other));
        let strong = matches!(class, Class::StrongWrite | Class::Ddl | Class::StrongRead) || leader_first;
        if !strong {
            return None;
        }
        if matches!(self.mode, Mode::Deferred(_)) || self.state.is_quiet() {
            self.divert(class);
            return Some(Action::Divert);
        }
        if let Mode::Undecided { replay, holding } = &mut self.mode {
            let settled = self.state.awaiting_ready == 0 && !self.state.unsynced;
            if settled && replay.whole() {
                self.divert(class);
                return Some(Action::Divert);
            }
            if !self.state.unsynced {
                *holding = true;
                return Some(Action::Hold);
            }
        }
        // A strong read inside a transaction that began here runs here, behind the barrier.
        if class == Class::StrongRead
            && !self.leader_first
            && self.state.tx == TxStatus::InTransaction
            && self.state.awaiting_ready == 0
            && !self.state.unsynced
        {
            self.divert(class);
            return Some(Action::Divert);
        }
        if self.waits_for_quiet() {
            self.mode = Mode::Holding;
            return Some(Action::Hold);
        }
        // A transaction that began here turned strong: it fails, and the next ones go to the
        // strong path from their start.
        self.leader_first = true;
        if matches!(self.mode, Mode::Undecided { .. }) {
            self.mode = Mode::Forwarding;
        }
        let e = ClientError::error(
            code::SERIALIZATION_FAILURE,
            "this transaction began with weak statements on this node and then touched strong data, which runs on the leader; it was not committed",
        )
        .with_hint("Retry the transaction: pgmix now runs this session's transactions on the leader from their start.");
        Some(Action::Replace(stand_in(&mut self.answers, e)))
    }

    fn divert(&mut self, class: Class) {
        let mut tx = StrongTx { class: Some(class), begin: None, replay: None, units: Units::default() };
        let begin = match std::mem::replace(&mut self.mode, Mode::Forwarding) {
            Mode::Deferred(d) => Some(d),
            Mode::Undecided { replay, .. } => {
                tx.replay = Some(replay);
                None
            }
            _ => None,
        };
        match begin {
            // Not answered: its messages go first in the transaction's first unit.
            Some(d) if !d.answered => {
                tx.units.prepend(&d.held);
                self.forget_held(&d);
            }
            Some(d) => {
                self.forget_held(&d);
                tx.begin = Some(d);
            }
            None => {}
        }
        self.mode = Mode::Strong(tx);
    }

    /// A message about to go to the local Postgres, preceded by the BEGIN pgmix held (its
    /// replies dropped when pgmix answered it already), and by the Parse of any statement it
    /// binds that the local backend lacks.
    fn release(&mut self, msg: &[u8]) -> Action {
        self.release_as(msg, false)
    }

    /// `release`, for a message of a statement that does not decide where the transaction runs
    /// (`undecided`), or of one in flight since such a statement: the transaction stays
    /// undecided, and the message is recorded.
    fn release_as(&mut self, msg: &[u8], undecided: bool) -> Action {
        self.ran_locally = true;
        if let Mode::Undecided { replay, .. } = &mut self.mode {
            if undecided && replay.sent(msg) {
                return self.release_plain(msg);
            }
            self.mode = Mode::Forwarding;
            return self.release_plain(msg);
        }
        if undecided && let Mode::Deferred(def) = &self.mode {
            // The BEGIN goes here after all, with this statement; both are recorded.
            let mut replay = Replay::new(def.answered.then(|| def.text.clone()));
            if !def.answered {
                replay.sent(&def.held);
            }
            replay.sent(msg);
            let a = self.release_plain(msg);
            self.mode = Mode::Undecided { replay, holding: false };
            return a;
        }
        self.release_plain(msg)
    }

    fn release_plain(&mut self, msg: &[u8]) -> Action {
        let mut out = BytesMut::new();
        if matches!(self.mode, Mode::Deferred(_))
            && let Mode::Deferred(def) = std::mem::replace(&mut self.mode, Mode::Forwarding)
        {
            for name in def.prepared_names() {
                self.unsent.remove(name);
            }
            let held = self.with_parses(&def.held);
            out.extend_from_slice(&held);
            if def.answered {
                if def.held.first() != Some(&b'Q') {
                    codec::sync(&mut out);
                }
                self.swallow += 1;
                self.state.awaiting_ready += 1;
                self.groups_sent += 1;
            }
        } else if !self.unsent.is_empty() && matches!(msg.first(), Some(b'B' | b'D')) {
            let with = self.with_parses(msg);
            if with.len() != msg.len() {
                return Action::Replace(with);
            }
            return Action::Forward;
        } else {
            return Action::Forward;
        }
        out.extend_from_slice(&self.with_parses(msg));
        Action::Replace(out)
    }

    /// `bytes` with the Parse of each statement a Bind in it names that the local backend
    /// lacks put in front of that Bind (its ParseComplete is dropped).
    fn with_parses(&mut self, bytes: &[u8]) -> BytesMut {
        let mut out = BytesMut::with_capacity(bytes.len());
        for (tag, body) in messages::iter(bytes) {
            let named = match tag {
                b'B' => Some(messages::bind_statement(body)),
                b'D' => match messages::target(body) {
                    (b'S', name) => Some(name),
                    _ => None,
                },
                _ => None,
            };
            if let Some(name) = named
                && self.unsent.remove(name)
                && let Some(parse) = self.router.parsed(name).map(|p| p.message.clone())
            {
                // A name may be there with an older text (prepared here before it was
                // prepared again elsewhere); closing a name that is not there is no error.
                if !name.is_empty() {
                    codec::close_statement(name, &mut out);
                    self.drops.push_back((self.groups_sent, b'3'));
                }
                out.extend_from_slice(&parse);
                self.drops.push_back((self.groups_sent, b'1'));
            }
            out.extend_from_slice(&[tag]);
            out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            out.extend_from_slice(body);
        }
        out
    }

    /// The held BEGIN never reaches the local backend: what it prepared is not there.
    fn forget_held(&mut self, d: &Deferred) {
        self.note_unsent(d);
    }

    fn note_unsent(&mut self, d: &Deferred) {
        for name in d.prepared_names() {
            self.unsent.insert(Bytes::copy_from_slice(name));
        }
    }

    /// One whole backend message on the forwarding path (`body` without its header).
    pub fn on_backend(&mut self, tag: u8, body: &[u8]) -> Reply {
        self.last_backend_tag = tag;
        if let Some(&(group, t)) = self.drops.front()
            && group == self.groups_done
        {
            if t == tag {
                self.drops.pop_front();
                return Reply::Drop;
            }
            if tag == b'E' {
                // The backend skips the rest of the group after an error.
                while self.drops.front().is_some_and(|(g, _)| *g == self.groups_done) {
                    self.drops.pop_front();
                }
            }
        }
        let swallowed = self.swallow > 0;
        match tag {
            b'Z' => {
                self.groups_done += 1;
                while self.drops.front().is_some_and(|(g, _)| *g < self.groups_done) {
                    self.drops.pop_front();
                }
                self.swallow = self.swallow.saturating_sub(1);
                if let Some(tx) = body.first().copied().and_then(TxStatus::from_byte) {
                    self.state.tx = tx;
                    if tx == TxStatus::Idle {
                        self.router.backend_idle();
                    }
                }
                self.state.awaiting_ready = self.state.awaiting_ready.saturating_sub(1);
                // A Parse sent without a Sync yet may still have a stand-in on its way.
                if self.state.awaiting_ready == 0 && !self.state.unsynced {
                    self.answers.settle();
                }
                // The DDL has committed or rolled back: let the node re-read the catalog.
                if self.state.ddl_pending && self.state.is_quiet() {
                    self.state.ddl_pending = false;
                    self.router.ddl_done();
                }
            }
            b'C' if body.starts_with(b"ROLLBACK") => self.router.backend_failed(),
            b'E' => {
                self.router.backend_failed();
                if self.answers.waiting()
                    && !swallowed
                    && let Some(own) = self.answers.substitute(body)
                {
                    return Reply::Replace(own);
                }
            }
            b'S' => {
                if let Some((name, value)) = messages::parameter_status(body) {
                    self.router.set_parameter(name, value);
                }
            }
            _ => {}
        }
        if swallowed {
            return Reply::Drop;
        }
        if let Mode::Undecided { replay, .. } = &mut self.mode {
            replay.reply(tag, body);
        }
        Reply::Pass
    }

    /// A piece of a backend message too large to be looked at whole.
    pub fn on_backend_piece(&mut self, bytes: &[u8]) {
        self.last_backend_tag = 0;
        if let Mode::Undecided { replay, .. } = &mut self.mode {
            replay.piece(bytes);
        }
    }

    /// The start of a client message too large to be looked at whole (a Bind with big
    /// parameters, COPY data) goes through.
    pub fn on_client_piece(&mut self, tag: u8) {
        self.state.note_extended(tag);
    }

    // ---- the strong path ----

    /// The transaction the core diverted, for the strong driver: its class and the BEGIN it
    /// begins with, if pgmix answered one.
    pub fn strong_start(&mut self) -> Option<(Class, Option<Deferred>, Option<Replay>)> {
        match &mut self.mode {
            Mode::Strong(tx) => Some((tx.class.take()?, tx.begin.take(), tx.replay.take())),
            _ => None,
        }
    }

    /// One whole client message on the strong path; a finished unit comes out.
    pub fn strong_message(&mut self, tag: u8, body: &[u8], msg: &[u8]) -> Option<Unit> {
        let words = match tag {
            b'Q' => Some(self.router.route_query(messages::query_text(body), false).words),
            b'P' => {
                let (name, sql) = messages::parse_message(body);
                let w = self.router.route_parse(name, sql, msg).words;
                self.unsent.insert(Bytes::copy_from_slice(name));
                Some(w)
            }
            b'B' => self.router.parsed(messages::bind_statement(body)).map(|p| p.words),
            _ => None,
        };
        match &mut self.mode {
            Mode::Strong(tx) => tx.units.push(tag, msg, words),
            _ => None,
        }
    }

    /// The reply to the last unit started a COPY.
    pub fn strong_copy(&mut self, by_execute: bool) {
        if let Mode::Strong(tx) = &mut self.mode {
            tx.units.copy_started(by_execute);
        }
    }

    /// The strong path is over: the session forwards again, with the transaction status the
    /// strong path left (`tx`), nothing in flight.
    pub fn strong_done(&mut self, tx: TxStatus, ddl: bool) {
        self.mode = Mode::Forwarding;
        self.router.ran_elsewhere();
        self.state.tx = tx;
        self.state.awaiting_ready = 0;
        self.state.unsynced = false;
        if ddl || self.state.ddl_pending {
            // The catalog may have changed: let the node read it again.
            self.state.ddl_pending = false;
            self.router.ddl_done();
        }
    }

    /// A transaction that began here turned strong and could not be moved: the next ones go to
    /// the strong path whole.
    pub fn prefer_leader(&mut self) {
        self.leader_first = true;
    }

    pub fn leader_first(&self) -> bool {
        self.leader_first
    }
}

/// Whether a statement that runs here leaves its transaction undecided: it reads and writes no
/// data (SET LOCAL, SAVEPOINT, SHOW, ...) and does not end the transaction.
fn undecides(d: &Decision) -> bool {
    d.class == Class::Local && d.words.word == TxWord::Other && d.route == Route::Local
}

/// `a` with `stand_in` as what goes to the backend, after whatever `release` put first.
fn replaced(a: Action, stand_in: &[u8]) -> Action {
    match a {
        Action::Forward => Action::Replace(BytesMut::from(stand_in)),
        other => other,
    }
}

/// The SQL text of a Parse message.
fn parse_text(msg: &[u8]) -> Vec<u8> {
    messages::parse_message(msg.get(5..).unwrap_or_default()).1.to_vec()
}

/// The error a refused statement gets.
fn refusal(reason: &str) -> ClientError {
    ClientError::error(code::FEATURE_NOT_SUPPORTED, reason.to_owned())
        .with_hint("Use plain BEGIN/COMMIT: pgmix commits strong transactions atomically on every node itself.")
}

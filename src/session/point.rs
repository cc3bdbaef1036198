//! The routing point: what the session does with each client message it looks at (Query,
//! Parse, Bind in a cluster, Sync, FunctionCall): forward it, replace it, answer it, or divert
//! it to the strong path (see `route` for the classification, `strong` for the strong path).

use bytes::BytesMut;

use super::answer::Answers;
use super::route::{Route, Router};
use super::state::{SessionState, TxStatus};
use crate::metrics::Metrics;
use crate::protocol::messages;
use crate::sqlstate::{ClientError, code};

/// What the session does with one client message.
pub(super) enum Action {
    Forward,
    /// Send this to the backend instead.
    Replace(BytesMut),
    /// Send nothing to the backend; send this to the client.
    Answer(BytesMut),
    /// Leave it unread: the strong path takes it, a statement of this class.
    Divert(crate::classify::Class),
    /// Leave it unread until the replies in flight are in, then decide.
    Hold,
}

/// The statement boundary: every Query and Parse passes the routing point here.
pub(super) struct Point<'a> {
    pub state: &'a mut SessionState,
    pub router: &'a mut Router,
    pub answers: &'a mut Answers,
    /// On a node of a cluster, where strong statements take the strong path.
    pub cluster: Option<Cluster<'a>>,
}

/// The session's strong-path state the routing point reads and changes.
pub(super) struct Cluster<'a> {
    pub deferred_begin: &'a mut Option<String>,
    pub sticky: &'a mut bool,
    pub swallow: &'a mut usize,
}

fn command_complete(tag: &str, status: u8) -> BytesMut {
    let mut b = BytesMut::new();
    b.extend_from_slice(b"C");
    b.extend_from_slice(&((4 + tag.len() + 1) as i32).to_be_bytes());
    b.extend_from_slice(tag.as_bytes());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&crate::strong::wire::ready(status));
    b
}

impl Cluster<'_> {
    /// Where a statement of `class` goes; None: on, to the local Postgres. `stand_in` makes the
    /// error a statement gets in place of its reply.
    fn route(
        &mut self,
        state: &mut SessionState,
        class: crate::classify::Class,
        stand_in: impl FnOnce(ClientError) -> BytesMut,
    ) -> Option<Action> {
        use crate::classify::Class;
        let strong = matches!(class, Class::StrongWrite | Class::Ddl | Class::StrongRead)
            || (*self.sticky && class != Class::Local);
        if !strong {
            return None;
        }
        if self.deferred_begin.is_some() || state.is_quiet() {
            return Some(Action::Divert(class));
        }
        // A strong read inside a transaction that began here runs here, behind the barrier.
        if class == Class::StrongRead
            && !*self.sticky
            && state.tx == TxStatus::InTransaction
            && state.awaiting_ready == 0
            && !state.unsynced
        {
            return Some(Action::Divert(class));
        }
        if state.tx == TxStatus::Idle && !state.unsynced {
            return Some(Action::Hold);
        }
        // A transaction that began here turned strong: it fails, and the next ones go to the
        // strong path from their start.
        *self.sticky = true;
        let e = ClientError::error(
            code::SERIALIZATION_FAILURE,
            "this transaction began with weak statements on this node and then touched strong data, which runs on the leader; it was not committed",
        )
        .with_hint("Retry the transaction: pgmix now runs this session's transactions on the leader from their start.");
        Some(Action::Replace(stand_in(e)))
    }

    /// A message about to go to the local Postgres, preceded by the BEGIN pgmix deferred.
    fn begin_first(&mut self, state: &mut SessionState, msg: &[u8]) -> Option<Action> {
        let begin = self.deferred_begin.take()?;
        let mut with = crate::strong::wire::query(&begin);
        with.extend_from_slice(msg);
        *self.swallow += 1;
        state.awaiting_ready += 1;
        Some(Action::Replace(with))
    }
}

impl Point<'_> {
    /// `msg`: the whole message; `can_answer`: the client's stream is between messages, so an
    /// answer may be put into it.
    pub(super) fn on_client_message(
        self,
        metrics: &Metrics,
        tag: u8,
        body: &[u8],
        msg: &[u8],
        can_answer: bool,
    ) -> Action {
        use crate::strong::wire::{TxWord, tx_word};
        let Point { state, router, answers, mut cluster } = self;
        match tag {
            b'Q' => {
                Metrics::inc(&metrics.queries_total);
                let text = messages::query_text(body);
                if let Some(c) = &mut cluster
                    && can_answer
                {
                    let word = tx_word(text);
                    if c.deferred_begin.is_some() && matches!(word, TxWord::Commit | TxWord::Rollback) {
                        // The transaction pgmix deferred never ran a statement.
                        *c.deferred_begin = None;
                        let tag = if word == TxWord::Commit { "COMMIT" } else { "ROLLBACK" };
                        return Action::Answer(command_complete(tag, b'I'));
                    }
                    if c.deferred_begin.is_none() && word == TxWord::Begin && state.is_quiet() {
                        *c.deferred_begin = Some(String::from_utf8_lossy(text).into_owned());
                        return Action::Answer(command_complete("BEGIN", b'T'));
                    }
                }
                let at_rest = state.is_quiet();
                let (class, route, reason) = router.route_query(text, at_rest);
                if route != Route::Refuse
                    && let Some(c) = &mut cluster
                    && let Some(a) = c.route(state, class, |e| answers.stand_in_query(e))
                {
                    if matches!(a, Action::Replace(_)) {
                        state.awaiting_ready += 1;
                    }
                    return a;
                }
                state.ddl_pending |= class == crate::classify::Class::Ddl;
                let begin_first = cluster.as_mut().and_then(|c| c.begin_first(state, msg));
                if route == Route::Refuse {
                    let e = refusal(&reason);
                    if at_rest && can_answer && begin_first.is_none() {
                        return Action::Answer(Answers::direct(&e, b'I'));
                    }
                    state.awaiting_ready += 1;
                    let mut stand_in = match begin_first {
                        Some(Action::Replace(mut with)) => {
                            with.truncate(with.len() - msg.len());
                            with
                        }
                        _ => BytesMut::new(),
                    };
                    stand_in.extend_from_slice(&answers.stand_in_query(e));
                    return Action::Replace(stand_in);
                }
                state.awaiting_ready += 1;
                begin_first.unwrap_or(Action::Forward)
            }
            b'P' => {
                Metrics::inc(&metrics.parses_total);
                let (name, sql) = messages::parse_message(body);
                let (class, route, reason) = router.route_parse(name, sql, msg);
                if route != Route::Refuse
                    && let Some(c) = &mut cluster
                    && let Some(a) = c.route(state, class, |e| answers.stand_in_parse(name, e))
                {
                    if matches!(a, Action::Replace(_)) {
                        state.unsynced = true;
                    }
                    return a;
                }
                state.unsynced = true;
                state.ddl_pending |= class == crate::classify::Class::Ddl;
                if route == Route::Refuse {
                    return Action::Replace(answers.stand_in_parse(name, refusal(&reason)));
                }
                cluster.as_mut().and_then(|c| c.begin_first(state, msg)).unwrap_or(Action::Forward)
            }
            b'B' if cluster.is_some() => {
                if let Some(class) = router.parsed_class(super::strong::bind_statement(body))
                    && let Some(c) = &mut cluster
                    && let Some(a) = c.route(state, class, |e| answers.stand_in_parse(b"", e))
                {
                    if matches!(a, Action::Replace(_)) {
                        state.unsynced = true;
                    }
                    return a;
                }
                state.note_extended(tag);
                cluster.as_mut().and_then(|c| c.begin_first(state, msg)).unwrap_or(Action::Forward)
            }
            b'S' => {
                state.awaiting_ready += 1;
                state.unsynced = false;
                cluster.as_mut().and_then(|c| c.begin_first(state, msg)).unwrap_or(Action::Forward)
            }
            b'F' => {
                // A fast-path function call (libpq's large-object API uses them) is answered with its
                // own ReadyForQuery, and is a statement too.
                state.awaiting_ready += 1;
                router.route_function_call();
                cluster.as_mut().and_then(|c| c.begin_first(state, msg)).unwrap_or(Action::Forward)
            }
            other => {
                state.note_extended(other);
                cluster.as_mut().and_then(|c| c.begin_first(state, msg)).unwrap_or(Action::Forward)
            }
        }
    }
}

/// The error a refused statement gets.
fn refusal(reason: &str) -> ClientError {
    ClientError::error(code::FEATURE_NOT_SUPPORTED, reason.to_owned())
        .with_hint("Use plain BEGIN/COMMIT: pgmix commits strong transactions atomically on every node itself.")
}

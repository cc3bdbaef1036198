//! The client's prepared statements where a strong unit runs. A unit names statements the
//! client prepared earlier, perhaps elsewhere (on this node's backend, on another leader's relay
//! session); where it runs they may be missing, or there with an older text. These put the
//! Parse (and Close) each needs in front of the unit and say how many replies to drop.

use std::borrow::Cow;
use std::collections::HashSet;

use bytes::{Bytes, BytesMut};

use super::Session;
use crate::protocol::{codec, messages};

/// Prepends a Close and a Parse for each statement the unit binds that the relay session does
/// not have as the client last prepared it (the unnamed statement never lasts there past a unit:
/// pgmix's own statements on the relay session replace it), and a Close before each named Parse
/// of a name the relay session has; returns the unit and how many replies to drop from the front
/// of the answer.
pub(super) fn with_statements(s: &mut Session, unit: &[u8]) -> (BytesMut, usize) {
    let mut pre = BytesMut::new();
    let mut injected = 0;
    let mut parsed_here: HashSet<Bytes> = HashSet::new();
    for (tag, body) in messages::iter(unit) {
        match tag {
            b'P' => {
                let name = Bytes::copy_from_slice(messages::parse_message(body).0);
                if !name.is_empty() && s.relay.prepared.contains_key(&name) && !parsed_here.contains(&name) {
                    codec::close_statement(&name, &mut pre);
                    injected += 1;
                }
                if let Some(seq) = s.core.router.parsed(&name).map(|p| p.seq)
                    && !name.is_empty()
                {
                    s.relay.prepared.insert(name.clone(), seq);
                }
                parsed_here.insert(name);
            }
            b'B' | b'D' => {
                let name = match tag {
                    b'B' => messages::bind_statement(body),
                    _ => match messages::target(body) {
                        (b'S', name) => name,
                        _ => continue,
                    },
                };
                let name = Bytes::copy_from_slice(name);
                let Some((seq, parse)) = s.core.router.parsed(&name).map(|p| (p.seq, p.message.clone())) else {
                    continue;
                };
                let there = !name.is_empty() && s.relay.prepared.get(&name) == Some(&seq);
                if parsed_here.contains(&name) || there {
                    continue;
                }
                if !name.is_empty() {
                    codec::close_statement(&name, &mut pre);
                    injected += 1;
                    s.relay.prepared.insert(name.clone(), seq);
                }
                pre.extend_from_slice(&parse);
                injected += 1;
                parsed_here.insert(name);
            }
            b'C' if messages::target(body).0 == b'S' => {
                s.relay.prepared.remove(messages::target(body).1);
            }
            _ => {}
        }
    }
    pre.extend_from_slice(unit);
    (pre, injected)
}

/// On this node's own backend the client's unnamed statement does not outlast a unit either:
/// pgmix's own statements between units (a commit's, a BEGIN's) replace it. Prepends its Parse
/// when the unit binds or describes it before parsing it; returns the unit and how many
/// replies to drop from the front of the answer.
pub(super) fn with_unnamed<'a>(s: &Session, unit: &'a [u8]) -> (Cow<'a, [u8]>, usize) {
    match s.core.router.parsed(b"") {
        Some(p) => with_parse(&p.message, unit),
        None => (Cow::Borrowed(unit), 0),
    }
}

/// `unit` with `parse` (a Parse of the unnamed statement) in front when the unit binds or
/// describes the unnamed statement before it parses one; and how many replies that adds.
pub(super) fn with_parse<'a>(parse: &[u8], unit: &'a [u8]) -> (Cow<'a, [u8]>, usize) {
    if !unnamed(unit).0 {
        return (Cow::Borrowed(unit), 0);
    }
    let mut out = Vec::with_capacity(parse.len() + unit.len());
    out.extend_from_slice(parse);
    out.extend_from_slice(unit);
    (Cow::Owned(out), 1)
}

/// Whether `unit` uses the unnamed statement before it parses one, and the last Parse of it in
/// the unit (what the backend has as the unnamed statement after the unit).
pub(super) fn unnamed(unit: &[u8]) -> (bool, Option<Vec<u8>>) {
    let mut used_first = false;
    let mut parsed = false;
    let mut last = None;
    for (tag, body) in messages::iter(unit) {
        let name = match tag {
            b'P' => messages::parse_message(body).0,
            b'B' => messages::bind_statement(body),
            b'D' => match messages::target(body) {
                (b'S', name) => name,
                _ => continue,
            },
            _ => continue,
        };
        if !name.is_empty() {
            continue;
        }
        if tag == b'P' {
            parsed = true;
            let mut m = Vec::with_capacity(body.len() + 5);
            m.push(b'P');
            m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            m.extend_from_slice(body);
            last = Some(m);
        } else if !parsed {
            used_first = true;
        }
    }
    (used_first, last)
}

/// Drops the first `n` replies (the CloseComplete and ParseComplete of injected statements).
pub(super) fn drop_injected(reply: &[u8], n: usize) -> &[u8] {
    let mut at = 0;
    for _ in 0..n {
        match reply.get(at) {
            Some(b'3' | b'1') => at += 5,
            _ => break,
        }
    }
    &reply[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        msg(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
    }

    fn bind(name: &str) -> Vec<u8> {
        msg(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes())
    }

    fn describe(name: &str) -> Vec<u8> {
        msg(b'D', format!("S{name}\0").as_bytes())
    }

    #[test]
    fn a_unit_that_uses_the_unnamed_statement_first_gets_its_parse_in_front() {
        let p = parse("", "SELECT 1");
        let unit = [describe(""), msg(b'S', b"")].concat();
        assert_eq!(unnamed(&unit), (true, None));
        let (with, n) = with_parse(&p, &unit);
        assert_eq!((&with[..], n), (&[p.clone(), unit.clone()].concat()[..], 1));
        // Parsed in the unit before it is bound: nothing to add; the unit's Parse is what lasts.
        let unit = [parse("", "SELECT 2"), bind(""), parse("", "SELECT 3"), msg(b'S', b"")].concat();
        assert_eq!(unnamed(&unit), (false, Some(parse("", "SELECT 3"))));
        assert_eq!(with_parse(&p, &unit).1, 0);
        // Named statements are not the unnamed one.
        let unit = [bind("s1"), describe("s1")].concat();
        assert_eq!(unnamed(&unit), (false, None));
    }

    #[test]
    fn injected_replies_are_dropped_from_the_front_only() {
        let reply = [msg(b'3', b""), msg(b'1', b""), msg(b'1', b""), msg(b'Z', b"I")].concat();
        assert_eq!(drop_injected(&reply, 2), &[msg(b'1', b""), msg(b'Z', b"I")].concat()[..]);
        assert_eq!(drop_injected(&msg(b'E', b"x"), 1), &msg(b'E', b"x")[..]);
    }
}

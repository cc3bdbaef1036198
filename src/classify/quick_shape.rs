//! A cheap shape key for the class cache, without the tokenizer.
//!
//! `split::shape` tokenizes with sqlparser (most of the cost of a cache hit for a text not seen
//! verbatim). This scanner reads only what it can read with certainty: plain string literals
//! (`'...'` with `''` inside) and runs of digits that start a token are replaced by a mark, and
//! everything else is kept verbatim, comments and quoted identifiers included. A text holding
//! anything else a literal could hide in (a backslash, dollar quoting, a prefixed literal such as
//! `E'...'`, nested comments) gets None, and the cache falls back to the tokenizer. Two texts with
//! the same key therefore differ only inside literals; a test checks that sqlparser sees the same
//! token shape for them.

use std::ops::Range;

const MARK: char = '\u{1}';

/// The key, or None when the text needs the tokenizer.
#[cfg(test)]
pub fn quick_shape(sql: &str) -> Option<String> {
    scan(sql, "").map(|(key, _)| key)
}

/// The cache's key for a text holding literals: `prefix`, then the shape. None when the text
/// needs the tokenizer, or holds no literal (then the text itself is its key).
pub fn quick_key(sql: &str, prefix: &str) -> Option<String> {
    scan(sql, prefix).filter(|(_, masked)| !masked.is_empty()).map(|(key, _)| key)
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// The key and the byte ranges it masked.
fn scan(sql: &str, prefix: &str) -> Option<(String, Vec<Range<usize>>)> {
    let mut key = String::with_capacity(prefix.len() + sql.len());
    key.push_str(prefix);
    let mut masked = Vec::new();
    let mut chars = sql.char_indices().peekable();
    let mut prev: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => return None,
            '\'' => {
                // E'..', B'..', X'..', N'..' and the like follow other rules.
                if prev.is_some_and(is_ident_char) {
                    return None;
                }
                let end = loop {
                    match chars.next() {
                        None | Some((_, '\\')) => return None,
                        Some((j, '\'')) => {
                            if chars.peek().is_some_and(|&(_, n)| n == '\'') {
                                chars.next();
                            } else {
                                break j + 1;
                            }
                        }
                        Some(_) => {}
                    }
                };
                key.push(MARK);
                masked.push(i..end);
                prev = Some('\'');
                continue;
            }
            '"' => {
                key.push('"');
                loop {
                    match chars.next() {
                        None => return None,
                        Some((_, '"')) if chars.peek().is_some_and(|&(_, n)| n == '"') => {
                            chars.next();
                            key.push_str("\"\"");
                        }
                        Some((_, '"')) => break,
                        Some((_, ch)) => key.push(ch),
                    }
                }
                key.push('"');
            }
            '-' if chars.peek().is_some_and(|&(_, n)| n == '-') => {
                key.push(c);
                for (_, ch) in chars.by_ref() {
                    key.push(ch);
                    if ch == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek().is_some_and(|&(_, n)| n == '*') => {
                chars.next();
                key.push_str("/*");
                let mut last = ' ';
                loop {
                    match chars.next() {
                        None => return None,
                        Some((_, '*')) if last == '/' => return None,
                        Some((_, '/')) if last == '*' => break,
                        Some((_, ch)) => {
                            key.push(ch);
                            last = ch;
                        }
                    }
                }
                key.push('/');
            }
            '$' => {
                // Only `$1`-style placeholders; `$tag$` quoting needs the tokenizer.
                if prev.is_some_and(is_ident_char) || !chars.peek().is_some_and(|&(_, n)| n.is_ascii_digit()) {
                    return None;
                }
                key.push('$');
                while let Some(&(_, d)) = chars.peek().filter(|&&(_, d)| d.is_ascii_digit()) {
                    key.push(d);
                    chars.next();
                }
                prev = Some('0');
                continue;
            }
            d if d.is_ascii_digit() && !prev.is_some_and(is_ident_char) => {
                let mut end = i + 1;
                while let Some(&(j, n)) = chars.peek().filter(|&&(_, n)| n.is_ascii_digit()) {
                    end = j + n.len_utf8();
                    chars.next();
                }
                // `0x1F`, `1e5`, `1_000`, `10abc`: where the number ends is the tokenizer's call.
                if chars.peek().is_some_and(|&(_, n)| is_ident_char(n)) {
                    return None;
                }
                key.push(MARK);
                masked.push(i..end);
                prev = Some('0');
                continue;
            }
            other => key.push(other),
        }
        prev = Some(c);
    }
    Some((key, masked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::split;

    #[test]
    fn literals_are_masked_and_everything_else_kept() {
        assert_eq!(
            quick_shape("SELECT a FROM t WHERE id = 42 AND s = 'it''s' -- 'x'\n"),
            Some(format!("SELECT a FROM t WHERE id = {MARK} AND s = {MARK} -- 'x'\n"))
        );
        assert_eq!(
            quick_shape("SELECT t1.c2, \"x'1\" FROM t1 WHERE a = $1"),
            Some("SELECT t1.c2, \"x'1\" FROM t1 WHERE a = $1".into())
        );
        assert_eq!(quick_key("SELECT 1", "p:"), Some(format!("p:SELECT {MARK}")));
        assert_eq!(quick_key("SELECT a FROM t", "p:"), None, "no literal: the text is its own key");
        for needs_tokenizer in [
            "SELECT 0x1F",
            "SELECT 1e5",
            "SELECT 10abc",
            "SELECT E'a\\nb'",
            "SELECT 'a\\'",
            "SELECT $$x$$",
            "SELECT $tag$x$tag$",
            "SELECT X'1F'",
            "SELECT 'open",
            "SELECT \"open",
            "SELECT /* a /* nested */ */ 1",
            "SELECT /* open",
        ] {
            assert_eq!(quick_shape(needs_tokenizer), None, "{needs_tokenizer}");
        }
    }

    /// Texts with one quick key differ only in what the scanner masked; sqlparser must then see
    /// one token shape for them, or the cache would share an entry between texts that can
    /// classify differently. Each masked region is rewritten with content full of traps.
    #[test]
    fn texts_with_one_quick_key_have_one_token_shape() {
        let mut texts: Vec<String> = crate::classify::cases::cases().into_iter().map(|c| c.3).collect();
        texts.extend(
            [
                "SELECT a FROM t WHERE s = '-- not a comment' AND n = 10",
                "SELECT a FROM t WHERE s = '/* not a comment */' -- it's a comment",
                "SELECT \"we'ird\" FROM t WHERE b = 'x' /* 'y' */ AND c = 3.14",
                "UPDATE t SET a = 1 WHERE b = 'a;b' RETURNING c",
                "SELECT 1e5, 0.5, .5, 5., x1, y_2 FROM t2 WHERE z = $12",
                "SELECT 10abc, 1e5x, 0x1F, 1_000, 2e-3 FROM t WHERE café1 = 7",
                "SELECT 'a'\n'b' AS c, U&'d' FROM t",
            ]
            .map(String::from),
        );
        let traps = ["'x'' ; -- /* \" $1 '' y'", "''", "'; DROP TABLE t; --'"];
        let mut checked = 0;
        for (n, text) in texts.iter().enumerate() {
            let Some((key, masked)) = scan(text, "") else { continue };
            let Ok(tokens) = split::tokenize(text) else { continue };
            let mut variant = String::new();
            let mut at = 0;
            for r in &masked {
                variant.push_str(&text[at..r.start]);
                if text[r.clone()].starts_with('\'') {
                    variant.push_str(traps[n % traps.len()]);
                } else {
                    variant.push_str("987");
                }
                at = r.end;
            }
            variant.push_str(&text[at..]);
            assert_eq!(quick_shape(&variant), Some(key), "{variant}");
            let variant_tokens = split::tokenize(&variant).expect("the variant tokenizes");
            assert_eq!(split::shape(&tokens), split::shape(&variant_tokens), "\n{text}\n{variant}");
            checked += 1;
        }
        assert!(checked >= 200, "{checked}");
    }
}

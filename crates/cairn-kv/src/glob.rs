//! Redis's glob patterns (SCAN MATCH, CONFIG GET): `*`, `?`, `[abc]`, `[^a-z]` and `\` escapes,
//! matched on bytes without backtracking blow-up (a `*` only ever resumes from its last position).

enum Token {
    Star,
    Any,
    Byte(u8),
    /// A bracket class: byte ranges, negated or not.
    Class(Vec<(u8, u8)>, bool),
}

pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    pub fn new(pattern: &[u8]) -> Self {
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < pattern.len() {
            let c = pattern[i];
            i += 1;
            match c {
                b'*' => {
                    if !matches!(tokens.last(), Some(Token::Star)) {
                        tokens.push(Token::Star);
                    }
                }
                b'?' => tokens.push(Token::Any),
                b'\\' if i < pattern.len() => {
                    tokens.push(Token::Byte(pattern[i]));
                    i += 1;
                }
                b'[' => {
                    let negate = pattern.get(i) == Some(&b'^');
                    if negate {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    // An unterminated class runs to the end of the pattern, as in Redis.
                    while i < pattern.len() && pattern[i] != b']' {
                        let mut lo = pattern[i];
                        if lo == b'\\' && i + 1 < pattern.len() {
                            i += 1;
                            lo = pattern[i];
                        }
                        if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
                            let hi = pattern[i + 2];
                            ranges.push((lo.min(hi), lo.max(hi)));
                            i += 3;
                        } else {
                            ranges.push((lo, lo));
                            i += 1;
                        }
                    }
                    i += 1;
                    tokens.push(Token::Class(ranges, negate));
                }
                other => tokens.push(Token::Byte(other)),
            }
        }
        Self { tokens }
    }

    /// Whether the pattern matches all of `s`.
    pub fn matches(&self, s: &[u8]) -> bool {
        let one = |t: &Token, b: u8| match t {
            Token::Any => true,
            Token::Byte(x) => *x == b,
            Token::Class(ranges, negate) => ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&b)) != *negate,
            Token::Star => false,
        };
        let (mut t, mut i) = (0, 0);
        let mut resume: Option<(usize, usize)> = None;
        while i < s.len() {
            match self.tokens.get(t) {
                Some(Token::Star) => {
                    resume = Some((t, i));
                    t += 1;
                }
                Some(tok) if one(tok, s[i]) => {
                    t += 1;
                    i += 1;
                }
                _ => match resume {
                    // Let the last `*` take one more byte and try again from there.
                    Some((st, si)) => {
                        resume = Some((st, si + 1));
                        t = st + 1;
                        i = si + 1;
                    }
                    None => return false,
                },
            }
        }
        self.tokens[t..].iter().all(|tok| matches!(tok, Token::Star))
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p.as_bytes()).matches(s.as_bytes())
    }

    #[test]
    fn redis_patterns() {
        assert!(m("*", "") && m("*", "abc"));
        assert!(m("h?llo", "hello") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "heeeello") && m("h*llo", "hllo"));
        assert!(m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("h[b-a]llo", "hallo"));
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("*a*a*a*a*a*a*b", &format!("{}b", "a".repeat(40))));
        assert!(!m("*a*a*a*a*a*a*b", &"a".repeat(4000)));
        assert!(m("user:*:name", "user:42:name") && !m("user:*:name", "user:42:age"));
    }
}

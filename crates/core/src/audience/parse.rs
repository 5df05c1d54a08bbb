//! The rule language's syntax: text to an untyped tree, every node with
//! the character position it starts at, so a refusal can say where.

use super::{Cmp as Op, RuleError};

/// An untyped rule, as written.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    /// `measure` alone: a yes/no measure.
    Test(Call),
    /// `measure op value`.
    Compare(Call, Op, Literal),
}

/// A measure with its arguments: `orders(within=7d, channel=STORE_POS)`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Call {
    pub name: String,
    pub at: usize,
    pub args: Vec<Arg>,
}

/// `name=value`, or a value alone.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Arg {
    pub name: Option<String>,
    pub value: Literal,
}

/// A value as written, with where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Literal {
    pub at: usize,
    pub kind: LiteralKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum LiteralKind {
    /// A number as written (`3`, `2000.50`).
    Number(String),
    /// `7d`, `12h`, `30m`, in milliseconds.
    Duration(i64),
    /// `"shoes"`.
    Text(String),
    /// An upper-case name: `GOLD`, `MOBILE_APP`, `PHONE`.
    Name(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Number(String),
    Duration(i64),
    Text(String),
    Op(Op),
    Open,
    Close,
    Comma,
    Assign,
}

/// Splits `src` into tokens with their positions.
fn tokens(src: &str) -> Result<Vec<(usize, Token)>, RuleError> {
    let chars: Vec<(usize, char)> = src.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&(at, c)) = chars.get(i) {
        let next = chars.get(i + 1).map(|(_, c)| *c);
        let (token, len) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('(', _) => (Token::Open, 1),
            (')', _) => (Token::Close, 1),
            (',', _) => (Token::Comma, 1),
            ('=', Some('=')) => (Token::Op(Op::Eq), 2),
            ('!', Some('=')) => (Token::Op(Op::Ne), 2),
            ('<', Some('=')) => (Token::Op(Op::Le), 2),
            ('>', Some('=')) => (Token::Op(Op::Ge), 2),
            ('<', _) => (Token::Op(Op::Lt), 1),
            ('>', _) => (Token::Op(Op::Gt), 1),
            ('=', _) => (Token::Assign, 1),
            ('"', _) => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|(_, c)| *c == '"')
                    .ok_or_else(|| RuleError::at(at, "a text is not closed: end it with `\"`"))?;
                let text: String = chars[i + 1..i + 1 + end].iter().map(|(_, c)| c).collect();
                (Token::Text(text), end + 2)
            }
            (c, _) if c.is_ascii_digit() => number(&chars[i..], at)?,
            (c, _) if c.is_alphabetic() || c == '_' => {
                let len = chars[i..].iter().take_while(|(_, c)| c.is_alphanumeric() || *c == '_' || *c == '.').count();
                (Token::Word(chars[i..i + len].iter().map(|(_, c)| c).collect()), len)
            }
            (c, _) => return Err(RuleError::at(at, format!("unexpected `{c}`"))),
        };
        out.push((at, token));
        i += len;
    }
    Ok(out)
}

/// A number, or a duration when a unit follows it (`7d`, `12h`, `30m`).
fn number(chars: &[(usize, char)], at: usize) -> Result<(Token, usize), RuleError> {
    let len = chars.iter().take_while(|(_, c)| c.is_ascii_digit() || *c == '.').count();
    let digits: String = chars[..len].iter().map(|(_, c)| c).collect();
    let unit = chars.get(len).map(|(_, c)| *c).filter(|c| c.is_alphabetic());
    let Some(unit) = unit else { return Ok((Token::Number(digits), len)) };
    let per = match unit {
        'd' => crate::time::DAY,
        'h' => crate::time::HOUR,
        'm' => 60_000,
        other => return Err(RuleError::at(at, format!("unknown unit `{other}`: durations are like 7d, 12h or 30m"))),
    };
    let n: i64 = digits
        .parse()
        .ok()
        .filter(|n| *n <= 100_000)
        .ok_or_else(|| RuleError::at(at, format!("`{digits}{unit}`: a duration is a whole number up to 100000")))?;
    Ok((Token::Duration(n * per), len + 1))
}

/// Parses a rule: `or` is weakest, then `and`, then `not`.
pub(super) fn parse(src: &str) -> Result<Expr, RuleError> {
    let mut p = Parser { tokens: tokens(src)?, next: 0, end: src.len() };
    let e = p.or()?;
    match p.peek() {
        None => Ok(e),
        Some((at, t)) => Err(RuleError::at(at, format!("unexpected {} after a complete rule", describe(t)))),
    }
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    end: usize,
}

fn describe(t: &Token) -> String {
    match t {
        Token::Word(w) => format!("`{w}`"),
        Token::Number(n) => format!("`{n}`"),
        Token::Duration(_) => "a duration".into(),
        Token::Text(t) => format!("\"{t}\""),
        Token::Op(op) => format!("`{}`", op.symbol()),
        Token::Open => "`(`".into(),
        Token::Close => "`)`".into(),
        Token::Comma => "`,`".into(),
        Token::Assign => "`=` (compare with `==`)".into(),
    }
}

impl Parser {
    fn peek(&self) -> Option<(usize, &Token)> {
        self.tokens.get(self.next).map(|(at, t)| (*at, t))
    }

    fn take(&mut self) -> Option<(usize, Token)> {
        let t = self.tokens.get(self.next).cloned();
        self.next += usize::from(t.is_some());
        t
    }

    fn word(&self, w: &str) -> bool {
        matches!(self.peek(), Some((_, Token::Word(x))) if x == w)
    }

    fn eat(&mut self, want: &Token, what: &str) -> Result<(), RuleError> {
        match self.take() {
            Some((_, t)) if &t == want => Ok(()),
            Some((at, t)) => Err(RuleError::at(at, format!("expected {what}, found {}", describe(&t)))),
            None => Err(RuleError::at(self.end, format!("expected {what} at the end"))),
        }
    }

    fn or(&mut self) -> Result<Expr, RuleError> {
        let mut all = vec![self.and()?];
        while self.word("or") {
            self.next += 1;
            all.push(self.and()?);
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Expr::Or(all) })
    }

    fn and(&mut self) -> Result<Expr, RuleError> {
        let mut all = vec![self.not()?];
        while self.word("and") {
            self.next += 1;
            all.push(self.not()?);
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Expr::And(all) })
    }

    fn not(&mut self) -> Result<Expr, RuleError> {
        if self.word("not") {
            self.next += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        if matches!(self.peek(), Some((_, Token::Open))) {
            self.next += 1;
            let e = self.or()?;
            self.eat(&Token::Close, "`)`")?;
            return Ok(e);
        }
        let call = self.call()?;
        match self.peek() {
            Some((_, Token::Op(op))) => {
                let op = *op;
                self.next += 1;
                Ok(Expr::Compare(call, op, self.literal()?))
            }
            _ => Ok(Expr::Test(call)),
        }
    }

    fn call(&mut self) -> Result<Call, RuleError> {
        let (at, name) = match self.take() {
            Some((at, Token::Word(w))) if !matches!(w.as_str(), "and" | "or" | "not") => (at, w),
            Some((at, t)) => {
                return Err(RuleError::at(
                    at,
                    format!("expected a measure (such as `tier` or `orders`), found {}", describe(&t)),
                ));
            }
            None => return Err(RuleError::at(self.end, "the rule ends where a measure was expected")),
        };
        let mut args = Vec::new();
        if matches!(self.peek(), Some((_, Token::Open))) {
            self.next += 1;
            while !matches!(self.peek(), Some((_, Token::Close))) {
                if !args.is_empty() {
                    self.eat(&Token::Comma, "`,` or `)`")?;
                }
                args.push(self.arg()?);
            }
            self.next += 1;
        }
        Ok(Call { name, at, args })
    }

    fn arg(&mut self) -> Result<Arg, RuleError> {
        if let (Some((_, Token::Word(w))), Some((_, Token::Assign))) = (self.peek(), self.tokens.get(self.next + 1)) {
            let name = w.clone();
            self.next += 2;
            return Ok(Arg { name: Some(name), value: self.literal()? });
        }
        Ok(Arg { name: None, value: self.literal()? })
    }

    fn literal(&mut self) -> Result<Literal, RuleError> {
        let (at, kind) = match self.take() {
            Some((at, Token::Number(n))) => (at, LiteralKind::Number(n)),
            Some((at, Token::Duration(d))) => (at, LiteralKind::Duration(d)),
            Some((at, Token::Text(t))) => (at, LiteralKind::Text(t)),
            Some((at, Token::Word(w))) => (at, LiteralKind::Name(w)),
            Some((at, t)) => return Err(RuleError::at(at, format!("expected a value, found {}", describe(&t)))),
            None => return Err(RuleError::at(self.end, "the rule ends where a value was expected")),
        };
        Ok(Literal { at, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let e = parse("tier >= GOLD or not enrolled and orders(within=7d) == 0").unwrap();
        let Expr::Or(parts) = e else { panic!("{e:?}") };
        assert!(matches!(&parts[0], Expr::Compare(c, Op::Ge, _) if c.name == "tier"));
        let Expr::And(rest) = &parts[1] else { panic!("{parts:?}") };
        assert!(matches!(&rest[0], Expr::Not(_)));
        let Expr::Compare(call, Op::Eq, lit) = &rest[1] else { panic!("{rest:?}") };
        assert_eq!(call.args[0].name.as_deref(), Some("within"));
        assert_eq!(call.args[0].value.kind, LiteralKind::Duration(7 * crate::time::DAY));
        assert_eq!(lit.kind, LiteralKind::Number("0".into()));
    }

    #[test]
    fn mistakes_say_where_and_what() {
        for (src, at, says) in [
            ("tier >= ", 8, "a value was expected"),
            ("orders(within=7d", 16, "`,` or `)`"),
            ("tier = GOLD", 5, "compare with `==`"),
            ("trait(\"city) == 1", 6, "not closed"),
            ("orders(within=7w) > 1", 14, "unknown unit"),
            ("(tier > GOLD", 12, "expected `)`"),
            ("tier > GOLD GOLD", 12, "after a complete rule"),
            ("and tier", 0, "expected a measure"),
            ("tier # 1", 5, "unexpected `#`"),
        ] {
            let e = parse(src).unwrap_err();
            assert_eq!(e.at, at, "{src}: {e}");
            assert!(e.message.contains(says), "{src}: {e}");
        }
    }
}

//! The subscription filter language.
//!
//! ```text
//! filter     := or_expr
//! or_expr    := and_expr ( "or" and_expr )*
//! and_expr   := term ( "and" term )*
//! term       := "(" or_expr ")" | "exists" "(" property ")" | property op value
//! op         := "==" | "!=" | "<" | "<=" | ">" | ">="
//! property   := identifier ( "." identifier )+
//! value      := "string" | 'string' | integer | decimal | true | false | ts'RFC3339'
//! ```
//!
//! The pipeline is: [`parse`] text into an [`Expr`] (the AST, kept as written apart from
//! redundant parentheses and directly nested `and`/`or`, which are flattened), then
//! [`Expr::normalize`] it into a [`Filter`], the OR-of-ANDs normal form that is stored in
//! the database and evaluated on the routing hot path. [`compile`] does both and also
//! checks literals against the declared types of the properties.
//!
//! Evaluation is typed through [`Value::compare`]: a comparison between incomparable
//! types is false, and so is any comparison with a missing property (`!=` included);
//! `exists(p)` is true iff `p` is present.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::value::{validate_property_name, PropertyType, Value};

/// Most conjunctions (or-branches) a filter's normal form may have.
pub const MAX_CONJUNCTIONS: usize = 256;

/// Deepest nesting of parentheses the parser accepts (keeps recursion bounded).
const MAX_DEPTH: usize = 64;

/// Longest token text quoted back in an error message, in characters.
const MAX_QUOTED_CHARS: usize = 30;

// ---------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    /// `<`, `<=`, `>`, `>=` (not allowed on booleans).
    pub fn is_ordering(self) -> bool {
        !matches!(self, Op::Eq | Op::Ne)
    }

    /// Whether `left op right` holds, given `left.compare(right)`.
    pub fn holds(self, ordering: Ordering) -> bool {
        match self {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Lt => ordering == Ordering::Less,
            Op::Le => ordering != Ordering::Greater,
            Op::Gt => ordering == Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One atomic condition on a message's context.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Predicate {
    Exists {
        property: String,
    },
    Compare {
        property: String,
        op: Op,
        value: Value,
    },
}

impl Predicate {
    /// The property this predicate looks at.
    pub fn property(&self) -> &str {
        match self {
            Predicate::Exists { property } | Predicate::Compare { property, .. } => property,
        }
    }

    /// Evaluates the predicate given the property's value (`None` = missing).
    pub fn matches(&self, actual: Option<&Value>) -> bool {
        match self {
            Predicate::Exists { .. } => actual.is_some(),
            Predicate::Compare { op, value, .. } => {
                let Some(actual) = actual else {
                    return false; // missing: every comparison is false, `!=` included
                };
                // Booleans compare only for equality. The parser refuses `<` on boolean
                // literals; this guards filters built or deserialised by other means.
                if op.is_ordering()
                    && (matches!(actual, Value::Boolean(_)) || matches!(value, Value::Boolean(_)))
                {
                    return false;
                }
                actual.compare(value).is_some_and(|o| op.holds(o))
            }
        }
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Predicate::Exists { property } => write!(f, "exists({property})"),
            Predicate::Compare {
                property,
                op,
                value,
            } => {
                write!(f, "{property} {op} ")?;
                write_literal(f, value)
            }
        }
    }
}

/// The filter as parsed (the AST).
///
/// Trees produced by [`parse`] have `Or`/`And` nodes with at least two children and never
/// a child of the same kind as its parent; hand-built trees may differ (an empty `Or` is
/// false, an empty `And` is true), but only parser-shaped trees have a text form that
/// parses back to an equal tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Pred(Predicate),
}

/// The normal form stored in the database: OR of ANDs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub any_of: Vec<Vec<Predicate>>,
}

/// A filter that does not parse, type-check or normalise. `column` is the 1-based
/// character column the problem was found at, when there is one; the message already
/// names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter: {message}")]
pub struct FilterError {
    pub column: Option<usize>,
    pub message: String,
}

impl FilterError {
    /// An error at `column`; `message` must already say "at column N".
    fn at(column: usize, message: String) -> Self {
        FilterError {
            column: Some(column),
            message,
        }
    }

    fn general(message: impl Into<String>) -> Self {
        FilterError {
            column: None,
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------

/// Parses filter text into its AST.
pub fn parse(input: &str) -> Result<Expr, FilterError> {
    parse_with_sites(input).map(|(expr, _)| expr)
}

/// Parses, type-checks comparisons against declared property types, and normalises.
///
/// `declared` gives a property's declared type, `None` for an undeclared property (a
/// string at runtime; comparing it with a non-string literal is allowed and just false).
pub fn compile(
    input: &str,
    declared: &dyn Fn(&str) -> Option<PropertyType>,
) -> Result<Filter, FilterError> {
    let (expr, sites) = parse_with_sites(input)?;
    for site in &sites {
        if let Some(ty) = declared(&site.property) {
            check_declared_type(site, ty)?;
        }
    }
    expr.normalize()
}

impl Expr {
    /// Reference evaluation, straight over the tree. `lookup` gives a property's value
    /// (`None` = missing). Routing uses [`Filter::eval`]; this one is for tests and tools.
    pub fn eval<F>(&self, lookup: F) -> bool
    where
        F: Fn(&str) -> Option<Value>,
    {
        self.eval_dyn(&lookup)
    }

    fn eval_dyn(&self, lookup: &dyn Fn(&str) -> Option<Value>) -> bool {
        match self {
            Expr::Or(children) => children.iter().any(|c| c.eval_dyn(lookup)),
            Expr::And(children) => children.iter().all(|c| c.eval_dyn(lookup)),
            Expr::Pred(p) => p.matches(lookup(p.property()).as_ref()),
        }
    }

    /// Distributes the expression into OR-of-ANDs.
    ///
    /// Nested `or`/`and` are flattened; a predicate repeated within a conjunction is kept
    /// once, and so is a conjunction repeated (as a set of predicates), each at its first
    /// occurrence. More than [`MAX_CONJUNCTIONS`] conjunctions is an error; the count is
    /// checked while distributing, so a huge product is refused without being built. (A
    /// product that would only shrink back under the limit through later de-duplication
    /// is refused as well; such filters are contrived.)
    pub fn normalize(&self) -> Result<Filter, FilterError> {
        let mut interner = Interner::default();
        let conjunctions = dnf(self, &mut interner)?;
        if conjunctions.is_empty() || conjunctions.iter().any(|c| c.order.is_empty()) {
            // Only hand-built trees (empty `Or`/`And`) get here.
            return Err(FilterError::general("empty filter"));
        }
        let any_of = conjunctions
            .into_iter()
            .map(|c| {
                c.order
                    .into_iter()
                    .map(|id| interner.predicates[id].clone())
                    .collect()
            })
            .collect();
        Ok(Filter { any_of })
    }
}

impl Filter {
    /// Evaluates the filter on the routing hot path: `lookup` gives a reference to a
    /// property's value (`None` = missing); nothing is cloned.
    pub fn eval<'v, F>(&self, lookup: F) -> bool
    where
        F: Fn(&str) -> Option<&'v Value>,
    {
        self.any_of
            .iter()
            .any(|conj| conj.iter().all(|p| p.matches(lookup(p.property()))))
    }

    /// Every property the filter names, each once, in order of first appearance.
    pub fn properties(&self) -> impl Iterator<Item = &str> {
        let mut seen = HashSet::new();
        let mut names = Vec::new();
        for p in self.any_of.iter().flatten() {
            let name = p.property();
            if seen.insert(name) {
                names.push(name);
            }
        }
        names.into_iter()
    }
}

// ---------------------------------------------------------------------------------------
// Display (canonical text)
// ---------------------------------------------------------------------------------------

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Pred(p) => write!(f, "{p}"),
            Expr::Or(children) => {
                // `and` binds tighter than `or`, so no child of an `or` needs parentheses
                // (a nested `or` would be flattened by the parser anyway).
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    write!(f, "{child}")?;
                }
                Ok(())
            }
            Expr::And(children) => {
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    match child {
                        Expr::Or(_) => write!(f, "({child})")?,
                        _ => write!(f, "{child}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, conj) in self.any_of.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            for (j, p) in conj.iter().enumerate() {
                if j > 0 {
                    f.write_str(" and ")?;
                }
                write!(f, "{p}")?;
            }
        }
        Ok(())
    }
}

/// Writes a value as a literal that parses back to an equal value.
fn write_literal(f: &mut fmt::Formatter<'_>, value: &Value) -> fmt::Result {
    match value {
        Value::String(s) => {
            f.write_str("\"")?;
            for c in s.chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")
        }
        Value::Integer(i) => write!(f, "{i}"),
        // A decimal needs a fractional part, or it would read back as an integer.
        Value::Decimal(d) if d.scale() == 0 => write!(f, "{d}.0"),
        Value::Decimal(d) => write!(f, "{d}"),
        Value::Boolean(b) => write!(f, "{b}"),
        Value::Timestamp(_) => write!(f, "ts'{}'", value.to_plain_string()),
    }
}

/// A value as a literal, for suggestions in error messages.
fn literal_text(value: &Value) -> String {
    struct Lit<'a>(&'a Value);
    impl fmt::Display for Lit<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_literal(f, self.0)
        }
    }
    Lit(value).to_string()
}

// ---------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Op(Op),
    /// An identifier or dotted name (`and`, `exists`, `Order.Region`, ...).
    Word(String),
    /// A quoted string, escapes resolved.
    Str(String),
    Int(i64),
    Dec(Decimal),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// 1-based character column of the token's first character.
    col: usize,
    /// The token as written, for error messages.
    text: String,
}

impl Token {
    /// The token's text, shortened, for "unexpected '...'" messages.
    fn quoted(&self) -> String {
        let mut chars = self.text.chars();
        let head: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
        if chars.next().is_some() {
            format!("{head}...")
        } else {
            head
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(&self.tok, Tok::Word(w) if w.eq_ignore_ascii_case(keyword))
    }
}

const KEYWORDS: [&str; 5] = ["and", "or", "exists", "true", "false"];

fn lex(input: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let tok = match c {
            '(' => {
                i += 1;
                Tok::LParen
            }
            ')' => {
                i += 1;
                Tok::RParen
            }
            '=' | '!' | '<' | '>' => {
                let next_is_eq = chars.get(i + 1) == Some(&'=');
                let op = match (c, next_is_eq) {
                    ('=', true) => Op::Eq,
                    ('!', true) => Op::Ne,
                    ('<', true) => Op::Le,
                    ('>', true) => Op::Ge,
                    ('<', false) => Op::Lt,
                    ('>', false) => Op::Gt,
                    _ => {
                        return Err(FilterError::at(
                            col,
                            format!("unexpected '{c}' at column {col}; did you mean '{c}='?"),
                        ))
                    }
                };
                i += if next_is_eq { 2 } else { 1 };
                Tok::Op(op)
            }
            '"' | '\'' => {
                let (s, next) = lex_string(&chars, i)?;
                i = next;
                Tok::Str(s)
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let (tok, next) = lex_number(&chars, i)?;
                i = next;
                tok
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
                {
                    i += 1;
                }
                Tok::Word(chars[start..i].iter().collect())
            }
            _ => {
                let hint = match c {
                    '&' => "; use 'and'",
                    '|' => "; use 'or'",
                    _ => "",
                };
                return Err(FilterError::at(
                    col,
                    format!("unexpected character '{c}' at column {col}{hint}"),
                ));
            }
        };
        tokens.push(Token {
            tok,
            col,
            text: chars[start..i].iter().collect(),
        });
    }
    Ok(tokens)
}

/// Lexes a quoted string starting at `chars[start]` (the quote). Returns the unescaped
/// contents and the index just past the closing quote.
fn lex_string(chars: &[char], start: usize) -> Result<(String, usize), FilterError> {
    let quote = chars[start];
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => {
                let col = start + 1;
                return Err(FilterError::at(
                    col,
                    format!("unterminated string starting at column {col}"),
                ));
            }
            Some(&c) if c == quote => return Ok((out, i + 1)),
            Some('\\') => match chars.get(i + 1) {
                Some(&e @ ('"' | '\'' | '\\')) => {
                    out.push(e);
                    i += 2;
                }
                Some(&e) => {
                    let col = i + 1;
                    return Err(FilterError::at(
                        col,
                        format!(
                            "invalid escape '\\{e}' at column {col}; only \\\", \\' and \\\\ are allowed in a string"
                        ),
                    ));
                }
                None => {
                    let col = start + 1;
                    return Err(FilterError::at(
                        col,
                        format!("unterminated string starting at column {col}"),
                    ));
                }
            },
            Some(&c) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// Lexes `-?[0-9]+` (an i64) or `-?[0-9]+\.[0-9]+` (a decimal) at `chars[start]`.
fn lex_number(chars: &[char], start: usize) -> Result<(Tok, usize), FilterError> {
    let col = start + 1;
    let digits_from = |mut i: usize| {
        while chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        i
    };
    let mut i = digits_from(if chars[start] == '-' {
        start + 1
    } else {
        start
    });
    let mut is_decimal = false;
    if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        is_decimal = true;
        i = digits_from(i + 1);
    }
    // A number must end at a delimiter: `42abc`, `1.`, `1.2.3` are malformed.
    if chars
        .get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
    {
        let mut end = i;
        while chars
            .get(end)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        {
            end += 1;
        }
        let text: String = chars[start..end].iter().collect();
        return Err(FilterError::at(
            col,
            format!("'{text}' is not a valid number at column {col} (examples: 42, -7, 12.50)"),
        ));
    }
    let text: String = chars[start..i].iter().collect();
    let tok = if is_decimal {
        Tok::Dec(Decimal::from_str(&text).map_err(|_| {
            FilterError::at(
                col,
                format!("decimal {text} at column {col} is out of range"),
            )
        })?)
    } else {
        Tok::Int(text.parse::<i64>().map_err(|_| {
            FilterError::at(
                col,
                format!(
                    "integer {text} at column {col} is out of range ({} to {})",
                    i64::MIN,
                    i64::MAX
                ),
            )
        })?)
    };
    Ok((tok, i))
}

// ---------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------

/// Where a comparison was written, for the type checks of [`compile`].
#[derive(Debug, Clone)]
struct CompareSite {
    property: String,
    op: Op,
    op_col: usize,
    value: Value,
    value_col: usize,
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Column just past the end of the input (where "ended early" errors point).
    end_col: usize,
    depth: usize,
    sites: Vec<CompareSite>,
}

fn parse_with_sites(input: &str) -> Result<(Expr, Vec<CompareSite>), FilterError> {
    let tokens = lex(input)?;
    if tokens.is_empty() {
        return Err(FilterError::general("empty filter"));
    }
    let mut parser = Parser {
        tokens,
        pos: 0,
        end_col: input.chars().count() + 1,
        depth: 0,
        sites: Vec::new(),
    };
    let expr = parser.or_expr()?;
    if let Some(tok) = parser.peek() {
        let col = tok.col;
        return Err(FilterError::at(
            col,
            format!(
                "unexpected '{}' at column {col}; expected 'and', 'or' or the end",
                tok.quoted()
            ),
        ));
    }
    Ok((expr, parser.sites))
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let tok = self.tokens.get(self.pos).cloned();
        if tok.is_some() {
            self.pos += 1;
        }
        tok
    }

    /// Column of the next token, or just past the end.
    fn next_col(&self) -> usize {
        self.peek().map_or(self.end_col, |t| t.col)
    }

    fn or_expr(&mut self) -> Result<Expr, FilterError> {
        let mut items = vec![self.and_expr()?];
        while self.peek().is_some_and(|t| t.is_keyword("or")) {
            self.pos += 1;
            items.push(self.and_expr()?);
        }
        Ok(join(items, false))
    }

    fn and_expr(&mut self) -> Result<Expr, FilterError> {
        let mut items = vec![self.term()?];
        while self.peek().is_some_and(|t| t.is_keyword("and")) {
            self.pos += 1;
            items.push(self.term()?);
        }
        Ok(join(items, true))
    }

    fn term(&mut self) -> Result<Expr, FilterError> {
        let expected = "a property (example: Order.Region), 'exists' or '('";
        let Some(tok) = self.next() else {
            let col = self.end_col;
            return Err(FilterError::at(
                col,
                format!("expected {expected} at column {col}"),
            ));
        };
        match &tok.tok {
            Tok::LParen => {
                if self.depth >= MAX_DEPTH {
                    return Err(FilterError::at(
                        tok.col,
                        format!(
                            "parentheses nest more than {MAX_DEPTH} deep at column {}",
                            tok.col
                        ),
                    ));
                }
                self.depth += 1;
                let inner = self.or_expr()?;
                self.depth -= 1;
                match self.next() {
                    Some(Token {
                        tok: Tok::RParen, ..
                    }) => Ok(inner),
                    Some(other) => Err(FilterError::at(
                        other.col,
                        format!(
                            "unexpected '{}' at column {}; expected 'and', 'or' or ')'",
                            other.quoted(),
                            other.col
                        ),
                    )),
                    None => {
                        let col = self.end_col;
                        Err(FilterError::at(
                            col,
                            format!("expected ')' at column {col}"),
                        ))
                    }
                }
            }
            Tok::Word(_) if tok.is_keyword("exists") => self.exists(),
            Tok::Word(w) if !KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                self.comparison(&tok, w)
            }
            _ => Err(FilterError::at(
                tok.col,
                format!(
                    "unexpected '{}' at column {}; expected {expected}",
                    tok.quoted(),
                    tok.col
                ),
            )),
        }
    }

    /// `exists ( property )`, after the `exists`.
    fn exists(&mut self) -> Result<Expr, FilterError> {
        let col = self.next_col();
        if !matches!(
            self.next(),
            Some(Token {
                tok: Tok::LParen,
                ..
            })
        ) {
            return Err(FilterError::at(
                col,
                format!("expected '(' after 'exists' at column {col}"),
            ));
        }
        let col = self.next_col();
        let property = match self.next() {
            Some(Token {
                tok: Tok::Word(name),
                col,
                ..
            }) => {
                check_property_name(&name, col)?;
                name
            }
            _ => {
                return Err(FilterError::at(
                    col,
                    format!(
                        "expected a property name after 'exists(' at column {col} (example: exists(Order.Region))"
                    ),
                ));
            }
        };
        let col = self.next_col();
        match self.next() {
            Some(Token {
                tok: Tok::RParen, ..
            }) => Ok(Expr::Pred(Predicate::Exists { property })),
            _ => Err(FilterError::at(
                col,
                format!("expected ')' at column {col}"),
            )),
        }
    }

    /// `property op value`, after the property's token.
    fn comparison(&mut self, name_tok: &Token, name: &str) -> Result<Expr, FilterError> {
        if !name.contains('.')
            && matches!(
                self.peek(),
                Some(Token {
                    tok: Tok::LParen,
                    ..
                })
            )
        {
            return Err(FilterError::at(
                name_tok.col,
                format!(
                    "unknown function '{name}' at column {}; the only function is exists(...)",
                    name_tok.col
                ),
            ));
        }
        check_property_name(name, name_tok.col)?;

        let op_col = self.next_col();
        let op = match self.peek() {
            Some(Token {
                tok: Tok::Op(op), ..
            }) => *op,
            _ => {
                return Err(FilterError::at(
                    op_col,
                    format!(
                    "expected an operator (==, !=, <, <=, >, >=) after '{name}' at column {op_col}"
                ),
                ))
            }
        };
        self.pos += 1;

        let value_col = self.next_col();
        let value = self.value(op)?;
        if op.is_ordering() && matches!(value, Value::Boolean(_)) {
            return Err(FilterError::at(
                op_col,
                format!("'{op}' cannot compare booleans at column {op_col}; use == or !="),
            ));
        }
        self.sites.push(CompareSite {
            property: name.to_owned(),
            op,
            op_col,
            value: value.clone(),
            value_col,
        });
        Ok(Expr::Pred(Predicate::Compare {
            property: name.to_owned(),
            op,
            value,
        }))
    }

    /// A literal, after operator `op`.
    fn value(&mut self, op: Op) -> Result<Value, FilterError> {
        let missing = |col: usize, found: Option<&Token>| {
            let found = match found {
                None => String::new(),
                Some(
                    t @ Token {
                        tok: Tok::Word(w), ..
                    },
                ) if !KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                    format!(
                        "; found '{}' (strings need quotes: \"{}\")",
                        t.quoted(),
                        t.quoted()
                    )
                }
                Some(t) => format!("; found '{}'", t.quoted()),
            };
            FilterError::at(
                col,
                format!("expected a value after '{op}' at column {col}{found}"),
            )
        };
        let col = self.next_col();
        let Some(tok) = self.peek().cloned() else {
            return Err(missing(col, None));
        };
        let value = match &tok.tok {
            Tok::Str(s) => Value::String(s.clone()),
            Tok::Int(i) => Value::Integer(*i),
            Tok::Dec(d) => Value::Decimal(*d),
            Tok::Word(_) if tok.is_keyword("true") => Value::Boolean(true),
            Tok::Word(_) if tok.is_keyword("false") => Value::Boolean(false),
            Tok::Word(_) if tok.is_keyword("ts") => {
                self.pos += 1;
                return self.timestamp(&tok);
            }
            _ => return Err(missing(col, Some(&tok))),
        };
        self.pos += 1;
        Ok(value)
    }

    /// The quoted RFC 3339 text after `ts`.
    fn timestamp(&mut self, ts: &Token) -> Result<Value, FilterError> {
        let example = "(example: ts'2026-11-23T10:00:00Z')";
        let col = self.next_col();
        match self.next() {
            Some(Token {
                tok: Tok::Str(text),
                col,
                ..
            }) => DateTime::parse_from_rfc3339(text.trim())
                .map(|t| Value::Timestamp(t.with_timezone(&Utc)))
                .map_err(|e| {
                    FilterError::at(
                        col,
                        format!(
                            "'{text}' is not an RFC 3339 timestamp at column {col} ({e}) {example}"
                        ),
                    )
                }),
            _ => Err(FilterError::at(
                col,
                format!(
                    "expected a quoted timestamp after '{}' at column {col} {example}",
                    ts.text
                ),
            )),
        }
    }
}

/// Builds an `Or`/`And` from parsed items, splicing in children of the same kind (from
/// parentheses) so the tree never nests a node directly in one of its own kind.
fn join(items: Vec<Expr>, and: bool) -> Expr {
    if items.len() == 1 {
        return items.into_iter().next().unwrap_or(Expr::And(Vec::new()));
    }
    let mut flat = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Expr::And(children) if and => flat.extend(children),
            Expr::Or(children) if !and => flat.extend(children),
            other => flat.push(other),
        }
    }
    if and {
        Expr::And(flat)
    } else {
        Expr::Or(flat)
    }
}

fn check_property_name(name: &str, col: usize) -> Result<(), FilterError> {
    validate_property_name(name).map_err(|m| FilterError::at(col, format!("{m} at column {col}")))
}

// ---------------------------------------------------------------------------------------
// Type checks (compile)
// ---------------------------------------------------------------------------------------

fn with_article(ty: PropertyType) -> &'static str {
    match ty {
        PropertyType::String => "a string",
        PropertyType::Integer => "an integer",
        PropertyType::Decimal => "a decimal",
        PropertyType::Boolean => "a boolean",
        PropertyType::Timestamp => "a timestamp",
    }
}

/// Whether values of the two types can ever compare (integers and decimals can).
fn comparable(a: PropertyType, b: PropertyType) -> bool {
    use PropertyType::{Decimal, Integer};
    a == b || matches!((a, b), (Integer, Decimal) | (Decimal, Integer))
}

fn check_declared_type(site: &CompareSite, declared: PropertyType) -> Result<(), FilterError> {
    let CompareSite {
        property,
        op,
        op_col,
        value,
        value_col: col,
    } = site;
    let col = *col;
    if declared == PropertyType::Boolean && op.is_ordering() {
        let col = *op_col;
        return Err(FilterError::at(
            col,
            format!(
                "{property} is declared boolean and cannot be compared with '{op}' at column {col}; use == or !="
            ),
        ));
    }
    let literal = value.property_type();
    if comparable(declared, literal) {
        return Ok(());
    }
    // Suggest the same comparison with a literal of the declared type: the literal's own
    // text re-typed when that works (`> "100"` becomes `> 100`), else the type's example.
    let retyped = Value::parse_as(declared, &value.to_plain_string())
        .or_else(|_| Value::parse_as(declared, declared.example()));
    let suggestion = match retyped {
        Ok(v) => format!("; write {property} {op} {}", literal_text(&v)),
        Err(_) => String::new(),
    };
    Err(FilterError::at(
        col,
        format!(
            "{property} is declared {declared} but is compared with {} at column {col}{suggestion}",
            with_article(literal)
        ),
    ))
}

// ---------------------------------------------------------------------------------------
// Normalisation (DNF)
// ---------------------------------------------------------------------------------------

/// Numbers predicates so conjunctions can be handled as small vectors of ids.
#[derive(Default)]
struct Interner {
    ids: HashMap<Predicate, usize>,
    predicates: Vec<Predicate>,
}

impl Interner {
    fn id(&mut self, p: &Predicate) -> usize {
        if let Some(&id) = self.ids.get(p) {
            return id;
        }
        let id = self.predicates.len();
        self.predicates.push(p.clone());
        self.ids.insert(p.clone(), id);
        id
    }
}

/// A conjunction: its predicates in first-occurrence order, and the same ids sorted
/// (the conjunction as a set, for de-duplication).
#[derive(Clone)]
struct Conj {
    order: Vec<usize>,
    set: Vec<usize>,
}

impl Conj {
    fn single(id: usize) -> Self {
        Conj {
            order: vec![id],
            set: vec![id],
        }
    }

    /// `self and other`, each predicate once.
    fn merge(&self, other: &Conj) -> Conj {
        let mut merged = self.clone();
        for &id in &other.order {
            if let Err(at) = merged.set.binary_search(&id) {
                merged.set.insert(at, id);
                merged.order.push(id);
            }
        }
        merged
    }
}

/// A disjunction under construction: keeps each conjunction once and refuses to grow
/// past [`MAX_CONJUNCTIONS`].
#[derive(Default)]
struct Disjunction {
    conjs: Vec<Conj>,
    seen: HashSet<Vec<usize>>,
}

impl Disjunction {
    fn push(&mut self, conj: Conj) -> Result<(), FilterError> {
        if self.seen.contains(&conj.set) {
            return Ok(());
        }
        if self.conjs.len() == MAX_CONJUNCTIONS {
            return Err(FilterError::general(format!(
                "its normal form has more than {MAX_CONJUNCTIONS} or-branches; simplify it"
            )));
        }
        self.seen.insert(conj.set.clone());
        self.conjs.push(conj);
        Ok(())
    }
}

fn dnf(expr: &Expr, interner: &mut Interner) -> Result<Vec<Conj>, FilterError> {
    match expr {
        Expr::Pred(p) => Ok(vec![Conj::single(interner.id(p))]),
        Expr::Or(children) => {
            let mut out = Disjunction::default();
            for child in children {
                for conj in dnf(child, interner)? {
                    out.push(conj)?;
                }
            }
            Ok(out.conjs)
        }
        Expr::And(children) => {
            // Start from "true" (one empty conjunction) and distribute child by child;
            // every partial product is bounded, so nothing large is ever built.
            let mut acc = vec![Conj {
                order: Vec::new(),
                set: Vec::new(),
            }];
            for child in children {
                let rhs = dnf(child, interner)?;
                let mut out = Disjunction::default();
                for left in &acc {
                    for right in &rhs {
                        out.push(left.merge(right))?;
                    }
                }
                acc = out.conjs;
            }
            Ok(acc)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn err(input: &str) -> FilterError {
        match parse(input) {
            Ok(e) => panic!("{input:?} parsed as {e:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the exact message and that `column` matches it.
    fn assert_err(input: &str, column: usize, message: &str) {
        let e = err(input);
        assert_eq!(e.message, message, "input {input:?}");
        assert_eq!(e.column, Some(column), "input {input:?}");
        assert_eq!(e.to_string(), format!("filter: {message}"));
    }

    fn cmp(property: &str, op: Op, value: Value) -> Predicate {
        Predicate::Compare {
            property: property.into(),
            op,
            value,
        }
    }

    fn int(property: &str, i: i64) -> Predicate {
        cmp(property, Op::Eq, Value::Integer(i))
    }

    fn dec(s: &str) -> Value {
        Value::Decimal(Decimal::from_str(s).unwrap())
    }

    fn ts(s: &str) -> Value {
        Value::Timestamp(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
    }

    /// Evaluates `input` both ways on a context given as pairs.
    fn eval(input: &str, context: &[(&str, Value)]) -> bool {
        let map: HashMap<String, Value> = context
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let expr = parse(input).unwrap();
        let reference = expr.eval(|k| map.get(k).cloned());
        let fast = expr.normalize().unwrap().eval(|k| map.get(k));
        assert_eq!(reference, fast, "{input}");
        reference
    }

    fn undeclared(_: &str) -> Option<PropertyType> {
        None
    }

    // --- errors -----------------------------------------------------------------------

    #[test]
    fn missing_value_names_the_operator_and_column() {
        assert_err(
            "Order.Region ==",
            16,
            "expected a value after '==' at column 16",
        );
        assert_err(
            "Order.Region == \"EU\" and Order.Amount >= ",
            42,
            "expected a value after '>=' at column 42",
        );
        assert_err(
            "Order.Region == and A.b == 1",
            17,
            "expected a value after '==' at column 17; found 'and'",
        );
        assert_err(
            "Order.Region == EU",
            17,
            "expected a value after '==' at column 17; found 'EU' (strings need quotes: \"EU\")",
        );
    }

    #[test]
    fn missing_operator() {
        assert_err(
            "Order.Region \"EU\"",
            14,
            "expected an operator (==, !=, <, <=, >, >=) after 'Order.Region' at column 14",
        );
        assert_err(
            "Order.Region",
            13,
            "expected an operator (==, !=, <, <=, >, >=) after 'Order.Region' at column 13",
        );
        assert_err(
            "A.a = 1",
            5,
            "unexpected '=' at column 5; did you mean '=='?",
        );
        assert_err(
            "A.a == 1 && A.b == 2",
            10,
            "unexpected character '&' at column 10; use 'and'",
        );
    }

    #[test]
    fn string_errors() {
        assert_err("a.b 'abc", 5, "unterminated string starting at column 5");
        assert_err(
            "A.a == \"abc\\",
            8,
            "unterminated string starting at column 8",
        );
        assert_err(
            r#"A.a == "a\nb""#,
            10,
            r#"invalid escape '\n' at column 10; only \", \' and \\ are allowed in a string"#,
        );
    }

    #[test]
    fn structure_errors() {
        assert_err("(A.a == 1 or A.b == 2", 22, "expected ')' at column 22");
        assert_err(
            "A.a == 1 xyz",
            10,
            "unexpected 'xyz' at column 10; expected 'and', 'or' or the end",
        );
        assert_err(
            "(A.a == 1 B.b == 2)",
            11,
            "unexpected 'B.b' at column 11; expected 'and', 'or' or ')'",
        );
        assert_err(
            "A.a == 1 and",
            13,
            "expected a property (example: Order.Region), 'exists' or '(' at column 13",
        );
        assert_err(
            "A.a == 1 or or B.b == 1",
            13,
            "unexpected 'or' at column 13; expected a property (example: Order.Region), 'exists' or '('",
        );
        assert_err(
            "()",
            2,
            "unexpected ')' at column 2; expected a property (example: Order.Region), 'exists' or '('",
        );
        assert_err(
            "A.a == 1)",
            9,
            "unexpected ')' at column 9; expected 'and', 'or' or the end",
        );
        let e = err("");
        assert_eq!((e.column, e.message.as_str()), (None, "empty filter"));
        assert_eq!(err(" \t\n ").message, "empty filter");
    }

    #[test]
    fn property_name_errors() {
        let e = err("Region == \"EU\"");
        assert_eq!(e.column, Some(1));
        assert!(
            e.message
                .starts_with("property name 'Region' needs a namespace"),
            "{e}"
        );
        assert!(e.message.ends_with(" at column 1"), "{e}");

        let e = err("A.a == 1 or Order..Region == 1");
        assert_eq!(e.column, Some(13));
        assert!(
            e.message
                .starts_with("property name 'Order..Region' is not valid"),
            "{e}"
        );
        assert!(e.message.ends_with(" at column 13"), "{e}");

        let e = err("exists(Region)");
        assert_eq!(e.column, Some(8));
        assert!(e.message.contains("needs a namespace"), "{e}");

        assert_err(
            "exist(A.a)",
            1,
            "unknown function 'exist' at column 1; the only function is exists(...)",
        );
        assert_err("A.é == 1", 3, "unexpected character 'é' at column 3");
    }

    #[test]
    fn exists_errors() {
        assert_err("exists A.a", 8, "expected '(' after 'exists' at column 8");
        assert_err("exists", 7, "expected '(' after 'exists' at column 7");
        assert_err(
            "exists()",
            8,
            "expected a property name after 'exists(' at column 8 (example: exists(Order.Region))",
        );
        assert_err("exists(A.a", 11, "expected ')' at column 11");
        assert_err("exists(A.a B.b)", 12, "expected ')' at column 12");
    }

    #[test]
    fn literal_errors() {
        assert_err(
            "A.a < true",
            5,
            "'<' cannot compare booleans at column 5; use == or !=",
        );
        assert_err(
            "A.a >= FALSE",
            5,
            "'>=' cannot compare booleans at column 5; use == or !=",
        );
        assert_err(
            "A.a == 9223372036854775808",
            8,
            "integer 9223372036854775808 at column 8 is out of range (-9223372036854775808 to 9223372036854775807)",
        );
        assert_err(
            "A.a == 1.",
            8,
            "'1.' is not a valid number at column 8 (examples: 42, -7, 12.50)",
        );
        assert_err(
            "A.a == 12abc",
            8,
            "'12abc' is not a valid number at column 8 (examples: 42, -7, 12.50)",
        );
        assert_err(
            "A.a == 99999999999999999999999999999.5",
            8,
            "decimal 99999999999999999999999999999.5 at column 8 is out of range",
        );
        let e = err("A.t > ts'yesterday'");
        assert_eq!(e.column, Some(9));
        assert!(
            e.message
                .starts_with("'yesterday' is not an RFC 3339 timestamp at column 9"),
            "{e}"
        );
        assert!(
            e.message.ends_with("(example: ts'2026-11-23T10:00:00Z')"),
            "{e}"
        );
        assert_err(
            "A.t > ts",
            9,
            "expected a quoted timestamp after 'ts' at column 9 (example: ts'2026-11-23T10:00:00Z')",
        );
        assert_err(
            "A.t > ts 5",
            10,
            "expected a quoted timestamp after 'ts' at column 10 (example: ts'2026-11-23T10:00:00Z')",
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        assert_err(
            "A.a == \"é\" xyz",
            12,
            "unexpected 'xyz' at column 12; expected 'and', 'or' or the end",
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{}A.a == 1{}", "(".repeat(10_000), ")".repeat(10_000));
        let e = err(&deep);
        assert_eq!(e.column, Some(MAX_DEPTH + 1));
        assert!(e.message.contains("nest more than 64 deep"), "{e}");
        let ok = format!("{}A.a == 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(parse(&ok).unwrap(), Expr::Pred(int("A.a", 1)));
    }

    // --- syntax -------------------------------------------------------------------------

    #[test]
    fn keywords_are_case_insensitive() {
        let upper =
            parse("A.a == TRUE AND EXISTS(B.b) Or A.t >= TS'2026-11-23T10:00:00Z' oR A.c == False")
                .unwrap();
        let lower =
            parse("A.a == true and exists(B.b) or A.t >= ts'2026-11-23T10:00:00Z' or A.c == false")
                .unwrap();
        assert_eq!(upper, lower);
        assert_eq!(
            lower,
            Expr::Or(vec![
                Expr::And(vec![
                    Expr::Pred(cmp("A.a", Op::Eq, Value::Boolean(true))),
                    Expr::Pred(Predicate::Exists {
                        property: "B.b".into()
                    }),
                ]),
                Expr::Pred(cmp("A.t", Op::Ge, ts("2026-11-23T10:00:00Z"))),
                Expr::Pred(cmp("A.c", Op::Eq, Value::Boolean(false))),
            ])
        );
        // Property names keep their case; keywords inside names are just names.
        assert_eq!(parse("and.Or == 1").unwrap(), Expr::Pred(int("and.Or", 1)));
    }

    #[test]
    fn whitespace_is_insignificant() {
        assert_eq!(
            parse("(A.a==1 or(B.b!=\"x\"))and exists ( A.b )").unwrap(),
            parse("( A.a == 1 or B.b != \"x\" ) and exists(A.b)").unwrap()
        );
        assert_eq!(
            parse("A.t==ts '2026-11-23T10:00:00Z'").unwrap(),
            parse("A.t == ts'2026-11-23T10:00:00Z'").unwrap()
        );
    }

    #[test]
    fn string_escapes() {
        assert_eq!(
            parse(r#"A.a == "q\"s\\'x""#).unwrap(),
            Expr::Pred(cmp("A.a", Op::Eq, Value::String(r#"q"s\'x"#.into())))
        );
        assert_eq!(
            parse(r#"A.a == 'it\'s "fine"'"#).unwrap(),
            Expr::Pred(cmp("A.a", Op::Eq, Value::String(r#"it's "fine""#.into())))
        );
        let e = parse(r#"A.a == 'x\'y\\'"#).unwrap();
        assert_eq!(e.to_string(), r#"A.a == "x'y\\""#);
        assert_eq!(parse(&e.to_string()).unwrap(), e);
    }

    #[test]
    fn literals() {
        assert_eq!(
            parse("A.a == -9223372036854775808").unwrap(),
            Expr::Pred(int("A.a", i64::MIN))
        );
        assert_eq!(
            parse("A.a < -12.50").unwrap(),
            Expr::Pred(cmp("A.a", Op::Lt, dec("-12.50")))
        );
        // A whole decimal keeps its decimal point when printed.
        let whole = Expr::Pred(cmp("A.a", Op::Eq, Value::Decimal(Decimal::from(5))));
        assert_eq!(whole.to_string(), "A.a == 5.0");
        assert_eq!(parse(&whole.to_string()).unwrap(), whole);
    }

    #[test]
    fn timestamps() {
        let e = parse("A.t < ts'2026-11-23T11:00:00.5+01:00'").unwrap();
        assert_eq!(
            e,
            Expr::Pred(cmp("A.t", Op::Lt, ts("2026-11-23T10:00:00.5Z")))
        );
        assert_eq!(e.to_string(), "A.t < ts'2026-11-23T10:00:00.500Z'");
        assert_eq!(parse(&e.to_string()).unwrap(), e);
        let at = |s: &str| [("A.t", ts(s))];
        assert!(eval(
            "A.t == ts'2026-11-23T11:00:00+01:00'",
            &at("2026-11-23T10:00:00Z")
        ));
        assert!(eval(
            "A.t > ts'2026-11-23T10:00:00Z'",
            &at("2026-11-23T10:00:01Z")
        ));
        assert!(!eval(
            "A.t > ts'2026-11-23T10:00:00Z'",
            &at("2026-11-23T09:59:59Z")
        ));
        // A timestamp is not a string.
        assert!(!eval(
            "A.t == '2026-11-23T10:00:00Z'",
            &at("2026-11-23T10:00:00Z")
        ));
    }

    #[test]
    fn display_is_canonical() {
        let e = parse("((A.a == 1)) and (B.b == 'x' or exists(B.c)) or (A.a != 2 or A.b >= 1.5)")
            .unwrap();
        assert_eq!(
            e.to_string(),
            "A.a == 1 and (B.b == \"x\" or exists(B.c)) or A.a != 2 or A.b >= 1.5"
        );
        assert_eq!(parse(&e.to_string()).unwrap(), e);
    }

    // --- evaluation ---------------------------------------------------------------------

    #[test]
    fn numbers_compare_across_integer_and_decimal() {
        assert!(eval("A.a == 5", &[("A.a", dec("5.00"))]));
        assert!(eval("A.a == 5.0", &[("A.a", Value::Integer(5))]));
        assert!(eval("A.a < 5.5", &[("A.a", Value::Integer(5))]));
        assert!(eval("A.a >= -1", &[("A.a", dec("-0.5"))]));
        assert!(!eval("A.a > 5", &[("A.a", dec("4.99"))]));
        assert!(eval("A.a <= 10", &[("A.a", Value::Integer(10))]));
    }

    #[test]
    fn missing_property_makes_every_comparison_false() {
        for op in ["==", "!=", "<", "<=", ">", ">="] {
            assert!(!eval(&format!("A.a {op} 1"), &[]), "{op}");
        }
        assert!(!eval("A.a != 'x'", &[("A.b", Value::String("x".into()))]));
        assert!(eval("A.a != 'x'", &[("A.a", Value::String("y".into()))]));
    }

    #[test]
    fn mismatched_types_are_false() {
        let ctx = [("A.a", Value::String("42".into()))];
        assert!(!eval("A.a == 42", &ctx));
        assert!(!eval("A.a != 42", &ctx));
        assert!(!eval("A.a < 100", &ctx));
        assert!(eval("A.a == \"42\"", &ctx));
        assert!(!eval(
            "A.b == true",
            &[("A.b", Value::String("true".into()))]
        ));
        assert!(eval("A.b != false", &[("A.b", Value::Boolean(true))]));
    }

    #[test]
    fn strings_compare_bytewise() {
        let ctx = [("A.a", Value::String("EU".into()))];
        assert!(eval("A.a == 'EU'", &ctx));
        assert!(!eval("A.a == 'eu'", &ctx));
        assert!(eval("A.a < 'Ez'", &ctx));
        assert!(eval("A.a > 'E'", &ctx));
    }

    #[test]
    fn exists_is_presence() {
        assert!(eval("exists(A.a)", &[("A.a", Value::Boolean(false))]));
        assert!(!eval("exists(A.a)", &[("A.b", Value::Integer(1))]));
        assert!(eval(
            "exists(A.a) or A.b == 1",
            &[("A.b", Value::Integer(1))]
        ));
    }

    #[test]
    fn ordering_on_booleans_is_false_even_if_built_by_hand() {
        let f = Filter {
            any_of: vec![vec![cmp("A.a", Op::Lt, Value::Boolean(true))]],
        };
        let v = Value::Boolean(false);
        assert!(!f.eval(|_| Some(&v)));
    }

    #[test]
    fn eval_accepts_closures_and_trait_objects() {
        let map: HashMap<String, Value> = [("A.a".to_string(), Value::Integer(1))].into();
        let filter = compile("A.a == 1", &undeclared).unwrap();
        assert!(filter.eval(|k| map.get(k)));
        // Callers may also pass the closure by reference.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let by_ref = filter.eval(&|k: &str| map.get(k));
        assert!(by_ref);
        // A trait object works when it names the values' lifetime (with elided lifetimes,
        // `dyn Fn(&str) -> Option<&Value>` would tie each value to the key it was asked for).
        fn via_dyn<'v>(f: &Filter, lookup: &dyn Fn(&str) -> Option<&'v Value>) -> bool {
            f.eval(lookup)
        }
        assert!(via_dyn(&filter, &|k| map.get(k)));
        let expr = parse("A.a == 1").unwrap();
        let owned: &dyn Fn(&str) -> Option<Value> = &|k| map.get(k).cloned();
        assert!(expr.eval(owned));
    }

    // --- normalisation ------------------------------------------------------------------

    #[test]
    fn distributes_to_or_of_ands() {
        let f = parse("(a.x == 1 or a.y == 2) and (a.z == 3 or a.w == 4)")
            .unwrap()
            .normalize()
            .unwrap();
        let (x, y, z, w) = (int("a.x", 1), int("a.y", 2), int("a.z", 3), int("a.w", 4));
        assert_eq!(
            f.any_of,
            vec![
                vec![x.clone(), z.clone()],
                vec![x, w.clone()],
                vec![y.clone(), z],
                vec![y, w],
            ]
        );
        assert_eq!(
            f.to_string(),
            "a.x == 1 and a.z == 3 or a.x == 1 and a.w == 4 or a.y == 2 and a.z == 3 or a.y == 2 and a.w == 4"
        );
    }

    #[test]
    fn normalisation_flattens_and_deduplicates() {
        let f = parse("A.a == 1 and (A.b == 2 and A.a == 1) or A.a == 1 and A.b == 2 or A.b == 2 and A.a == 1")
            .unwrap()
            .normalize()
            .unwrap();
        assert_eq!(f.any_of, vec![vec![int("A.a", 1), int("A.b", 2)]]);

        let f = parse("(A.a == 1 or A.b == 2) and (A.b == 2 or A.a == 1)")
            .unwrap()
            .normalize()
            .unwrap();
        assert_eq!(
            f.any_of,
            vec![
                vec![int("A.a", 1), int("A.b", 2)],
                vec![int("A.a", 1)],
                vec![int("A.b", 2)],
            ]
        );
        // Decimals equal in value are the same predicate.
        let f = parse("A.a == 1.0 or A.a == 1.00")
            .unwrap()
            .normalize()
            .unwrap();
        assert_eq!(f.any_of.len(), 1);
    }

    fn product_of_pairs(clauses: usize) -> String {
        (0..clauses)
            .map(|i| format!("(A.x == {i} or A.y == {i})"))
            .collect::<Vec<_>>()
            .join(" and ")
    }

    #[test]
    fn normal_form_of_256_is_accepted() {
        let f = parse(&product_of_pairs(8)).unwrap().normalize().unwrap();
        assert_eq!(f.any_of.len(), 256);
        assert!(f.any_of.iter().all(|c| c.len() == 8));
    }

    #[test]
    fn normal_form_over_256_is_refused_early() {
        let e = parse(&product_of_pairs(9))
            .unwrap()
            .normalize()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "filter: its normal form has more than 256 or-branches; simplify it"
        );
        assert_eq!(e.column, None);
        // 2^64 conjunctions: only terminates because the product is bounded as it grows.
        let start = std::time::Instant::now();
        let e = compile(&product_of_pairs(64), &undeclared).unwrap_err();
        assert!(e.message.contains("more than 256 or-branches"));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // A flat disjunction counts too.
        let wide = (0..257)
            .map(|i| format!("A.x == {i}"))
            .collect::<Vec<_>>()
            .join(" or ");
        assert!(parse(&wide).unwrap().normalize().is_err());
    }

    #[test]
    fn hand_built_empty_trees_do_not_normalise() {
        assert_eq!(
            Expr::Or(vec![]).normalize().unwrap_err().message,
            "empty filter"
        );
        assert_eq!(
            Expr::And(vec![]).normalize().unwrap_err().message,
            "empty filter"
        );
        assert!(!Expr::Or(vec![]).eval(|_| None));
        assert!(Expr::And(vec![]).eval(|_| None));
    }

    // --- compile ------------------------------------------------------------------------

    fn declared(name: &str) -> Option<PropertyType> {
        match name {
            "Order.Amount" => Some(PropertyType::Integer),
            "Order.Price" => Some(PropertyType::Decimal),
            "Order.Region" => Some(PropertyType::String),
            "Order.Rush" => Some(PropertyType::Boolean),
            "Order.Due" => Some(PropertyType::Timestamp),
            _ => None,
        }
    }

    fn compile_err(input: &str) -> FilterError {
        compile(input, &declared).unwrap_err()
    }

    #[test]
    fn compile_refuses_literals_of_the_wrong_type() {
        let e = compile_err("Order.Amount > \"100\"");
        assert_eq!(
            e.to_string(),
            "filter: Order.Amount is declared integer but is compared with a string at column 16; write Order.Amount > 100"
        );
        assert_eq!(e.column, Some(16));
        assert_eq!(
            compile_err("A.b == 1 or Order.Due > 5").message,
            "Order.Due is declared timestamp but is compared with an integer at column 25; write Order.Due > ts'2026-11-23T10:00:00Z'"
        );
        assert_eq!(
            compile_err("Order.Region == 42").message,
            "Order.Region is declared string but is compared with an integer at column 17; write Order.Region == \"42\""
        );
        assert_eq!(
            compile_err("Order.Rush == 'yes'").message,
            "Order.Rush is declared boolean but is compared with a string at column 15; write Order.Rush == true"
        );
        assert_eq!(
            compile_err("Order.Price == true").message,
            "Order.Price is declared decimal but is compared with a boolean at column 16; write Order.Price == 12.50"
        );
        assert_eq!(
            compile_err("Order.Due == '2026-01-02T03:04:05Z'").message,
            "Order.Due is declared timestamp but is compared with a string at column 14; write Order.Due == ts'2026-01-02T03:04:05Z'"
        );
    }

    #[test]
    fn compile_refuses_ordering_on_declared_booleans() {
        let e = compile_err("exists(A.b) and Order.Rush > 1");
        assert_eq!(
            e.message,
            "Order.Rush is declared boolean and cannot be compared with '>' at column 28; use == or !="
        );
        assert_eq!(e.column, Some(28));
    }

    #[test]
    fn compile_accepts_compatible_and_undeclared() {
        let f = compile(
            "Order.Amount > 99.5 and Order.Price <= 10 and Order.Rush != false \
             and Order.Due < ts'2027-01-01T00:00:00Z' and Order.Region == 'EU' \
             and Other.Thing == 42 and exists(Order.Amount)",
            &declared,
        )
        .unwrap();
        assert_eq!(f.any_of.len(), 1);
        assert_eq!(f.any_of[0].len(), 7);
        // Syntax errors come through compile unchanged.
        assert_eq!(
            compile("Order.Amount >", &declared).unwrap_err().message,
            "expected a value after '>' at column 15"
        );
        // The size limit applies to compile too.
        assert!(compile(&product_of_pairs(9), &declared).is_err());
    }

    // --- Filter -------------------------------------------------------------------------

    #[test]
    fn filter_properties_lists_each_name_once() {
        let f = compile(
            "A.a == 1 and (B.b == 2 or exists(A.c)) or A.a > 3",
            &undeclared,
        )
        .unwrap();
        assert_eq!(
            f.properties().collect::<Vec<_>>(),
            vec!["A.a", "B.b", "A.c"]
        );
    }

    #[test]
    fn filter_and_op_serde() {
        assert_eq!(serde_json::to_string(&Op::Le).unwrap(), "\"<=\"");
        assert_eq!(serde_json::from_str::<Op>("\"!=\"").unwrap(), Op::Ne);
        let f = compile(
            "A.a >= 1.50 and exists(B.b) or A.t == ts'2026-11-23T10:00:00Z'",
            &undeclared,
        )
        .unwrap();
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Filter>(&json).unwrap(), f);
        assert!(json.contains(r#""op":">=""#), "{json}");
    }

    #[test]
    fn filter_display_reads_back() {
        let f = compile("(A.a == 'x' or A.b < -2) and exists(B.c)", &undeclared).unwrap();
        assert_eq!(
            f.to_string(),
            "A.a == \"x\" and exists(B.c) or A.b < -2 and exists(B.c)"
        );
        assert_eq!(compile(&f.to_string(), &undeclared).unwrap(), f);
    }

    // --- properties ---------------------------------------------------------------------

    mod props {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 3] = ["A.a", "A.b", "B.c"];

        fn name() -> impl Strategy<Value = String> {
            prop::sample::select(&NAMES[..]).prop_map(str::to_owned)
        }

        /// Values of all five types: a small pool (so comparisons often hit) and wide
        /// ranges (so literals of every shape round-trip).
        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                // small pool
                (-2i64..=2).prop_map(Value::Integer),
                (-4i64..=4).prop_map(|m| Value::Decimal(Decimal::new(m, 1))),
                (-2i64..=2).prop_map(|m| Value::Decimal(Decimal::new(m, 0))),
                prop::sample::select(&["a", "b", ""][..]).prop_map(|s| Value::String(s.into())),
                any::<bool>().prop_map(Value::Boolean),
                (0i64..3).prop_map(|h| Value::Timestamp(
                    Utc.timestamp_opt(1_795_000_000 + h * 3600, 0).unwrap()
                )),
                // wide
                any::<i64>().prop_map(Value::Integer),
                (any::<i64>(), 0u32..=10).prop_map(|(m, s)| Value::Decimal(Decimal::new(m, s))),
                "[a-zA-Z0-9 \"'\\\\é.()=<>_-]{0,8}".prop_map(Value::String),
                (
                    0i64..253_402_300_799,
                    prop_oneof![Just(0u32), 0u32..1_000_000_000]
                )
                    .prop_map(|(secs, nanos)| Value::Timestamp(
                        Utc.timestamp_opt(secs, nanos).unwrap()
                    )),
            ]
        }

        fn op() -> impl Strategy<Value = Op> {
            prop::sample::select(&[Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge][..])
        }

        fn predicate() -> impl Strategy<Value = Predicate> {
            prop_oneof![
                1 => name().prop_map(|property| Predicate::Exists { property }),
                5 => (name(), op(), value()).prop_map(|(property, op, value)| {
                    // The parser refuses `<`-style operators on boolean literals.
                    let op = match (&value, op.is_ordering()) {
                        (Value::Boolean(_), true) => Op::Ne,
                        _ => op,
                    };
                    Predicate::Compare { property, op, value }
                }),
            ]
        }

        /// Expressions in the shape the parser produces: `Or`/`And` with at least two
        /// children, never directly nested in their own kind.
        fn expr() -> impl Strategy<Value = Expr> {
            predicate()
                .prop_map(Expr::Pred)
                .prop_recursive(4, 32, 4, |inner| {
                    prop_oneof![
                        prop::collection::vec(inner.clone(), 2..4).prop_map(|c| join(c, false)),
                        prop::collection::vec(inner, 2..4).prop_map(|c| join(c, true)),
                    ]
                })
        }

        fn context() -> impl Strategy<Value = HashMap<String, Value>> {
            (
                prop::option::of(value()),
                prop::option::of(value()),
                prop::option::of(value()),
            )
                .prop_map(|(a, b, c)| {
                    NAMES
                        .iter()
                        .zip([a, b, c])
                        .filter_map(|(n, v)| v.map(|v| (n.to_string(), v)))
                        .collect()
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn display_parses_back_to_the_same_expr(e in expr()) {
                let text = e.to_string();
                prop_assert_eq!(parse(&text), Ok(e), "text: {}", text);
            }

            #[test]
            fn normal_form_evaluates_like_the_tree(e in expr(), ctx in context()) {
                if let Ok(f) = e.normalize() {
                    let reference = e.eval(|k| ctx.get(k).cloned());
                    prop_assert_eq!(f.eval(|k| ctx.get(k)), reference, "filter: {}", f);
                }
            }

            #[test]
            fn filter_display_parses_back_to_the_same_filter(e in expr()) {
                if let Ok(f) = e.normalize() {
                    let text = f.to_string();
                    let again = parse(&text).and_then(|e| e.normalize());
                    prop_assert_eq!(again, Ok(f), "text: {}", text);
                }
            }

            #[test]
            fn parse_never_panics(s in "[ -~é]{0,40}") {
                let _ = parse(&s);
            }
        }
    }
}

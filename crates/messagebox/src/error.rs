//! The MessageBox error type: one enum, lowercase messages, a clear split between bad
//! input (the operator can fix the command), refusals (the state forbids it now), and
//! database errors (retryable when connection-class).

use crate::filter::FilterError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A named object does not exist.
    #[error("{kind} '{name}' does not exist; {hint}")]
    NotFound {
        kind: &'static str,
        name: String,
        hint: String,
    },
    /// A named object exists already.
    #[error("{kind} '{name}' already exists; {hint}")]
    AlreadyExists {
        kind: &'static str,
        name: String,
        hint: String,
    },
    /// Bad input: names the argument, the problem and a right example.
    #[error("{0}")]
    Invalid(String),
    /// A filter that does not parse or type-check.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The current state forbids the change (with counts where there are some).
    #[error("{0}")]
    Refused(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The lease the work was fenced on moved on (or expired): nothing was changed.
    #[error("{0}")]
    Fenced(String),
    /// A body to publish could not be read whole (a file that changed or vanished).
    #[error("{0}")]
    Body(String),
}

impl Error {
    /// Bad input the caller can fix by changing the command (exit code 2 in `mbx`).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::NotFound { .. }
                | Error::AlreadyExists { .. }
                | Error::Invalid(_)
                | Error::Filter(_)
        )
    }

    /// Connection-class failures (SQLSTATE 08xxx, 57P01 admin shutdown, I/O, pool
    /// timeouts), deadlocks and lock timeouts, and a server short of resources (53000,
    /// 53100 disk full, 53200 out of memory, 53300 too many connections): the unit of work
    /// may be re-run once the server recovers.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(e) => is_retryable_sqlx(e),
            _ => false,
        }
    }

    pub(crate) fn not_found(
        kind: &'static str,
        name: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
            hint: hint.into(),
        }
    }
}

pub(crate) fn is_retryable_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db
            .code()
            .map(|c| {
                c.starts_with("08")
                    || c == "57P01"
                    || c == "57P02"
                    || c == "57P03"
                    || c == "40001"
                    || c == "40P01"
                    || c == "55P03"
                    || c == "53000"
                    || c == "53100"
                    || c == "53200"
                    || c == "53300"
            })
            .unwrap_or(false),
        _ => false,
    }
}

/// Whether a database error is a unique violation (23505).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// What an INSERT of a named object failed with: `AlreadyExists` ("`kind` '`name`'
/// already exists; `hint`") for a unique violation, else the database error.
pub(crate) fn exists_or(e: sqlx::Error, kind: &'static str, name: &str, hint: &str) -> Error {
    if is_unique_violation(&e) {
        Error::AlreadyExists {
            kind,
            name: name.to_owned(),
            hint: hint.to_owned(),
        }
    } else {
        e.into()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line ("context: cause: cause"), each cause left out
/// when the message before already says it (our errors and sqlx's repeat their source in
/// their own message), newlines flattened: what the binaries print on failure.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = e.source();
    }
    line.replace('\n', " ")
}

/// A command-line parser's error (clap's rendering) as one line: its first line and the
/// indented lines right under it (the arguments a "required arguments were not provided"
/// error names), without the usage and "For more information" footer.
pub fn usage_line(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let mut line = lines
        .next()
        .unwrap_or("error: bad arguments")
        .trim_end()
        .to_owned();
    for more in lines.take_while(|l| l.starts_with(' ') && !l.trim().is_empty()) {
        line.push(' ');
        line.push_str(more.trim());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::{one_line, usage_line};

    #[test]
    fn usage_line_keeps_the_arguments_named_under_the_first_line() {
        let missing = "error: the following required arguments were not provided:\n  \
                       --database-url <DATABASE_URL>\n\nUsage: mbx-host --database-url \
                       <DATABASE_URL>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line(missing),
            "error: the following required arguments were not provided: --database-url \
             <DATABASE_URL>"
        );
        let bad = "error: invalid value 'soon' for '--poll-interval <POLL_INTERVAL>': x\n\n\
                   For more information, try '--help'.\n";
        assert_eq!(
            usage_line(bad),
            "error: invalid value 'soon' for '--poll-interval <POLL_INTERVAL>': x"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("database error: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("bad certificate\nfor localhost")]
    struct Inner;

    #[test]
    fn causes_already_said_are_left_out_and_lines_joined() {
        assert_eq!(
            one_line(&Outer(Inner)),
            "database error: bad certificate for localhost"
        );
    }
}

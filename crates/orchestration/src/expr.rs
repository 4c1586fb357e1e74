//! Runtime expressions: jq through jaq, compiled once per definition version.
//!
//! The DSL's arguments are global variables (`$context`, `$input`, `$output`, `$task`,
//! `$workflow`, `$runtime`); `$secrets` and `$authorization` are outside the mbx profile.
//! A replay must be deterministic, so nothing reads the machine: jaq's `env`, `$ENV`,
//! `input`/`inputs`, `halt`, `debug`/`stderr` are not there, and `now` is the step's
//! database time (passed in as [`Args::now`]), not the clock of the host that runs it.

use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;

/// The runtime arguments of the DSL an expression may read, in the order of [`Args`].
pub const ARGUMENTS: [&str; 7] = [
    "$context",
    "$input",
    "$output",
    "$task",
    "$workflow",
    "$runtime",
    "$__mbx_now",
];

/// Native filters left out: they read the machine (environment, clock, process) or
/// write to it, so a replay could differ or a definition could read the host's secrets.
const LEFT_OUT_FUNS: [&str; 6] = ["env", "now", "halt", "debug_empty", "stderr_empty", "input"];

/// Definitions left out with them (they are written over the filters above).
const LEFT_OUT_DEFS: [&str; 5] = ["debug", "stderr", "halt", "halt_error", "inputs"];

/// What the runtime passes to an expression: the DSL's arguments and the step's time.
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub context: serde_json::Value,
    pub input: serde_json::Value,
    pub output: serde_json::Value,
    pub task: serde_json::Value,
    pub workflow: serde_json::Value,
    pub runtime: serde_json::Value,
    /// The step's database time, seconds since the Unix epoch (`now`).
    pub now: f64,
    /// The variables in scope by name (`for`'s `each` and `at`, `catch`'s `as`),
    /// without the `$`.
    pub scope: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Why an expression could not be evaluated: the DSL's `expression` error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("the expression `{expr}` failed: {message}")]
    Failed { expr: String, message: String },
    #[error("the expression `{expr}` gave no value")]
    Empty { expr: String },
}

/// One compiled runtime expression (the jq inside `${ }`).
#[derive(Clone)]
pub struct Expr {
    text: String,
    /// The scope's variables it was compiled with, in order, without the `$`.
    scope: Vec<String>,
    filter: Arc<jaq_core::Filter<data::JustLut<Val>>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.text)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// The jq of a runtime expression, when `text` is one (`${ … }`, strict mode).
pub fn runtime_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("${")?.strip_suffix('}')?;
    (!inner.trim().is_empty()).then_some(inner)
}

impl Expr {
    /// Compiles the jq `code`; the error names what jaq could not parse or resolve.
    pub fn compile(code: &str) -> Result<Expr, String> {
        Expr::compile_in(code, &[])
    }

    /// [`Expr::compile`] with the variables `scope` (names without `$`) in scope too.
    pub fn compile_in(code: &str, scope: &[String]) -> Result<Expr, String> {
        let vars: Vec<String> = scope.iter().map(|name| format!("${name}")).collect();
        let program = format!("def now: $__mbx_now; {code}");
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .filter(|def| !LEFT_OUT_DEFS.contains(&def.name));
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !LEFT_OUT_FUNS.contains(name));
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let file = File {
            code: program.as_str(),
            path: (),
        };
        let modules = loader.load(&arena, file).map_err(describe)?;
        let filter = Compiler::default()
            .with_funs(funs)
            .with_global_vars(ARGUMENTS.into_iter().chain(vars.iter().map(String::as_str)))
            .compile(modules)
            .map_err(describe)?;
        Ok(Expr {
            text: code.trim().to_owned(),
            scope: scope.to_vec(),
            filter: Arc::new(filter),
        })
    }

    /// The jq text, as written inside `${ }`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Runs the expression on `input` and returns its first value, as the DSL does.
    pub fn eval(
        &self,
        input: &serde_json::Value,
        args: &Args,
    ) -> Result<serde_json::Value, EvalError> {
        let fail = |message: String| EvalError::Failed {
            expr: self.text.clone(),
            message,
        };
        let vars = [
            &args.context,
            &args.input,
            &args.output,
            &args.task,
            &args.workflow,
            &args.runtime,
        ]
        .into_iter()
        .map(to_val)
        .chain([Val::from(args.now)])
        .chain(
            self.scope
                .iter()
                .map(|name| args.scope.get(name).map_or(Val::Null, to_val)),
        )
        .collect::<Vec<_>>();
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new(vars));
        let mut out = self.filter.id.run((ctx, to_val(input))).map(unwrap_valr);
        match out.next() {
            None => Err(EvalError::Empty {
                expr: self.text.clone(),
            }),
            Some(Err(e)) => Err(fail(e.to_string())),
            // jaq writes its values as JSON text
            Some(Ok(v)) => serde_json::from_str(&v.to_string()).map_err(|e| fail(e.to_string())),
        }
    }
}

fn to_val(value: &serde_json::Value) -> Val {
    // a serde_json value always maps onto jaq's (numbers, strings, arrays, objects)
    serde_json::from_value(value.clone()).unwrap_or(Val::Null)
}

/// jaq's reports (of loading or of compiling), shortened to one line.
fn describe<F, E: std::fmt::Debug>(errors: Vec<(F, E)>) -> String {
    let errors: Vec<String> = errors.into_iter().map(|(_, e)| format!("{e:?}")).collect();
    let mut text = errors.join("; ");
    text = text.replace('\n', " ");
    if text.len() > 300 {
        text.truncate(300);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(code: &str, input: serde_json::Value) -> Result<serde_json::Value, EvalError> {
        Expr::compile(code)
            .expect("compiles")
            .eval(&input, &Args::default())
    }

    #[test]
    fn an_expression_reads_its_input_and_the_arguments() {
        let expr = Expr::compile(r#".order.id + "-" + $context.region"#).expect("compiles");
        let args = Args {
            context: json!({"region": "EU"}),
            ..Args::default()
        };
        let out = expr
            .eval(&json!({"order": {"id": "A1"}}), &args)
            .expect("runs");
        assert_eq!(out, json!("A1-EU"));
    }

    #[test]
    fn variables_in_scope_are_read_by_name() {
        let expr = Expr::compile_in(
            "$item * 10 + $index",
            &["item".to_owned(), "index".to_owned()],
        )
        .expect("compiles");
        let mut args = Args::default();
        args.scope.insert("item".to_owned(), json!(4));
        args.scope.insert("index".to_owned(), json!(2));
        assert_eq!(expr.eval(&json!(null), &args).expect("runs"), json!(42));
        assert!(Expr::compile("$item").is_err(), "out of scope");
    }

    #[test]
    fn the_standard_library_is_there() {
        assert_eq!(
            eval("map(. * 2) | add", json!([1, 2, 3])).expect("runs"),
            json!(12)
        );
        assert_eq!(
            eval(r#"test("^A")"#, json!("Abc")).expect("runs"),
            json!(true)
        );
    }

    #[test]
    fn now_is_the_time_passed_in_not_the_clock() {
        let expr = Expr::compile("now").expect("compiles");
        let args = Args {
            now: 1_000.5,
            ..Args::default()
        };
        assert_eq!(
            expr.eval(&json!(null), &args).expect("runs"),
            json!(1_000.5)
        );
    }

    #[test]
    fn nothing_reads_the_machine() {
        for code in [
            "env", "$ENV", "input", "inputs", "halt", "debug", "$secrets",
        ] {
            assert!(Expr::compile(code).is_err(), "{code} must not compile");
        }
    }

    #[test]
    fn a_syntax_error_is_refused_with_what_jaq_says() {
        let e = Expr::compile(".a | | .b").expect_err("refused");
        assert!(!e.is_empty());
    }

    #[test]
    fn a_runtime_error_and_an_empty_result_are_expression_errors() {
        assert!(matches!(
            eval(r#"error("no")"#, json!(1)),
            Err(EvalError::Failed { .. })
        ));
        assert!(matches!(
            eval("empty", json!(1)),
            Err(EvalError::Empty { .. })
        ));
    }

    #[test]
    fn runtime_expressions_are_found_in_strict_mode_only() {
        assert_eq!(runtime_expression("${ .a }"), Some(" .a "));
        assert_eq!(runtime_expression("  ${.a}  "), Some(".a"));
        assert_eq!(runtime_expression(".a"), None);
        assert_eq!(runtime_expression("${ }"), None);
    }

    #[test]
    fn a_compiled_expression_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Expr>();
    }
}

//! `spate sql`: SQL over the cluster's topics, like `datafusion-cli`. Every `-c` string and every
//! statement of every `-f` file runs in command-line order and the first failure stops the run;
//! with neither, statements come from an interactive shell (line editing, history in
//! `$HOME/.spate_sql_history`, multi-line input up to a `;`), or from stdin when it is not a
//! terminal (then every statement runs, failures are reported, and the exit status says whether
//! any failed). Results stream batch by batch to stdout in the chosen `--format`; the row count
//! and time go to stderr.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json;
use datafusion::arrow::json::writer::{JsonArray, LineDelimited};
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, TokenizerError};
use futures_util::StreamExt;
use spate_streams::sql::{SqlConfig, SqlContext};

use crate::common::{parse_key_value, BootstrapArgs};

/// Rows the `table` format holds for one result unless `--maxrows` says otherwise: a table is
/// for people, and a topic can have billions of rows.
const DEFAULT_MAXROWS: usize = 10_000;

/// The interactive shell's history file, under `$HOME`.
const HISTORY_FILE: &str = ".spate_sql_history";

/// Lines of one statement bigger than this are refused rather than buffered: input from a pipe
/// without a terminating `;` would otherwise grow without bound.
const MAX_STATEMENT_BYTES: usize = 64 * 1024 * 1024;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// A boxed table for people (at most --maxrows rows).
    Table,
    /// Comma-separated values with a header line (RFC 4180 quoting).
    Csv,
    /// Tab-separated values with a header line.
    Tsv,
    /// One JSON array of objects per statement.
    Json,
    /// One JSON object per line (newline-delimited JSON).
    Ndjson,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Exit status: 0 when every statement succeeded; 1 when a statement failed (-c/-f \
stop at the first failure; piped stdin runs every statement and reports each failure) or the \
cluster could not be reached; 2 for bad flags. With neither -c nor -f, statements are read from \
an interactive shell, or from stdin when it is not a terminal.")]
pub struct SqlArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// How results are printed.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// SQL to run (one or more statements separated by `;`); repeatable, runs in order with -f.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub commands: Vec<String>,
    /// A file of SQL statements separated by `;`; repeatable, runs in order with -c.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Do not print the row count and time of each statement.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Rows the table format prints per result (the rest are counted, not shown); `inf` for
    /// no limit. Other formats print every row.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAXROWS, value_parser = parse_maxrows)]
    pub maxrows: usize,
    /// Run the last statement (an `INSERT INTO topic SELECT …`) as a continuous query until
    /// SIGINT or SIGTERM; the statements before it (e.g. `CREATE TABLE … WITH (…)`) set it up.
    #[arg(long, requires = "query_id")]
    pub continuous: bool,
    /// The continuous query's id: processes running the same query with the same id form one
    /// group and share the input partitions (Kafka Streams' `application.id`).
    #[arg(long = "query-id", value_name = "ID", requires = "continuous")]
    pub query_id: Option<String>,
    /// Where a continuous query keeps its local state (`state.dir`).
    #[arg(long = "state-dir", value_name = "DIR", requires = "continuous")]
    pub state_dir: Option<PathBuf>,
    /// A streams configuration entry for a continuous query (`commit.interval.ms=1000`, …);
    /// repeatable.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value, requires = "continuous")]
    pub config: Vec<(String, String)>,
}

fn parse_maxrows(raw: &str) -> Result<usize, String> {
    match raw.trim() {
        "inf" | "unlimited" => Ok(usize::MAX),
        n => n.parse::<usize>().map_err(|_| format!("--maxrows must be a number or inf, not '{raw}'")),
    }
}

/// Where statements come from, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Command(String),
    File(PathBuf),
}

/// The `-c` and `-f` values in the order they were given (clap keeps each flag's values apart;
/// their indices say how they interleave). Without matches: every `-c`, then every `-f`.
pub fn sources_in_order(args: &SqlArgs, matches: Option<&clap::ArgMatches>) -> Vec<Source> {
    let mut indexed: Vec<(usize, Source)> = Vec::with_capacity(args.commands.len() + args.files.len());
    let command_indices: Vec<usize> =
        matches.and_then(|m| m.indices_of("commands")).map(|i| i.collect()).unwrap_or_default();
    let file_indices: Vec<usize> = matches.and_then(|m| m.indices_of("files")).map(|i| i.collect()).unwrap_or_default();
    for (n, command) in args.commands.iter().enumerate() {
        indexed.push((command_indices.get(n).copied().unwrap_or(n), Source::Command(command.clone())));
    }
    for (n, file) in args.files.iter().enumerate() {
        let fallback = args.commands.len() + n;
        indexed.push((file_indices.get(n).copied().unwrap_or(fallback), Source::File(file.clone())));
    }
    indexed.sort_by_key(|(index, _)| *index);
    indexed.into_iter().map(|(_, source)| source).collect()
}

pub async fn run(args: SqlArgs, sources: Vec<Source>) -> Result<()> {
    let bootstrap = args.bootstrap.servers()?.join(",");
    let ctx = SqlContext::connect(SqlConfig::new(bootstrap.clone()))
        .await
        .with_context(|| format!("connecting to {bootstrap}"))?;
    let shell = Shell { ctx, format: args.format, maxrows: args.maxrows, quiet: args.quiet };
    if args.continuous {
        return shell.run_continuous(&args, &sources).await;
    }
    if !sources.is_empty() {
        return shell.run_sources(&sources).await;
    }
    if std::io::stdin().is_terminal() {
        shell.interactive().await
    } else {
        shell.piped().await
    }
}

/// A statement and where it came from (`-c #2`, a file name), for error messages.
struct Located {
    origin: String,
    index: usize,
    statement: Statement,
}

impl Located {
    fn describe(&self) -> String {
        format!("{}, statement {} (line {})", self.origin, self.index + 1, self.statement.line)
    }
}

/// Every statement of the -c and -f sources, in order. Reads and splits everything before
/// anything runs, so that a typo in a later file stops the run before it changed anything.
fn load_statements(sources: &[Source]) -> Result<Vec<Located>> {
    let mut all = Vec::new();
    for (n, source) in sources.iter().enumerate() {
        let (origin, script) = match source {
            Source::Command(sql) => (format!("-c #{}", n + 1), sql.clone()),
            Source::File(path) => {
                (path.display().to_string(), read_script(path).with_context(|| format!("reading {}", path.display()))?)
            }
        };
        let statements = split_statements(&script).map_err(|e| tokenizer_error(&origin, &e))?;
        all.extend(statements.into_iter().enumerate().map(|(index, statement)| Located {
            origin: origin.clone(),
            index,
            statement,
        }));
    }
    Ok(all)
}

/// What happened to a statement's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    /// stdout was closed (`spate sql … | head`): stop quietly, as `cat` does.
    OutputClosed,
}

struct Shell {
    ctx: SqlContext,
    format: OutputFormat,
    maxrows: usize,
    quiet: bool,
}

impl Shell {
    /// `-c` and `-f`: every statement in order; the first failure ends the run.
    async fn run_sources(&self, sources: &[Source]) -> Result<()> {
        for located in load_statements(sources)? {
            let outcome = self.execute(&located.statement).await.with_context(|| located.describe())?;
            if outcome == Outcome::OutputClosed {
                return Ok(());
            }
        }
        Ok(())
    }

    /// `--continuous`: the statements before the last set the query up (`CREATE TABLE … WITH`);
    /// the last, an `INSERT INTO topic SELECT …`, runs on the spate-streams runtime until
    /// SIGINT or SIGTERM, which commit its progress and stop it.
    async fn run_continuous(&self, args: &SqlArgs, sources: &[Source]) -> Result<()> {
        // Installed now: a signal while the query starts stops it once started, cleanly.
        let shutdown = crate::broker::shutdown_signal();
        let mut statements = load_statements(sources)?;
        let Some(query) = statements.pop() else {
            bail!("--continuous needs the query: -c \"INSERT INTO out_topic SELECT …\" or -f FILE");
        };
        let query_id = args.query_id.as_deref().context("--continuous needs --query-id")?;
        for located in &statements {
            self.execute(&located.statement).await.with_context(|| located.describe())?;
        }
        if query.statement.text.trim_start().get(..7).is_some_and(|w| w.eq_ignore_ascii_case("explain")) {
            // EXPLAIN INSERT …: show what would run, run nothing.
            self.execute(&query.statement).await.with_context(|| query.describe())?;
            return Ok(());
        }
        let mut config = args.config.clone();
        if let Some(dir) = &args.state_dir {
            config.push(("state.dir".to_owned(), dir.display().to_string()));
        }
        eprintln!("continuous query {query_id} running (SIGINT or SIGTERM stops it): {}", query.statement.text);
        spate_streams::sql::continuous::run_continuous(
            &self.ctx,
            &query.statement.positioned_text(),
            query_id,
            &config,
            shutdown,
        )
        .await
        .with_context(|| format!("continuous query {query_id} ({})", query.describe()))?;
        eprintln!("continuous query {query_id} stopped; its progress is committed");
        Ok(())
    }

    /// stdin is a pipe or a file: statements as the shell would take them, without prompts.
    /// Every statement runs; each failure is printed; the result says whether any failed.
    async fn piped(&self) -> Result<()> {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut buffer = String::new();
        let mut tally = Tally::default();
        let mut line_no: u64 = 0;
        // The line of the script where `buffer` starts, so that errors point into the script.
        let mut buffer_line: u64 = 1;
        while let Some(line) = lines.next_line().await.context("reading stdin")? {
            line_no += 1;
            if buffer.trim().is_empty() {
                buffer.clear();
                buffer_line = line_no;
                if is_quit(&line) {
                    break;
                }
            }
            buffer.push_str(&line);
            buffer.push('\n');
            if buffer.len() > MAX_STATEMENT_BYTES {
                bail!("a statement on stdin is longer than {MAX_STATEMENT_BYTES} bytes without a terminating ';'");
            }
            if input_is_complete(&buffer) {
                let script = std::mem::take(&mut buffer);
                if self.run_script(&script, buffer_line, &mut tally, false).await == Outcome::OutputClosed {
                    return Ok(());
                }
            }
        }
        if !buffer.trim().is_empty() {
            // The last statement may lack its `;`, as datafusion-cli allows.
            self.run_script(&buffer, buffer_line, &mut tally, false).await;
        }
        tally.result()
    }

    /// A terminal: rustyline with history; errors are printed and the shell goes on. Ctrl-C
    /// drops the current input or cancels the running query; `\q`, `quit`, `exit` or Ctrl-D leave.
    async fn interactive(&self) -> Result<()> {
        use rustyline::error::ReadlineError;
        let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
        let history = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE));
        if let Some(path) = &history {
            // Best effort: a first run has no history yet.
            let _ = editor.load_history(path);
        }
        eprintln!("spate sql: end statements with ';'. \\q to quit.");
        let mut buffer = String::new();
        let mut tally = Tally::default();
        loop {
            let prompt = if buffer.is_empty() { "spate> " } else { "    -> " };
            // rustyline blocks on the terminal; keep the runtime's other workers free meanwhile.
            let read = tokio::task::block_in_place(|| editor.readline(prompt));
            match read {
                Ok(line) => {
                    if buffer.is_empty() && is_quit(&line) {
                        break;
                    }
                    if buffer.is_empty() && line.trim().is_empty() {
                        continue;
                    }
                    buffer.push_str(&line);
                    buffer.push('\n');
                    if input_is_complete(&buffer) {
                        let script = std::mem::take(&mut buffer);
                        let _ = editor.add_history_entry(script.trim_end());
                        self.run_script(&script, 1, &mut tally, true).await;
                    }
                }
                Err(ReadlineError::Interrupted) => buffer.clear(),
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(anyhow!(e).context("reading the terminal")),
            }
        }
        if let Some(path) = &history {
            if let Err(e) = editor.save_history(path) {
                eprintln!("warning: could not save history to {}: {e}", path.display());
            }
        }
        Ok(())
    }

    /// Runs every statement of `script` (which starts at line `first_line` of its input),
    /// printing failures; used by the shell and by piped input. `cancellable`: Ctrl-C cancels
    /// the running statement (the interactive shell, where SIGINT must not end the process).
    async fn run_script(&self, script: &str, first_line: u64, tally: &mut Tally, cancellable: bool) -> Outcome {
        let statements = match split_statements(script) {
            Ok(statements) => statements,
            Err(e) => {
                let mut e = e;
                e.location.line += first_line - 1;
                eprintln!("error: {:#}", tokenizer_error("input", &e));
                tally.failed += 1;
                return Outcome::Done;
            }
        };
        for mut statement in statements {
            statement.line += first_line - 1;
            let result = if cancellable {
                tokio::select! {
                    result = self.execute(&statement) => result,
                    _ = tokio::signal::ctrl_c() => Err(anyhow!("query cancelled")),
                }
            } else {
                self.execute(&statement).await
            };
            match result {
                Ok(Outcome::OutputClosed) => return Outcome::OutputClosed,
                Ok(Outcome::Done) => tally.ok += 1,
                Err(e) => {
                    tally.failed += 1;
                    eprintln!("error: {e:#}");
                }
            }
        }
        Outcome::Done
    }

    /// Plans and runs one statement, printing its rows as they arrive.
    async fn execute(&self, statement: &Statement) -> Result<Outcome> {
        let started = Instant::now();
        let (schema, mut stream, malformed) = self.ctx.sql_stream_counted(&statement.positioned_text()).await?;
        let closed = Arc::new(AtomicBool::new(false));
        let out = StdoutSink { closed: Arc::clone(&closed) };
        let mut printer = Printer::new(self.format, schema, self.maxrows, out);
        let mut rows: u64 = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(SqlContext::stream_error)?;
            rows += batch.num_rows() as u64;
            if let Err(e) = printer.write(&batch) {
                return output_failed(e, &closed);
            }
        }
        // The query is done: whatever happens to the output, stop its producers now.
        drop(stream);
        if let Err(e) = printer.finish() {
            return output_failed(e, &closed);
        }
        let malformed = malformed.malformed_records();
        if malformed > 0 {
            let records = if malformed == 1 { "record" } else { "records" };
            eprintln!(
                "warning: {malformed} {records} did not decode under their table's format and read as NULL \
                 (WITH (on_error = 'fail') makes them an error)"
            );
        }
        if !self.quiet {
            let rows_word = if rows == 1 { "row" } else { "rows" };
            eprintln!("{rows} {rows_word} in {:.3} s", started.elapsed().as_secs_f64());
        }
        Ok(Outcome::Done)
    }
}

/// A write to stdout failed: a closed pipe ends the run quietly, anything else is an error.
fn output_failed(e: ArrowError, closed: &AtomicBool) -> Result<Outcome> {
    if closed.load(Ordering::Relaxed) {
        Ok(Outcome::OutputClosed)
    } else {
        Err(anyhow!(e).context("writing the result to stdout"))
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
}

impl Tally {
    fn result(&self) -> Result<()> {
        if self.failed > 0 {
            bail!("{} of {} statements failed", self.failed, self.failed + self.ok);
        }
        Ok(())
    }
}

fn is_quit(line: &str) -> bool {
    matches!(line.trim().trim_end_matches(';').trim(), "\\q" | "quit" | "exit")
}

fn read_script(path: &Path) -> Result<String> {
    let bytes = std::fs::metadata(path)?.len();
    if bytes > MAX_STATEMENT_BYTES as u64 {
        bail!("{bytes} bytes is more than the {MAX_STATEMENT_BYTES} a SQL file may have");
    }
    Ok(std::fs::read_to_string(path)?)
}

fn tokenizer_error(origin: &str, e: &TokenizerError) -> anyhow::Error {
    anyhow!("sql: {} at line {}, column {} of {origin} (fix the query)", e.message, e.location.line, e.location.column)
}

/// One statement cut from a script, and where it starts there (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    text: String,
    line: u64,
    column: u64,
}

impl Statement {
    /// The statement preceded by the whitespace that stood before it in its script, so that
    /// the positions in DataFusion's errors are positions in the script, not in the statement.
    fn positioned_text(&self) -> String {
        let pad_lines = self.line.saturating_sub(1) as usize;
        let pad_columns = self.column.saturating_sub(1) as usize;
        let mut text = String::with_capacity(pad_lines + pad_columns + self.text.len());
        text.extend(std::iter::repeat_n('\n', pad_lines));
        text.extend(std::iter::repeat_n(' ', pad_columns));
        text.push_str(&self.text);
        text
    }
}

fn tokenize(script: &str) -> Result<Vec<TokenWithSpan>, TokenizerError> {
    // DataFusion's default dialect (`datafusion.sql_parser.dialect = generic`): the same
    // tokens its parser sees, so a `;` inside a string, a quoted name or a comment is not a break.
    Tokenizer::new(&GenericDialect {}, script).tokenize_with_location()
}

fn is_blank(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_) | Token::EOF)
}

/// Splits a script into statements at the `;` tokens of DataFusion's SQL tokenizer. Blank
/// statements (`;;`, comments alone) are dropped; each statement's text is the original text
/// from its first to its last token, so DataFusion parses exactly what the user wrote.
fn split_statements(script: &str) -> Result<Vec<Statement>, TokenizerError> {
    let tokens = tokenize(script)?;
    let offsets = LineOffsets::new(script);
    let mut statements = Vec::new();
    // First and last non-blank token of the statement being collected.
    let mut current: Option<(usize, usize)> = None;
    for (i, token) in tokens.iter().enumerate() {
        match &token.token {
            Token::SemiColon => {
                if let Some((first, last)) = current.take() {
                    statements.push(cut(script, &offsets, &tokens[first], &tokens[last]));
                }
            }
            t if is_blank(t) => {}
            _ => {
                current = Some((current.map_or(i, |(first, _)| first), i));
            }
        }
    }
    if let Some((first, last)) = current {
        statements.push(cut(script, &offsets, &tokens[first], &tokens[last]));
    }
    Ok(statements)
}

fn cut(script: &str, offsets: &LineOffsets, first: &TokenWithSpan, last: &TokenWithSpan) -> Statement {
    let start = offsets.byte(script, first.span.start.line, first.span.start.column);
    let end = offsets.byte(script, last.span.end.line, last.span.end.column);
    Statement { text: script[start..end].to_owned(), line: first.span.start.line, column: first.span.start.column }
}

/// Byte offsets of line starts, to turn the tokenizer's 1-based line/column (in characters)
/// back into slices of the script.
struct LineOffsets {
    starts: Vec<usize>,
}

impl LineOffsets {
    fn new(script: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(script.match_indices('\n').map(|(i, _)| i + 1));
        LineOffsets { starts }
    }

    fn byte(&self, script: &str, line: u64, column: u64) -> usize {
        let line_index = (line.max(1) - 1) as usize;
        let Some(&line_start) = self.starts.get(line_index) else {
            return script.len();
        };
        let columns = column.max(1) as usize - 1;
        script[line_start..].char_indices().nth(columns).map_or(script.len(), |(i, _)| line_start + i)
    }
}

/// Whether `input` ends a statement: its last token is a `;` outside any string, quoted name or
/// comment. A string or comment still open means more lines are coming.
fn input_is_complete(input: &str) -> bool {
    match tokenize(input) {
        Ok(tokens) => tokens.iter().rev().find(|t| !is_blank(&t.token)).is_some_and(|t| t.token == Token::SemiColon),
        Err(e) if e.message.contains("Unterminated") || e.message.contains("EOF") => false,
        // Some other token the tokenizer rejects: let the statement run and DataFusion say what.
        Err(_) => input.trim_end().ends_with(';'),
    }
}

/// stdout that remembers whether the reader went away, so that `| head` ends the run quietly.
struct StdoutSink {
    closed: Arc<AtomicBool>,
}

impl Write for StdoutSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().write(buf).inspect_err(|e| self.note(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush().inspect_err(|e| self.note(e))
    }
}

impl StdoutSink {
    fn note(&self, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            self.closed.store(true, Ordering::Relaxed);
        }
    }
}

/// Writes one statement's result in an output format, batch by batch.
enum Printer<W: Write> {
    /// DDL and other statements without columns print nothing.
    Silent,
    Table {
        out: W,
        schema: SchemaRef,
        /// The first `maxrows` rows; the rest are counted in `hidden_rows`.
        kept: Vec<RecordBatch>,
        kept_rows: usize,
        maxrows: usize,
        hidden_rows: u64,
    },
    Delimited {
        /// Boxed: Arrow's CSV writer is half a kilobyte, the other variants a fraction of that.
        writer: Box<csv::Writer<W>>,
        schema: SchemaRef,
        wrote_header: bool,
    },
    Json(json::Writer<W, JsonArray>),
    Ndjson(json::Writer<W, LineDelimited>),
}

impl<W: Write> Printer<W> {
    fn new(format: OutputFormat, schema: SchemaRef, maxrows: usize, out: W) -> Self {
        if schema.fields().is_empty() {
            return Printer::Silent;
        }
        // Explicit nulls: every object has every column, as a table has.
        let json_builder = || json::WriterBuilder::new().with_explicit_nulls(true);
        match format {
            OutputFormat::Table => {
                Printer::Table { out, schema, kept: Vec::new(), kept_rows: 0, maxrows, hidden_rows: 0 }
            }
            OutputFormat::Csv => Printer::Delimited {
                writer: Box::new(csv::WriterBuilder::new().with_header(true).build(out)),
                schema,
                wrote_header: false,
            },
            OutputFormat::Tsv => Printer::Delimited {
                writer: Box::new(csv::WriterBuilder::new().with_header(true).with_delimiter(b'\t').build(out)),
                schema,
                wrote_header: false,
            },
            OutputFormat::Json => Printer::Json(json_builder().build::<_, JsonArray>(out)),
            OutputFormat::Ndjson => Printer::Ndjson(json_builder().build::<_, LineDelimited>(out)),
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        match self {
            Printer::Silent => Ok(()),
            Printer::Table { kept, kept_rows, maxrows, hidden_rows, .. } => {
                let room = maxrows.saturating_sub(*kept_rows);
                let take = room.min(batch.num_rows());
                if take > 0 {
                    kept.push(batch.slice(0, take));
                    *kept_rows += take;
                }
                *hidden_rows += (batch.num_rows() - take) as u64;
                Ok(())
            }
            Printer::Delimited { writer, wrote_header, .. } => {
                *wrote_header = true;
                writer.write(batch)
            }
            Printer::Json(writer) => writer.write(batch),
            Printer::Ndjson(writer) => writer.write(batch),
        }
    }

    /// Ends the output (the table itself, a header for an empty CSV result, JSON's `]`).
    fn finish(self) -> Result<Option<W>, ArrowError> {
        let io = |e: std::io::Error| ArrowError::IoError(e.to_string(), e);
        match self {
            Printer::Silent => Ok(None),
            Printer::Table { mut out, schema, kept, maxrows, hidden_rows, .. } => {
                let table = pretty_format_batches_with_schema(schema, &kept)?;
                writeln!(out, "{table}").map_err(io)?;
                if hidden_rows > 0 {
                    let rows = if hidden_rows == 1 { "row" } else { "rows" };
                    writeln!(out, "… {hidden_rows} more {rows} not shown (--maxrows {maxrows})").map_err(io)?;
                }
                out.flush().map_err(io)?;
                Ok(Some(out))
            }
            Printer::Delimited { mut writer, schema, wrote_header } => {
                if !wrote_header {
                    writer.write(&RecordBatch::new_empty(schema))?;
                }
                let mut out = (*writer).into_inner();
                out.flush().map_err(io)?;
                Ok(Some(out))
            }
            Printer::Json(mut writer) => {
                writer.finish()?;
                let mut out = writer.into_inner();
                writeln!(out).map_err(io)?;
                out.flush().map_err(io)?;
                Ok(Some(out))
            }
            Printer::Ndjson(mut writer) => {
                writer.finish()?;
                let mut out = writer.into_inner();
                out.flush().map_err(io)?;
                Ok(Some(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn texts(script: &str) -> Vec<String> {
        split_statements(script).unwrap().into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn statements_split_at_semicolons_outside_strings_names_and_comments() {
        assert_eq!(texts("SELECT 1; SELECT 2"), ["SELECT 1", "SELECT 2"]);
        assert_eq!(texts("SELECT 'a;b' AS \"x;y\"; -- c;d\nSELECT 2;"), ["SELECT 'a;b' AS \"x;y\"", "SELECT 2"]);
        assert_eq!(texts("/* ; */ SELECT 1;;\n\n;  "), ["SELECT 1"]);
        assert_eq!(texts("  \n -- only a comment\n"), Vec::<String>::new());
        assert_eq!(texts("SELECT 'é;ü', 'ß' ; SELECT 3"), ["SELECT 'é;ü', 'ß'", "SELECT 3"]);
    }

    #[test]
    fn statements_remember_where_they_start() {
        let statements = split_statements("SELECT 1;\n\n  SELECT\n  x FROM t;").unwrap();
        assert_eq!((statements[0].line, statements[0].column), (1, 1));
        assert_eq!((statements[1].line, statements[1].column), (3, 3));
        assert_eq!(statements[1].text, "SELECT\n  x FROM t");
        assert_eq!(statements[1].positioned_text(), "\n\n  SELECT\n  x FROM t");
    }

    #[test]
    fn an_unterminated_string_is_a_tokenizer_error_with_its_position() {
        let e = split_statements("SELECT 1;\nSELECT 'abc").unwrap_err();
        assert!(e.message.contains("Unterminated"), "{}", e.message);
        assert_eq!(e.location.line, 2);
    }

    #[test]
    fn input_is_complete_only_after_a_semicolon_outside_quotes() {
        assert!(input_is_complete("SELECT 1;"));
        assert!(input_is_complete("SELECT 1;\n  -- trailing comment\n"));
        assert!(!input_is_complete("SELECT 1"));
        assert!(!input_is_complete("SELECT 'a;"));
        assert!(!input_is_complete("SELECT 'a;\nb';x"));
        assert!(input_is_complete("SELECT 'a;\nb';"));
        assert!(!input_is_complete("SELECT /* ; "));
    }

    #[test]
    fn quit_words() {
        for quit in ["\\q", "quit", "exit;", "  EXIT ".trim()] {
            assert!(is_quit(&quit.to_lowercase()), "{quit}");
        }
        assert!(!is_quit("select 1;"));
    }

    #[test]
    fn maxrows_takes_numbers_and_inf() {
        assert_eq!(parse_maxrows("5"), Ok(5));
        assert_eq!(parse_maxrows("inf"), Ok(usize::MAX));
        assert!(parse_maxrows("-1").is_err());
    }

    fn batch(ids: &[i64], names: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(ids.to_vec())), Arc::new(StringArray::from(names.to_vec()))],
        )
        .unwrap()
    }

    fn print(format: OutputFormat, maxrows: usize, batches: &[RecordBatch]) -> String {
        let schema = batch(&[], &[]).schema();
        let mut printer = Printer::new(format, schema, maxrows, Vec::new());
        for b in batches {
            printer.write(b).unwrap();
        }
        String::from_utf8(printer.finish().unwrap().unwrap()).unwrap()
    }

    #[test]
    fn formats_print_every_batch() {
        let batches = [batch(&[1, 2], &[Some("a,b"), None]), batch(&[3], &[Some("c\td")])];
        assert_eq!(print(OutputFormat::Csv, 1, &batches), "id,name\n1,\"a,b\"\n2,\n3,c\td\n");
        assert_eq!(print(OutputFormat::Tsv, 1, &batches), "id\tname\n1\ta,b\n2\t\n3\t\"c\td\"\n");
        assert_eq!(
            print(OutputFormat::Json, 1, &batches),
            "[{\"id\":1,\"name\":\"a,b\"},{\"id\":2,\"name\":null},{\"id\":3,\"name\":\"c\\td\"}]\n"
        );
        assert_eq!(
            print(OutputFormat::Ndjson, 1, &batches),
            "{\"id\":1,\"name\":\"a,b\"}\n{\"id\":2,\"name\":null}\n{\"id\":3,\"name\":\"c\\td\"}\n"
        );
    }

    #[test]
    fn empty_results_keep_their_header() {
        assert_eq!(print(OutputFormat::Csv, 10, &[]), "id,name\n");
        assert_eq!(print(OutputFormat::Json, 10, &[]), "[]\n");
        assert_eq!(print(OutputFormat::Ndjson, 10, &[]), "");
        assert!(print(OutputFormat::Table, 10, &[]).contains("| id | name |"));
    }

    #[test]
    fn the_table_holds_at_most_maxrows_and_counts_the_rest() {
        let batches = [batch(&[1, 2], &[Some("a"), Some("b")]), batch(&[3, 4, 5], &[None, None, None])];
        let table = print(OutputFormat::Table, 3, &batches);
        assert!(table.contains("| 3  |"), "{table}");
        assert!(!table.contains("| 4  |"), "{table}");
        assert!(table.ends_with("… 2 more rows not shown (--maxrows 3)\n"), "{table}");
    }

    #[test]
    fn statements_without_columns_print_nothing() {
        let mut printer = Printer::new(OutputFormat::Json, Arc::new(Schema::empty()), 10, Vec::<u8>::new());
        printer.write(&RecordBatch::new_empty(Arc::new(Schema::empty()))).unwrap();
        assert!(printer.finish().unwrap().is_none());
    }

    fn sql_args(argv: &[&str]) -> (SqlArgs, clap::ArgMatches) {
        use clap::{CommandFactory, FromArgMatches};
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            sql: SqlArgs,
        }
        let matches = Wrapper::command().try_get_matches_from(argv).unwrap();
        (Wrapper::from_arg_matches(&matches).unwrap().sql, matches)
    }

    #[test]
    fn commands_and_files_keep_their_command_line_order() {
        let (args, matches) = sql_args(&["sql", "-f", "a.sql", "-c", "SELECT 1", "-f", "b.sql", "-c", "SELECT 2"]);
        assert_eq!(
            sources_in_order(&args, Some(&matches)),
            [
                Source::File("a.sql".into()),
                Source::Command("SELECT 1".into()),
                Source::File("b.sql".into()),
                Source::Command("SELECT 2".into()),
            ]
        );
        assert_eq!(sources_in_order(&args, None)[0], Source::Command("SELECT 1".into()));
    }

    #[test]
    fn continuous_flags_need_each_other() {
        use clap::{CommandFactory, FromArgMatches};
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            sql: SqlArgs,
        }
        assert!(Wrapper::command().try_get_matches_from(["sql", "--continuous"]).is_err());
        assert!(Wrapper::command().try_get_matches_from(["sql", "--query-id", "q"]).is_err());
        let matches = Wrapper::command().try_get_matches_from(["sql", "--continuous", "--query-id", "q1"]).unwrap();
        assert_eq!(Wrapper::from_arg_matches(&matches).unwrap().sql.query_id.as_deref(), Some("q1"));
    }
}

//! Bulk loads: a reader thread parses the file into batches while the async side streams them,
//! so parsing, encoding and the server's work overlap.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::Ch;
use tokio::sync::mpsc;

use crate::pb::{self, admin_client::AdminClient, ingest_client::IngestClient, value::Kind};
use crate::progress::Progress;
use crate::values::{self, Failure, Result, Ty, fail};
use crate::wire::{ColumnsWriter, EncodedColumns, Typed};
use crate::{LoadArgs, MemberKey, MemberMode};

/// Batches parsed ahead of the sender.
const QUEUE: usize = 16;

/// One cell of a row: CSV text or a JSON value.
#[derive(Clone, Copy)]
pub enum Cell<'a> {
    Text(&'a str),
    Json(&'a serde_json::Value),
}

impl<'a> Cell<'a> {
    /// The cell as text, borrowed from the input where it is there as text; `None` when empty
    /// (CSV) or null (JSON).
    fn text(&self) -> Result<Option<Cow<'a, str>>, String> {
        match *self {
            Cell::Text(s) if values::trimmed(s).is_empty() => Ok(None),
            Cell::Text(s) => Ok(Some(Cow::Borrowed(values::trimmed(s)))),
            Cell::Json(serde_json::Value::Null) => Ok(None),
            Cell::Json(serde_json::Value::String(s)) => Ok(Some(Cow::Borrowed(s))),
            Cell::Json(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                Ok(Some(Cow::Owned(v.to_string())))
            }
            Cell::Json(v) => Err(format!("expected a string, got {v}")),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Cell::Text(s) => values::trimmed(s).is_empty(),
            Cell::Json(v) => v.is_null(),
        }
    }
}

/// `v` emptied, its allocation kept for items of another lifetime: a row's cells borrow the
/// record read into, so each row would otherwise allocate its vectors anew. (Collecting an
/// emptied vector into one of the same layout reuses its allocation.)
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

/// A parsed row: column name → cell.
pub struct Row<'a> {
    pub fields: Vec<(&'a str, Cell<'a>)>,
    /// Every row of the input names the same fields at the same positions (a CSV header), so
    /// what a position means can be worked out once.
    pub fixed_names: bool,
}

impl<'a> Row<'a> {
    fn get(&self, name: &str) -> Option<Cell<'a>> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }

    fn text(&self, name: &str) -> Result<Option<String>, String> {
        match self.get(name) {
            Some(c) => c
                .text()
                .map(|t| t.map(Cow::into_owned))
                .map_err(|e| format!("`{name}`: {e}")),
            None => Ok(None),
        }
    }

    fn required(&self, name: &str) -> Result<String, String> {
        self.text(name)?.ok_or_else(|| format!("`{name}` is required"))
    }
}

/// A batch of parsed rows with the file line of each.
struct Batch<B> {
    items: B,
    lines: Vec<u64>,
    /// Input bytes up to the end of the batch's last row: the progress of the rows sent, the
    /// whole input at the last batch.
    read: u64,
}

/// What a reader turns good rows into, a batch at a time.
trait Sink: Send + 'static {
    type Batch: Send + 'static;
    /// Adds a row, or says why it is bad (and adds nothing).
    fn push(&mut self, row: &Row<'_>) -> Result<(), String>;
    /// The rows added since the last [`Sink::take`].
    fn take(&mut self) -> Self::Batch;
}

/// A sink collecting one item a row.
struct Items<T, F> {
    parse: F,
    items: Vec<T>,
}

impl<T, F> Sink for Items<T, F>
where
    T: Send + 'static,
    F: FnMut(&Row<'_>) -> Result<T, String> + Send + 'static,
{
    type Batch = Vec<T>;

    fn push(&mut self, row: &Row<'_>) -> Result<(), String> {
        self.items.push((self.parse)(row)?);
        Ok(())
    }

    fn take(&mut self) -> Vec<T> {
        std::mem::take(&mut self.items)
    }
}

/// What a reader thread ends with.
struct ReadOutcome {
    rows: u64,
    bad: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Csv,
    Jsonl,
}

fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "ndjson" | "json") => Format::Jsonl,
        _ => Format::Csv,
    }
}

/// The input and its size (0 when unknown: stdin).
fn open(path: &Path) -> Result<(Box<dyn Read + Send>, u64)> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(std::io::stdin()), 0));
    }
    let file = File::open(path).map_err(|e| Failure::new(format!("cannot open {}: {e}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((Box::new(file), len))
}

/// A running reader thread.
struct Reader<T> {
    batches: mpsc::Receiver<Batch<T>>,
    handle: std::thread::JoinHandle<Result<ReadOutcome>>,
    /// The input's size (0 when unknown).
    total_bytes: u64,
}

/// Starts a thread reading `path` row by row through `parse`, sending batches of `batch_size`.
/// Bad rows are reported as `file:line: why`; more than `max_errors` of them stop the read.
fn spawn_reader<S: Sink>(
    args: &LoadArgs,
    check_header: impl FnOnce(&[String]) -> Result<()> + Send + 'static,
    mut sink: S,
) -> Result<Reader<S::Batch>> {
    let (input, total_bytes) = open(&args.file)?;
    let (tx, rx) = mpsc::channel::<Batch<S::Batch>>(QUEUE);
    let (path, batch_size, max_errors) = (args.file.clone(), args.batch_size.max(1), args.max_errors);
    let format = format_of(&args.file);
    let handle =
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || -> Result<ReadOutcome> {
                let mut out = ReadOutcome { rows: 0, bad: 0 };
                let mut lines = Vec::with_capacity(batch_size);
                // Input bytes up to the end of the last row taken.
                let mut consumed = 0u64;
                let name = path.display().to_string();
                let mut take = |parsed: Result<(), String>,
                                line: u64,
                                end: u64,
                                out: &mut ReadOutcome,
                                sink: &mut S|
                 -> Result<bool> {
                    out.rows += 1;
                    consumed = end;
                    match parsed {
                        Ok(()) => lines.push(line),
                        Err(why) => {
                            out.bad += 1;
                            eprintln!("{name}:{line}: {why}");
                            if out.bad as usize > max_errors {
                                return fail(format!(
                                    "stopped after {} (--max-errors {max_errors})",
                                    values::bad_rows(out.bad)
                                ));
                            }
                        }
                    }
                    if lines.len() >= batch_size {
                        let full = Batch {
                            items: sink.take(),
                            lines: std::mem::replace(&mut lines, Vec::with_capacity(batch_size)),
                            read: consumed,
                        };
                        if tx.blocking_send(full).is_err() {
                            return Ok(false); // the sender stopped (server error)
                        }
                    }
                    Ok(true)
                };
                match format {
                    Format::Csv => {
                        let mut reader = csv::ReaderBuilder::new()
                            .flexible(true)
                            .buffer_capacity(1 << 20)
                            .from_reader(input);
                        let header: Vec<String> =
                            reader.headers()?.iter().map(|h| h.trim().to_string()).collect();
                        check_header(&header)?;
                        let mut record = csv::StringRecord::new();
                        let mut fields: Vec<(&str, Cell<'_>)> = Vec::with_capacity(header.len());
                        loop {
                            match reader.read_record(&mut record) {
                                Ok(false) => break,
                                Ok(true) => {
                                    let line = record.position().map_or(0, |p| p.line());
                                    let end = reader.position().byte();
                                    if record.len() != header.len() {
                                        let why = format!(
                                            "{} cells, the header has {}",
                                            record.len(),
                                            header.len()
                                        );
                                        if !take(Err(why), line, end, &mut out, &mut sink)? {
                                            break;
                                        }
                                        continue;
                                    }
                                    let mut row = Row {
                                        fields: recycle(std::mem::take(&mut fields)),
                                        fixed_names: true,
                                    };
                                    let cells = record.iter().map(Cell::Text);
                                    row.fields.extend(header.iter().map(String::as_str).zip(cells));
                                    let pushed = sink.push(&row);
                                    fields = recycle(row.fields);
                                    if !take(pushed, line, end, &mut out, &mut sink)? {
                                        break;
                                    }
                                }
                                Err(e) => {
                                    let line = e.position().map_or(0, |p| p.line());
                                    let end = reader.position().byte();
                                    if !take(Err(e.to_string()), line, end, &mut out, &mut sink)? {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Format::Jsonl => {
                        let mut header_checked = Some(check_header);
                        let mut end = 0u64;
                        for (i, text) in BufReader::with_capacity(1 << 20, input).lines().enumerate() {
                            let text = text?;
                            let line = i as u64 + 1;
                            end += text.len() as u64 + 1;
                            if text.trim().is_empty() {
                                continue;
                            }
                            let parsed = match serde_json::from_str::<
                                serde_json::Map<String, serde_json::Value>,
                            >(&text)
                            {
                                Ok(obj) => {
                                    if let Some(check) = header_checked.take() {
                                        check(&obj.keys().cloned().collect::<Vec<_>>())?;
                                    }
                                    let row = Row {
                                        fields: obj
                                            .iter()
                                            .map(|(k, v)| (k.as_str(), Cell::Json(v)))
                                            .collect(),
                                        fixed_names: false,
                                    };
                                    sink.push(&row)
                                }
                                Err(e) => Err(format!("not a JSON object: {e}")),
                            };
                            if !take(parsed, line, end, &mut out, &mut sink)? {
                                break;
                            }
                        }
                    }
                }
                if !lines.is_empty() {
                    let _ = tx.blocking_send(Batch {
                        items: sink.take(),
                        lines,
                        read: consumed,
                    });
                }
                Ok(out)
            })?;
    Ok(Reader {
        batches: rx,
        handle,
        total_bytes,
    })
}

/// The schema: attribute name → type.
pub async fn schema(channel: &Ch) -> Result<HashMap<String, (Ty, bool)>> {
    let reply = AdminClient::new(channel.clone())
        .get_schema(pb::GetSchemaRequest {})
        .await?
        .into_inner();
    Ok(reply
        .attributes
        .into_iter()
        .filter_map(|a| Some((a.name, (Ty::from_pb(a.r#type)?, a.read_only))))
        .collect())
}

/// The file line of `batch[k].customers[i]` (or `orders[i]`) in a server error, if it names one.
/// The file line of the row a refusal names: the field path of its `BadRequest` detail
/// (`batch[2].customers[5].email`), or of its message from a server without details.
fn line_of_status(status: &tonic::Status, lines: &[Vec<u64>], batch_offset: Option<usize>) -> Option<u64> {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let field = details
        .bad_request()
        .and_then(|b| b.field_violations.first())
        .map(|v| v.field.clone());
    // A refusal after some batches were applied names its batch in the message only.
    let path = match field {
        Some(f) if f.starts_with("batch[") || batch_offset.is_some() => f,
        Some(f) => format!("{} {f}", status.message()),
        None => status.message().to_string(),
    };
    line_of(&path, lines, batch_offset)
}

fn line_of(message: &str, lines: &[Vec<u64>], batch_offset: Option<usize>) -> Option<u64> {
    let number = |s: &str, key: &str| -> Option<usize> {
        let at = s.find(key)? + key.len();
        s[at..].split(']').next()?.parse().ok()
    };
    let batch = match batch_offset {
        Some(b) => b,
        None => number(message, "batch[")?,
    };
    let item = number(message, "customers[").or_else(|| number(message, "orders["))?;
    lines.get(batch)?.get(item).copied()
}

fn summary(label: &str, rows: u64, bad: u64, secs: f64, detail: &str) {
    eprintln!(
        "{label}: {rows} rows in {secs:.1} s ({} rows/s), {bad} bad{detail}",
        (rows as f64 / secs.max(1e-9)) as u64
    );
}

/// Customer rows checked and written column by column ([`ColumnsWriter`]). Rows name the same
/// columns in the same order (a CSV header), so each column's type and slot are remembered by
/// position and only looked up again when the name there changes.
struct CustomerColumns {
    slots: HashMap<String, (Ty, usize)>,
    /// What each position of the last row named, by name.
    by_position: Vec<(String, Field)>,
    writer: ColumnsWriter,
    /// The allocation of a row's values, kept between rows ([`recycle`]).
    values: Vec<(usize, Typed<'static>)>,
}

/// What a row's field is.
#[derive(Debug, Clone, Copy)]
enum Field {
    CustomerId,
    Email,
    /// An attribute of this type, written to this column.
    Attribute(Ty, usize),
    Unknown,
}

impl CustomerColumns {
    fn new(schema: &HashMap<String, (Ty, bool)>) -> Self {
        let names: Vec<String> = schema.keys().cloned().collect();
        let slots = names
            .iter()
            .enumerate()
            .map(|(slot, name)| (name.clone(), (schema[name].0, slot)))
            .collect();
        CustomerColumns {
            slots,
            by_position: Vec::new(),
            writer: ColumnsWriter::new(names),
            values: Vec::new(),
        }
    }
}

impl Sink for CustomerColumns {
    type Batch = Vec<u8>;

    fn push(&mut self, row: &Row<'_>) -> Result<(), String> {
        let mut customer_id = None;
        let mut email = None;
        let mut values = recycle(std::mem::take(&mut self.values));
        for (k, (name, cell)) in row.fields.iter().enumerate() {
            let field = match self.by_position.get(k) {
                Some((known, field)) if row.fixed_names || known == name => *field,
                _ => {
                    let field = match *name {
                        "customer_id" => Field::CustomerId,
                        "email" => Field::Email,
                        _ => match self.slots.get(*name) {
                            Some(&(ty, slot)) => Field::Attribute(ty, slot),
                            None => Field::Unknown,
                        },
                    };
                    if self.by_position.len() <= k {
                        self.by_position.resize(k + 1, (String::new(), Field::Unknown));
                    }
                    self.by_position[k] = (name.to_string(), field);
                    field
                }
            };
            match field {
                Field::CustomerId => customer_id = cell.text().map_err(|e| format!("`{name}`: {e}"))?,
                Field::Email => email = cell.text().map_err(|e| format!("`{name}`: {e}"))?,
                _ if cell.is_empty() => {}
                Field::Unknown => return Err(format!("`{name}` is not an attribute")),
                Field::Attribute(ty, slot) => {
                    if let Some(value) = typed(ty, *cell).map_err(|e| format!("`{name}`: {e}"))? {
                        values.push((slot, value));
                    }
                }
            }
        }
        let customer_id = customer_id.ok_or("`customer_id` is required")?;
        self.writer.push(&customer_id, email.as_deref(), &values);
        self.values = recycle(values);
        Ok(())
    }

    fn take(&mut self) -> Vec<u8> {
        self.writer.take()
    }
}

/// A cell as a value of type `ty` (`None` for a JSON null), as [`values::parse_cell`] and
/// [`values::parse_json`] read it, with dates and timestamps checked here.
fn typed(ty: Ty, cell: Cell<'_>) -> Result<Option<Typed<'_>>, String> {
    let text = match cell {
        Cell::Text(s) => values::trimmed(s),
        Cell::Json(serde_json::Value::String(s)) => values::trimmed(s),
        Cell::Json(v) => {
            let Some(value) = values::parse_json(ty, v)? else {
                return Ok(None);
            };
            return owned(value.kind.expect("a parsed value has a kind")).map(Some);
        }
    };
    Ok(Some(match ty {
        Ty::Keyword | Ty::Text => Typed::Str(Cow::Borrowed(text)),
        Ty::Keywords => Typed::List(
            text.split('|')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Cow::Borrowed)
                .collect(),
        ),
        Ty::Bool => Typed::Bool(values::parse_bool(text)?),
        Ty::Int => Typed::Int(
            text.parse()
                .map_err(|_| format!("`{text}` is not a whole number"))?,
        ),
        Ty::Float => Typed::Double(text.parse().map_err(|_| format!("`{text}` is not a number"))?),
        Ty::Money => Typed::Int(values::parse_money(text)?),
        Ty::Date | Ty::Timestamp => {
            return owned(
                values::parse_cell(ty, text)?
                    .kind
                    .expect("a parsed value has a kind"),
            )
            .map(Some);
        }
    }))
}

/// A value parsed into a protobuf kind, as a [`Typed`]; dates must exist and timestamps fall in
/// years 1 to 9999, as the server checks.
fn owned(kind: Kind) -> Result<Typed<'static>, String> {
    Ok(match kind {
        Kind::BoolValue(b) => Typed::Bool(b),
        Kind::IntValue(i) => Typed::Int(i),
        Kind::DoubleValue(f) => Typed::Double(f),
        Kind::StringValue(s) => Typed::Str(Cow::Owned(s)),
        Kind::ListValue(l) => Typed::List(l.values.into_iter().map(Cow::Owned).collect()),
        Kind::DateValue(d) => Typed::Date(
            values::days_from_civil(d.year, d.month, d.day)
                .filter(|_| (1..=9999).contains(&d.year))
                .ok_or_else(|| values::invalid_date(&d))?,
        ),
        Kind::TimestampValue(t) => {
            // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z.
            const FIRST: i64 = -62_135_596_800_000_000;
            const LAST: i64 = 253_402_300_799_999_999;
            let micros = t
                .seconds
                .checked_mul(1_000_000)
                .and_then(|m| m.checked_add(i64::from(t.nanos) / 1000))
                .filter(|m| (FIRST..=LAST).contains(m))
                .ok_or("outside years 1 to 9999")?;
            Typed::Timestamp(micros)
        }
    })
}

pub async fn customers(channel: Ch, args: LoadArgs) -> Result<()> {
    let schema = schema(&channel).await?;
    let header_schema = schema.clone();
    let check_header = move |header: &[String]| -> Result<()> {
        if !header.iter().any(|h| h == "customer_id") {
            return fail("the header has no `customer_id` column");
        }
        for (k, h) in header.iter().enumerate() {
            if header[..k].contains(h) {
                return fail(format!("column `{h}` appears twice in the header"));
            }
            match header_schema.get(h) {
                _ if h == "customer_id" || h == "email" => {}
                None => {
                    return fail(format!(
                        "column `{h}` is not an attribute (see `segctl stats` / Admin.GetSchema)"
                    ));
                }
                Some((_, true)) => {
                    return fail(format!(
                        "column `{h}` is maintained by orders and cannot be loaded"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    };
    let sink = CustomerColumns::new(&schema);
    let Reader {
        batches: mut rx,
        handle: reader,
        total_bytes: total,
    } = spawn_reader(&args, check_header, sink)?;
    let mut progress = Progress::new("customers", total);
    // --dry-run: the server checks every row and applies none; --max-errors: it skips and
    // reports up to that many rows it refuses (segctl skips as many it refuses itself).
    let mut options = Some(crate::wire::LoadOptions {
        validate_only: args.dry_run,
        max_bad_rows: u32::try_from(args.max_errors).unwrap_or(u32::MAX),
    });
    let lines: Arc<Mutex<Vec<Vec<u64>>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    // The input bytes behind the rows sent: the bar reaches 100% with the last row.
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let (stream_tx, stream_rx) = mpsc::channel::<EncodedColumns>(4);
    let (lines2, sent2, sent_bytes2) = (lines.clone(), sent.clone(), sent_bytes.clone());
    let feeder = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            sent2.fetch_add(batch.lines.len() as u64, Ordering::Relaxed);
            sent_bytes2.store(batch.read, Ordering::Relaxed);
            lines2.lock().unwrap().push(batch.lines);
            let first = options.take().unwrap_or_default();
            if stream_tx.send(EncodedColumns(batch.items, first)).await.is_err() {
                break;
            }
        }
    });
    let mut ingest = IngestClient::new(channel).max_encoding_message_size(64 << 20);
    let call = tokio::spawn(async move {
        ingest
            .load_customers(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
            .await
    });
    let mut call = std::pin::pin!(call);
    let reply = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                progress.update(sent.load(Ordering::Relaxed), sent_bytes.load(Ordering::Relaxed));
            }
        }
    };
    progress.finish();
    feeder.abort();
    let reply = reply.map_err(|e| Failure::new(format!("load task failed: {e}")))?;
    let read = join(reader);
    match reply {
        Ok(r) => {
            let r = r.into_inner();
            let read = read?;
            // Each row the server refused, at its file line.
            let lines = lines.lock().unwrap();
            for b in &r.bad_rows {
                let line = lines
                    .get(b.batch as usize)
                    .and_then(|l| l.get(b.row as usize))
                    .map_or_else(|| "?".to_string(), u64::to_string);
                // `batch[2].customers[5].email`: the line says which row; the rest, what.
                let field = b.field.splitn(3, '.').nth(2).unwrap_or("row");
                eprintln!("{}:{line}: `{field}`: {}", args.file.display(), b.reason);
            }
            if r.bad_row_count > r.bad_rows.len() as u64 {
                eprintln!("... and {} more", r.bad_row_count - r.bad_rows.len() as u64);
            }
            let (label, verb) = if args.dry_run {
                ("dry run", "would be")
            } else {
                ("customers", "")
            };
            let verb = if verb.is_empty() {
                String::new()
            } else {
                format!("{verb} ")
            };
            summary(
                label,
                read.rows,
                read.bad + r.bad_row_count,
                progress.elapsed().as_secs_f64(),
                &format!(
                    "; {} {verb}created, {} {verb}updated in {} batches{}",
                    r.created,
                    r.updated,
                    r.batches,
                    if args.dry_run { "; nothing applied" } else { "" }
                ),
            );
            // A server that predates column batches ignores them: say so rather than succeed.
            let sent = sent.load(Ordering::Relaxed);
            if r.created + r.updated + r.bad_row_count != sent {
                return fail(format!(
                    "the server applied {} of the {sent} customers sent; a segmentd older than this \
                     segctl does not read customers sent column by column",
                    r.created + r.updated
                ));
            }
            bad_rows(read.bad + r.bad_row_count)
        }
        Err(status) => {
            let lines = lines.lock().unwrap();
            let at = line_of_status(&status, &lines, None)
                .map(|l| format!("{}:{l}: ", args.file.display()))
                .unwrap_or_default();
            let applied = applied_lines(&status, &lines)
                .map(|a| format!("\n{}: {a}", args.file.display()))
                .unwrap_or_default();
            // Exit 3 when earlier batches were applied (the status says so), else 1.
            let failure = Failure::from(status);
            Err(Failure {
                message: format!("{at}{failure}{applied}"),
                exit: failure.exit,
            })
        }
    }
}

/// Which lines of the file a load that stopped part way applied: those of the batches before
/// the one it stopped at (`applied_batches` of its ErrorInfo), each applied whole.
fn applied_lines(status: &tonic::Status, lines: &[Vec<u64>]) -> Option<String> {
    use tonic_types::StatusExt;
    let applied: usize = status
        .get_error_details()
        .error_info()?
        .metadata
        .get("applied_batches")?
        .parse()
        .ok()?;
    let first_not = lines.get(applied).and_then(|b| b.first());
    let last_applied = applied
        .checked_sub(1)
        .and_then(|b| lines.get(b))
        .and_then(|b| b.last());
    Some(match (last_applied, first_not) {
        (None, _) => "no line was applied".to_string(),
        (Some(last), Some(next)) => format!("lines up to {last} were applied; none from line {next} on"),
        (Some(last), None) => format!("lines up to {last} were applied"),
    })
}

pub async fn orders(channel: Ch, args: LoadArgs) -> Result<()> {
    let check_header = |header: &[String]| -> Result<()> {
        for need in ["order_id", "customer_id", "placed_at"] {
            if !header.iter().any(|h| h == need) {
                return fail(format!("the header has no `{need}` column"));
            }
        }
        if !header.iter().any(|h| h == "amount" || h == "amount_minor") {
            return fail("the header needs `amount` (major units) or `amount_minor` (cents)");
        }
        Ok(())
    };
    let list = |row: &Row<'_>, name: &str| -> Result<Vec<String>, String> {
        Ok(match row.get(name) {
            Some(Cell::Json(serde_json::Value::Array(items))) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or(format!("`{name}` items must be strings"))
                })
                .collect::<Result<_, _>>()?,
            _ => row
                .text(name)?
                .map(|s| {
                    s.split('|')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        })
    };
    let parse = move |row: &Row<'_>| -> Result<pb::Order, String> {
        let amount_minor = match row.text("amount_minor")? {
            Some(a) => a
                .parse()
                .map_err(|_| format!("`amount_minor`: `{a}` is not a whole number"))?,
            None => values::parse_money(&row.required("amount")?).map_err(|e| format!("`amount`: {e}"))?,
        };
        Ok(pb::Order {
            order_id: row.required("order_id")?,
            customer_id: row.required("customer_id")?,
            placed_at: Some(
                values::parse_timestamp(&row.required("placed_at")?)
                    .map_err(|e| format!("`placed_at`: {e}"))?,
            ),
            amount_minor,
            promotion: row
                .text("promotion")?
                .map(|p| values::parse_bool(&p))
                .transpose()
                .map_err(|e| format!("`promotion`: {e}"))?
                .unwrap_or(false),
            categories: list(row, "categories")?,
            brands: list(row, "brands")?,
        })
    };
    let Reader {
        batches: mut rx,
        handle: reader,
        total_bytes: total,
    } = spawn_reader(
        &args,
        check_header,
        Items {
            parse,
            items: Vec::new(),
        },
    )?;
    let mut progress = Progress::new("orders", total);
    let mut ingest = IngestClient::new(channel).max_encoding_message_size(64 << 20);
    let (mut rows, mut applied, mut duplicates, mut created) = (0u64, 0u64, 0u64, 0usize);
    // The last file line of the batches applied so far.
    let mut applied_through: Option<u64> = None;
    while let Some(batch) = rx.recv().await {
        rows += batch.items.len() as u64;
        if !args.dry_run {
            let reply = ingest
                .record_orders(pb::RecordOrdersRequest { orders: batch.items })
                .await
                .map_err(|status| {
                    let at = line_of_status(&status, std::slice::from_ref(&batch.lines), Some(0))
                        .map(|l| format!("{}:{l}: ", args.file.display()))
                        .unwrap_or_default();
                    let next = batch.lines.first().copied().unwrap_or_default();
                    let message = format!("{at}{}", Failure::from(status));
                    // Each request is all or nothing: the batches before this one stand.
                    match applied_through {
                        Some(last) => Failure::partly(format!(
                            "{message}\n{}: lines up to {last} were applied; none from line {next} on",
                            args.file.display()
                        )),
                        None => {
                            Failure::new(format!("{message}\n{}: no line was applied", args.file.display()))
                        }
                    }
                })?
                .into_inner();
            applied_through = batch.lines.last().copied().or(applied_through);
            applied += reply.applied;
            duplicates += reply.duplicates;
            created += reply.created_customer_ids.len();
        }
        progress.update(rows, batch.read);
    }
    let read = join(reader)?;
    progress.finish();
    let detail = if args.dry_run {
        "; nothing sent".to_string()
    } else {
        format!(
            "; {applied} applied, {duplicates} duplicates, {created} customers created by their first order"
        )
    };
    summary(
        "orders",
        read.rows,
        read.bad,
        progress.elapsed().as_secs_f64(),
        &detail,
    );
    bad_rows(read.bad)
}

pub async fn members(
    channel: Ch,
    segment: String,
    args: LoadArgs,
    by: MemberKey,
    mode: MemberMode,
) -> Result<()> {
    // One value a line, or the first column of a CSV; a header named like the key is skipped.
    let file: PathBuf = args.file.clone();
    let (input, total) = open(&file)?;
    let mut values_read = Vec::new();
    let mut bad = 0u64;
    for (i, line) in BufReader::new(input).lines().enumerate() {
        let line = line?;
        let value = line.split(',').next().unwrap_or("").trim().trim_matches('"');
        if value.is_empty() || (i == 0 && matches!(value, "email" | "customer_id" | "id")) {
            continue;
        }
        if matches!(by, MemberKey::Email) && !value.contains('@') {
            bad += 1;
            eprintln!("{}:{}: `{value}` is not an e-mail", file.display(), i + 1);
            if bad as usize > args.max_errors {
                return fail(format!(
                    "stopped after {} (--max-errors {})",
                    values::bad_rows(bad),
                    args.max_errors
                ));
            }
            continue;
        }
        values_read.push(value.to_string());
    }
    let progress = Progress::new("members", total);
    if args.dry_run {
        summary(
            "dry run",
            values_read.len() as u64 + bad,
            bad,
            progress.elapsed().as_secs_f64(),
            "; nothing sent",
        );
        return bad_rows(bad);
    }
    let rows = values_read.len() as u64;
    let mode = match mode {
        MemberMode::Include => pb::MemberMode::Include,
        MemberMode::Exclude => pb::MemberMode::Exclude,
    } as i32;
    let messages: Vec<pb::LoadSegmentMembersRequest> = values_read
        .chunks(args.batch_size.max(1))
        .map(|chunk| {
            let mut m = pb::LoadSegmentMembersRequest {
                segment_id: segment.clone(),
                mode,
                ..Default::default()
            };
            match by {
                MemberKey::Email => m.emails = chunk.to_vec(),
                MemberKey::Id => m.customer_ids = chunk.to_vec(),
            }
            m
        })
        .collect();
    let reply = IngestClient::new(channel)
        .load_segment_members(tokio_stream::iter(messages))
        .await?
        .into_inner();
    for unknown in reply.unknown.iter().take(20) {
        eprintln!("unknown: {unknown}");
    }
    summary(
        "members",
        rows + bad,
        bad,
        progress.elapsed().as_secs_f64(),
        &format!(
            "; {} changed, {} unchanged, {} unknown",
            reply.changed, reply.unchanged, reply.unknown_count
        ),
    );
    bad_rows(bad)
}

fn join(handle: std::thread::JoinHandle<Result<ReadOutcome>>) -> Result<ReadOutcome> {
    handle
        .join()
        .map_err(|_| Failure::new("the reader thread panicked"))?
}

/// Bad rows within `--max-errors` were reported and skipped: the load itself succeeded.
/// The end of a load: partly applied (exit 3) when bad rows were skipped.
fn bad_rows(bad: u64) -> Result<()> {
    match bad {
        0 => Ok(()),
        1 => Err(Failure::partly(
            "1 bad row was skipped (see above); the other rows are applied",
        )),
        n => Err(Failure::partly(format!(
            "{n} bad rows were skipped (see above); the other rows are applied"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The progress of a load follows the rows sent: each batch carries the input bytes up to
    /// its last row, rising with the rows, the whole input at the last one (CSV and JSONL).
    #[tokio::test]
    async fn batches_carry_the_input_bytes_up_to_their_last_row() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("c.csv", {
                let mut t = String::from("customer_id,city\n");
                (0..2500).for_each(|i| t.push_str(&format!("C{i},Lyon\n")));
                t
            }),
            (
                "c.jsonl",
                (0..2500)
                    .map(|i| format!("{{\"customer_id\":\"C{i}\"}}\n"))
                    .collect(),
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &text).unwrap();
            let args = crate::LoadArgs {
                file: path,
                batch_size: 1000,
                max_errors: 0,
                dry_run: false,
            };
            let sink = Items {
                parse: |_: &Row<'_>| Ok(()),
                items: Vec::new(),
            };
            let Reader {
                mut batches,
                handle,
                total_bytes,
            } = spawn_reader(&args, |_| Ok(()), sink).unwrap();
            let mut read = Vec::new();
            while let Some(b) = batches.recv().await {
                read.push(b.read);
            }
            join(handle).unwrap();
            assert_eq!(total_bytes, text.len() as u64);
            assert_eq!(read.len(), 3, "{name}");
            // About 40% and 80% of the input after 1,000 and 2,000 of 2,500 rows, all of it after the last.
            let share = |b: u64| b as f64 / total_bytes as f64;
            assert!((0.35..0.45).contains(&share(read[0])), "{name}: {read:?}");
            assert!((0.75..0.85).contains(&share(read[1])), "{name}: {read:?}");
            assert_eq!(read[2], total_bytes, "{name}");
        }
    }

    #[test]
    fn recycled_vectors_keep_their_allocation() {
        let text = String::from("a,b");
        let mut cells: Vec<(&str, Cell<'_>)> = Vec::with_capacity(23);
        cells.extend(text.split(',').map(|s| (s, Cell::Text(s))));
        let (at, capacity) = (cells.as_ptr() as usize, cells.capacity());
        let again: Vec<(&'static str, Cell<'static>)> = recycle(cells);
        assert!(again.is_empty());
        assert_eq!((again.as_ptr() as usize, again.capacity()), (at, capacity));
    }
}

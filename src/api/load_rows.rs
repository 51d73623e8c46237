//! `LoadCustomers` with `max_bad_rows` or `validate_only`: a bad row is reported and skipped
//! (or, validating, only reported) instead of refusing its batch and ending the stream.
//!
//! Batches go one at a time (the fast path groups them and overlaps parsing with writing): a
//! batch that parses whole is applied as it is; one that does not is checked row by row
//! ([`crate::codec::rows`]) and its good rows applied as a batch. A batch the writer refuses
//! (an e-mail another customer holds) loses the row its error names and is tried again.

use tonic::{Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::pb;
use crate::codec::Limits;
use crate::codec::rows;
use crate::codec::wire::CustomerBatch;
use crate::engine::{BatchFailure, Engine, UpsertBatch};
use crate::error::{Error, Result};
use crate::store::UpsertOutcome;

/// Bad rows listed in a response (all are counted).
const MAX_LISTED: usize = 1000;

/// The options the stream's first message set.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    pub validate_only: bool,
    pub max_bad_rows: u32,
}

impl Mode {
    pub fn of(first: &CustomerBatch) -> Mode {
        Mode {
            validate_only: first.validate_only,
            max_bad_rows: first.max_bad_rows,
        }
    }

    /// Whether rows are checked one by one (else the fast path applies).
    pub fn by_row(self) -> bool {
        self.validate_only || self.max_bad_rows > 0
    }

    /// A later message may repeat the first one's options or leave them unset.
    fn check(self, msg: &CustomerBatch) -> Result<()> {
        let same = |given: bool, first: bool| !given || given == first;
        if !same(msg.validate_only, self.validate_only) {
            return Err(Error::invalid(
                "validate_only",
                "is read from the stream's first message; a later one may not set it",
            ));
        }
        if msg.max_bad_rows != 0 && msg.max_bad_rows != self.max_bad_rows {
            return Err(Error::invalid(
                "max_bad_rows",
                "is read from the stream's first message; a later one may only repeat it",
            ));
        }
        Ok(())
    }
}

/// What the load did so far.
#[derive(Default)]
struct Progress {
    total: UpsertOutcome,
    batches: u64,
    bad: Vec<pb::BadRow>,
    bad_count: u64,
    last: Option<u64>,
}

impl Progress {
    fn refuse(&mut self, batch: u64, row: usize, error: &Error) {
        self.bad_count += 1;
        if self.bad.len() < MAX_LISTED {
            let (field, reason) = match error {
                Error::InvalidArgument { field, message } => (field.clone(), message.clone()),
                other => (format!("customers[{row}]"), other.to_string()),
            };
            self.bad.push(pb::BadRow {
                batch,
                row: row as u32,
                field: format!("batch[{batch}].{field}"),
                reason,
            });
        }
    }
}

/// Reads the stream (its first message already read) and applies or checks it row by row.
pub async fn load(
    engine: &Engine,
    limits: Limits,
    first: CustomerBatch,
    mut stream: Streaming<CustomerBatch>,
) -> std::result::Result<pb::LoadCustomersResponse, Status> {
    let mode = Mode::of(&first);
    let mut progress = Progress::default();
    let mut next = Some(first);
    let mut number = 0u64;
    let outcome: std::result::Result<(), Status> = async {
        loop {
            let msg = match next.take() {
                Some(msg) => msg,
                None => match stream.message().await? {
                    Some(msg) => msg,
                    None => return Ok(()),
                },
            };
            let at = format!("batch[{number}]");
            mode.check(&msg).map_err(|e| Status::from(e.within(&at)))?;
            if mode.validate_only {
                validate(engine, limits, &msg, number, &mut progress);
            } else {
                let limit = u64::from(mode.max_bad_rows);
                apply(engine, limits, &msg, number, limit, &mut progress)
                    .await
                    .map_err(|e| Status::from(e.within(&at)))?;
                if progress.bad_count > limit {
                    let last = progress.bad.last().map(|b| (b.field.clone(), b.reason.clone()));
                    let (field, reason) = last.unwrap_or_default();
                    return Err(Status::invalid_argument(format!(
                        "{field}: {reason}; more than max_bad_rows ({}) bad rows",
                        mode.max_bad_rows
                    )));
                }
            }
            number += 1;
            progress.batches += 1;
        }
    }
    .await;
    if !mode.validate_only {
        // What was applied is acknowledged once every reader sees it and it is durable.
        engine.written().await?;
        engine.durable(progress.last).await?;
    }
    match outcome {
        Ok(()) => Ok(pb::LoadCustomersResponse {
            created: progress.total.created,
            updated: progress.total.updated,
            batches: progress.batches,
            bad_rows: progress.bad,
            bad_row_count: progress.bad_count,
        }),
        Err(status) => Err(stopped(status, &progress)),
    }
}

/// The status ending the stream, with what was applied and every bad row found (a
/// `BadRequest` field violation each).
fn stopped(status: Status, progress: &Progress) -> Status {
    let mut details = status.get_error_details();
    for b in &progress.bad {
        details.add_bad_request_violation(b.field.clone(), b.reason.clone());
    }
    let message = format!(
        "{}; {} earlier batches were applied ({} customers created, {} updated), {} bad rows skipped",
        status.message(),
        progress.batches,
        progress.total.created,
        progress.total.updated,
        progress.bad_count
    );
    crate::api::status::with_details(
        status.code(),
        message,
        ErrorDetails::with_bad_request(
            details
                .bad_request()
                .map(|b| b.field_violations.clone())
                .unwrap_or_default(),
        ),
        "PARTIALLY_APPLIED",
        vec![
            ("applied_batches", progress.batches.to_string()),
            ("created", progress.total.created.to_string()),
            ("updated", progress.total.updated.to_string()),
            ("bad_rows", progress.bad_count.to_string()),
        ],
    )
}

/// The rows of `msg` each checked alone: the good ones with their row numbers, and the bad
/// ones reported.
fn sift(
    engine: &Engine,
    limits: Limits,
    msg: &CustomerBatch,
    number: u64,
    progress: &mut Progress,
) -> Result<Vec<(usize, crate::codec::pb::Customer)>> {
    limits.check_batch("customers", msg.len())?;
    let all = match rows::rows(msg) {
        Ok(all) => all,
        // Undecodable, or columns that do not line up: no row can be told apart.
        Err(e) => {
            for row in 0..msg.len() {
                progress.refuse(number, row, &e);
            }
            return Ok(Vec::new());
        }
    };
    let schema = engine.schema();
    let mut bad = rows::repeats(&all);
    let mut refused = vec![false; all.len()];
    for (row, _) in &bad {
        refused[*row] = true;
    }
    let mut good = Vec::with_capacity(all.len());
    for (row, customer) in all.into_iter().enumerate() {
        if refused[row] {
            continue;
        }
        // Checked as a batch of one, as the writer will read it (no log record made).
        match CustomerBatch::new(vec![customer.clone()]).patches(&schema, &limits) {
            Ok(_) => good.push((row, customer)),
            Err(e) => bad.push((row, rows::renumbered(e, 0, row))),
        }
    }
    // Reported in row order.
    bad.sort_by_key(|(row, _)| *row);
    for (row, e) in &bad {
        progress.refuse(number, *row, e);
    }
    Ok(good)
}

/// Checks every row of `msg` as applying it would, applying nothing: each row alone, repeats
/// within the batch, and e-mails other customers hold. Counts what the good rows would do.
fn validate(engine: &Engine, limits: Limits, msg: &CustomerBatch, number: u64, progress: &mut Progress) {
    let good = match sift(engine, limits, msg, number, progress) {
        Ok(good) => good,
        Err(e) => {
            for row in 0..msg.len() {
                progress.refuse(number, row, &e);
            }
            return;
        }
    };
    let store = engine.store();
    for (row, customer) in good {
        let existing = store.ordinal_of_id(&customer.customer_id);
        if let Some(email) = customer.email.as_deref().filter(|e| !e.is_empty())
            && let Some(owner) = store.ordinal_of_email(email)
            && existing != Some(owner)
        {
            let other = store.id_at(owner).map(|id| id.to_string()).unwrap_or_default();
            let e = Error::invalid(
                format!("customers[{row}].email"),
                format!("`{email}` belongs to another customer ({other})"),
            );
            progress.refuse(number, row, &e);
            continue;
        }
        if existing.is_some() {
            progress.total.updated += 1;
        } else {
            progress.total.created += 1;
        }
    }
}

/// Applies `msg`, skipping and reporting its bad rows; applies nothing of it once more than
/// `limit` rows of the stream are bad (the batch with the row too many is refused whole, as
/// without a limit).
async fn apply(
    engine: &Engine,
    limits: Limits,
    msg: &CustomerBatch,
    number: u64,
    limit: u64,
    progress: &mut Progress,
) -> Result<()> {
    let schema = engine.schema();
    // The batch whole when it parses; else its good rows.
    let (mut batch, mut rows) = match UpsertBatch::received(&schema, msg, &limits) {
        Ok(batch) => (Some(batch), None),
        Err(_) => (None, Some(sift(engine, limits, msg, number, progress)?)),
    };
    loop {
        if progress.bad_count > limit {
            return Ok(());
        }
        let prepared = match batch.take() {
            Some(b) => b,
            None => {
                let good = rows.as_ref().expect("rows when no batch");
                if good.is_empty() {
                    return Ok(());
                }
                let customers = good.iter().map(|(_, c)| c.clone()).collect();
                UpsertBatch::received(&schema, &CustomerBatch::new(customers), &limits)?
            }
        };
        let (applied, failed, last) = engine.upsert_batches(vec![prepared]).await?;
        progress.total.created += applied.created;
        progress.total.updated += applied.updated;
        progress.last = last.or(progress.last);
        let Some(BatchFailure { error, .. }) = failed else {
            return Ok(());
        };
        // The writer names the first row it refuses: that row goes, the rest is tried again.
        let good = match rows.as_mut() {
            Some(good) => good,
            None => rows.insert(rows::rows(msg)?.into_iter().enumerate().collect::<Vec<_>>()),
        };
        let Some(i) = row_named(&error).filter(|&i| i < good.len()) else {
            return Err(error);
        };
        let (row, _) = good.remove(i);
        progress.refuse(number, row, &rows::renumbered(error, i, row));
    }
}

/// The row a writer's refusal names (`customers[3].email` → 3).
fn row_named(e: &Error) -> Option<usize> {
    let Error::InvalidArgument { field, .. } = e else {
        return None;
    };
    field.strip_prefix("customers[")?.split(']').next()?.parse().ok()
}

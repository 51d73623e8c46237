//! `segmentd.v1.Ingest`: customers and orders in, customers out.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tonic_types::StatusExt;

use crate::api::pb::{self, ingest_server::Ingest};
use crate::codec::wire::CustomerBatch;
use crate::codec::{Limits, convert};
use crate::columnar::schema::Schema;
use crate::engine::{BatchFailure, Engine, HELD_PER_BYTE, UpsertBatch};
use crate::error::{Error, Result};
use crate::store::UpsertOutcome;

/// Customers applied together at most, when a stream's batches queue up faster than they apply.
const GROUP_CUSTOMERS: usize = 4096;
/// Converted batches queued between the stream reader and the writer.
const STREAM_QUEUE: usize = 16;

/// Customers in a streamed batch from which parsing moves off the async workers.
const OFFLOAD_BATCH: usize = 64;
/// Streamed batches parsed at once on the blocking pool.
const MAX_PARSING: usize = 3;

/// A batch being made ready for the writer.
enum Parse {
    Done(Box<Result<UpsertBatch>>),
    Running(tokio::task::JoinHandle<Result<UpsertBatch>>),
}

impl Parse {
    /// Starts parsing a request's customers where it should run: batches of [`OFFLOAD_BATCH`]
    /// customers or more off the async workers, at bulk priority, so request-time calls keep
    /// their workers and their latency; smaller ones at once.
    fn start(schema: &Arc<Schema>, limits: Limits, msg: CustomerBatch) -> Parse {
        if msg.len() < OFFLOAD_BATCH {
            return Parse::Done(Box::new(parse(schema, &limits, &msg)));
        }
        let schema = schema.clone();
        Parse::Running(tokio::task::spawn_blocking(move || {
            crate::priority::bulk_thread();
            parse(&schema, &limits, &msg)
        }))
    }

    async fn finish(self) -> Result<UpsertBatch> {
        match self {
            Parse::Done(parsed) => *parsed,
            Parse::Running(task) => task
                .await
                .map_err(|e| Error::Internal(format!("batch parse task failed: {e}")))?,
        }
    }

    fn is_finished(&self) -> bool {
        match self {
            Parse::Done(_) => true,
            Parse::Running(task) => task.is_finished(),
        }
    }
}

pub struct IngestApi {
    engine: Engine,
    limits: Limits,
}

impl IngestApi {
    pub fn new(engine: Engine, limits: Limits) -> Self {
        IngestApi { engine, limits }
    }
}

/// Parses a request's customers against `schema` and prepares them for the writer.
fn parse(schema: &Schema, limits: &Limits, msg: &CustomerBatch) -> Result<UpsertBatch> {
    UpsertBatch::received(schema, msg, limits)
}

#[tonic::async_trait]
impl Ingest for IngestApi {
    async fn upsert_customers(
        &self,
        request: Request<pb::UpsertCustomersRequest>,
    ) -> Result<Response<pb::UpsertCustomersResponse>, Status> {
        // Refused before parsing when the server is overloaded: by queued writes, and by the
        // bytes they hold (this one's, as it will be decoded).
        let held = prost::Message::encoded_len(request.get_ref()).saturating_mul(HELD_PER_BYTE);
        let permit = self.engine.admit_holding(held)?;
        let schema = self.engine.schema();
        let batch = Parse::start(&schema, self.limits, request.into_inner())
            .finish()
            .await?;
        let UpsertOutcome { created, updated } = self.engine.upsert_admitted(permit, batch).await?;
        Ok(Response::new(pb::UpsertCustomersResponse { created, updated }))
    }

    /// Reading and converting batches runs here while a second task applies them, so decoding
    /// overlaps with writing; batches that queue up are applied together (each still all or nothing).
    async fn load_customers(
        &self,
        request: Request<Streaming<pb::LoadCustomersRequest>>,
    ) -> Result<Response<pb::LoadCustomersResponse>, Status> {
        let mut stream = request.into_inner();
        // The first message says how the stream loads: skipping or only checking bad rows goes
        // row by row (`load_rows`); the usual load, below, pipelines whole batches.
        let Some(first) = stream.message().await? else {
            return Ok(Response::new(pb::LoadCustomersResponse::default()));
        };
        if super::load_rows::Mode::of(&first).by_row() {
            let reply = super::load_rows::load(&self.engine, self.limits, first, stream).await?;
            return Ok(Response::new(reply));
        }
        // Taken by the reading loop below before it reads the stream.
        let mut first = Some(first);
        let (tx, mut rx) = mpsc::channel::<(u64, UpsertBatch)>(STREAM_QUEUE);
        let engine = self.engine.clone();
        // Applies groups one after another without waiting for each to be synced: the reply waits
        // for the last record to be durable, one sync covering the stream's records (their
        // writeback started as they piled up).
        let writer = tokio::spawn(async move {
            let mut total = UpsertOutcome::default();
            let mut batches = 0u64;
            let mut last = None;
            let mut failure = None;
            while let Some(first) = rx.recv().await {
                let mut size = first.1.len();
                let mut group = vec![first];
                while size < GROUP_CUSTOMERS {
                    match rx.try_recv() {
                        Ok(next) => {
                            size += next.1.len();
                            group.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let numbers: Vec<u64> = group.iter().map(|(n, _)| *n).collect();
                let (applied, failed, seq) = match engine
                    .upsert_batches(group.into_iter().map(|(_, b)| b).collect())
                    .await
                {
                    Ok(done) => done,
                    // Refused whole (the server busy, the log failed): what came before stands.
                    Err(error) => {
                        failure = Some((numbers[0], error));
                        break;
                    }
                };
                total.created += applied.created;
                total.updated += applied.updated;
                last = seq.or(last);
                if let Some(BatchFailure { index, error }) = failed {
                    batches += index as u64;
                    failure = Some((numbers[index], error));
                    break;
                }
                batches += numbers.len() as u64;
            }
            // What was applied is acknowledged, even when a later batch failed: once every
            // reader sees it and it is durable.
            engine.written().await?;
            engine.durable(last).await?;
            Ok::<_, Error>((total, batches, failure))
        });

        let mut read_error: Option<Status> = None;
        let mut number = 0u64;
        let schema = self.engine.schema();
        // Batches being parsed, oldest first: the next messages are read while earlier ones
        // parse, and batches reach the writer in stream order.
        let mut parsing: VecDeque<(u64, Parse)> = VecDeque::new();
        let mut reading = true;
        while reading || !parsing.is_empty() {
            // Hand over every finished parse at the front; wait for the oldest when the
            // stream has ended or enough are under way.
            while let Some((n, front)) = parsing.pop_front() {
                if reading && parsing.len() + 1 < MAX_PARSING && !front.is_finished() {
                    parsing.push_front((n, front));
                    break;
                }
                let parsed = front.finish().await;
                match parsed {
                    Ok(batch) => {
                        if tx.send((n, batch)).await.is_err() {
                            // The writer stopped at a failed batch.
                            reading = false;
                            parsing.clear();
                        }
                    }
                    Err(e) => {
                        read_error = Some(e.within(&format!("batch[{n}]")).into());
                        reading = false;
                        parsing.clear();
                    }
                }
            }
            if !reading {
                continue;
            }
            let next = match first.take() {
                Some(msg) => Ok(Some(msg)),
                None => stream.message().await,
            };
            let msg = match next {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    reading = false;
                    continue;
                }
                Err(status) => {
                    // Batches read before the broken one are still applied.
                    read_error = Some(status);
                    reading = false;
                    continue;
                }
            };
            // The options are the first message's: a later one setting them would load a stream
            // half one way, half the other.
            if msg.validate_only || msg.max_bad_rows != 0 {
                let e = Error::invalid(
                    "validate_only",
                    "validate_only and max_bad_rows are read from the stream's first message only",
                );
                read_error = Some(e.within(&format!("batch[{number}]")).into());
                reading = false;
                continue;
            }
            parsing.push_back((number, Parse::start(&schema, self.limits, msg)));
            number += 1;
        }
        drop(tx);
        let (total, batches, failure) = writer
            .await
            .map_err(|e| Status::internal(format!("load task failed: {e}")))??;
        // The stream stopped part way: the message and an ErrorInfo say what was applied (and
        // acknowledged, durable), so a loader resumes from `applied_batches`.
        let applied = |status: Status| {
            let message = format!(
                "{}; {} earlier batches were applied ({} customers created, {} updated)",
                status.message(),
                batches,
                total.created,
                total.updated
            );
            super::status::with_details(
                status.code(),
                message,
                status.get_error_details(),
                "PARTIALLY_APPLIED",
                vec![
                    ("applied_batches", batches.to_string()),
                    ("created", total.created.to_string()),
                    ("updated", total.updated.to_string()),
                ],
            )
        };
        if let Some((n, error)) = failure {
            let at = format!("batch[{n}]");
            let status: Status = match error {
                e @ Error::InvalidArgument { .. } => e.within(&at).into(),
                e => {
                    let status = Status::from(e);
                    let message = format!("{at}: {}", status.message());
                    Status::with_error_details(status.code(), message, status.get_error_details())
                }
            };
            return Err(applied(status));
        }
        if let Some(status) = read_error {
            return Err(applied(status));
        }
        Ok(Response::new(pb::LoadCustomersResponse {
            created: total.created,
            updated: total.updated,
            batches,
            ..Default::default()
        }))
    }

    /// Each message is applied whole, in order; a bad one ends the stream with its index and
    /// what was applied before it.
    async fn load_segment_members(
        &self,
        request: Request<Streaming<pb::LoadSegmentMembersRequest>>,
    ) -> Result<Response<pb::LoadSegmentMembersResponse>, Status> {
        const MAX_UNKNOWN: usize = 1000;
        let mut stream = request.into_inner();
        let mut out = pb::LoadSegmentMembersResponse::default();
        let applied = |out: &pb::LoadSegmentMembersResponse, status: Status| {
            Status::new(
                status.code(),
                format!(
                    "{}; {} earlier batches were applied ({} changed, {} unchanged)",
                    status.message(),
                    out.batches,
                    out.changed,
                    out.unchanged
                ),
            )
        };
        loop {
            let msg = match stream.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(status) => return Err(applied(&out, status)),
            };
            let at = format!("batch[{}]", out.batches);
            let pb::LoadSegmentMembersRequest {
                segment_id,
                emails,
                customer_ids,
                mode,
            } = msg;
            let result = async {
                crate::segment::registry::check_segment_id(&segment_id)?;
                let add = match pb::MemberMode::try_from(mode) {
                    Ok(pb::MemberMode::Include) => true,
                    Ok(pb::MemberMode::Exclude) => false,
                    _ => {
                        return Err(Error::invalid(
                            "mode",
                            "MEMBER_MODE_INCLUDE or MEMBER_MODE_EXCLUDE is required",
                        ));
                    }
                };
                let keys = crate::api::activities::member_keys(&self.limits, customer_ids, emails)?;
                self.engine.set_listed(segment_id, keys, add, None).await
            }
            .await;
            match result {
                Ok(o) => {
                    out.changed += o.changed;
                    out.unchanged += o.unchanged;
                    out.unknown_count += o.unknown.len() as u64;
                    let room = MAX_UNKNOWN.saturating_sub(out.unknown.len());
                    out.unknown.extend(o.unknown.into_iter().take(room));
                    out.batches += 1;
                }
                Err(e) => return Err(applied(&out, e.within(&at).into())),
            }
        }
        Ok(Response::new(out))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        let pb::GetCustomerRequest { key } = request.into_inner();
        let key = convert::customer_key_get(key)?;
        convert::check_key(&key)?;
        let record = self.engine.get_customer(&key)?;
        Ok(Response::new(pb::GetCustomerResponse {
            customer: Some(convert::customer_out(record)),
        }))
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::DeleteCustomerResponse>, Status> {
        let pb::DeleteCustomerRequest { key } = request.into_inner();
        let key = convert::customer_key_delete(key)?;
        convert::check_key(&key)?;
        let customer_id = self.engine.delete(key).await?;
        Ok(Response::new(pb::DeleteCustomerResponse { customer_id }))
    }

    async fn record_orders(
        &self,
        request: Request<pb::RecordOrdersRequest>,
    ) -> Result<Response<pb::RecordOrdersResponse>, Status> {
        let pb::RecordOrdersRequest { orders } = request.into_inner();
        self.limits.check_batch("orders", orders.len())?;
        let orders = orders
            .into_iter()
            .enumerate()
            .map(|(i, o)| convert::order_in(o).map_err(|e| e.within(&format!("orders[{i}]"))))
            .collect::<Result<Vec<_>>>()?;
        let outcome = self.engine.record_orders(orders).await?;
        Ok(Response::new(pb::RecordOrdersResponse {
            applied: outcome.applied,
            duplicates: outcome.duplicates,
            created_customer_ids: outcome.created_customer_ids,
        }))
    }
}

//! `segmentd.v1.Segments`: define, preview, explain, compare and export segments.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::pb::{self, segments_server::Segments};
use crate::api::rules;
use crate::codec::convert;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::{Cause, Event};
use crate::segment::registry::check_segment_id;
use crate::store::segments::{Decision, SegmentUpdate};

/// Most ids in a preview sample.
const MAX_SAMPLE: u32 = 1000;
/// Most segments in one overlap request.
const MAX_OVERLAP: usize = 100;
/// Default and largest export batch.
const EXPORT_BATCH: u32 = 1000;
const MAX_EXPORT_BATCH: u32 = 10_000;
/// Most segments a watcher may filter on.
const MAX_WATCH_SEGMENTS: usize = 1000;
/// Most events in one watch message, and most looked at per read of the event log.
const WATCH_BATCH: usize = 1000;
const WATCH_SCAN: usize = 65_536;
/// Events behind past which a watcher's page is read on the blocking pool rather than inline.
const WATCH_INLINE: u64 = 4_096;
/// Messages buffered for one watcher.
const WATCH_BUFFER: usize = 4;
/// How often a filtered watch reports its position when no event passes the filter.
const WATCH_PROGRESS: std::time::Duration = std::time::Duration::from_secs(1);

pub struct SegmentsApi {
    engine: Engine,
    /// How long a watcher may leave its buffer full before it is told to resume later.
    watch_stall: std::time::Duration,
}

impl SegmentsApi {
    pub fn new(engine: Engine) -> Self {
        SegmentsApi::with_watch_stall(engine, DEFAULT_WATCH_STALL)
    }

    pub fn with_watch_stall(engine: Engine, watch_stall: std::time::Duration) -> Self {
        SegmentsApi { engine, watch_stall }
    }
}

/// How long a watcher may stop reading before its stream ends, by default.
pub const DEFAULT_WATCH_STALL: std::time::Duration = std::time::Duration::from_secs(60);

fn segment_id(id: &str) -> Result<()> {
    check_segment_id(id)
}

#[tonic::async_trait]
impl Segments for SegmentsApi {
    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        let pb::CreateSegmentRequest { segment } = request.into_inner();
        let segment = segment.ok_or_else(|| Error::invalid("segment", "is required"))?;
        let (def, include, exclude) = rules::segment_in(segment).map_err(|e| e.within("segment"))?;
        let info = self
            .engine
            .create_segment(def, include, exclude)
            .await
            .map_err(|e| e.within("segment"))?;
        tracing::info!(segment = %info.def.id, size = info.size, "segment created");
        Ok(Response::new(rules::segment_out(info)))
    }

    async fn update_segment(
        &self,
        request: Request<pb::UpdateSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        let pb::UpdateSegmentRequest { segment, update_mask } = request.into_inner();
        let segment = segment.ok_or_else(|| Error::invalid("segment", "is required"))?;
        segment_id(&segment.segment_id).map_err(|e| e.within("segment"))?;
        let paths = update_mask.map(|m| m.paths).unwrap_or_default();
        let all = paths.is_empty();
        let mut wanted = std::collections::BTreeSet::new();
        for (i, p) in paths.iter().enumerate() {
            match p.as_str() {
                "name"
                | "description"
                | "rule"
                | "include_customer_ids"
                | "exclude_customer_ids"
                | "include_account_ids"
                | "exclude_account_ids"
                | "allow_activities" => {
                    wanted.insert(p.as_str());
                }
                "rule_text" => {
                    wanted.insert("rule");
                }
                other => {
                    return Err(Error::invalid(
                        format!("update_mask.paths[{i}]"),
                        format!("`{other}` cannot be updated"),
                    )
                    .into());
                }
            }
        }
        let want = |f: &str| all || wanted.contains(f);
        let pb::Segment {
            segment_id,
            name,
            description,
            rule,
            rule_text,
            include_customer_ids,
            exclude_customer_ids,
            include_account_ids,
            exclude_account_ids,
            allow_activities,
            size: _,
            include_customer_count: _,
            exclude_customer_count: _,
            family_id: _,
        } = segment;
        let update = SegmentUpdate {
            name: want("name").then_some(name),
            description: want("description").then_some(description),
            rule: if want("rule") {
                Some(rules::either_rule(rule, &rule_text).map_err(|e| e.within("segment"))?)
            } else {
                None
            },
            include_ids: want("include_customer_ids").then_some(include_customer_ids),
            exclude_ids: want("exclude_customer_ids").then_some(exclude_customer_ids),
            include_accounts: want("include_account_ids").then_some(include_account_ids),
            exclude_accounts: want("exclude_account_ids").then_some(exclude_account_ids),
            allow_activities: want("allow_activities").then_some(allow_activities),
        };
        let info = self
            .engine
            .update_segment(segment_id, update)
            .await
            .map_err(|e| e.within("segment"))?;
        tracing::info!(segment = %info.def.id, size = info.size, "segment updated");
        Ok(Response::new(rules::segment_out(info)))
    }

    async fn delete_segment(
        &self,
        request: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
        let pb::DeleteSegmentRequest { segment_id: id } = request.into_inner();
        segment_id(&id)?;
        self.engine.delete_segment(id.clone()).await?;
        tracing::info!(segment = %id, "segment deleted");
        Ok(Response::new(pb::DeleteSegmentResponse {}))
    }

    async fn get_segment(
        &self,
        request: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        let pb::GetSegmentRequest { segment_id: id } = request.into_inner();
        segment_id(&id)?;
        Ok(Response::new(rules::segment_out(
            self.engine.segment_info(id).await?,
        )))
    }

    async fn list_segments(
        &self,
        _request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let reg = self.engine.registry();
        let segments = self
            .engine
            .list_segments()
            .await?
            .into_iter()
            .map(|(def, size)| {
                let family = reg
                    .by_id(&def.id)
                    .and_then(|e| e.family.as_deref().map(str::to_string));
                rules::segment_out(crate::store::segments::SegmentInfo {
                    def,
                    size,
                    include_ids: vec![],
                    exclude_ids: vec![],
                    include_count: 0,
                    exclude_count: 0,
                    family,
                })
            })
            .collect();
        Ok(Response::new(pb::ListSegmentsResponse { segments }))
    }

    async fn preview_segment(
        &self,
        request: Request<pb::PreviewSegmentRequest>,
    ) -> Result<Response<pb::PreviewSegmentResponse>, Status> {
        let pb::PreviewSegmentRequest {
            rule,
            rule_text,
            as_of,
            sample_size,
        } = request.into_inner();
        let rule = rules::either_rule(rule, &rule_text)?
            .ok_or_else(|| Error::invalid("rule", "a rule or rule_text is required"))?;
        if sample_size > MAX_SAMPLE {
            return Err(Error::invalid("sample_size", format!("at most {MAX_SAMPLE}")).into());
        }
        let as_of = as_of
            .map(|t| convert::timestamp_in(&t).map_err(|e| e.within("as_of")))
            .transpose()?;
        let (count, sample) = self.engine.preview(rule, as_of, sample_size as usize).await?;
        Ok(Response::new(pb::PreviewSegmentResponse {
            count,
            sample_customer_ids: sample,
        }))
    }

    async fn explain_membership(
        &self,
        request: Request<pb::ExplainMembershipRequest>,
    ) -> Result<Response<pb::ExplainMembershipResponse>, Status> {
        let pb::ExplainMembershipRequest {
            customer_id,
            segment_id: id,
        } = request.into_inner();
        crate::store::input::check_customer_id(&customer_id)?;
        segment_id(&id)?;
        let x = self.engine.explain(&customer_id, &id)?;
        use pb::Decision as D;
        let decided_by = match x.decision {
            Decision::ExcludedCustomer => D::ExcludedCustomer,
            Decision::ExcludedByActivity => D::ExcludedByActivity,
            Decision::ExcludedAccount => D::ExcludedAccount,
            Decision::IncludedCustomer => D::IncludedCustomer,
            Decision::IncludedByActivity => D::IncludedByActivity,
            Decision::IncludedAccount => D::IncludedAccount,
            Decision::Rule => D::Rule,
            Decision::NoMatch => D::NoMatch,
        };
        Ok(Response::new(pb::ExplainMembershipResponse {
            member: x.member,
            decided_by: decided_by as i32,
            rule_matched: x.rule_matched.unwrap_or(false),
            predicates: x
                .predicates
                .into_iter()
                .map(|p| pb::PredicateExplanation {
                    predicate: p.predicate,
                    attribute: p.attribute,
                    value_set: p.value.is_some(),
                    value: p.value.unwrap_or_default(),
                    held: p.held,
                })
                .collect(),
        }))
    }

    async fn segment_overlap(
        &self,
        request: Request<pb::SegmentOverlapRequest>,
    ) -> Result<Response<pb::SegmentOverlapResponse>, Status> {
        let pb::SegmentOverlapRequest { segment_ids } = request.into_inner();
        if segment_ids.is_empty() || segment_ids.len() > MAX_OVERLAP {
            return Err(Error::invalid("segment_ids", format!("give 1 to {MAX_OVERLAP} segments")).into());
        }
        for (i, id) in segment_ids.iter().enumerate() {
            segment_id(id).map_err(|e| Error::invalid(format!("segment_ids[{i}]"), e.to_string()))?;
        }
        let counts = self.engine.overlap(segment_ids.clone()).await?;
        Ok(Response::new(pb::SegmentOverlapResponse {
            overlaps: counts
                .into_iter()
                .map(|(i, j, count)| pb::Overlap {
                    segment_a: segment_ids[i].clone(),
                    segment_b: segment_ids[j].clone(),
                    count,
                })
                .collect(),
        }))
    }

    type ExportSegmentStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExportSegmentResponse, Status>> + Send + 'static>>;

    /// Pages through the members one batch at a time; the bounded channel makes a slow client
    /// slow the export down instead of growing server memory, and one that reads nothing for
    /// the stall limit (`--watch-stall-secs`) ends with ABORTED saying how many were sent.
    async fn export_segment(
        &self,
        request: Request<pb::ExportSegmentRequest>,
    ) -> Result<Response<Self::ExportSegmentStream>, Status> {
        let pb::ExportSegmentRequest {
            segment_id: id,
            fields,
            batch_size,
        } = request.into_inner();
        segment_id(&id)?;
        let batch = match batch_size {
            0 => EXPORT_BATCH,
            n if n > MAX_EXPORT_BATCH => {
                return Err(Error::invalid("batch_size", format!("at most {MAX_EXPORT_BATCH}")).into());
            }
            n => n,
        } as usize;
        let schema = self.engine.schema();
        let attrs = fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                schema
                    .get(f)
                    .map(|d| d.id)
                    .ok_or_else(|| Error::invalid(format!("fields[{i}]"), schema.unknown(f)))
            })
            .collect::<Result<Vec<_>>>()?;
        // Fail fast on an unknown segment, before the stream starts.
        let first = self
            .engine
            .export_page(id.clone(), 0, batch, attrs.clone())
            .await?;
        let (tx, rx) = mpsc::channel(2);
        let engine = self.engine.clone();
        let stall = self.watch_stall;
        tokio::spawn(async move {
            let (mut page, mut next) = first;
            let mut sent = 0u64;
            loop {
                if !page.is_empty() {
                    let n = page.len() as u64;
                    let msg = pb::ExportSegmentResponse {
                        customers: page.into_iter().map(convert::customer_out).collect(),
                    };
                    // A reader that takes nothing for the stall limit ends its export, as a
                    // watcher does: the server holds no page for it past that.
                    let stalled = || {
                        format!(
                            "the export read nothing for {} s; {sent} customers were sent, \
                             export again to get them all",
                            stall.as_secs_f64()
                        )
                    };
                    if !send_within(&tx, msg, stall, stalled).await {
                        return;
                    }
                    sent += n;
                }
                let Some(from) = next else { return };
                match engine.export_page(id.clone(), from, batch, attrs.clone()).await {
                    Ok((p, n)) => {
                        page = p;
                        next = n;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchMembershipsStream = Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::WatchMembershipsResponse, Status>> + Send + 'static>,
    >;

    /// Reads the shared event log at the watcher's own pace: a watcher that does not read holds
    /// a cursor and at most `WATCH_BUFFER` messages (plus the HTTP/2 window), and writers never
    /// wait for it. One that leaves its buffer full for `watch_stall` gets, after what was
    /// buffered, ABORTED naming the sequence to resume from; one whose position fell out of
    /// the retention window is told, with OUT_OF_RANGE, where the retained events begin.
    async fn watch_memberships(
        &self,
        request: Request<pb::WatchMembershipsRequest>,
    ) -> Result<Response<Self::WatchMembershipsStream>, Status> {
        let pb::WatchMembershipsRequest {
            from_sequence,
            segment_ids,
            from_latest,
        } = request.into_inner();
        if from_latest && from_sequence != 0 {
            return Err(Error::invalid("from_sequence", "give either from_sequence or from_latest").into());
        }
        let from_sequence = if from_latest {
            self.engine.events_published()
        } else {
            from_sequence
        };
        if segment_ids.len() > MAX_WATCH_SEGMENTS {
            return Err(
                Error::invalid("segment_ids", format!("at most {MAX_WATCH_SEGMENTS} segments")).into(),
            );
        }
        for (i, id) in segment_ids.iter().enumerate() {
            segment_id(id).map_err(|e| e.within_field(&format!("segment_ids[{i}]")))?;
        }
        // Refuse a position outside the retained range before the stream starts.
        self.engine.read_events(from_sequence, &segment_ids, 0, 0)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let engine = self.engine.clone();
        let stall = self.watch_stall;
        let slot = self.engine.watcher(from_sequence);
        if from_latest {
            // Where the stream starts, for the caller to resume from should it drop at once.
            let start = pb::WatchMembershipsResponse {
                events: vec![],
                last_sequence: from_sequence,
            };
            let _ = tx.send(Ok(start)).await;
        }
        tokio::spawn(async move {
            let _slot = &slot;
            let mut after = from_sequence;
            let mut reported = from_sequence;
            let mut last_report = std::time::Instant::now();
            let segment_ids = std::sync::Arc::new(segment_ids);
            loop {
                // A watcher far behind reads pages of up to WATCH_SCAN events: on the blocking
                // pool, so the async workers stay free for request-time calls.
                let behind = engine.events_published().saturating_sub(after);
                let read = if behind > WATCH_INLINE {
                    let (engine, ids) = (engine.clone(), segment_ids.clone());
                    tokio::task::spawn_blocking(move || {
                        engine.read_events(after, &ids, WATCH_BATCH, WATCH_SCAN)
                    })
                    .await
                    .unwrap_or_else(|e| Err(Error::Internal(format!("event read task: {e}"))))
                } else {
                    engine.read_events(after, &segment_ids, WATCH_BATCH, WATCH_SCAN)
                };
                let page = match read {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let caught_up = page.last == after;
                // Events, or (filtered out) the position moving on, at most once a second.
                let report = !page.events.is_empty()
                    || (page.last > reported && last_report.elapsed() >= WATCH_PROGRESS);
                if report {
                    let msg = pb::WatchMembershipsResponse {
                        events: page.events.iter().map(event_out).collect(),
                        last_sequence: page.last,
                    };
                    // Stalled with a full buffer: after what is buffered, it learns where to
                    // resume, and the server keeps nothing more for it.
                    let stalled = || {
                        format!(
                            "the watcher read nothing for {} s and fell behind; resume with \
                             from_sequence {reported}",
                            stall.as_secs_f64()
                        )
                    };
                    if !send_within(&tx, msg, stall, stalled).await {
                        return;
                    }
                    reported = page.last;
                    last_report = std::time::Instant::now();
                }
                after = page.last;
                slot.position
                    .store(reported, std::sync::atomic::Ordering::Relaxed);
                if caught_up {
                    tokio::select! {
                        () = engine.events_after(after) => {}
                        () = tokio::time::sleep(WATCH_PROGRESS), if reported < after => {}
                        () = tx.closed() => return,
                        () = engine.closing() => {
                            let _ = tx
                                .send(Err(Status::unavailable(format!(
                                    "segmentd is shutting down; resume with from_sequence {after}"
                                ))))
                                .await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn create_family(
        &self,
        request: Request<pb::CreateFamilyRequest>,
    ) -> Result<Response<pb::Family>, Status> {
        let pb::CreateFamilyRequest { family } = request.into_inner();
        let family = family.ok_or_else(|| Error::invalid("family", "is required"))?;
        let family = rules::family_in(family).map_err(|e| e.within("family"))?;
        let info = self
            .engine
            .create_family(family)
            .await
            .map_err(|e| e.within("family"))?;
        tracing::info!(family = %info.family.id, members = info.sizes.len(), "family created");
        Ok(Response::new(rules::family_out(info)))
    }

    async fn list_families(
        &self,
        _request: Request<pb::ListFamiliesRequest>,
    ) -> Result<Response<pb::ListFamiliesResponse>, Status> {
        let families = self.engine.list_families().await?;
        Ok(Response::new(pb::ListFamiliesResponse {
            families: families.into_iter().map(rules::family_out).collect(),
        }))
    }

    async fn delete_family(
        &self,
        request: Request<pb::DeleteFamilyRequest>,
    ) -> Result<Response<pb::DeleteFamilyResponse>, Status> {
        let pb::DeleteFamilyRequest { family_id } = request.into_inner();
        check_segment_id(&family_id).map_err(|e| e.within_field("family_id"))?;
        self.engine.delete_family(family_id.clone()).await?;
        tracing::info!(family = %family_id, "family deleted");
        Ok(Response::new(pb::DeleteFamilyResponse {}))
    }

    async fn reclassify(
        &self,
        request: Request<pb::ReclassifyRequest>,
    ) -> Result<Response<pb::ReclassifyResponse>, Status> {
        let pb::ReclassifyRequest { as_of } = request.into_inner();
        let as_of = as_of
            .map(|t| convert::timestamp_in(&t).map_err(|e| e.within_field("as_of")))
            .transpose()?;
        let started = std::time::Instant::now();
        let r = self.engine.reclassify(as_of).await?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            scored = r.scored,
            changes = r.changes,
            seconds,
            "RFM reclassified"
        );
        Ok(Response::new(pb::ReclassifyResponse {
            scored: r.scored,
            changes: r.changes,
            thresholds: (r.scored > 0).then(|| pb::RfmThresholds {
                recency_days: r.thresholds[0].to_vec(),
                frequency: r.thresholds[1].to_vec(),
                monetary_minor: r.thresholds[2].to_vec(),
            }),
            as_of: Some(convert::timestamp_out(r.as_of)),
            seconds,
        }))
    }

    async fn get_size_history(
        &self,
        request: Request<pb::GetSizeHistoryRequest>,
    ) -> Result<Response<pb::GetSizeHistoryResponse>, Status> {
        let pb::GetSizeHistoryRequest { segment_ids } = request.into_inner();
        let reg = self.engine.registry();
        for (i, id) in segment_ids.iter().enumerate() {
            segment_id(id).map_err(|e| Error::invalid(format!("segment_ids[{i}]"), e.to_string()))?;
            if reg.slot(id).is_none() {
                return Err(Error::NotFound(format!("segment_ids[{i}]: segment `{id}` not found")).into());
            }
        }
        let sampled = self.engine.size_history().read(&segment_ids);
        Ok(Response::new(pb::GetSizeHistoryResponse {
            sample_times: sampled.times.into_iter().map(convert::timestamp_out).collect(),
            histories: sampled
                .sizes
                .into_iter()
                .map(|(segment_id, sizes)| pb::SizeHistory { segment_id, sizes })
                .collect(),
            interval: prost_types::Duration::try_from(sampled.interval).ok(),
        }))
    }

    async fn get_membership_history(
        &self,
        request: Request<pb::GetMembershipHistoryRequest>,
    ) -> Result<Response<pb::GetMembershipHistoryResponse>, Status> {
        let pb::GetMembershipHistoryRequest {
            customer_id,
            segment_id: segment,
        } = request.into_inner();
        crate::store::input::check_customer_id(&customer_id)?;
        let segment = (!segment.is_empty()).then_some(segment);
        if let Some(id) = &segment {
            segment_id(id)?;
        }
        let (events, oldest) = self.engine.membership_history(customer_id, segment).await?;
        Ok(Response::new(pb::GetMembershipHistoryResponse {
            events: events.iter().map(event_out).collect(),
            oldest_retained_sequence: oldest,
        }))
    }
}

fn cause_out(c: Cause) -> pb::MembershipCause {
    use pb::MembershipCause as C;
    match c {
        Cause::Rule => C::Rule,
        Cause::Time => C::Time,
        Cause::Include => C::Include,
        Cause::Exclude => C::Exclude,
        Cause::Account => C::Account,
        Cause::Activity => C::Activity,
        Cause::MemberLoad => C::MemberLoad,
        Cause::Reclassification => C::Reclassification,
        Cause::Deletion => C::Deletion,
    }
}

fn event_out(e: &Event) -> pb::MembershipEvent {
    pb::MembershipEvent {
        sequence: e.sequence,
        time: Some(convert::timestamp_out(e.time_micros)),
        segment_id: e.segment_id.to_string(),
        customer_id: e.customer_id.to_string(),
        entered: e.entered,
        cause: cause_out(e.cause) as i32,
        activity_id: e.activity_id.as_deref().unwrap_or_default().to_string(),
        from_segment_id: e.from_segment_id.as_deref().unwrap_or_default().to_string(),
    }
}

/// Sends `msg` to a stream's reader, waiting at most `stall` for room in its buffer. A reader
/// that stayed that long without reading gets, after what is buffered, ABORTED saying
/// `stalled()`. Whether the stream goes on (false: the reader left, or stalled).
pub(crate) async fn send_within<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    msg: T,
    stall: std::time::Duration,
    stalled: impl FnOnce() -> String,
) -> bool {
    match tokio::time::timeout(stall, tx.reserve()).await {
        Ok(Ok(permit)) => {
            permit.send(Ok(msg));
            true
        }
        Ok(Err(_)) => false,
        Err(_) => {
            let _ = tx.send(Err(Status::aborted(stalled()))).await;
            false
        }
    }
}

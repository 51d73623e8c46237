//! `segmentd.v1.Replication`: replicas follow segment membership ([`crate::follow`]).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::pb::{self, follow_response::Message, replication_server::Replication};
use crate::api::segments::send_within;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::follow::{Entry, Next, Position};
use crate::segment::registry::check_segment_id;
use crate::store::follow::FollowSnapshot;

/// Segments one follower may name.
const MAX_FOLLOWED: usize = 10_000;
/// Bytes of ids, ordinals or bitmaps per snapshot message, and of changes per message: the
/// issue's "chunked into messages of at most 1 MiB", with room for the framing.
const CHUNK_BYTES: usize = 1 << 20;
/// Changes read from the feed at once.
const PAGE_ITEMS: usize = 64 * 1024;
/// Messages buffered per follower before the stream waits for it.
const BUFFER: usize = 8;

pub struct ReplicationApi {
    engine: Engine,
    /// How long a follower may leave its buffer full before its stream is ended.
    stall: Duration,
}

impl ReplicationApi {
    pub fn new(engine: Engine, stall: Duration) -> Self {
        ReplicationApi { engine, stall }
    }
}

type FollowStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::FollowResponse, Status>> + Send>>;

fn msg(m: Message) -> pb::FollowResponse {
    pb::FollowResponse { message: Some(m) }
}

#[tonic::async_trait]
impl Replication for ReplicationApi {
    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> std::result::Result<Response<FollowStream>, Status> {
        let pb::FollowRequest {
            segment_ids,
            epoch,
            after_sequence,
            heartbeat_millis,
        } = request.into_inner();
        if segment_ids.len() > MAX_FOLLOWED {
            return Err(Error::invalid("segment_ids", format!("at most {MAX_FOLLOWED} segments")).into());
        }
        let registry = self.engine.registry();
        for (i, id) in segment_ids.iter().enumerate() {
            check_segment_id(id).map_err(|e| e.within_field(&format!("segment_ids[{i}]")))?;
            if registry.slot(id).is_none() {
                return Err(Error::NotFound(format!("segment_ids[{i}]: segment `{id}` not found")).into());
            }
        }
        let heartbeat = match heartbeat_millis {
            0 => Duration::from_secs(1),
            ms @ 10..=60_000 => Duration::from_millis(u64::from(ms)),
            ms => {
                return Err(Error::invalid(
                    "heartbeat_millis",
                    format!("{ms}: expected 10 to 60000 milliseconds (0 for the default, 1000)"),
                )
                .into());
            }
        };
        let resume = (epoch != 0).then_some(Position {
            epoch,
            sequence: after_sequence,
        });
        let (tx, rx) = mpsc::channel(BUFFER);
        let follower = Follower {
            engine: self.engine.clone(),
            tx,
            segments: segment_ids,
            followed: None,
            heartbeat,
            stall: self.stall,
        };
        tokio::spawn(follower.run(resume));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One follower's stream.
struct Follower {
    engine: Engine,
    tx: mpsc::Sender<std::result::Result<pb::FollowResponse, Status>>,
    /// The segments asked for (empty: all).
    segments: Vec<String>,
    /// The segments followed now, when named (`None`: every segment).
    followed: Option<HashSet<Arc<str>>>,
    heartbeat: Duration,
    stall: Duration,
}

impl Follower {
    async fn run(mut self, resume: Option<Position>) {
        let feed = self.engine.feed().clone();
        let _following = feed.follow();
        let mut published = feed.subscribe();
        let mut position = resume.filter(|&p| !matches!(feed.after(p, 1), Next::Gone));
        if position.is_some() && !self.segments.is_empty() {
            // Resuming: the named segments that still exist.
            let reg = self.engine.registry();
            self.followed = Some(
                self.segments
                    .iter()
                    .filter(|id| reg.slot(id).is_some())
                    .map(|id| Arc::from(id.as_str()))
                    .collect(),
            );
        }
        loop {
            // Resumed where the follower was, or from a new snapshot (at first, or when the feed
            // no longer holds what follows the follower's position).
            let mut at = match position.take() {
                Some(p) => p,
                None => match self.snapshot().await {
                    Some(p) => p,
                    None => return,
                },
            };
            // Heartbeats go out every interval while the follower is current, writes or not: a
            // follower's staleness is the time since the last one.
            let mut beaten = tokio::time::Instant::now();
            loop {
                published.borrow_and_update();
                match feed.after(at, PAGE_ITEMS) {
                    Next::Gone => break,
                    Next::Entries(entries) if !entries.is_empty() => {
                        for e in &entries {
                            for m in self.changes(at.epoch, e) {
                                if !self.send(m).await {
                                    return;
                                }
                            }
                            at.sequence = e.sequence;
                        }
                    }
                    Next::Entries(_) => {
                        let beat = beaten + self.heartbeat;
                        tokio::select! {
                            _ = published.changed() => {}
                            () = tokio::time::sleep_until(beat) => {
                                // A heartbeat says nothing followed the position when it was
                                // sent: look again if an entry came meanwhile.
                                if published.has_changed().unwrap_or(false) {
                                    continue;
                                }
                                let m = Message::Heartbeat(pb::Heartbeat {
                                    epoch: at.epoch,
                                    sequence: at.sequence,
                                    time_micros: self.engine.store().clock_micros(),
                                });
                                if !self.send(msg(m)).await {
                                    return;
                                }
                                beaten = tokio::time::Instant::now();
                            }
                            () = self.tx.closed() => return,
                            () = self.engine.closing() => {
                                let _ = self.tx.send(Err(Status::unavailable(format!(
                                    "segmentd is shutting down; resume with epoch {} and after_sequence {}",
                                    at.epoch, at.sequence
                                )))).await;
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn send(&self, m: pb::FollowResponse) -> bool {
        send_within(&self.tx, m, self.stall, || {
            format!(
                "the follower read nothing for {} s; resume from the last sequence received",
                self.stall.as_secs_f64()
            )
        })
        .await
    }

    /// Takes a snapshot and sends it; its position, or `None` once the stream is over.
    async fn snapshot(&mut self) -> Option<Position> {
        let engine = self.engine.clone();
        let ids = self.segments.clone();
        let taken = tokio::task::spawn_blocking(move || engine.follow_snapshot(&ids))
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("snapshot task: {e}"))));
        let snap = match taken {
            Ok(s) => s,
            Err(e) => {
                let _ = self.tx.send(Err(e.into())).await;
                return None;
            }
        };
        if !self.segments.is_empty() {
            self.followed = Some(snap.segments.iter().map(|(id, _)| id.clone()).collect());
        }
        let position = snap.position;
        for m in SnapshotMessages::new(snap) {
            if !self.send(m).await {
                return None;
            }
        }
        Some(position)
    }

    /// An entry as messages of at most about `CHUNK_BYTES`, only the followed segments' changes.
    fn changes(&mut self, epoch: u64, e: &Entry) -> Vec<pb::FollowResponse> {
        let mut segment_ids = Vec::new();
        let mut segment_ids_changed = false;
        if let Some(all) = &e.segments {
            let now: HashSet<Arc<str>> = all.iter().cloned().collect();
            match &mut self.followed {
                // Named segments: those deleted are no longer followed.
                Some(followed) => {
                    let before = followed.len();
                    followed.retain(|id| now.contains(id));
                    segment_ids_changed = followed.len() != before;
                    let mut ids: Vec<String> = followed.iter().map(|s| s.to_string()).collect();
                    ids.sort_unstable();
                    segment_ids = ids;
                }
                None => {
                    segment_ids_changed = true;
                    segment_ids = all.iter().map(|s| s.to_string()).collect();
                }
            }
        }
        let wanted: Vec<bool> = e
            .segment_ids
            .iter()
            .map(|id| self.followed.as_ref().is_none_or(|f| f.contains(id)))
            .collect();
        let mut per_segment: Vec<pb::SegmentChanges> = e
            .segment_ids
            .iter()
            .map(|id| pb::SegmentChanges {
                segment_id: id.to_string(),
                ..Default::default()
            })
            .collect();
        let mut out = Vec::new();
        let mut current = pb::Changes {
            epoch,
            sequence: e.sequence,
            log_sequence: e.log_sequence,
            time_micros: e.time_micros,
            erased: e.erased.clone(),
            segment_ids,
            segment_ids_changed,
            ..Default::default()
        };
        let mut bytes = e.erased.len() * 5;
        for (ord, id) in &e.created {
            if bytes >= CHUNK_BYTES {
                out.push(std::mem::take(&mut current));
                bytes = 0;
            }
            current.created.push(*ord);
            current.created_customer_ids.push(id.to_string());
            bytes += id.len() + 8;
        }
        let flush = |current: &mut pb::Changes, per_segment: &mut Vec<pb::SegmentChanges>| {
            current.segments.extend(
                per_segment
                    .iter_mut()
                    .filter(|s| !s.entered.is_empty() || !s.exited.is_empty())
                    .map(|s| pb::SegmentChanges {
                        segment_id: s.segment_id.clone(),
                        entered: std::mem::take(&mut s.entered),
                        exited: std::mem::take(&mut s.exited),
                    }),
            );
        };
        for &(ord, k, entered) in &e.changes {
            if !wanted[k as usize] {
                continue;
            }
            if bytes >= CHUNK_BYTES {
                flush(&mut current, &mut per_segment);
                out.push(std::mem::take(&mut current));
                bytes = 0;
            }
            let s = &mut per_segment[k as usize];
            if entered {
                s.entered.push(ord);
            } else {
                s.exited.push(ord);
            }
            bytes += 5;
        }
        flush(&mut current, &mut per_segment);
        out.push(current);
        // Every part carries the write's place; all but the last say more follows.
        let n = out.len();
        for (i, c) in out.iter_mut().enumerate() {
            c.epoch = epoch;
            c.sequence = e.sequence;
            c.log_sequence = e.log_sequence;
            c.time_micros = e.time_micros;
            c.continued = i + 1 < n;
        }
        out.into_iter().map(|c| msg(Message::Changes(c))).collect()
    }
}

/// A snapshot as its messages (start, customers, members, end), made one at a time as the
/// stream takes them, so the first is on its way while the rest are made.
struct SnapshotMessages {
    snap: FollowSnapshot,
    /// 0: start; 1: customers; 2: members; 3: end; 4: done.
    stage: u8,
    /// The next customer, or the next segment and shard.
    next: usize,
    shard: usize,
}

impl SnapshotMessages {
    fn new(snap: FollowSnapshot) -> Self {
        SnapshotMessages {
            snap,
            stage: 0,
            next: 0,
            shard: 0,
        }
    }
}

impl Iterator for SnapshotMessages {
    type Item = pb::FollowResponse;

    fn next(&mut self) -> Option<pb::FollowResponse> {
        let s = &self.snap;
        loop {
            match self.stage {
                0 => {
                    self.stage = 1;
                    return Some(msg(Message::SnapshotStart(pb::SnapshotStart {
                        epoch: s.position.epoch,
                        sequence: s.position.sequence,
                        log_sequence: s.log_sequence,
                        customers: s.ordinals.len() as u64,
                        segment_ids: s.segments.iter().map(|(id, _)| id.to_string()).collect(),
                    })));
                }
                1 if self.next < s.ordinals.len() => {
                    let first = self.next;
                    let start = if first == 0 {
                        0
                    } else {
                        s.id_ends[first - 1] as usize
                    };
                    let mut last = first;
                    let mut lengths = Vec::new();
                    let mut at = start;
                    while last < s.ordinals.len() && (s.id_ends[last] as usize - start) < CHUNK_BYTES {
                        let end = s.id_ends[last] as usize;
                        lengths.push((end - at) as u32);
                        at = end;
                        last += 1;
                    }
                    self.next = last;
                    return Some(msg(Message::SnapshotCustomers(pb::SnapshotCustomers {
                        ordinals: s.ordinals[first..last].to_vec(),
                        customer_ids: s.ids.as_bytes()[start..at].to_vec(),
                        id_lengths: lengths,
                    })));
                }
                1 => {
                    self.stage = 2;
                    self.next = 0;
                }
                2 if self.next < s.segments.len() => {
                    let (id, shards) = &s.segments[self.next];
                    // Shards are disjoint ranges of ordinals: a union appends containers.
                    let mut part = roaring::RoaringBitmap::new();
                    while self.shard < shards.len() && part.serialized_size() < CHUNK_BYTES / 2 {
                        part |= &shards[self.shard];
                        self.shard += 1;
                    }
                    if self.shard >= shards.len() {
                        self.next += 1;
                        self.shard = 0;
                    }
                    if !part.is_empty() {
                        return Some(members(id, &part));
                    }
                }
                2 => self.stage = 3,
                3 => {
                    self.stage = 4;
                    return Some(msg(Message::SnapshotEnd(pb::SnapshotEnd {
                        epoch: s.position.epoch,
                        sequence: s.position.sequence,
                    })));
                }
                _ => return None,
            }
        }
    }
}

fn members(id: &str, part: &roaring::RoaringBitmap) -> pb::FollowResponse {
    let mut bytes = Vec::with_capacity(part.serialized_size());
    part.serialize_into(&mut bytes)
        .expect("writing to a Vec cannot fail");
    msg(Message::SnapshotMembers(pb::SnapshotMembers {
        segment_id: id.to_owned(),
        members: bytes,
    }))
}

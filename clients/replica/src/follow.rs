//! The follow thread: connects, takes the snapshot, applies changes, reconnects with backoff
//! and resumes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::bits::Bits;
use crate::ids::{self, IdTable};
use crate::pb::{self, follow_response::Message};
use crate::{Builder, Error, Shared, State};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Room left in the bitsets for new customers before they are copied bigger.
const HEADROOM: f64 = 1.25;

pub(crate) fn endpoint(b: &Builder) -> Result<Endpoint, Error> {
    let mut e = Endpoint::from_shared(b.addr.clone())
        .map_err(|e| Error::Config(format!("address `{}`: {e}", b.addr)))?
        .connect_timeout(b.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(pem) = &b.tls_ca {
        let mut tls = ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        if let Some(domain) = &b.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        e = e
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    }
    if let Some(t) = &b.token {
        tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(format!("Bearer {t}"))
            .map_err(|_| Error::Config("the token holds characters a header cannot".into()))?;
    }
    let ms = b.heartbeat.as_millis();
    if !(10..=60_000).contains(&ms) {
        return Err(Error::Config(format!(
            "heartbeat {ms} ms: expected 10 ms to 60 s"
        )));
    }
    Ok(e)
}

/// The follow thread's body: until the replica is dropped.
pub(crate) fn run(
    shared: Arc<Shared>,
    b: Builder,
    endpoint: Endpoint,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            shared.progress().last_error = Some(format!("cannot start the follow runtime: {e}"));
            return;
        }
    };
    runtime.block_on(async move {
        let mut writer = Writer::new(shared.clone());
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u64;
        while !shared.stop.load(Ordering::Acquire) {
            let outcome = tokio::select! {
                r = writer.follow(&b, &endpoint) => r,
                _ = stop.changed() => return,
            };
            {
                let mut p = shared.progress();
                p.connected = false;
                p.current = false;
                if let Err(e) = outcome {
                    p.last_error = Some(e);
                }
            }
            if writer.progressed {
                backoff = FIRST_BACKOFF;
            }
            attempts += 1;
            // Jitter from the attempt count, so replicas restarted together spread out.
            let jitter = Duration::from_millis((attempts * 7919) % 100);
            tokio::select! {
                () = tokio::time::sleep(backoff + jitter) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            shared.progress().reconnects += 1;
        }
    });
}

/// A snapshot being received, out of the readers' sight.
struct Building {
    epoch: u64,
    sequence: u64,
    log_sequence: u64,
    ids: IdTable,
    high: Vec<u32>,
    live: usize,
    segments: Vec<Arc<str>>,
    bits: Vec<Arc<Bits>>,
}

/// The follow thread's own state beside what readers see.
struct Writer {
    shared: Arc<Shared>,
    /// Each position's high hash bits: where its id sits in the table (for removal and rebuilds).
    high: Vec<u32>,
    /// Entries in the table, live and removed (removed ones take slots until a rebuild).
    live: usize,
    removed: usize,
    building: Option<Building>,
    /// Parts of a write sent as several messages.
    parts: Vec<pb::Changes>,
    /// Whether the last connection got anywhere (a snapshot or a change): resets the backoff.
    progressed: bool,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> Writer {
        Writer {
            shared,
            high: Vec::new(),
            live: 0,
            removed: 0,
            building: None,
            parts: Vec::new(),
            progressed: false,
        }
    }

    fn state(&self) -> Option<Arc<State>> {
        self.shared.state.load_full()
    }

    /// One connection: follows until the stream fails.
    async fn follow(&mut self, b: &Builder, endpoint: &Endpoint) -> Result<(), String> {
        self.progressed = false;
        self.building = None;
        self.parts.clear();
        let channel: Channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
        let token = b.token.as_ref().map(|t| {
            tonic::metadata::MetadataValue::try_from(format!("Bearer {t}")).expect("checked by endpoint()")
        });
        let mut client = pb::replication_client::ReplicationClient::with_interceptor(
            channel,
            move |mut r: tonic::Request<()>| {
                if let Some(t) = &token {
                    r.metadata_mut().insert("authorization", t.clone());
                }
                Ok(r)
            },
        )
        .max_decoding_message_size(16 << 20);
        let (epoch, after_sequence) = {
            let p = self.shared.progress();
            if self.state().is_some() {
                (p.epoch, p.sequence)
            } else {
                (0, 0)
            }
        };
        let mut stream = client
            .follow(pb::FollowRequest {
                segment_ids: b.segments.clone(),
                epoch,
                after_sequence,
                heartbeat_millis: b.heartbeat.as_millis() as u32,
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        self.shared.progress().connected = true;
        while let Some(m) = stream.next().await {
            let m = m.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            self.apply(m)?;
        }
        Err("the server ended the stream".into())
    }

    fn apply(&mut self, m: pb::FollowResponse) -> Result<(), String> {
        match m.message.ok_or("an empty message")? {
            Message::SnapshotStart(s) => {
                let n = s.customers as usize;
                self.building = Some(Building {
                    epoch: s.epoch,
                    sequence: s.sequence,
                    log_sequence: s.log_sequence,
                    ids: IdTable::with_entries(n),
                    high: Vec::with_capacity(n),
                    live: 0,
                    segments: s.segment_ids.into_iter().map(Arc::from).collect(),
                    bits: Vec::new(),
                });
            }
            Message::SnapshotCustomers(c) => {
                let b = self.building.as_mut().ok_or("customers outside a snapshot")?;
                if c.ordinals.len() != c.customer_ids.len() {
                    return Err("customers: ordinals and ids differ in number".into());
                }
                for (position, id) in c.ordinals.into_iter().zip(&c.customer_ids) {
                    let (high, fp) = ids::hash(id);
                    let at = position as usize;
                    if b.high.len() <= at {
                        b.high.resize(at + 1, 0);
                    }
                    b.high[at] = high;
                    if !b.ids.fits(b.live + 1) {
                        b.ids = b.ids.rebuilt(b.live * 2, &b.high);
                    }
                    b.ids.insert(high, fp, position);
                    b.live += 1;
                }
            }
            Message::SnapshotMembers(m) => {
                let b = self.building.as_mut().ok_or("members outside a snapshot")?;
                if b.bits.is_empty() {
                    // Every customer came first: size the bitsets for them, with room to grow.
                    let positions = ((b.high.len() as f64) * HEADROOM) as usize + 1024;
                    b.bits = b
                        .segments
                        .iter()
                        .map(|_| Arc::new(Bits::with_positions(positions)))
                        .collect();
                }
                let k = b
                    .segments
                    .iter()
                    .position(|s| **s == *m.segment_id)
                    .ok_or_else(|| format!("members of `{}`, not in the snapshot", m.segment_id))?;
                let part = roaring::RoaringBitmap::deserialize_from(&m.members[..])
                    .map_err(|e| format!("members of `{}`: {e}", m.segment_id))?;
                if part.max().is_some_and(|p| p as usize >= b.bits[k].positions()) {
                    return Err(format!("members of `{}` past the customers sent", m.segment_id));
                }
                b.bits[k].insert_all(&part);
            }
            Message::SnapshotEnd(e) => {
                let mut b = self.building.take().ok_or("a snapshot end without its start")?;
                if (e.epoch, e.sequence) != (b.epoch, b.sequence) {
                    return Err("a snapshot end for another snapshot".into());
                }
                if b.bits.is_empty() {
                    let positions = ((b.high.len() as f64) * HEADROOM) as usize + 1024;
                    b.bits = b
                        .segments
                        .iter()
                        .map(|_| Arc::new(Bits::with_positions(positions)))
                        .collect();
                }
                self.high = b.high;
                self.live = b.live;
                self.removed = 0;
                let state = State::new(Arc::new(b.ids), b.segments.into_iter().zip(b.bits).collect());
                self.shared.state.store(Some(Arc::new(state)));
                let mut p = self.shared.progress();
                p.epoch = b.epoch;
                p.sequence = b.sequence;
                p.log_sequence = b.log_sequence;
                p.snapshots += 1;
                p.customers = self.live as u64;
                p.writer_bytes = self.high.capacity() as u64 * 4;
                p.last_error = None;
                self.progressed = true;
            }
            Message::Changes(c) => {
                if self.building.is_some() {
                    return Err("changes inside a snapshot".into());
                }
                let expected = {
                    let p = self.shared.progress();
                    (p.epoch, p.sequence + 1)
                };
                if (c.epoch, c.sequence) != expected {
                    return Err(format!(
                        "changes at {}:{} where {}:{} was due",
                        c.epoch, c.sequence, expected.0, expected.1
                    ));
                }
                let continued = c.continued;
                self.parts.push(c);
                if !continued {
                    let parts = std::mem::take(&mut self.parts);
                    let (sequence, log_sequence, time) = {
                        let last = parts.last().expect("one part at least");
                        (last.sequence, last.log_sequence, last.time_micros)
                    };
                    for part in parts {
                        self.apply_changes(part)?;
                    }
                    let mut p = self.shared.progress();
                    p.sequence = sequence;
                    p.log_sequence = log_sequence;
                    p.change_micros = time;
                    p.current = false;
                    p.customers = (self.live - self.removed) as u64;
                    p.writer_bytes = self.high.capacity() as u64 * 4;
                    self.progressed = true;
                }
            }
            Message::Heartbeat(h) => {
                let mut p = self.shared.progress();
                if (h.epoch, h.sequence) == (p.epoch, p.sequence) && self.parts.is_empty() {
                    p.current = true;
                    let at = self.shared.start.elapsed().as_micros() as u64;
                    self.shared.current_at.store(at.max(1), Ordering::Release);
                }
            }
        }
        Ok(())
    }

    /// Applies one message's changes to the state readers use.
    fn apply_changes(&mut self, c: pb::Changes) -> Result<(), String> {
        let mut state = self.state().ok_or("changes before a snapshot")?;
        for position in c.erased {
            let high = *self
                .high
                .get(position as usize)
                .ok_or("an erased position never given")?;
            if state.ids.remove(high, position) {
                self.removed += 1;
            }
            for bits in state.bits.iter() {
                bits.remove(position);
            }
        }
        if c.created.len() != c.created_customer_ids.len() {
            return Err("created: positions and ids differ in number".into());
        }
        if !c.created.is_empty() {
            let max = c.created.iter().copied().max().unwrap_or(0) as usize;
            if self.high.len() <= max {
                self.high.resize(max + 1, 0);
            }
            let needed = self.live + c.created.len();
            let bits_short = state.bits.iter().any(|b| b.positions() <= max);
            if !state.ids.fits(needed) || bits_short {
                // Bigger shapes, built here and swapped in: readers keep the old until then.
                let live = self.live - self.removed;
                let ids = if state.ids.fits(needed) {
                    state.ids.clone()
                } else {
                    self.live = live;
                    self.removed = 0;
                    Arc::new(state.ids.rebuilt((live + c.created.len()) * 2, &self.high))
                };
                let positions = ((max as f64) * HEADROOM) as usize + 1024;
                let segments = state
                    .segments
                    .iter()
                    .zip(state.bits.iter())
                    .map(|(id, b)| {
                        let b = if b.positions() <= max {
                            Arc::new(b.grown(positions))
                        } else {
                            b.clone()
                        };
                        (id.clone(), b)
                    })
                    .collect();
                state = Arc::new(State::new(ids, segments));
                self.shared.state.store(Some(state.clone()));
            }
            for (position, id) in c.created.iter().zip(&c.created_customer_ids) {
                let (high, fp) = ids::hash(id);
                self.high[*position as usize] = high;
                state.ids.insert(high, fp, *position);
                self.live += 1;
            }
        }
        if c.segment_ids_changed {
            // New segments start empty (their members come as entries); gone ones are dropped.
            let positions = state
                .bits
                .first()
                .map_or(((self.high.len() as f64) * HEADROOM) as usize + 1024, |b| {
                    b.positions()
                });
            let segments = c
                .segment_ids
                .iter()
                .map(|id| {
                    let bits = match state.by_id.get(id.as_str()) {
                        Some(&i) => state.bits[i].clone(),
                        None => Arc::new(Bits::with_positions(positions)),
                    };
                    (Arc::from(id.as_str()), bits)
                })
                .collect();
            // Exits of deleted segments come with this write: apply them to the old bitsets first.
            apply_segments(&state, &c.segments)?;
            let next = Arc::new(State::new(state.ids.clone(), segments));
            self.shared.state.store(Some(next.clone()));
            let kept: Vec<_> = c
                .segments
                .into_iter()
                .filter(|s| {
                    next.by_id.contains_key(s.segment_id.as_str())
                        && !state.by_id.contains_key(s.segment_id.as_str())
                })
                .collect();
            apply_segments(&next, &kept)?;
            return Ok(());
        }
        apply_segments(&state, &c.segments)
    }
}

/// Membership changes onto `state`'s bitsets (segments it does not hold are skipped).
fn apply_segments(state: &State, changes: &[pb::SegmentChanges]) -> Result<(), String> {
    for s in changes {
        let Some(&i) = state.by_id.get(s.segment_id.as_str()) else {
            continue;
        };
        let bits = &state.bits[i];
        for &p in &s.exited {
            bits.remove(p);
        }
        for &p in &s.entered {
            if p as usize >= bits.positions() {
                return Err(format!(
                    "`{}`: position {p} past every customer sent",
                    s.segment_id
                ));
            }
            bits.insert(p);
        }
    }
    Ok(())
}

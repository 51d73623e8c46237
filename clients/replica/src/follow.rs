//! The follow thread: connects, takes the snapshot, applies changes, reconnects with backoff
//! and resumes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::pb::{self, follow_response::Message};
use crate::table::{self, NONE, Table};

/// A position whose customer is sent and not yet placed in the table being built.
const PENDING: u32 = u32::MAX - 1;
use crate::{Builder, Error, Shared, State};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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

/// A snapshot being received, out of the readers' sight. Customers go into the table at its
/// end, once their memberships are known: one write to the table each.
struct Building {
    epoch: u64,
    sequence: u64,
    log_sequence: u64,
    stride: usize,
    /// Which positions hold a customer (`PENDING`) until the table is built.
    slot_of: Vec<u32>,
    high: Vec<u32>,
    fp: Vec<u32>,
    entries: usize,
    /// The followed segments; each one's membership bit is its index.
    segments: Vec<Arc<str>>,
    /// Membership words by position, in the slots' layout, until the end puts them in place.
    members: Vec<u64>,
}

/// The follow thread's own state beside what readers see.
struct Writer {
    shared: Arc<Shared>,
    /// Each position's slot in the table ([`NONE`]: no live customer) and high hash bits.
    slot_of: Vec<u32>,
    high: Vec<u32>,
    /// Entries in the table, live and removed (removed ones take slots until a rebuild).
    entries: usize,
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
            slot_of: Vec::new(),
            high: Vec::new(),
            entries: 0,
            removed: 0,
            building: None,
            parts: Vec::new(),
            progressed: false,
        }
    }

    fn state(&self) -> Option<Arc<State>> {
        self.shared.state.load_full()
    }

    fn writer_bytes(&self) -> u64 {
        (self.slot_of.capacity() + self.high.capacity()) as u64 * 4
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
                let segments: Vec<Arc<str>> = s.segment_ids.into_iter().map(Arc::from).collect();
                self.building = Some(Building {
                    epoch: s.epoch,
                    sequence: s.sequence,
                    log_sequence: s.log_sequence,
                    stride: table::stride_for(segments.len()),
                    slot_of: Vec::with_capacity(n),
                    high: Vec::with_capacity(n),
                    fp: Vec::with_capacity(n),
                    entries: 0,
                    segments,
                    members: Vec::new(),
                });
            }
            Message::SnapshotCustomers(c) => {
                let b = self.building.as_mut().ok_or("customers outside a snapshot")?;
                if c.ordinals.len() != c.id_lengths.len() {
                    return Err("customers: ordinals and ids differ in number".into());
                }
                let mut start = 0usize;
                for (position, len) in c.ordinals.into_iter().zip(&c.id_lengths) {
                    let end = start + *len as usize;
                    let id = c
                        .customer_ids
                        .get(start..end)
                        .ok_or("customers: lengths past the ids")?;
                    start = end;
                    let (high, fp) = table::hash_bytes(id);
                    let at = position as usize;
                    if b.slot_of.len() <= at {
                        b.slot_of.resize(at + 1, NONE);
                        b.high.resize(at + 1, 0);
                        b.fp.resize(at + 1, 0);
                    }
                    if b.slot_of[at] != NONE {
                        return Err(format!("position {position} sent twice"));
                    }
                    b.slot_of[at] = PENDING;
                    b.high[at] = high;
                    b.fp[at] = fp;
                    b.entries += 1;
                }
            }
            Message::SnapshotMembers(m) => {
                let b = self.building.as_mut().ok_or("members outside a snapshot")?;
                let stride = b.stride;
                if b.members.is_empty() {
                    // Every customer came first: one run of words for each position.
                    b.members = vec![0; b.slot_of.len() * stride];
                }
                let bit = b
                    .segments
                    .iter()
                    .position(|s| **s == *m.segment_id)
                    .ok_or_else(|| format!("members of `{}`, not in the snapshot", m.segment_id))?;
                let (offset, mask) = table::locate(bit as u32);
                let part = roaring::RoaringBitmap::deserialize_from(&m.members[..])
                    .map_err(|e| format!("members of `{}`: {e}", m.segment_id))?;
                for p in &part {
                    let at = p as usize;
                    if b.slot_of.get(at).is_none_or(|&s| s == NONE) {
                        return Err(format!("`{}`: member {p} is no customer sent", m.segment_id));
                    }
                    b.members[at * stride + offset] |= mask;
                }
            }
            Message::SnapshotEnd(e) => {
                let mut b = self.building.take().ok_or("a snapshot end without its start")?;
                if (e.epoch, e.sequence) != (b.epoch, b.sequence) {
                    return Err("a snapshot end for another snapshot".into());
                }
                let stride = b.stride;
                let table = Table::with_entries(b.entries, stride);
                // Positions in order land at random places: ask for a place well ahead.
                const AHEAD: usize = 16;
                for position in 0..b.slot_of.len() {
                    if let Some(&h) = b.high.get(position + AHEAD) {
                        table.prefetch(h);
                    }
                    if b.slot_of[position] == PENDING {
                        let bits = b
                            .members
                            .get(position * stride..(position + 1) * stride)
                            .unwrap_or(&[]);
                        b.slot_of[position] =
                            table.insert_with(b.high[position], b.fp[position], bits) as u32;
                    }
                }
                self.slot_of = b.slot_of;
                self.high = b.high;
                self.entries = b.entries;
                self.removed = 0;
                let segments = b.segments.into_iter().zip(0..).collect();
                self.shared
                    .state
                    .store(Some(Arc::new(State::new(Arc::new(table), segments))));
                let writer_bytes = self.writer_bytes();
                let mut p = self.shared.progress();
                p.epoch = b.epoch;
                p.sequence = b.sequence;
                p.log_sequence = b.log_sequence;
                p.snapshots += 1;
                p.customers = self.entries as u64;
                p.writer_bytes = writer_bytes;
                p.last_error = None;
                // The snapshot was taken a moment ago: current as of now, until a heartbeat.
                p.current = true;
                let at = self.shared.start.elapsed().as_micros() as u64;
                self.shared.current_at.store(at.max(1), Ordering::Release);
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
                    let (customers, writer_bytes) =
                        ((self.entries - self.removed) as u64, self.writer_bytes());
                    let mut p = self.shared.progress();
                    p.sequence = sequence;
                    p.log_sequence = log_sequence;
                    p.change_micros = time;
                    p.current = false;
                    p.customers = customers;
                    p.writer_bytes = writer_bytes;
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

    /// Swaps in a state with a rebuilt table, sized for `more` customers beyond the live ones,
    /// with slots of `stride` words.
    fn rebuild(&mut self, state: &State, more: usize, stride: usize) -> Arc<State> {
        let live = self.entries - self.removed;
        let table = state
            .table
            .rebuilt((live + more) * 2, stride, &mut self.slot_of, &self.high);
        self.entries = live;
        self.removed = 0;
        let next = Arc::new(State::new(Arc::new(table), state.segments.to_vec()));
        self.shared.state.store(Some(next.clone()));
        next
    }

    /// Applies one message's changes to the state readers use.
    fn apply_changes(&mut self, c: pb::Changes) -> Result<(), String> {
        let mut state = self.state().ok_or("changes before a snapshot")?;
        for position in c.erased {
            let slot = *self
                .slot_of
                .get(position as usize)
                .ok_or("an erased position never given")?;
            if slot != NONE {
                state.table.remove(slot as usize);
                self.slot_of[position as usize] = NONE;
                self.removed += 1;
            }
        }
        if c.created.len() != c.created_customer_ids.len() {
            return Err("created: positions and ids differ in number".into());
        }
        if !c.created.is_empty() {
            if !state.table.fits(self.entries + c.created.len()) {
                state = self.rebuild(&state, c.created.len(), state.table.stride());
            }
            for (&position, id) in c.created.iter().zip(&c.created_customer_ids) {
                let at = position as usize;
                if self.slot_of.len() <= at {
                    self.slot_of.resize(at + 1, NONE);
                    self.high.resize(at + 1, 0);
                }
                if self.slot_of[at] != NONE {
                    return Err(format!("position {position} created while taken"));
                }
                let (high, fp) = table::hash(id);
                self.high[at] = high;
                self.slot_of[at] = state.table.insert(high, fp) as u32;
                self.entries += 1;
            }
        }
        // Changes of the segments followed before this write (a deleted one's exits among them).
        self.apply_segments(&state, &c.segments)?;
        if c.segment_ids_changed {
            // Kept segments keep their bit; new ones take a free one (cleared first), in a
            // table with wider slots if none is free.
            let kept: Vec<(Arc<str>, u32)> = c
                .segment_ids
                .iter()
                .filter_map(|id| {
                    state
                        .by_id
                        .get(id.as_str())
                        .map(|&bit| (Arc::from(id.as_str()), bit))
                })
                .collect();
            let added: Vec<&String> = c
                .segment_ids
                .iter()
                .filter(|id| !state.by_id.contains_key(id.as_str()))
                .collect();
            if table::bits_for(state.table.stride()) < c.segment_ids.len() {
                state = self.rebuild(&state, 0, table::stride_for(c.segment_ids.len()));
            }
            let used: std::collections::HashSet<u32> = kept.iter().map(|(_, bit)| *bit).collect();
            let mut free = (0..table::bits_for(state.table.stride()) as u32).filter(|b| !used.contains(b));
            let mut segments = kept;
            for id in &added {
                let bit = free.next().expect("the table's slots hold every segment");
                state.table.clear_bit(bit);
                segments.push((Arc::from(id.as_str()), bit));
            }
            let next = Arc::new(State::new(state.table.clone(), segments));
            self.shared.state.store(Some(next.clone()));
            let new: Vec<pb::SegmentChanges> = c
                .segments
                .into_iter()
                .filter(|s| !state.by_id.contains_key(s.segment_id.as_str()))
                .collect();
            self.apply_segments(&next, &new)?;
        }
        Ok(())
    }

    /// Membership changes onto `state`'s table (segments it does not follow are skipped).
    fn apply_segments(&self, state: &State, changes: &[pb::SegmentChanges]) -> Result<(), String> {
        for s in changes {
            let Some(&bit) = state.by_id.get(s.segment_id.as_str()) else {
                continue;
            };
            for (list, member) in [(&s.exited, false), (&s.entered, true)] {
                for &p in list {
                    let slot = self.slot_of.get(p as usize).copied().unwrap_or(NONE);
                    if slot == NONE {
                        if member {
                            return Err(format!(
                                "`{}`: position {p} entered with no customer there",
                                s.segment_id
                            ));
                        }
                        continue;
                    }
                    state.table.set(slot as usize, bit, member);
                }
            }
        }
        Ok(())
    }
}

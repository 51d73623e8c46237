//! Crafted requests cannot make the server hold many times their size: a counting allocator
//! records the process's peak while each is sent to a real server, which must refuse it with
//! INVALID_ARGUMENT naming the field, with a peak within a small multiple of the request (the
//! client's copy, the server's received message and what the decoder keeps of it).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BufMut;
use common::*;
use segmentd::api::pb;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now =
                CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A message sent as the bytes given, whatever they hold.
#[derive(Clone, Default, Debug)]
struct Raw(Vec<u8>);

impl prost::Message for Raw {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Sends `body` as an `UpsertCustomers` request; the status, the peak bytes held above what was
/// held before, and how long the call took.
async fn send(server: &TestServer, body: Vec<u8>) -> (tonic::Status, usize, Duration) {
    let mut grpc = tonic::client::Grpc::new(server.channel().await)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let request = tonic::Request::new(Raw(body));
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let started = Instant::now();
    let reply = grpc
        .unary::<Raw, pb::UpsertCustomersResponse, _>(
            request,
            http::uri::PathAndQuery::from_static("/segmentd.v1.Ingest/UpsertCustomers"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let took = started.elapsed();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    (reply.unwrap_err(), peak, took)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(out: &mut Vec<u8>, tag: u32, body: &[u8]) {
    varint(out, u64::from(tag << 3 | 2));
    varint(out, body.len() as u64);
    out.put_slice(body);
}

/// A `CustomerColumns` with one customer and one column `name` whose field `tag` is `payload`.
fn one_column(name: &str, tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut column = Vec::new();
    field(&mut column, 1, name.as_bytes());
    field(&mut column, tag, payload);
    let mut columns = Vec::new();
    field(&mut columns, 1, b"x");
    field(&mut columns, 3, &column);
    let mut request = Vec::new();
    field(&mut request, 2, &columns);
    request
}

fn assert_refused(status: &tonic::Status, field: &str) {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{}",
        status.message()
    );
    assert!(status.message().starts_with(field), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_requests_are_refused_within_a_small_multiple_of_their_size() {
    let server = TestServer::start().await;
    upsert(&server, vec![customer("warm", None, &[])]).await;

    // Two million empty customers (4 MB): each would have been a 32-byte handle.
    let body = [0x0a, 0x00].repeat(2_000_000);
    let size = body.len();
    let (status, peak, _) = send(&server, body).await;
    assert_refused(&status, "customers");
    assert!(peak < 6 * size, "empty customers: peak {peak} for {size} bytes");

    // A column whose `missing` rows are four million 1-byte varints (4 bytes each decoded).
    let body = one_column("vip", 2, &vec![0u8; 4_000_000]);
    let size = body.len();
    let (status, peak, _) = send(&server, body).await;
    assert_refused(&status, "columns.attributes.missing");
    assert!(peak < 6 * size, "missing rows: peak {peak} for {size} bytes");

    // An int column of four million 1-byte values (8 bytes each decoded).
    let mut ints = Vec::new();
    field(&mut ints, 1, &vec![1u8; 4_000_000]);
    let body = one_column("household_size", 4, &ints);
    let size = body.len();
    let (status, peak, _) = send(&server, body).await;
    assert_refused(&status, "columns.attributes.values");
    assert!(peak < 6 * size, "int values: peak {peak} for {size} bytes");

    // The `columns` field repeated 200,000 times: merged in one pass, not copied at each.
    let mut columns = Vec::new();
    field(&mut columns, 1, b"x");
    let mut body = Vec::new();
    for _ in 0..200_000 {
        field(&mut body, 2, &columns);
    }
    let size = body.len();
    let (status, peak, took) = send(&server, body).await;
    assert_refused(&status, "columns.customer_ids");
    assert!(peak < 6 * size, "repeated columns: peak {peak} for {size} bytes");
    assert!(took < Duration::from_secs(10), "repeated columns took {took:?}");

    // Nothing of them was applied; the server goes on.
    assert_eq!(customer_count(&server).await, 1);
    upsert(&server, vec![customer("after", None, &[])]).await;
    assert_eq!(customer_count(&server).await, 2);
}

//! The engine: the store behind an async facade. Store calls are synchronous and may take
//! milliseconds (a batch of thousands of customers), so writes run on the blocking pool and the
//! async runtime stays free for request-time reads.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::segment::ops::{ListOutcome, MAX_LISTED_IDS, SegmentInfo, SegmentUpdate};
use crate::segment::registry::SegmentDef;
use crate::segment::rule::Rule;
use crate::store::input::{CustomerKey, CustomerPatch, OrderIn};
use crate::store::schema::{AttrType, Schema};
use crate::store::{CustomerRecord, OrdersOutcome, Store, StoreStats, UpsertOutcome};

/// The failure of one batch in a sequence: its index in the sequence and the error.
#[derive(Debug)]
pub struct BatchFailure {
    pub index: usize,
    pub error: Error,
}

/// Shared handle to everything the server holds.
#[derive(Clone, Default)]
pub struct Engine {
    store: Arc<Store>,
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// An engine over an existing store (tests, benches, embedders).
    pub fn with_store(store: Arc<Store>) -> Engine {
        Engine { store }
    }

    /// The store, for synchronous reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn schema(&self) -> Arc<Schema> {
        self.store.schema()
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Store) -> T + Send + 'static) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Internal(format!("write task failed: {e}")))
    }

    /// Upserts one batch, all or nothing.
    pub async fn upsert(&self, batch: Vec<CustomerPatch>) -> Result<UpsertOutcome> {
        self.blocking(move |s| s.upsert(&batch)).await?
    }

    /// Upserts several batches in order, each all or nothing, stopping at the first that fails.
    /// Returns the total of the batches applied and the failure, if any.
    pub async fn upsert_batches(
        &self,
        batches: Vec<Vec<CustomerPatch>>,
    ) -> Result<(UpsertOutcome, Option<BatchFailure>)> {
        self.blocking(move |s| {
            let mut total = UpsertOutcome::default();
            for (index, batch) in batches.iter().enumerate() {
                match s.upsert(batch) {
                    Ok(o) => {
                        total.created += o.created;
                        total.updated += o.updated;
                    }
                    Err(error) => return (total, Some(BatchFailure { index, error })),
                }
            }
            (total, None)
        })
        .await
    }

    pub async fn delete(&self, key: CustomerKey) -> Result<String> {
        self.blocking(move |s| s.delete(&key)).await?
    }

    pub async fn record_orders(&self, orders: Vec<OrderIn>) -> Result<OrdersOutcome> {
        self.blocking(move |s| s.record_orders(&orders)).await?
    }

    pub fn get_customer(&self, key: &CustomerKey) -> Result<CustomerRecord> {
        self.store.get_customer(key)
    }

    pub async fn define_attribute(
        &self,
        name: String,
        ty: AttrType,
        description: String,
    ) -> Result<Arc<Schema>> {
        self.blocking(move |s| s.define_attribute(&name, ty, &description))
            .await?
    }

    pub async fn stats(&self) -> Result<StoreStats> {
        self.blocking(|s| s.stats()).await
    }
}

/// Segment calls. Definition changes and list changes evaluate on the blocking pool; membership
/// reads are lock-light and run inline.
impl Engine {
    pub async fn create_segment(
        &self,
        def: SegmentDef,
        include: Vec<String>,
        exclude: Vec<String>,
    ) -> Result<SegmentInfo> {
        self.blocking(move |s| s.create_segment(def, &include, &exclude))
            .await?
    }

    pub async fn update_segment(&self, id: String, update: SegmentUpdate) -> Result<SegmentInfo> {
        self.blocking(move |s| s.update_segment(&id, update)).await?
    }

    pub async fn delete_segment(&self, id: String) -> Result<()> {
        self.blocking(move |s| s.delete_segment(&id)).await?
    }

    pub async fn segment_info(&self, id: String) -> Result<SegmentInfo> {
        self.blocking(move |s| s.segment_info(&id, MAX_LISTED_IDS))
            .await?
    }

    pub async fn list_segments(&self) -> Result<Vec<(SegmentDef, u64)>> {
        self.blocking(|s| s.list_segments()).await
    }

    pub async fn preview(&self, rule: Rule, as_of: Option<i64>, sample: usize) -> Result<(u64, Vec<String>)> {
        self.blocking(move |s| s.preview(&rule, as_of, sample)).await?
    }

    pub async fn overlap(&self, ids: Vec<String>) -> Result<Vec<(usize, usize, u64)>> {
        self.blocking(move |s| s.overlap(&ids)).await?
    }

    pub async fn set_listed(
        &self,
        segment_id: String,
        keys: Vec<CustomerKey>,
        add: bool,
        activity: bool,
    ) -> Result<ListOutcome> {
        self.blocking(move |s| s.set_listed(&segment_id, &keys, add, activity))
            .await?
    }

    pub async fn export_page(
        &self,
        id: String,
        from: u32,
        limit: usize,
        fields: Vec<crate::store::schema::AttrId>,
    ) -> Result<(Vec<CustomerRecord>, Option<u32>)> {
        self.blocking(move |s| s.export_page(&id, from, limit, &fields))
            .await?
    }

    pub fn explain(&self, customer_id: &str, segment_id: &str) -> Result<crate::segment::ops::Explanation> {
        self.store.explain(customer_id, segment_id)
    }
}

//! `segmentd.v1.Activities`: the marketing activity engine adds and removes members.

use tonic::{Request, Response, Status};

use crate::api::pb::{self, activities_server::Activities};
use crate::codec::Limits;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::segment::registry::check_segment_id;
use crate::store::input::{self, CustomerKey};
use crate::store::segments::ListOutcome;

/// Longest activity id, in bytes.
const MAX_ACTIVITY_ID: usize = 128;

pub struct ActivitiesApi {
    engine: Engine,
    limits: Limits,
}

impl ActivitiesApi {
    pub fn new(engine: Engine, limits: Limits) -> Self {
        ActivitiesApi { engine, limits }
    }
}

/// Checks a request's ids and e-mails and turns them into keys, ids first.
pub fn member_keys(
    limits: &Limits,
    customer_ids: Vec<String>,
    emails: Vec<String>,
) -> Result<Vec<CustomerKey>> {
    limits.check_batch("customer_ids", customer_ids.len() + emails.len())?;
    let mut keys = Vec::with_capacity(customer_ids.len() + emails.len());
    for (i, id) in customer_ids.into_iter().enumerate() {
        input::check_customer_id(&id).map_err(|e| e.within_field(&format!("customer_ids[{i}]")))?;
        keys.push(CustomerKey::Id(id));
    }
    for (i, email) in emails.into_iter().enumerate() {
        input::check_email(&email).map_err(|e| e.within_field(&format!("emails[{i}]")))?;
        keys.push(CustomerKey::Email(email));
    }
    Ok(keys)
}

impl ActivitiesApi {
    async fn apply(
        &self,
        segment_id: String,
        customer_ids: Vec<String>,
        emails: Vec<String>,
        activity_id: String,
        add: bool,
    ) -> Result<ListOutcome> {
        check_segment_id(&segment_id)?;
        if activity_id.is_empty() || activity_id.len() > MAX_ACTIVITY_ID {
            return Err(Error::invalid(
                "activity_id",
                format!("must be 1 to {MAX_ACTIVITY_ID} bytes"),
            ));
        }
        let keys = member_keys(&self.limits, customer_ids, emails)?;
        let out = self
            .engine
            .set_listed(segment_id.clone(), keys, add, Some(activity_id.clone()))
            .await?;
        tracing::info!(
            segment = %segment_id,
            activity = %activity_id,
            action = if add { "add" } else { "remove" },
            changed = out.changed,
            unchanged = out.unchanged,
            unknown = out.unknown.len(),
            "activity applied"
        );
        Ok(out)
    }
}

#[tonic::async_trait]
impl Activities for ActivitiesApi {
    async fn add_to_segment(
        &self,
        request: Request<pb::AddToSegmentRequest>,
    ) -> Result<Response<pb::AddToSegmentResponse>, Status> {
        let pb::AddToSegmentRequest {
            segment_id,
            customer_ids,
            emails,
            activity_id,
        } = request.into_inner();
        let ListOutcome {
            changed,
            unchanged,
            unknown,
        } = self
            .apply(segment_id, customer_ids, emails, activity_id, true)
            .await?;
        Ok(Response::new(pb::AddToSegmentResponse {
            changed,
            unchanged,
            unknown,
        }))
    }

    async fn remove_from_segment(
        &self,
        request: Request<pb::RemoveFromSegmentRequest>,
    ) -> Result<Response<pb::RemoveFromSegmentResponse>, Status> {
        let pb::RemoveFromSegmentRequest {
            segment_id,
            customer_ids,
            emails,
            activity_id,
        } = request.into_inner();
        let ListOutcome {
            changed,
            unchanged,
            unknown,
        } = self
            .apply(segment_id, customer_ids, emails, activity_id, false)
            .await?;
        Ok(Response::new(pb::RemoveFromSegmentResponse {
            changed,
            unchanged,
            unknown,
        }))
    }
}

//! `segmentd.v1.Membership`: the request-time path. Each call is one id-map probe and one shard
//! read lock, answered inline on the async runtime.

use tonic::{Request, Response, Status};

use crate::api::pb::{self, membership_server::Membership};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::segment::registry::check_segment_id;

/// Most segments in one CheckMemberships call.
const MAX_CHECK: usize = 1000;
/// Most customers, and checks, in one BatchCheckMemberships call.
const MAX_BATCH_CUSTOMERS: usize = 10_000;
const MAX_BATCH_CHECKS: usize = 100_000;

pub struct MembershipApi {
    engine: Engine,
}

impl MembershipApi {
    pub fn new(engine: Engine) -> Self {
        MembershipApi { engine }
    }
}

/// Customer ids are checked for shape only: an id that could exist but does not is an
/// anonymous shopper, not an error.
fn customer_id(id: &str) -> Result<()> {
    crate::store::input::check_customer_id(id)
}

/// Checks at most `MAX_CHECK` segment ids, naming the first bad one.
fn segment_ids_ok(segment_ids: &[String]) -> Result<()> {
    if segment_ids.len() > MAX_CHECK {
        return Err(Error::invalid(
            "segment_ids",
            format!("at most {MAX_CHECK} segments"),
        ));
    }
    for (i, id) in segment_ids.iter().enumerate() {
        check_segment_id(id).map_err(|e| e.within_field(&format!("segment_ids[{i}]")))?;
    }
    Ok(())
}

#[tonic::async_trait]
impl Membership for MembershipApi {
    async fn is_member(
        &self,
        request: Request<pb::IsMemberRequest>,
    ) -> Result<Response<pb::IsMemberResponse>, Status> {
        let pb::IsMemberRequest {
            customer_id: cid,
            segment_id,
        } = request.get_ref();
        customer_id(cid)?;
        check_segment_id(segment_id)?;
        let member = self.engine.is_member(cid, segment_id)?;
        Ok(Response::new(pb::IsMemberResponse {
            member: member.unwrap_or(false),
            known_customer: member.is_some(),
        }))
    }

    async fn check_memberships(
        &self,
        request: Request<pb::CheckMembershipsRequest>,
    ) -> Result<Response<pb::CheckMembershipsResponse>, Status> {
        let pb::CheckMembershipsRequest {
            customer_id: cid,
            segment_ids,
        } = request.get_ref();
        customer_id(cid)?;
        segment_ids_ok(segment_ids)?;
        let members = self.engine.check_memberships(cid, segment_ids)?;
        Ok(Response::new(pb::CheckMembershipsResponse {
            known_customer: members.is_some(),
            member: members.unwrap_or_else(|| vec![false; segment_ids.len()]),
        }))
    }

    async fn batch_check_memberships(
        &self,
        request: Request<pb::BatchCheckMembershipsRequest>,
    ) -> Result<Response<pb::BatchCheckMembershipsResponse>, Status> {
        let pb::BatchCheckMembershipsRequest {
            customer_ids,
            segment_ids,
        } = request.get_ref();
        if customer_ids.len() > MAX_BATCH_CUSTOMERS {
            return Err(
                Error::invalid("customer_ids", format!("at most {MAX_BATCH_CUSTOMERS} customers")).into(),
            );
        }
        segment_ids_ok(segment_ids)?;
        if customer_ids.len() * segment_ids.len() > MAX_BATCH_CHECKS {
            return Err(Error::invalid(
                "customer_ids",
                format!(
                    "{} customers × {} segments is more than {MAX_BATCH_CHECKS} checks",
                    customer_ids.len(),
                    segment_ids.len()
                ),
            )
            .into());
        }
        for (i, id) in customer_ids.iter().enumerate() {
            customer_id(id).map_err(|e| e.within_field(&format!("customer_ids[{i}]")))?;
        }
        let (member, known_customer) = self.engine.batch_check(customer_ids, segment_ids)?;
        Ok(Response::new(pb::BatchCheckMembershipsResponse {
            member,
            known_customer,
        }))
    }

    async fn get_customer_segments(
        &self,
        request: Request<pb::GetCustomerSegmentsRequest>,
    ) -> Result<Response<pb::GetCustomerSegmentsResponse>, Status> {
        let pb::GetCustomerSegmentsRequest { customer_id: cid } = request.get_ref();
        customer_id(cid)?;
        let ids = self.engine.customer_segments(cid);
        Ok(Response::new(pb::GetCustomerSegmentsResponse {
            known_customer: ids.is_some(),
            segment_ids: ids.unwrap_or_default(),
        }))
    }
}

//! `segmentd.v1.Admin`: schema, custom attributes, statistics.

use tonic::{Request, Response, Status};

use crate::api::pb::{self, admin_server::Admin};
use crate::codec::convert;
use crate::engine::Engine;
use crate::error::Error;

pub struct AdminApi {
    engine: Engine,
}

impl AdminApi {
    pub fn new(engine: Engine) -> Self {
        AdminApi { engine }
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn get_schema(
        &self,
        _request: Request<pb::GetSchemaRequest>,
    ) -> Result<Response<pb::GetSchemaResponse>, Status> {
        let schema = self.engine.schema();
        Ok(Response::new(pb::GetSchemaResponse {
            attributes: schema.attrs().iter().map(convert::attribute_out).collect(),
        }))
    }

    async fn define_attribute(
        &self,
        request: Request<pb::DefineAttributeRequest>,
    ) -> Result<Response<pb::DefineAttributeResponse>, Status> {
        let pb::DefineAttributeRequest {
            name,
            r#type,
            description,
        } = request.into_inner();
        let ty = convert::attr_type_in(r#type)?;
        if crate::columnar::schema::RFM_SCORES.contains(&name.as_str()) {
            return Err(Error::invalid(
                "name",
                format!("`{name}` is reserved: the RFM scores are defined by Segments.Reclassify"),
            )
            .into());
        }
        let schema = self
            .engine
            .define_attribute(name.clone(), ty, description)
            .await?;
        let def = schema
            .get(&name)
            .ok_or_else(|| Status::internal("defined attribute is missing from the schema"))?;
        Ok(Response::new(pb::DefineAttributeResponse {
            attribute: Some(convert::attribute_out(def)),
        }))
    }

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let info = self
            .engine
            .snapshot()
            .await?
            .ok_or_else(|| Status::failed_precondition("this server has no data directory"))?;
        Ok(Response::new(pb::SnapshotResponse {
            sequence: info.sequence,
            path: info.path.display().to_string(),
            bytes: info.bytes,
            duration_seconds: info.duration.as_secs_f64(),
        }))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let s = self.engine.stats().await?;
        Ok(Response::new(pb::StatsResponse {
            customers: s.customers,
            segments: s.segments,
            bytes_used: s.bytes_used,
            bytes_per_customer: if s.customers == 0 {
                0.0
            } else {
                s.bytes_used as f64 / s.customers as f64
            },
            shards: s.shards,
            attributes: s.attributes,
            orders_recorded: s.orders_recorded,
            memory: s
                .parts
                .into_iter()
                .map(|(name, bytes)| pb::MemoryPart { name, bytes })
                .collect(),
        }))
    }
}

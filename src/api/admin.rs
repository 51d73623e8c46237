//! `segmentd.v1.Admin`: schema, custom attributes, statistics, snapshots, what is running.

use tonic::{Request, Response, Status};

use crate::api::pb::{self, admin_server::Admin};
use crate::auth::Caller;
use crate::codec::convert;
use crate::engine::Engine;
use crate::error::Error;

pub struct AdminApi {
    engine: Engine,
    process: Process,
}

/// What `GetServerInfo` reports about the process beside the engine's state.
#[derive(Debug, Clone)]
pub struct Process {
    pub started: std::time::Instant,
    pub started_at: std::time::SystemTime,
    pub data_dir: std::path::PathBuf,
    pub fsync: crate::wal::FsyncMode,
}

impl Process {
    /// The process as configured, started now.
    pub fn starting(config: &crate::config::Config) -> Process {
        Process {
            started: std::time::Instant::now(),
            started_at: std::time::SystemTime::now(),
            data_dir: config.data_dir.clone(),
            fsync: config.fsync,
        }
    }
}

impl AdminApi {
    pub fn new(engine: Engine, process: Process) -> Self {
        AdminApi { engine, process }
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    /// Open to every role (see `auth`): the attribute names and types are what loads, rules and
    /// customers use.
    async fn get_schema(
        &self,
        _request: Request<pb::GetSchemaRequest>,
    ) -> Result<Response<pb::GetSchemaResponse>, Status> {
        crate::api::ready(&self.engine)?;
        let schema = self.engine.schema();
        Ok(Response::new(pb::GetSchemaResponse {
            attributes: schema.attrs().iter().map(convert::attribute_out).collect(),
        }))
    }

    async fn define_attribute(
        &self,
        request: Request<pb::DefineAttributeRequest>,
    ) -> Result<Response<pb::DefineAttributeResponse>, Status> {
        Caller::require_admin(&request, "segmentd.v1.Admin/DefineAttribute")?;
        crate::api::ready(&self.engine)?;
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
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        Caller::require_admin(&request, "segmentd.v1.Admin/Snapshot")?;
        crate::api::ready(&self.engine)?;
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

    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::GetServerInfoResponse>, Status> {
        Caller::require_admin(&request, "segmentd.v1.Admin/GetServerInfo")?;
        let failure = self.engine.wal().and_then(|w| w.failure());
        let state = if !self.engine.is_ready() {
            pb::ServerState::Recovering
        } else if failure.is_some() {
            pb::ServerState::Failed
        } else {
            pb::ServerState::Serving
        };
        let p = &self.process;
        Ok(Response::new(pb::GetServerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: env!("SEGMENTD_COMMIT").to_owned(),
            uptime_seconds: p.started.elapsed().as_secs_f64(),
            started_at_unix_seconds: p
                .started_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            data_dir: p.data_dir.display().to_string(),
            role: "primary".to_owned(),
            state: state.into(),
            last_sequence: self.engine.wal().map_or(0, |w| w.last_sequence()),
            fsync: p.fsync.to_string(),
            failure: failure.map(|f| f.to_string()).unwrap_or_default(),
        }))
    }

    async fn stats(&self, request: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        Caller::require_admin(&request, "segmentd.v1.Admin/Stats")?;
        crate::api::ready(&self.engine)?;
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

//! Every subcommand but loads and `gen`: one call each, answers printed plainly.

use std::io::Write;

use tonic::transport::Endpoint;

use crate::Ch;

use crate::output::{Cell, Format, Record, Rows};
use crate::pb::{
    self, activities_client::ActivitiesClient, admin_client::AdminClient, ingest_client::IngestClient,
    membership_client::MembershipClient, segments_client::SegmentsClient,
};
use crate::values::{self, Failure, Result, Ty, fail};
use crate::{
    ActivityArgs, ActivityCommand, Cli, Command, CustomerCommand, EventFormat, ExportFormat, FamilyCommand,
    LoadCommand, SchemaCommand, SegmentArgs, SegmentCommand,
};

async fn connect(cli: &Cli) -> Result<Ch> {
    let (server, token) = (&cli.server, cli.token.clone());
    let tls = cli.tls_ca.is_some();
    let uri = match server.split_once("://") {
        Some((_, rest)) if tls => format!("https://{rest}"),
        Some(_) => server.to_string(),
        None if tls => format!("https://{server}"),
        None => format!("http://{server}"),
    };
    // A peer that stops answering (a stalled server, a connection a network device dropped)
    // ends the connection attempt, or the call, after `--timeout`. Pings go only while a call
    // is open (an idle connection pinging can be told off by proxies).
    let patience = std::time::Duration::from_secs(cli.timeout);
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| Failure::new(format!("bad server address `{server}`: {e}")))?
        .initial_connection_window_size(16 << 20)
        .initial_stream_window_size(4 << 20)
        .connect_timeout(patience)
        .http2_keep_alive_interval(patience / 2)
        .keep_alive_timeout(patience / 2);
    if let Some(ca) = &cli.tls_ca {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| Failure::new(format!("{}: {e}", p.display())));
        let domain = match &cli.tls_domain {
            Some(d) => d.clone(),
            None => endpoint.uri().host().unwrap_or("localhost").to_string(),
        };
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
            .domain_name(domain);
        if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
            config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| Failure::new(format!("TLS settings: {e}")))?;
    }
    let channel = tokio::time::timeout(patience, endpoint.connect())
        .await
        .map_err(|_| {
            let hint = if tls {
                ""
            } else {
                " (if it serves TLS, give --tls-ca)"
            };
            Failure::new(format!(
                "segmentd at {uri} did not answer within {} s{hint}",
                cli.timeout
            ))
        })?
        .map_err(|e| Failure::new(format!("cannot reach segmentd at {uri}: {}", causes(&e))))?;
    let bearer = match token {
        Some(t) => Some(
            format!("Bearer {}", t.trim())
                .parse()
                .map_err(|_| Failure::new("the token holds characters a header cannot carry"))?,
        ),
        None => None,
    };
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        crate::Bearer(bearer),
    ))
}

/// An error and its causes, joined: transport errors say little at the top.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Gen { customers, seed, out } = &cli.command {
        return crate::synth::write(*customers, *seed, out);
    }
    // Made from the command definitions alone: no server.
    // (Into a buffer first: a closed pipe is then an error to end quietly on, not a panic.)
    if let Command::Completions { shell } = &cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        let mut text = Vec::new();
        clap_complete::generate(*shell, &mut cmd, "segctl", &mut text);
        std::io::stdout().write_all(&text)?;
        return Ok(());
    }
    if let Command::Man = &cli.command {
        let cmd = <Cli as clap::CommandFactory>::command();
        let mut text = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut text)?;
        std::io::stdout().write_all(&text)?;
        return Ok(());
    }
    let channel = connect(&cli).await?;
    match cli.command {
        Command::Gen { .. } | Command::Completions { .. } | Command::Man => unreachable!("handled above"),
        Command::Schema(cmd) => schema(channel, cmd).await,
        Command::Load(LoadCommand::Customers(args)) => crate::load::customers(channel, args).await,
        Command::Load(LoadCommand::Orders(args)) => crate::load::orders(channel, args).await,
        Command::Load(LoadCommand::Members {
            segment,
            args,
            by,
            mode,
        }) => crate::load::members(channel, segment, args, by, mode).await,
        Command::Segment(cmd) => segment(channel, cmd).await,
        Command::Family(cmd) => family(channel, cmd).await,
        Command::Demo { customers, seed } => demo(channel, customers, seed).await,
        Command::Reclassify { as_of } => {
            let as_of = as_of
                .map(|t| values::parse_timestamp(&t).map_err(|e| Failure::new(format!("--as-of: {e}"))))
                .transpose()?;
            let r = SegmentsClient::new(channel)
                .reclassify(pb::ReclassifyRequest { as_of })
                .await?
                .into_inner();
            println!(
                "{} customers scored, {} membership changes in {:.2} s",
                r.scored, r.changes, r.seconds
            );
            if let Some(t) = r.thresholds {
                let join = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(" ");
                println!(
                    "recency: score steps below {} days since the last order",
                    join(&t.recency_days)
                );
                println!("frequency: score steps above {} orders", join(&t.frequency));
                let money: Vec<String> = t
                    .monetary_minor
                    .iter()
                    .map(|m| values::format_money(*m))
                    .collect();
                println!("monetary: score steps above {} spent", money.join(" "));
            }
            Ok(())
        }
        Command::Check {
            customer_id,
            segments,
            out,
        } => {
            let reply = MembershipClient::new(channel)
                .check_memberships(pb::CheckMembershipsRequest {
                    customer_id: customer_id.clone(),
                    segment_ids: segments.clone(),
                })
                .await?
                .into_inner();
            if !reply.known_customer {
                eprintln!("note: no customer `{customer_id}` (anonymous shoppers are in no segment)");
            }
            let mut rows = Rows::new(["segment_id", "member"]);
            for (segment, member) in segments.iter().zip(reply.member) {
                rows.push(vec![segment.into(), member.into()]);
            }
            rows.print(out.output)
        }
        Command::Watch {
            from,
            segments,
            limit,
            format,
        } => watch(channel, from, segments, limit, format).await,
        Command::History {
            customer_id,
            segment,
            out,
        } => {
            let reply = SegmentsClient::new(channel)
                .get_membership_history(pb::GetMembershipHistoryRequest {
                    customer_id,
                    segment_id: segment.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let mut rows = Rows::new([
                "sequence",
                "time",
                "segment_id",
                "customer_id",
                "event",
                "cause",
                "activity_id",
                "from_segment_id",
            ]);
            for e in &reply.events {
                rows.push(vec![
                    e.sequence.into(),
                    e.time.as_ref().map(values::format_timestamp).into(),
                    (&e.segment_id).into(),
                    (&e.customer_id).into(),
                    (if e.entered { "entered" } else { "exited" }).into(),
                    cause_name(e.cause).into(),
                    Some(&e.activity_id).filter(|a| !a.is_empty()).into(),
                    Some(&e.from_segment_id).filter(|a| !a.is_empty()).into(),
                ]);
            }
            rows.print(out.output)?;
            if out.output == Format::Table {
                // Sequences start at 1: a history that begins there has lost nothing.
                let lost = if reply.oldest_retained_sequence > 1 {
                    format!(
                        " (history before sequence {} is no longer retained)",
                        reply.oldest_retained_sequence
                    )
                } else {
                    String::new()
                };
                let n = reply.events.len();
                eprintln!("{n} event{}{lost}", if n == 1 { "" } else { "s" });
            }
            Ok(())
        }
        Command::Customer(cmd) => customer(channel, cmd).await,
        Command::Activity(cmd) => activity(channel, cmd).await,
        Command::Snapshot => {
            let r = AdminClient::new(channel)
                .snapshot(pb::SnapshotRequest {})
                .await?
                .into_inner();
            println!(
                "snapshot written: {} ({} bytes, up to log sequence {}, {:.2} s)",
                r.path, r.bytes, r.sequence, r.duration_seconds
            );
            Ok(())
        }
        Command::Stats { out } => {
            let r = AdminClient::new(channel)
                .stats(pb::StatsRequest {})
                .await?
                .into_inner();
            let record = Record::new()
                .field("customers", r.customers)
                .field("segments", r.segments)
                .field("bytes_used", r.bytes_used)
                .field("bytes_per_customer", (r.bytes_per_customer * 10.0).round() / 10.0);
            match out.output {
                Format::Json => {
                    let mut json = record.json();
                    json["memory"] = r
                        .memory
                        .iter()
                        .map(|p| serde_json::json!({"name": p.name, "bytes": p.bytes}))
                        .collect();
                    crate::output::print_json(&json)
                }
                // The ten largest parts, as `memory:<part>` fields.
                format => r
                    .memory
                    .iter()
                    .take(10)
                    .fold(record, |r, part| {
                        r.field(format!("memory:{}", part.name), part.bytes)
                    })
                    .print(format),
            }
        }
        Command::Health { service } => {
            use tonic_health::pb::{
                HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
            };
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest { service })
                .await?
                .into_inner()
                .status();
            if status == ServingStatus::Serving {
                println!("SERVING");
                Ok(())
            } else {
                crate::values::fail(format!("not serving: {}", status.as_str_name()))
            }
        }
        Command::Info { out } => {
            let r = AdminClient::new(channel)
                .get_server_info(pb::GetServerInfoRequest {})
                .await?
                .into_inner();
            let state = match r.state() {
                pb::ServerState::Recovering => "recovering",
                pb::ServerState::Serving => "serving",
                pb::ServerState::Failed => "failed",
                pb::ServerState::Unspecified => "unknown",
            };
            Record::new()
                .field("version", r.version)
                .field("commit", r.commit)
                .field("role", r.role)
                .field("state", state)
                .field("uptime_seconds", r.uptime_seconds.round() as u64)
                .field("data_dir", r.data_dir)
                .field("fsync", r.fsync)
                .field("last_sequence", r.last_sequence)
                .field("failure", Some(r.failure).filter(|f| !f.is_empty()))
                .print(out.output)
        }
    }
}

async fn schema(channel: Ch, cmd: SchemaCommand) -> Result<()> {
    let mut admin = AdminClient::new(channel);
    let type_name = |t: i32| {
        pb::AttributeType::try_from(t)
            .map(|t| {
                t.as_str_name()
                    .trim_start_matches("ATTRIBUTE_TYPE_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| format!("type {t}"))
    };
    match cmd {
        SchemaCommand::List { out } => {
            let attrs = admin
                .get_schema(pb::GetSchemaRequest {})
                .await?
                .into_inner()
                .attributes;
            let mut rows = Rows::new(["name", "type", "builtin", "read_only", "description"]);
            for a in attrs {
                rows.push(vec![
                    a.name.into(),
                    type_name(a.r#type).into(),
                    a.builtin.into(),
                    a.read_only.into(),
                    a.description.into(),
                ]);
            }
            rows.print(out.output)?;
        }
        SchemaCommand::Define {
            name,
            r#type,
            description,
        } => {
            let ty = pb::AttributeType::from_str_name(&format!("ATTRIBUTE_TYPE_{}", r#type.to_uppercase()))
                .ok_or_else(|| Failure::new(format!("unknown type `{type}`", type = r#type)))?;
            let a = admin
                .define_attribute(pb::DefineAttributeRequest {
                    name,
                    r#type: ty as i32,
                    description,
                })
                .await?
                .into_inner()
                .attribute
                .ok_or_else(|| Failure::new("the server returned no attribute"))?;
            println!("defined {} ({})", a.name, type_name(a.r#type));
        }
    }
    Ok(())
}

async fn family(channel: Ch, cmd: FamilyCommand) -> Result<()> {
    let mut client = SegmentsClient::new(channel);
    match cmd {
        FamilyCommand::List { out } if out.output != Format::Table => {
            let families = client
                .list_families(pb::ListFamiliesRequest {})
                .await?
                .into_inner()
                .families;
            let member = |m: &pb::FamilyMember, catch_all: bool| {
                Record::new()
                    .field("segment_id", &m.segment_id)
                    .field("size", m.size)
                    .field("rule", Some(&m.rule_text).filter(|_| !catch_all))
                    .field("catch_all", catch_all)
            };
            if out.output == Format::Json {
                let json: Vec<serde_json::Value> = families
                    .iter()
                    .map(|f| {
                        let mut obj = Record::new()
                            .field("family_id", &f.family_id)
                            .field("name", &f.name)
                            .field("builtin", f.builtin)
                            .field(
                                "reclassified_at",
                                f.reclassified_at.as_ref().map(values::format_timestamp),
                            )
                            .json();
                        obj["members"] = f
                            .members
                            .iter()
                            .map(|m| member(m, false).json())
                            .chain(f.catch_all.iter().map(|m| member(m, true).json()))
                            .collect();
                        obj
                    })
                    .collect();
                crate::output::print_json(&serde_json::Value::Array(json))?;
            } else {
                let mut rows = Rows::new(["family_id", "segment_id", "size", "rule", "catch_all"]);
                for f in &families {
                    let members = f.members.iter().map(|m| (m, false));
                    for (m, catch_all) in members.chain(f.catch_all.iter().map(|m| (m, true))) {
                        rows.push(vec![
                            (&f.family_id).into(),
                            (&m.segment_id).into(),
                            m.size.into(),
                            Some(&m.rule_text).filter(|_| !catch_all).into(),
                            catch_all.into(),
                        ]);
                    }
                }
                rows.print(Format::Csv)?;
            }
        }
        FamilyCommand::List { .. } => {
            let families = client
                .list_families(pb::ListFamiliesRequest {})
                .await?
                .into_inner()
                .families;
            for (i, f) in families.iter().enumerate() {
                let when = f
                    .reclassified_at
                    .as_ref()
                    .map(|t| format!(", reclassified {}", values::format_timestamp(t)))
                    .unwrap_or_default();
                if i > 0 {
                    println!();
                }
                println!(
                    "{}: {}{}{when}",
                    f.family_id,
                    f.name,
                    if f.builtin { " (built in)" } else { "" }
                );
                let mut rows = Rows::new(["segment_id", "size", "rule"]);
                for m in &f.members {
                    rows.push(vec![(&m.segment_id).into(), m.size.into(), (&m.rule_text).into()]);
                }
                if let Some(m) = &f.catch_all {
                    rows.push(vec![(&m.segment_id).into(), m.size.into(), "(catch-all)".into()]);
                }
                rows.print(Format::Table)?;
            }
        }
        FamilyCommand::Create {
            family_id,
            name,
            description,
            members,
            catch_all,
        } => {
            let members = members
                .iter()
                .map(|m| {
                    let (id, rule) = m
                        .split_once('=')
                        .ok_or_else(|| Failure::new(format!("--member `{m}`: expected SEGMENT_ID=RULE")))?;
                    Ok(pb::FamilyMember {
                        segment_id: id.trim().to_string(),
                        name: id.trim().to_string(),
                        rule_text: rule.trim().to_string(),
                        ..Default::default()
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let f = client
                .create_family(pb::CreateFamilyRequest {
                    family: Some(pb::Family {
                        name: name.unwrap_or_else(|| family_id.clone()),
                        family_id,
                        description,
                        members,
                        catch_all: Some(pb::FamilyMember {
                            name: catch_all.clone(),
                            segment_id: catch_all,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            for m in f.members.iter().chain(f.catch_all.iter()) {
                println!("{}\t{}", m.segment_id, m.size);
            }
        }
        FamilyCommand::Delete { family_id } => {
            client
                .delete_family(pb::DeleteFamilyRequest {
                    family_id: family_id.clone(),
                })
                .await?;
            eprintln!("family `{family_id}` deleted");
        }
    }
    Ok(())
}

fn cause_name(cause: i32) -> &'static str {
    use pb::MembershipCause as C;
    match C::try_from(cause).unwrap_or(C::Unspecified) {
        C::Rule => "rule",
        C::Time => "time",
        C::Include => "include",
        C::Exclude => "exclude",
        C::Account => "account",
        C::Activity => "activity",
        C::MemberLoad => "member_load",
        C::Reclassification => "reclassification",
        C::Deletion => "deletion",
        C::Unspecified => "unknown",
    }
}

fn print_event(out: &mut impl Write, e: &pb::MembershipEvent, format: EventFormat) -> Result<()> {
    let time = e.time.as_ref().map(values::format_timestamp).unwrap_or_default();
    let what = if e.entered { "entered" } else { "exited" };
    match format {
        EventFormat::Text => {
            write!(
                out,
                "{}\t{time}\t{}\t{}\t{what}\t{}",
                e.sequence,
                e.segment_id,
                e.customer_id,
                cause_name(e.cause)
            )?;
            if !e.activity_id.is_empty() {
                write!(out, "\t{}", e.activity_id)?;
            }
            if !e.from_segment_id.is_empty() {
                write!(out, "\tfrom {}", e.from_segment_id)?;
            }
            writeln!(out)?;
        }
        EventFormat::Jsonl => {
            let mut obj = serde_json::json!({
                "sequence": e.sequence,
                "time": time,
                "segment_id": e.segment_id,
                "customer_id": e.customer_id,
                "entered": e.entered,
                "cause": cause_name(e.cause),
            });
            if !e.activity_id.is_empty() {
                obj["activity_id"] = e.activity_id.clone().into();
            }
            if !e.from_segment_id.is_empty() {
                obj["from_segment_id"] = e.from_segment_id.clone().into();
            }
            writeln!(out, "{obj}")?;
        }
    }
    Ok(())
}

/// Prints events as they arrive; an interrupted or failed stream says where to resume.
async fn watch(
    channel: Ch,
    from: u64,
    segments: Vec<String>,
    limit: Option<u64>,
    format: EventFormat,
) -> Result<()> {
    let mut stream = SegmentsClient::new(channel)
        .watch_memberships(pb::WatchMembershipsRequest {
            from_sequence: from,
            segment_ids: segments,
            from_latest: false,
        })
        .await?
        .into_inner();
    let mut last = from;
    let mut printed = 0u64;
    let resume = |last: u64| format!("resume with --from {last}");
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted; {}", resume(last));
                return Ok(());
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return fail(format!("the server ended the stream; {}", resume(last))),
            Err(status) => {
                // The server's own hint names the API's field (`from_sequence`): said once, as
                // segctl's flag.
                let why = Failure::from(status).to_string();
                let why = why
                    .split("; resume with from_sequence")
                    .next()
                    .unwrap_or_default();
                return fail(format!("{why}; {}", resume(last)));
            }
        };
        let mut out = std::io::stdout().lock();
        for e in &msg.events {
            print_event(&mut out, e, format)?;
            last = e.sequence;
            printed += 1;
            if limit.is_some_and(|l| printed >= l) {
                out.flush()?;
                return Ok(());
            }
        }
        out.flush()?;
        last = last.max(msg.last_sequence);
    }
}

async fn customer(channel: Ch, cmd: CustomerCommand) -> Result<()> {
    let schema_channel = channel.clone();
    let mut ingest = IngestClient::new(channel);
    match cmd {
        CustomerCommand::Get { key, email, out } => {
            use pb::get_customer_request::Key;
            let key = if email {
                Key::Email(key)
            } else {
                Key::CustomerId(key)
            };
            let c = ingest
                .get_customer(pb::GetCustomerRequest { key: Some(key) })
                .await?
                .into_inner()
                .customer
                .ok_or_else(|| Failure::new("the server returned no customer"))?;
            let types = attribute_types(&schema_channel).await?;
            // Attributes in name order (the map is sorted), money in major units.
            let mut record = Record::new()
                .field("customer_id", c.customer_id)
                .field("email", c.email);
            for (name, value) in &c.attributes {
                record.push(name, values::cell(value, types.get(name).copied()));
            }
            record.print(out.output)?;
        }
        CustomerCommand::Delete { key, email } => {
            use pb::delete_customer_request::Key;
            let key = if email {
                Key::Email(key)
            } else {
                Key::CustomerId(key)
            };
            let r = ingest
                .delete_customer(pb::DeleteCustomerRequest { key: Some(key) })
                .await?
                .into_inner();
            println!("deleted {}", r.customer_id);
        }
    }
    Ok(())
}

async fn activity(channel: Ch, cmd: ActivityCommand) -> Result<()> {
    let mut client = ActivitiesClient::new(channel);
    let (add, args) = match cmd {
        ActivityCommand::Add(a) => (true, a),
        ActivityCommand::Remove(a) => (false, a),
    };
    let ActivityArgs {
        segment,
        activity,
        customers,
        email,
    } = args;
    let (customer_ids, emails) = if email {
        (Vec::new(), customers)
    } else {
        (customers, Vec::new())
    };
    let (changed, unchanged, unknown) = if add {
        let r = client
            .add_to_segment(pb::AddToSegmentRequest {
                segment_id: segment,
                customer_ids,
                emails,
                activity_id: activity,
            })
            .await?
            .into_inner();
        (r.changed, r.unchanged, r.unknown)
    } else {
        let r = client
            .remove_from_segment(pb::RemoveFromSegmentRequest {
                segment_id: segment,
                customer_ids,
                emails,
                activity_id: activity,
            })
            .await?
            .into_inner();
        (r.changed, r.unchanged, r.unknown)
    };
    println!("{changed} changed, {unchanged} unchanged");
    if !unknown.is_empty() {
        return fail(format!("unknown customers: {}", unknown.join(", ")));
    }
    Ok(())
}

fn segment_in(args: SegmentArgs) -> (pb::Segment, Vec<String>) {
    let mut paths = Vec::new();
    let mut s = pb::Segment {
        segment_id: args.segment,
        ..Default::default()
    };
    if let Some(rule) = args.rule {
        s.rule_text = rule;
        paths.push("rule");
    }
    if let Some(name) = args.name {
        s.name = name;
        paths.push("name");
    }
    if let Some(d) = args.description {
        s.description = d;
        paths.push("description");
    }
    if let Some(ids) = args.include {
        s.include_customer_ids = ids;
        paths.push("include_customer_ids");
    }
    if let Some(ids) = args.exclude {
        s.exclude_customer_ids = ids;
        paths.push("exclude_customer_ids");
    }
    if let Some(allow) = args.allow_activities {
        s.allow_activities = allow.unwrap_or(true);
        paths.push("allow_activities");
    }
    (s, paths.into_iter().map(str::to_string).collect())
}

fn segment_record(s: pb::Segment) -> Record {
    Record::new()
        .field("segment_id", s.segment_id)
        .field("name", s.name)
        .field("description", s.description)
        .field("rule", s.rule_text)
        .field("size", s.size)
        .field("allow_activities", s.allow_activities)
        .field("included", s.include_customer_count)
        .field("excluded", s.exclude_customer_count)
}

/// Attribute name → type, from `Admin.GetSchema` (open to every role).
async fn attribute_types(channel: &Ch) -> Result<std::collections::HashMap<String, Ty>> {
    Ok(crate::load::schema(channel)
        .await?
        .into_iter()
        .map(|(name, (ty, _))| (name, ty))
        .collect())
}

/// The demo's segments: id, name, rule (empty for a container filled by activities).
const DEMO_SEGMENTS: [(&str, &str, &str); 6] = [
    ("good", "Good customers", "registered and total_spent > 1000"),
    ("men-over-40", "Men over 40", r#"gender = "M" and age > 40"#),
    (
        "recent-buyers",
        "Bought in the last year",
        "last_order_at within 365d",
    ),
    ("vip", "VIP", "vip"),
    ("opted-in", "E-mail opt-in", "email_opt_in and registered"),
    ("golfers", "Golfers", ""),
];

/// `segctl demo`: `gen`'s files in a temporary directory, loaded; the demo segments; RFM.
async fn demo(channel: Ch, customers: u64, seed: u64) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Failure::new(format!("temporary directory: {e}")))?;
    crate::synth::write(customers, seed, dir.path())?;
    let args = |file: &str| crate::LoadArgs {
        file: dir.path().join(file),
        batch_size: 1000,
        max_errors: 0,
        dry_run: false,
    };
    crate::load::customers(channel.clone(), args("customers.csv")).await?;
    crate::load::orders(channel.clone(), args("orders.csv")).await?;
    let activities_channel = channel.clone();
    let mut segments = SegmentsClient::new(channel);
    for (id, name, rule) in DEMO_SEGMENTS {
        let segment = pb::Segment {
            segment_id: id.into(),
            name: name.into(),
            rule_text: rule.into(),
            allow_activities: rule.is_empty(),
            ..Default::default()
        };
        match segments
            .create_segment(pb::CreateSegmentRequest {
                segment: Some(segment),
            })
            .await
        {
            Ok(s) => println!("created {id} ({} members)", s.into_inner().size),
            Err(e) if e.code() == tonic::Code::AlreadyExists => println!("{id} exists: left as it is"),
            Err(e) => return Err(e.into()),
        }
    }
    // Golfers: a container a marketing activity fills, here with golf-tagged customers.
    let golf = segments
        .preview_segment(pb::PreviewSegmentRequest {
            rule_text: r#"tags has_any ("golf")"#.into(),
            sample_size: 25,
            ..Default::default()
        })
        .await?
        .into_inner()
        .sample_customer_ids;
    let added = ActivitiesClient::new(activities_channel)
        .add_to_segment(pb::AddToSegmentRequest {
            segment_id: "golfers".into(),
            customer_ids: golf,
            activity_id: "demo-golf-week".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("golfers: {} added by activity demo-golf-week", added.changed);
    let r = segments
        .reclassify(pb::ReclassifyRequest { as_of: None })
        .await?
        .into_inner();
    println!("RFM: {} customers scored", r.scored);
    Ok(())
}

async fn segment(channel: Ch, cmd: SegmentCommand) -> Result<()> {
    let schema_channel = channel.clone();
    let mut segments = SegmentsClient::new(channel);
    match cmd {
        SegmentCommand::Create(args) => {
            let (mut segment, _) = segment_in(args);
            if segment.name.is_empty() {
                segment.name = segment.segment_id.clone();
            }
            let s = segments
                .create_segment(pb::CreateSegmentRequest {
                    segment: Some(segment),
                })
                .await?
                .into_inner();
            println!("created {} ({} members)", s.segment_id, s.size);
        }
        SegmentCommand::Update(args) => {
            let (segment, paths) = segment_in(args);
            if paths.is_empty() {
                return fail(
                    "nothing to update: give --rule, --name, --description, --include, --exclude or --allow-activities",
                );
            }
            let s = segments
                .update_segment(pb::UpdateSegmentRequest {
                    segment: Some(segment),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })
                .await?
                .into_inner();
            println!("updated {} ({} members)", s.segment_id, s.size);
        }
        SegmentCommand::Get { segment, out } => {
            let s = segments
                .get_segment(pb::GetSegmentRequest { segment_id: segment })
                .await?
                .into_inner();
            segment_record(s).print(out.output)?;
        }
        SegmentCommand::List { out } => {
            let r = segments
                .list_segments(pb::ListSegmentsRequest {})
                .await?
                .into_inner();
            let mut rows = Rows::new(["segment_id", "size", "name", "rule"]);
            for s in r.segments {
                rows.push(vec![
                    s.segment_id.into(),
                    s.size.into(),
                    s.name.into(),
                    s.rule_text.into(),
                ]);
            }
            rows.print(out.output)?;
        }
        SegmentCommand::Delete { segment } => {
            segments
                .delete_segment(pb::DeleteSegmentRequest {
                    segment_id: segment.clone(),
                })
                .await?;
            println!("deleted {segment}");
        }
        SegmentCommand::Preview {
            rule,
            sample,
            as_of,
            out,
        } => {
            let as_of = as_of
                .map(|t| values::parse_timestamp(&t).map_err(|e| Failure::new(format!("--as-of: {e}"))))
                .transpose()?;
            let r = segments
                .preview_segment(pb::PreviewSegmentRequest {
                    rule: None,
                    rule_text: rule,
                    as_of,
                    sample_size: sample,
                })
                .await?
                .into_inner();
            match out.output {
                Format::Table => {
                    println!("{} customers", r.count);
                    for id in r.sample_customer_ids {
                        println!("{id}");
                    }
                }
                format => Record::new()
                    .field("count", r.count)
                    .field("sample", Cell::List(r.sample_customer_ids))
                    .print(format)?,
            }
        }
        SegmentCommand::Explain {
            customer_id,
            segment,
            out,
        } => {
            let r = segments
                .explain_membership(pb::ExplainMembershipRequest {
                    customer_id,
                    segment_id: segment,
                })
                .await?
                .into_inner();
            let decided = pb::Decision::try_from(r.decided_by)
                .map(|d| {
                    d.as_str_name()
                        .trim_start_matches("DECISION_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            let head = Record::new()
                .field("member", r.member)
                .field("decided_by", decided.as_str())
                .field("rule_matched", r.rule_matched);
            let value =
                |p: &pb::PredicateExplanation| Cell::from(Some(p.value.clone()).filter(|_| p.value_set));
            match out.output {
                Format::Table => {
                    head.print(Format::Table)?;
                    if !r.predicates.is_empty() {
                        println!();
                        let mut rows = Rows::new(["result", "predicate", "value"]);
                        for p in &r.predicates {
                            let v = if p.value_set {
                                p.value.clone()
                            } else {
                                "(not set)".into()
                            };
                            rows.push(vec![
                                (if p.held { "held" } else { "failed" }).into(),
                                (&p.predicate).into(),
                                v.into(),
                            ]);
                        }
                        rows.print(Format::Table)?;
                    }
                }
                Format::Json => {
                    let mut json = head.json();
                    json["predicates"] = r
                        .predicates
                        .iter()
                        .map(|p| serde_json::json!({"predicate": p.predicate, "held": p.held, "value": value(p).json()}))
                        .collect();
                    crate::output::print_json(&json)?;
                }
                // One row per predicate, the decision repeated on each.
                Format::Csv => {
                    let mut rows = Rows::new([
                        "member",
                        "decided_by",
                        "rule_matched",
                        "predicate",
                        "held",
                        "value",
                    ]);
                    let decision = || -> Vec<Cell> {
                        vec![r.member.into(), decided.as_str().into(), r.rule_matched.into()]
                    };
                    for p in &r.predicates {
                        let mut row = decision();
                        row.extend([(&p.predicate).into(), p.held.into(), value(p)]);
                        rows.push(row);
                    }
                    if r.predicates.is_empty() {
                        let mut row = decision();
                        row.extend([Cell::Null, Cell::Null, Cell::Null]);
                        rows.push(row);
                    }
                    rows.print(Format::Csv)?;
                }
            }
        }
        SegmentCommand::Overlap { segments: ids, out } => {
            let r = segments
                .segment_overlap(pb::SegmentOverlapRequest { segment_ids: ids })
                .await?
                .into_inner();
            let mut rows = Rows::new(["segment_a", "segment_b", "count"]);
            for o in r.overlaps {
                rows.push(vec![o.segment_a.into(), o.segment_b.into(), o.count.into()]);
            }
            rows.print(out.output)?;
        }
        SegmentCommand::Export {
            segment,
            format,
            fields,
            out,
        } => {
            // Money in major units, as load files and rules write it (a file exported is a file
            // that loads back).
            let types = attribute_types(&schema_channel).await?;
            let ty = |f: &str| types.get(f).copied();
            let mut stream = segments
                .export_segment(pb::ExportSegmentRequest {
                    segment_id: segment,
                    fields: fields.clone(),
                    batch_size: 5000,
                })
                .await?
                .into_inner();
            let sink: Box<dyn Write> = match &out {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .map_err(|e| Failure::new(format!("cannot create {}: {e}", path.display())))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let sink = std::io::BufWriter::new(sink);
            enum Out {
                Csv(Box<csv::Writer<std::io::BufWriter<Box<dyn Write>>>>),
                Jsonl(std::io::BufWriter<Box<dyn Write>>),
            }
            let mut sink = match format {
                ExportFormat::Csv => {
                    let mut w = csv::Writer::from_writer(sink);
                    let mut header = vec!["customer_id".to_string(), "email".to_string()];
                    header.extend(fields.iter().cloned());
                    w.write_record(&header)?;
                    Out::Csv(Box::new(w))
                }
                ExportFormat::Jsonl => Out::Jsonl(sink),
            };
            let mut count = 0u64;
            while let Some(msg) = stream.message().await? {
                for c in msg.customers {
                    count += 1;
                    match &mut sink {
                        Out::Csv(w) => {
                            w.write_field(&c.customer_id)?;
                            w.write_field(c.email.as_deref().unwrap_or_default())?;
                            for f in &fields {
                                let cell = c.attributes.get(f).map_or(Cell::Null, |v| values::cell(v, ty(f)));
                                w.write_field(cell.csv())?;
                            }
                            w.write_record(None::<&[u8]>)?;
                        }
                        Out::Jsonl(w) => {
                            let mut obj = serde_json::Map::new();
                            obj.insert("customer_id".into(), c.customer_id.into());
                            obj.insert(
                                "email".into(),
                                c.email.map_or(serde_json::Value::Null, Into::into),
                            );
                            for f in &fields {
                                let v = c
                                    .attributes
                                    .get(f)
                                    .map_or(serde_json::Value::Null, |v| values::cell(v, ty(f)).json());
                                obj.insert(f.clone(), v);
                            }
                            writeln!(w, "{}", serde_json::Value::Object(obj))?;
                        }
                    }
                }
            }
            match sink {
                Out::Csv(mut w) => w.flush()?,
                Out::Jsonl(mut w) => w.flush()?,
            }
            if out.is_some() {
                eprintln!("exported {count} customers");
            }
        }
    }
    Ok(())
}

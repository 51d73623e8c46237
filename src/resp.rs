//! The Redis protocol for request-time checks (`--resp-addr`, off by default).
//!
//! A segment reads as a Redis set of customer ids, so any Redis client can ask what a promotion
//! or search-rule service asks over gRPC's `Membership`, answered from the same bitmaps:
//!
//! | command | answer |
//! |---|---|
//! | `SISMEMBER <segment> <customer>` | `1` or `0` (an unknown customer is in no segment) |
//! | `SMISMEMBER <segment> <customer> ...` | one `1` or `0` per customer, in order |
//! | `SCARD <segment>` | the segment's size |
//! | `AUTH [<user>] <token>` | a `reader` or `admin` token (the user name is ignored) |
//! | `HELLO [2\|3 [AUTH <user> <token>] [SETNAME <name>]]` | the connection's protocol (RESP2 or RESP3) |
//! | `PING`, `ECHO`, `CLIENT SETNAME\|GETNAME\|SETINFO\|ID`, `SELECT 0`, `QUIT` | as Redis |
//!
//! Unlike a Redis key that does not exist, a segment that does not exist is an error
//! (`-ERR no such segment`): a mistyped id must not read as "nobody is in it". Every other
//! command is refused with an error naming the supported ones. Before a token is accepted
//! (when tokens are configured) only `AUTH`, `HELLO` and `QUIT` are, as in Redis (`-NOAUTH`);
//! a connection's token is checked again after each reload of the tokens, so a withdrawn token
//! stops working at its next command. TLS is served when the gRPC port's `--tls-*` are set,
//! with the same certificate (and client CA).
//!
//! Frames are parsed by the `redis-protocol` crate over a connection's read buffer, without
//! copying; every command complete in the buffer is answered before the answers are written
//! in one go, so pipelined commands cost one write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use prometheus::{IntCounterVec, IntGauge, Opts};
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame as Frame, RangeFrame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{Auth, Role, Tokens};
use crate::engine::Engine;

/// Most bytes of one command (the largest bulk string Redis takes by default is 512 MiB; a
/// check never needs more than a few megabytes). A longer one closes the connection.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024 * 1024;

/// Connections served at once; more are closed as they arrive, with an error reply.
pub const MAX_CONNECTIONS: usize = 10_000;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The commands answered, as the refusal of any other names them.
const SUPPORTED: &str = "SISMEMBER, SMISMEMBER, SCARD, AUTH, HELLO, PING, ECHO, CLIENT SETNAME|GETNAME|SETINFO|ID, SELECT 0, QUIT";

/// Counters of the Redis port, registered with the other metrics.
#[derive(Clone)]
pub struct RespMetrics {
    /// `segmentd_resp_commands_total{command}`: commands answered, by name (the supported
    /// names, and `other` for the rest: the label set stays bounded).
    commands: IntCounterVec,
    /// `segmentd_resp_connections`: connections open now.
    connections: IntGauge,
}

impl RespMetrics {
    pub fn new() -> prometheus::Result<RespMetrics> {
        Ok(RespMetrics {
            commands: IntCounterVec::new(
                Opts::new(
                    "segmentd_resp_commands_total",
                    "Commands received on the Redis protocol port, by command (`other` for unsupported ones).",
                ),
                &["command"],
            )?,
            connections: IntGauge::new(
                "segmentd_resp_connections",
                "Connections open on the Redis protocol port.",
            )?,
        })
    }

    /// The collectors, for the metrics registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.commands.clone()),
            Box::new(self.connections.clone()),
        ]
    }
}

/// Serves the Redis protocol on `listener` until the engine begins to close; each connection
/// ends at its next read once it does.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    auth: Arc<Auth>,
    tls: Option<TlsAcceptor>,
    metrics: RespMetrics,
) {
    let ids = Arc::new(AtomicU64::new(1));
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = engine.closing() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "redis protocol: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, "-ERR max number of clients reached\r\n"));
            continue;
        };
        let session = Session {
            engine: engine.clone(),
            auth: auth.clone(),
            metrics: metrics.clone(),
            id: ids.fetch_add(1, Ordering::Relaxed),
            peer,
            authed: None,
            name: None,
            resp3: false,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            session.metrics.connections.inc();
            let result = match tls {
                None => session.run(stream).await,
                Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => session.run(stream).await,
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    )),
                },
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "redis protocol connection ended");
            }
        });
    }
}

/// Writes `reply` to a connection that will not be served, then closes it.
async fn refuse(mut stream: tokio::net::TcpStream, reply: &'static str) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
}

/// A connection's state.
struct Session {
    engine: Engine,
    auth: Arc<Auth>,
    metrics: RespMetrics,
    /// `CLIENT ID`.
    id: u64,
    peer: SocketAddr,
    /// The token this connection authenticated with, by digest, and the token set that
    /// accepted it.
    authed: Option<Authed>,
    /// `CLIENT SETNAME`.
    name: Option<Vec<u8>>,
    /// Whether `HELLO 3` switched the connection to RESP3 (only `HELLO`'s own answer differs:
    /// the others are encoded alike in both).
    resp3: bool,
}

struct Authed {
    digest: [u8; 32],
    tokens: Arc<Tokens>,
}

/// What to do after a command.
#[derive(PartialEq)]
enum Next {
    Continue,
    Close,
}

/// A command's answer before it is encoded.
enum Reply<'a> {
    Ok,
    Int(i64),
    Ints(Vec<i64>),
    Bulk(&'a [u8]),
    Simple(&'static str),
    Null,
    Err(String),
    /// The connection's name (`CLIENT GETNAME`).
    Name,
    Hello,
}

impl Session {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self, mut stream: S) -> std::io::Result<()> {
        let mut input = BytesMut::with_capacity(16 * 1024);
        let mut output = BytesMut::with_capacity(16 * 1024);
        let engine = self.engine.clone();
        let closing = std::pin::pin!(engine.closing());
        let result = self.exchange(&mut stream, &mut input, &mut output, closing).await;
        self.metrics.connections.dec();
        result
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        input: &mut BytesMut,
        output: &mut BytesMut,
        mut closing: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> std::io::Result<()> {
        loop {
            // Every complete command in the buffer, answered in order.
            loop {
                match decode_range(input) {
                    Ok(Some((frame, used))) => {
                        let next = self.command(&input[..used], &frame, output);
                        input.advance(used);
                        if next == Next::Close {
                            return stream.write_all(output).await;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let reply = format!("Protocol error: {}", e.details());
                        encode(output, &Frame::Error(&reply));
                        return stream.write_all(output).await;
                    }
                }
            }
            if !output.is_empty() {
                stream.write_all(output).await?;
                output.clear();
            }
            if input.len() > MAX_COMMAND_BYTES {
                encode(
                    output,
                    &Frame::Error(&format!(
                        "Protocol error: a command longer than {MAX_COMMAND_BYTES} bytes"
                    )),
                );
                return stream.write_all(output).await;
            }
            let read = tokio::select! {
                r = stream.read_buf(input) => r?,
                () = &mut closing => return Ok(()),
            };
            if read == 0 {
                return Ok(());
            }
        }
    }

    /// Answers one command (`frame`, ranges into `buf`) into `out`.
    fn command(&mut self, buf: &[u8], frame: &RangeFrame, out: &mut BytesMut) -> Next {
        let mut args: Vec<&[u8]> = Vec::new();
        let well_formed = match frame {
            RangeFrame::Array(items) if !items.is_empty() => items.iter().all(|item| match item {
                RangeFrame::BulkString((start, end)) => {
                    args.push(&buf[*start..*end]);
                    true
                }
                _ => false,
            }),
            _ => false,
        };
        if !well_formed {
            encode(
                out,
                &Frame::Error("Protocol error: a command is an array of bulk strings"),
            );
            return Next::Close;
        }
        let name = args[0].to_ascii_uppercase();
        let label = match name.as_slice() {
            b"SISMEMBER" | b"SMISMEMBER" | b"SCARD" | b"AUTH" | b"HELLO" | b"PING" | b"ECHO" | b"CLIENT"
            | b"SELECT" | b"QUIT" => std::str::from_utf8(&name).unwrap_or("other"),
            _ => "other",
        };
        self.metrics.commands.with_label_values(&[label]).inc();
        let (reply, next) = self.answer(&name, &args);
        self.write(out, reply);
        next
    }

    fn answer<'a>(&mut self, name: &[u8], args: &[&'a [u8]]) -> (Reply<'a>, Next) {
        let go = |r| (r, Next::Continue);
        match name {
            b"QUIT" => return (Reply::Ok, Next::Close),
            b"AUTH" => return go(self.auth_command(args)),
            b"HELLO" => return go(self.hello(args)),
            _ => {}
        }
        if let Err(e) = self.authorized() {
            return go(Reply::Err(e));
        }
        let wrong = || {
            Reply::Err(format!(
                "ERR wrong number of arguments for '{}' command",
                String::from_utf8_lossy(args[0]).to_lowercase()
            ))
        };
        let reply = match (name, args.len()) {
            (b"PING", 1) => Reply::Simple("PONG"),
            (b"PING", 2) | (b"ECHO", 2) => Reply::Bulk(args[1]),
            (b"SELECT", 2) if args[1] == b"0" => Reply::Ok,
            (b"SELECT", 2) => Reply::Err("ERR segmentd has one database, 0".into()),
            (b"SISMEMBER", 3) | (b"SCARD", 2) => self.check(name, args).unwrap_or_else(|e| e),
            (b"SMISMEMBER", n) if n >= 3 => self.check(name, args).unwrap_or_else(|e| e),
            (b"PING" | b"ECHO" | b"SELECT" | b"SISMEMBER" | b"SMISMEMBER" | b"SCARD", _) => wrong(),
            (b"CLIENT", _) => self.client(args),
            _ => Reply::Err(format!(
                "ERR unknown command '{}': segmentd answers {SUPPORTED}",
                String::from_utf8_lossy(args[0])
            )),
        };
        go(reply)
    }

    /// `SISMEMBER`, `SMISMEMBER`, `SCARD` (arity checked).
    fn check<'a>(&self, name: &[u8], args: &[&'a [u8]]) -> Result<Reply<'a>, Reply<'a>> {
        if !self.engine.is_ready() {
            return Err(Reply::Err(
                "LOADING segmentd is recovering its data; retry shortly".into(),
            ));
        }
        let segment = text(args[1], "segment id")?;
        let fail = |e: crate::error::Error| match e {
            crate::error::Error::NotFound(_) => Reply::Err(format!("ERR no such segment '{segment}'")),
            e => Reply::Err(format!("ERR {e}")),
        };
        let member = |customer: &[u8]| -> Result<i64, Reply<'a>> {
            let customer = text(customer, "customer id")?;
            crate::store::input::check_customer_id(customer).map_err(|e| Reply::Err(format!("ERR {e}")))?;
            let member = self.engine.is_member(customer, segment).map_err(fail)?;
            Ok(i64::from(member == Some(true)))
        };
        Ok(match name {
            b"SISMEMBER" => Reply::Int(member(args[2])?),
            b"SMISMEMBER" => Reply::Ints(args[2..].iter().map(|c| member(c)).collect::<Result<_, _>>()?),
            _ => Reply::Int(self.engine.segment_size(segment).map_err(fail)? as i64),
        })
    }

    /// Whether the connection may run data commands: always on a server without tokens;
    /// otherwise with a `reader` or `admin` token still in force.
    fn authorized(&mut self) -> Result<(), String> {
        let tokens = self.auth.in_force();
        if tokens.is_empty() {
            return Ok(());
        }
        let Some(authed) = &mut self.authed else {
            return Err("NOAUTH Authentication required.".into());
        };
        if Arc::ptr_eq(&authed.tokens, &tokens) {
            return Ok(());
        }
        // The tokens were reloaded: the connection's token must still be there, with a role
        // that may check.
        match tokens.role_of_digest(&authed.digest) {
            Some(Role::Reader | Role::Admin) => {
                authed.tokens = Arc::clone(&tokens);
                Ok(())
            }
            _ => {
                self.authed = None;
                Err("NOAUTH Authentication required: this connection's token is no longer accepted.".into())
            }
        }
    }

    /// `AUTH [user] token`.
    fn auth_command<'a>(&mut self, args: &[&'a [u8]]) -> Reply<'a> {
        let token = match args.len() {
            2 => args[1],
            3 => args[2],
            _ => return Reply::Err("ERR wrong number of arguments for 'auth' command".into()),
        };
        match self.authenticate(token) {
            Ok(()) => Reply::Ok,
            Err(e) => Reply::Err(e),
        }
    }

    fn authenticate(&mut self, token: &[u8]) -> Result<(), String> {
        let tokens = self.auth.in_force();
        if tokens.is_empty() {
            return Err(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
                    .into(),
            );
        }
        let digest = crate::auth::digest(token);
        match tokens.role_of_digest(&digest) {
            Some(Role::Reader | Role::Admin) => {
                self.authed = Some(Authed {
                    digest,
                    tokens: Arc::clone(&tokens),
                });
                Ok(())
            }
            Some(role) => Err(format!(
                "NOPERM the `{}` role may not check memberships (a `reader` or `admin` token may)",
                role.name()
            )),
            None => {
                tracing::debug!(peer = %self.peer, "redis protocol: a token was refused");
                Err("WRONGPASS invalid username-password pair or user is disabled.".into())
            }
        }
    }

    /// `HELLO [protover [AUTH user token] [SETNAME name]]`.
    fn hello<'a>(&mut self, args: &[&'a [u8]]) -> Reply<'a> {
        let mut resp3 = self.resp3;
        if let Some(version) = args.get(1) {
            resp3 = match *version {
                b"2" => false,
                b"3" => true,
                _ => return Reply::Err("NOPROTO unsupported protocol version".into()),
            };
        }
        let mut i = 2;
        let mut name = None;
        while i < args.len() {
            let option = args[i].to_ascii_uppercase();
            match option.as_slice() {
                b"AUTH" if i + 2 < args.len() => {
                    if let Err(e) = self.authenticate(args[i + 2]) {
                        return Reply::Err(e);
                    }
                    i += 3;
                }
                b"SETNAME" if i + 1 < args.len() => {
                    name = Some(args[i + 1].to_vec());
                    i += 2;
                }
                _ => {
                    return Reply::Err(format!(
                        "ERR syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(args[i])
                    ));
                }
            }
        }
        if let Err(e) = self.authorized() {
            return Reply::Err(e);
        }
        if name.is_some() {
            self.name = name;
        }
        self.resp3 = resp3;
        Reply::Hello
    }

    /// `CLIENT SETNAME|GETNAME|SETINFO|ID`.
    fn client<'a>(&mut self, args: &[&'a [u8]]) -> Reply<'a> {
        let sub = args.get(1).map(|s| s.to_ascii_uppercase()).unwrap_or_default();
        match (sub.as_slice(), args.len()) {
            (b"SETNAME", 3) => {
                if args[2].iter().any(|&b| b <= b' ' || b > b'~') {
                    return Reply::Err("ERR Client names cannot contain spaces, newlines or special characters.".into());
                }
                self.name = (!args[2].is_empty()).then(|| args[2].to_vec());
                Reply::Ok
            }
            (b"GETNAME", 2) if self.name.is_some() => Reply::Name,
            (b"GETNAME", 2) => Reply::Null,
            // Library name and version (sent by client libraries on connecting): accepted.
            (b"SETINFO", 4) => Reply::Ok,
            (b"ID", 2) => Reply::Int(self.id as i64),
            _ => Reply::Err(
                "ERR unknown CLIENT subcommand or wrong number of arguments: segmentd answers CLIENT SETNAME, GETNAME, SETINFO, ID".into(),
            ),
        }
    }

    fn write(&self, out: &mut BytesMut, reply: Reply) {
        match reply {
            Reply::Ok => encode(out, &Frame::SimpleString(b"OK")),
            Reply::Int(n) => encode(out, &Frame::Integer(n)),
            Reply::Ints(ns) => {
                let frames: Vec<Frame> = ns.into_iter().map(Frame::Integer).collect();
                encode(out, &Frame::Array(&frames));
            }
            Reply::Bulk(b) => encode(out, &Frame::BulkString(b)),
            Reply::Name => encode(out, &Frame::BulkString(self.name.as_deref().unwrap_or_default())),
            Reply::Simple(s) => encode(out, &Frame::SimpleString(s.as_bytes())),
            Reply::Null if self.resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => encode(out, &Frame::Null),
            Reply::Err(e) => encode(out, &Frame::Error(&e)),
            Reply::Hello => self.write_hello(out),
        }
    }

    /// The server's description, as `HELLO` answers it: a map in RESP3, a flat array of
    /// names and values in RESP2.
    fn write_hello(&self, out: &mut BytesMut) {
        let id = self.id as i64;
        let proto = if self.resp3 { 3 } else { 2 };
        let modules: [Frame; 0] = [];
        let fields: [(&str, Frame); 7] = [
            ("server", Frame::BulkString(b"segmentd")),
            ("version", Frame::BulkString(env!("CARGO_PKG_VERSION").as_bytes())),
            ("proto", Frame::Integer(proto)),
            ("id", Frame::Integer(id)),
            ("mode", Frame::BulkString(b"standalone")),
            ("role", Frame::BulkString(b"master")),
            ("modules", Frame::Array(&modules)),
        ];
        if self.resp3 {
            // A RESP3 map: `%<pairs>` then each name and value; the values are encoded
            // alike in both versions.
            out.extend_from_slice(format!("%{}\r\n", fields.len()).as_bytes());
            for (name, value) in &fields {
                encode(out, &Frame::BulkString(name.as_bytes()));
                encode(out, value);
            }
        } else {
            let flat: Vec<Frame> = fields
                .iter()
                .flat_map(|(name, value)| [Frame::BulkString(name.as_bytes()), value.clone()])
                .collect();
            encode(out, &Frame::Array(&flat));
        }
    }
}

/// `bytes` as UTF-8 text, or an error naming `what`.
fn text<'a, 'b>(bytes: &'a [u8], what: &str) -> Result<&'a str, Reply<'b>> {
    std::str::from_utf8(bytes).map_err(|_| Reply::Err(format!("ERR {what}: not valid UTF-8")))
}

fn encode(out: &mut BytesMut, frame: &Frame) {
    // Encoding into a growing buffer fails only on a frame that cannot be written, which
    // these never are.
    if let Err(e) = extend_encode_borrowed(out, frame, false) {
        tracing::error!(error = %e, "redis protocol: a reply could not be encoded");
    }
}

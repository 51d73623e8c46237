//! The web console (`--console-addr`): its page and assets, built from `clients/console` and
//! embedded in the binary, served over HTTP; and the gRPC-Web translation and CORS policy the gRPC
//! port takes on while the console is on, so that the page calls the same RPCs with the same
//! tokens as every other client.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The page: `{{GRPC}}` is replaced by the gRPC endpoint's URL at each request.
const INDEX: &str = include_str!("../clients/console/dist/index.html");
const SCRIPT: &[u8] = include_bytes!("../clients/console/dist/console.js");
const STYLE: &[u8] = include_bytes!("../clients/console/dist/console.css");

/// Where the page finds the gRPC port.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The gRPC listener's address as bound.
    pub grpc: SocketAddr,
    /// Whether the gRPC port speaks TLS.
    pub tls: bool,
}

impl Endpoint {
    /// The gRPC port's URL as the page should call it: the bound address, or for an unspecified
    /// one (`0.0.0.0`) the host the browser reached the console by, on the gRPC port.
    fn url(&self, host: Option<&str>) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let port = self.grpc.port();
        match self.grpc.ip() {
            ip if ip.is_unspecified() => {
                let host = host.map(strip_port).unwrap_or("localhost");
                format!("{scheme}://{host}:{port}")
            }
            IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{port}"),
            IpAddr::V4(ip) => format!("{scheme}://{ip}:{port}"),
        }
    }
}

/// `host` of a Host header's `host[:port]` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

/// The console's routes: the page at `/`, its script and style sheet.
pub fn router(endpoint: Endpoint) -> axum::Router {
    axum::Router::new()
        .route("/", get(index))
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: the console is at /\n") })
        .with_state(endpoint)
}

async fn index(State(endpoint): State<Endpoint>, headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let grpc = endpoint.url(host);
    // The page talks to nothing but itself and the gRPC port.
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {grpc}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    let body = INDEX.replace("{{GRPC}}", &html_attribute(&grpc));
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&policy) {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `s` safe inside a double-quoted HTML attribute.
fn html_attribute(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The origins whose pages may call the gRPC port: `--console-origin` when given, else the
/// console's own address (with `localhost` for a loopback one; any host on the console's port
/// for an unspecified one).
pub fn allowed_origins(console: SocketAddr, configured: &[String]) -> AllowOrigin {
    if !configured.is_empty() {
        let list: Vec<HeaderValue> = configured
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
            .collect();
        return AllowOrigin::list(list);
    }
    let port = console.port();
    match console.ip() {
        ip if ip.is_unspecified() => AllowOrigin::predicate(move |origin, _| {
            origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://"))
                .is_some_and(|hp| hp.rsplit_once(':').is_some_and(|(_, p)| p == port.to_string()))
        }),
        ip => {
            let host = match ip {
                IpAddr::V6(ip) => format!("[{ip}]"),
                IpAddr::V4(ip) => ip.to_string(),
            };
            let mut list = vec![format!("http://{host}:{port}")];
            if ip.is_loopback() {
                list.push(format!("http://localhost:{port}"));
            }
            AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        }
    }
}

/// The CORS policy of the gRPC port: gRPC-Web calls (POST) from `origins`, with the headers
/// the browser client sends and the gRPC status headers readable by the page.
pub fn cors(origins: AllowOrigin) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_calls_the_bound_address_or_the_host_it_was_reached_by() {
        let e = |a: &str, tls| Endpoint {
            grpc: a.parse().unwrap(),
            tls,
        };
        assert_eq!(
            e("127.0.0.1:50051", false).url(Some("x:8080")),
            "http://127.0.0.1:50051"
        );
        assert_eq!(e("[::1]:50051", true).url(None), "https://[::1]:50051");
        assert_eq!(
            e("0.0.0.0:50051", false).url(Some("shop.example:8080")),
            "http://shop.example:50051"
        );
        assert_eq!(
            e("0.0.0.0:50051", false).url(Some("[::1]:8080")),
            "http://[::1]:50051"
        );
        assert_eq!(e("0.0.0.0:50051", false).url(None), "http://localhost:50051");
        assert_eq!(html_attribute("a\"<b>&"), "a&quot;&lt;b&gt;&amp;");
    }
}

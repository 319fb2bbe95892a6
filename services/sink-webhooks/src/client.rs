//! The HTTP client of the deliveries: hyper's pooled HTTP/1.1 client over a connector that
//! connects only to the addresses the guard allows.
//!
//! The connector is hyper_util's TCP connector with [`GuardedResolver`] as its resolver: it
//! connects to exactly the addresses the guard let through (happy eyeballs between IPv6 and
//! IPv4, as reqwest did), with no second lookup, so no DNS rebinding between the check and
//! the connection. An IP-literal host skips resolvers: the sender refuses it before any
//! connection ([`Target`] keeps the verdict). TCP_NODELAY is set (a request is one write;
//! Nagle would hold its tail). `https://` goes through rustls with the Web PKI roots (ring;
//! HTTP/1.1 by ALPN). No proxy from the environment is used.
//!
//! Sending through hyper directly, not through a general client, keeps a delivery's cost
//! close to a bare POST's: each endpoint's request target and constant headers are built
//! once ([`Target`]), and nothing follows redirects, retries or rewrites the request.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::Uri;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use http_body_util::Full;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::address::{AddressPolicy, GuardedResolver};
use crate::endpoint::Endpoint;

/// The `User-Agent` of every delivery.
pub const USER_AGENT_VALUE: &str = concat!("terra-ingest/", env!("CARGO_PKG_VERSION"));

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pooled client.
pub(crate) type Client = hyper_util::client::legacy::Client<GuardedConnector, Full<Bytes>>;

/// A client whose connections go only where `policy` allows; idle connections are kept
/// 60 s, per host.
pub(crate) fn client(policy: Arc<AddressPolicy>) -> Result<Client, String> {
    let mut http = HttpConnector::new_with_resolver(GuardedDns(GuardedResolver::new(policy)));
    // https:// too: TLS is layered on by the connector
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = GuardedConnector {
        http,
        tls: tokio_rustls::TlsConnector::from(tls_config()?),
    };
    Ok(
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(connector),
    )
}

/// rustls with ring and the Web PKI roots, TLS 1.2 and 1.3, offering HTTP/1.1.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static ROOTS: LazyLock<Arc<rustls::RootCertStore>> = LazyLock::new(|| {
        Arc::new(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
    });
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| format!("the webhook TLS settings could not be built: {err}"))?
    .with_root_certificates(Arc::clone(&ROOTS))
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The connector's resolver: [`GuardedResolver`] (only allowed addresses, or an error with
/// every reason).
#[derive(Clone)]
pub(crate) struct GuardedDns(GuardedResolver);

impl tower_service::Service<Name> for GuardedDns {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.0.clone();
        Box::pin(async move { Ok(resolver.lookup(name.as_str()).await?.into_iter()) })
    }
}

/// Connects to a URI's host through the address guard (see the module's documentation):
/// hyper_util's TCP connector over [`GuardedDns`] (happy eyeballs between address families,
/// TCP_NODELAY), then TLS for `https://`.
#[derive(Clone)]
pub(crate) struct GuardedConnector {
    http: HttpConnector<GuardedDns>,
    tls: tokio_rustls::TlsConnector,
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (mut http, tls) = (self.http.clone(), self.tls.clone());
        Box::pin(async move {
            let https = match uri.scheme_str() {
                Some("https") => true,
                Some("http") => false,
                _ => return Err("only http:// and https:// URLs can be delivered to".into()),
            };
            let host = unbracketed(uri.host().ok_or("the URL has no host")?).to_owned();
            let tcp = http.call(uri).await?.into_inner();
            if !https {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            }
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|_| "the URL's host is not a name TLS can verify")?;
            // a handshake failure is an io::Error carrying the rustls::Error (its class: TLS)
            let tls = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(Stream::Tls(Box::new(tls))))
        })
    }
}

/// A connection, plain or TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What every request to one endpoint shares, built once: the request target (the URL
/// without its user info) and the constant headers (the endpoint's extra headers, then
/// `Content-Type`, `User-Agent` and, for a URL with user info, `Authorization: Basic` unless
/// an extra header sets `Authorization`), and why the guard refuses the host when it is an
/// IP literal.
pub(crate) struct Target {
    url: url::Url,
    headers_of: Vec<(http::HeaderName, HeaderValue)>,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) refused: Option<String>,
}

impl Target {
    fn of(endpoint: &Endpoint, policy: &AddressPolicy) -> Result<Self, String> {
        let refused = literal_host(&endpoint.url).and_then(|ip| policy.refusal(ip));
        let mut url = endpoint.url.clone();
        let user = percent_decoded(url.username());
        let password = url.password().map(percent_decoded);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        // the fragment is never sent
        url.set_fragment(None);
        let uri: Uri = url
            .as_str()
            .parse()
            .map_err(|_| "the endpoint's URL is not a valid request target".to_owned())?;
        let mut headers = HeaderMap::with_capacity(endpoint.headers.len() + 12);
        for (name, value) in &endpoint.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        if (!user.is_empty() || password.is_some()) && !headers.contains_key(AUTHORIZATION) {
            let credentials = format!("{user}:{}", password.unwrap_or_default());
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
                .map_err(|_| "the URL's user info is not a valid header".to_owned())?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        Ok(Self {
            url: endpoint.url.clone(),
            headers_of: endpoint.headers.clone(),
            uri,
            headers,
            refused,
        })
    }

    fn is_for(&self, endpoint: &Endpoint) -> bool {
        self.url == endpoint.url && self.headers_of == endpoint.headers
    }
}

/// A URL's host without the brackets of an IPv6 address.
fn unbracketed(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The URL's host when it is an IP address (`[…]` for IPv6).
fn literal_host(url: &url::Url) -> Option<IpAddr> {
    unbracketed(url.host_str()?).parse().ok()
}

fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Each endpoint's [`Target`], by name, rebuilt when the endpoint's URL or headers change.
#[derive(Default, Clone)]
pub(crate) struct Targets {
    by_name: Arc<RwLock<HashMap<String, Arc<Target>>>>,
}

impl Targets {
    /// The target of `endpoint` (a sender's `policy` never changes).
    pub(crate) fn of(
        &self,
        endpoint: &Endpoint,
        policy: &AddressPolicy,
    ) -> Result<Arc<Target>, String> {
        {
            let read = self.by_name.read().unwrap_or_else(|e| e.into_inner());
            if let Some(target) = read.get(&endpoint.name)
                && target.is_for(endpoint)
            {
                return Ok(Arc::clone(target));
            }
        }
        let target = Arc::new(Target::of(endpoint, policy)?);
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(endpoint.name.clone(), Arc::clone(&target));
        Ok(target)
    }
}

impl fmt::Debug for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Targets")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literal_hosts_are_found_in_both_forms() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(
            literal_host(&url("http://127.0.0.1:9/x")),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            literal_host(&url("http://[::ffff:127.0.0.1]/")),
            Some("::ffff:7f00:1".parse().unwrap())
        );
        assert_eq!(literal_host(&url("https://example.com/")), None);
    }
}

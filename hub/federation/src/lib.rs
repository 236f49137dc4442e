//! Hub-to-hub federation: this hub mirrors, live, the providers partner hubs let it read.
//!
//! Each `[[federation.peers]]` entry is a [`link`]: a task that authenticates at the peer (client credentials at
//! an issuer the peer trusts, or a fixed token), opens the peer's event stream, declares the peer's providers
//! here under a prefix (`fujisawa.truck-12`, with the origin in each resource's metadata), catches up from the
//! peer's history and applies the stream, resuming after a cut without gaps or duplicates. The peer applies its
//! own policy to this hub's identity, so a link imports only what the peer lets it read.
//!
//! Imported providers are read-only here (the twin refuses other writers); SET and ACT on them are forwarded
//! to the origin hub under the caller's own credentials ([`Federation::forward`]).

mod config;
pub mod link;

use std::sync::Arc;

use hub_twin::Twin;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use config::{CredentialsConfig, FederationConfig, PeerAuth, PeerConfig};
pub use link::{Lag, LinkState, PeerStatus};

use crate::link::{Link, problem_detail};

/// The links to the configured peers.
pub struct Federation {
    links: Vec<Arc<Link>>,
}

/// What the origin hub answered to a forwarded request.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// Its HTTP status.
    pub status: u16,
    /// Its body (a problem document's `detail` when the body was not JSON).
    pub body: Value,
}

impl Federation {
    /// Starts one link per peer, and makes the twin refuse writes to imported providers from anyone else.
    /// Must run inside a Tokio runtime; the links stop at `cancel`.
    pub fn start(config: &FederationConfig, twin: Arc<Twin>, cancel: CancellationToken) -> Result<Federation, String> {
        let links: Vec<Arc<Link>> =
            config.peers.iter().map(|peer| Link::new(peer.clone()).map(Arc::new)).collect::<Result<_, _>>()?;
        twin.set_imported_prefixes(links.iter().map(|l| (l.prefix().to_owned(), l.name().to_owned())).collect());
        for link in &links {
            tokio::spawn(Arc::clone(link).run(twin.clone(), cancel.clone()));
        }
        Ok(Federation { links })
    }

    /// Every link's status.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.links.iter().map(|l| l.status()).collect()
    }

    /// The link whose prefix a local provider name carries, and the provider's name at the peer.
    fn origin<'a>(&'a self, provider: &'a str) -> Option<(&'a Link, &'a str)> {
        self.links.iter().find_map(|l| provider.strip_prefix(l.prefix()).map(|remote| (l.as_ref(), remote)))
    }

    /// Sends a request about an imported provider to its origin hub, under the caller's own `Authorization`
    /// header (the origin decides with its own policy), and returns the origin's answer. `rest` is the path
    /// below the provider (`services/s/resources/r` or `.../act`). `None` when the provider is not imported.
    pub async fn forward(
        &self,
        provider: &str,
        method: reqwest::Method,
        rest: &str,
        authorization: Option<&str>,
        body: &Value,
    ) -> Option<Result<Forwarded, String>> {
        let (link, remote) = self.origin(provider)?;
        let url = format!("{}/api/v1/providers/{remote}/{rest}", link.base());
        let mut request = link.http().request(method, &url).json(body);
        if let Some(authorization) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let what = format!("the origin hub {}", link.name());
        Some(link.exchange(&what, request).await.map(|(status, bytes)| {
            Forwarded {
                status: status.as_u16(),
                body: serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| serde_json::json!({ "detail": problem_detail(&bytes) })),
            }
        }))
    }
}

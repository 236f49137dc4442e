//! A scripted browser for sign-in tests: it follows no redirect by itself (each step of the dance is visible),
//! and keeps cookies per origin (scheme, host and port) as a browser keeps them per site: the hub and the OpenID
//! provider both live on 127.0.0.1, and their cookies must not mix. Paths and expiry dates are not modelled
//! (tests run one sign-in at a time per browser); `Max-Age=0` deletes a cookie.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, Result};
use reqwest::{Method, Url, header};

/// What a request answered.
#[derive(Debug, Clone)]
pub struct Page {
    /// The HTTP status.
    pub status: u16,
    /// The `Location` header, resolved against the request URL.
    pub location: Option<String>,
    /// The `Set-Cookie` headers, as sent.
    pub set_cookies: Vec<String>,
    /// The body.
    pub body: String,
}

impl Page {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `Set-Cookie` header for cookie `name`.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.set_cookies.iter().map(String::as_str).find(|c| c.starts_with(&prefix))
    }
}

/// A browser: an HTTP client without automatic redirects and a cookie jar per origin.
pub struct Browser {
    http: reqwest::Client,
    jar: HashMap<String, Vec<(String, String)>>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

impl Browser {
    /// A browser with no cookies.
    pub fn new() -> Browser {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("building an HTTP client");
        Browser { http, jar: HashMap::new() }
    }

    /// The cookie `name` this browser keeps for the origin of `url`.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let url = Url::parse(url).ok()?;
        self.jar.get(&origin(&url))?.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    /// Sets cookie `name` for the origin of `url` (as if a server had set it).
    pub fn set_cookie(&mut self, url: &str, name: &str, value: &str) {
        let url = Url::parse(url).expect("a URL");
        let cookies = self.jar.entry(origin(&url)).or_default();
        cookies.retain(|(n, _)| n != name);
        cookies.push((name.to_owned(), value.to_owned()));
    }

    /// GETs `url`.
    pub async fn get(&mut self, url: &str) -> Result<Page> {
        self.send(Method::GET, url, &[], None).await
    }

    /// POSTs a form to `url`.
    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Result<Page> {
        let body = form.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&");
        let content_type = [("content-type", "application/x-www-form-urlencoded")];
        self.send(Method::POST, url, &content_type, Some(body)).await
    }

    /// Sends a request with the cookies for its origin and extra `headers`; keeps the cookies it sets.
    pub async fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<Page> {
        let parsed = Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
        let mut request = self.http.request(method.clone(), parsed.clone());
        if let Some(cookies) = self.jar.get(&origin(&parsed)).filter(|c| !c.is_empty()) {
            let line = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ");
            request = request.header(header::COOKIE, line);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| parsed.join(l).map(|u| u.to_string()).unwrap_or_else(|_| l.to_owned()));
        let set_cookies: Vec<String> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        for line in &set_cookies {
            self.keep(&parsed, line);
        }
        let body = response.text().await.unwrap_or_default();
        Ok(Page { status, location, set_cookies, body })
    }

    fn keep(&mut self, url: &Url, line: &str) {
        let mut parts = line.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else { return };
        let deleted = parts.any(|p| p.trim().eq_ignore_ascii_case("max-age=0"));
        let cookies = self.jar.entry(origin(url)).or_default();
        cookies.retain(|(n, _)| n != name);
        if !deleted {
            cookies.push((name.to_owned(), value.to_owned()));
        }
    }
}

/// Percent-encodes a form field.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

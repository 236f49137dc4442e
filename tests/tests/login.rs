//! Browser sign-in against a real OpenID provider (npm `oidc-provider`, authorization code flow with PKCE): the
//! full redirect dance into a session cookie, the policy applied to the signed-in principal, sign-out, and the
//! sign-ins the hub must refuse (unknown, replayed or foreign `state`, a provider's refusal, an open redirect).
//!
//! Needs Node.js and `npm ci --prefix tests/oidc`.

use hub_e2e::{
    HubProcess, Launch,
    browser::Browser,
    oidc::{IdP, LoginSetup, open_air_to_fujisawa_officers},
};
use reqwest::Method;
use serde_json::{Value, json};

const AUDIENCE: &str = "https://hub.santander.example/api";
const PASSWORD: &str = "correct horse battery staple";

/// A provider with one sign-in client for a hub on `hub_port`, and the user alice (role officer), and a hub that
/// trusts it as Fujisawa's and signs people in there; Santander's air data is open to Fujisawa's officers.
async fn start(
    hub_port: u16,
    dir: &std::path::Path,
    client_secret: Option<&str>,
    claims_in_id_token: bool,
) -> (IdP, HubProcess) {
    let redirect_uri = format!("http://127.0.0.1:{hub_port}/api/v1/auth/callback");
    let setup = LoginSetup {
        client_id: "santander-hub".into(),
        client_secret: client_secret.map(str::to_owned),
        redirect_uri: redirect_uri.clone(),
        users: vec![("alice".into(), PASSWORD.into(), json!({"roles": ["officer"]}))],
        claims_in_id_token,
    };
    let idp = IdP::start_with_login(AUDIENCE, &[], Some(setup)).expect("starting the OpenID provider");
    let secret = client_secret.map(|s| format!("client_secret = \"{s}\"\n")).unwrap_or_default();
    let config = format!(
        "[[oidc.issuers]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\ndomain = \"fujisawa\"\n\n\
         [oidc.login]\nissuer = \"{issuer}\"\nclient_id = \"santander-hub\"\n{secret}\
         redirect_url = \"{redirect_uri}\"\nscopes = [\"openid\", \"roles\"]\n",
        issuer = idp.issuer()
    );
    let path = dir.join("hub.toml");
    std::fs::write(&path, config).unwrap();
    let mut launch = Launch::new(dir);
    launch.port = hub_port;
    launch.args = vec!["--config".into(), path.display().to_string()];
    let hub = HubProcess::start(launch).await.expect("starting the hub");
    open_air_to_fujisawa_officers(&hub).await.unwrap();
    (idp, hub)
}

fn free_port() -> u16 {
    hub_e2e::free_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_through_the_provider_reads_what_the_policy_allows_and_signs_out() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (idp, hub) = start(port, dir.path(), Some("santander-secret"), true).await;
    let mut browser = Browser::new();

    let start = format!("{}/api/v1/auth/login?return_to=/studio/air%3Fcity%3Dfujisawa", hub.base);
    let callback = idp.sign_in(&mut browser, &start, "alice", PASSWORD).await.unwrap();
    assert!(callback.contains("code=") && callback.contains("state="), "{callback}");
    let page = browser.get(&callback).await.unwrap();
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(page.location.as_deref(), Some(format!("{}/studio/air?city=fujisawa", hub.base).as_str()));
    let set = page.set_cookie("hub_session").expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/;"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "http on loopback: no Secure by default: {set}");
    let session = browser.cookie(&hub.base, "hub_session").expect("the browser keeps the session");
    assert_eq!(session.len(), 43, "32 random bytes, base64url");
    assert!(browser.cookie(&hub.base, "hub_login").is_none(), "the sign-in cookie is cleared");

    // The policy applies to alice@fujisawa with role officer@fujisawa.
    let page = browser.get(&format!("{}/api/v1/providers/santander-air-1", hub.base)).await.unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    let page = browser.get(&format!("{}/api/v1/providers/santander-care-7", hub.base)).await.unwrap();
    assert_eq!(page.status, 403, "{}", page.body);
    let me = browser.get(&format!("{}/api/v1/auth/session", hub.base)).await.unwrap();
    assert_eq!(me.status, 200, "{}", me.body);
    let me = me.json();
    assert_eq!(me["subject"], "alice@fujisawa", "{me}");
    assert_eq!(me["roles"], json!(["officer@fujisawa"]), "{me}");
    assert!(me["expires"].is_string(), "{me}");

    // Sign-out needs the CSRF sign; then the provider's logout page is offered and the cookie is refused.
    let logout = format!("{}/api/v1/auth/logout", hub.base);
    let page = browser.send(Method::POST, &logout, &[], None).await.unwrap();
    assert_eq!(page.status, 403, "{}", page.body);
    let page = browser.send(Method::POST, &logout, &[("x-requested-with", "fetch")], None).await.unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    let end_session = page.json()["end_session_url"].as_str().expect("end_session_url").to_owned();
    let advertised = idp.discovery().unwrap()["end_session_endpoint"].as_str().unwrap().to_owned();
    assert!(end_session.starts_with(&format!("{advertised}?")), "{end_session}");
    assert!(end_session.contains("client_id=santander-hub") && end_session.contains("id_token_hint="), "{end_session}");
    assert!(page.set_cookie("hub_session").is_some_and(|c| c.contains("Max-Age=0")), "{:?}", page.set_cookies);

    browser.set_cookie(&hub.base, "hub_session", &session);
    let page = browser.get(&format!("{}/api/v1/providers/santander-air-1", hub.base)).await.unwrap();
    assert_eq!(page.status, 401, "the ended session is refused: {}", page.body);
    assert_eq!(browser.get(&format!("{}/api/v1/auth/session", hub.base)).await.unwrap().status, 401);
    hub.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_foreign_and_refused_sign_ins_are_turned_away() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A public client (PKCE only), roles from the userinfo endpoint.
    let (idp, hub) = start(port, dir.path(), None, false).await;
    let login = format!("{}/api/v1/auth/login", hub.base);
    let mut browser = Browser::new();

    // No open redirect: return_to is a local path or nothing.
    for evil in ["//evil.example", "https://evil.example/", "/%5Cevil.example"] {
        let page = browser.get(&format!("{login}?return_to={evil}")).await.unwrap();
        assert_eq!(page.status, 400, "{evil}: {}", page.body);
        assert_eq!(page.json()["field"], "return_to", "{}", page.body);
        assert!(page.location.is_none());
    }

    let callback = idp.sign_in(&mut browser, &login, "alice", PASSWORD).await.unwrap();
    // A state the hub never issued.
    let state = query_value(&callback, "state");
    let forged = callback.replace(&format!("state={state}"), "state=forged-state");
    let page = browser.get(&forged).await.unwrap();
    assert_eq!(page.status, 400, "{}", page.body);
    assert_eq!(page.json()["field"], "state", "{}", page.body);
    assert!(browser.cookie(&hub.base, "hub_session").is_none());

    // The real callback, from the browser that began the sign-in, in a browser that got its cookie back.
    browser.set_cookie(&hub.base, "hub_login", &state);
    let page = browser.get(&callback).await.unwrap();
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(page.location.as_deref(), Some(format!("{}/", hub.base).as_str()), "return_to defaults to /");
    let me = browser.get(&format!("{}/api/v1/auth/session", hub.base)).await.unwrap().json();
    assert_eq!(me["roles"], json!(["officer@fujisawa"]), "roles from userinfo: {me}");

    // Replayed: the state was used.
    browser.set_cookie(&hub.base, "hub_login", &state);
    let page = browser.get(&callback).await.unwrap();
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(detail(&page.json()).contains("already used"), "{}", page.body);

    // A callback carried to another browser (login CSRF): that browser did not begin the sign-in.
    let mut victim = Browser::new();
    let mut attacker = Browser::new();
    let planted = idp.sign_in(&mut attacker, &login, "alice", PASSWORD).await.unwrap();
    let page = victim.get(&planted).await.unwrap();
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(detail(&page.json()).contains("browser"), "{}", page.body);
    assert!(victim.cookie(&hub.base, "hub_session").is_none());

    // The provider refuses (the person cancelled): its error and description, 401.
    let mut cancelled = Browser::new();
    let page = cancelled.get(&login).await.unwrap();
    let state = query_value(page.location.as_deref().unwrap(), "state");
    let refusal = format!(
        "{}/api/v1/auth/callback?error=access_denied&error_description=the%20user%20cancelled&state={state}",
        hub.base
    );
    let page = cancelled.get(&refusal).await.unwrap();
    assert_eq!(page.status, 401, "{}", page.body);
    let text = detail(&page.json());
    assert!(text.contains("access_denied") && text.contains("the user cancelled"), "{text}");
    hub.stop().unwrap();
}

fn detail(problem: &Value) -> String {
    problem["detail"].as_str().unwrap_or_default().to_owned()
}

/// The (still percent-encoded) value of `name` in a URL's query.
fn query_value(url: &str, name: &str) -> String {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {url}"))
        .to_owned()
}

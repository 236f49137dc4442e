use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{audit, consents, ingest, login, plugins, providers, rules, streams, subjects, system, transports};

#[derive(OpenApi)]
#[openapi(
    info(title = "IoT interoperability hub", description = "Digital twins of a city's devices: providers, services, resources."),
    paths(
        providers::list, providers::get_one, providers::put_model, providers::delete,
        providers::get_resource, providers::set_resource, providers::act, providers::history,
        ingest::ingest, streams::sse, streams::ws,
        system::create_token, system::list_tokens, system::delete_token,
        system::get_policy, system::put_policy, system::check_policy, system::explain_policy,
        system::federation_peers,
        audit::list, audit::verify, audit::verify_published, audit::latest_checkpoint, audit::sign_checkpoint,
        audit::public_key,
        consents::grant, consents::list, consents::get_one, consents::update, consents::revoke,
        subjects::export,
        login::login, login::callback, login::session, login::logout,
        system::healthz, system::metrics, system::openapi_json, transports::list, transports::gateways,
        plugins::list, plugins::install, plugins::get_one, plugins::upgrade, plugins::set_config, plugins::set_grant,
        plugins::start, plugins::stop, plugins::remove,
        rules::validate, rules::list, rules::deploy, rules::get_one, rules::firings, rules::enable, rules::disable,
        rules::remove,
    ),
    components(schemas(providers::SetBody, providers::ActBody, ingest::IngestBody, ingest::IngestUpdate,
                        system::TokenRequest, system::CheckRequest, plugins::PluginUpload, plugins::PluginConfigBody,
                        audit::VerifyBody, consents::ConsentRequest)),
    modifiers(&Credentials),
    security(("bearer" = []), ("session" = []))
)]
struct ApiDoc;

/// The two ways to authenticate: a bearer token, or the session cookie of a browser sign-in.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
            components.add_security_scheme(
                "session",
                SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(crate::login::SESSION_COOKIE))),
            );
        }
    }
}

/// The OpenAPI 3 document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

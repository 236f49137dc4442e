use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::{ingest, plugins, providers, rules, streams, system, transports};

#[derive(OpenApi)]
#[openapi(
    info(title = "IoT interoperability hub", description = "Digital twins of a city's devices: providers, services, resources."),
    paths(
        providers::list, providers::get_one, providers::put_model, providers::delete,
        providers::get_resource, providers::set_resource, providers::act, providers::history,
        ingest::ingest, streams::sse, streams::ws,
        system::create_token, system::list_tokens, system::delete_token,
        system::get_policy, system::put_policy, system::check_policy, system::explain_policy, system::federation_peers,
        system::healthz, system::metrics, system::openapi_json, transports::list, transports::gateways,
        plugins::list, plugins::install, plugins::get_one, plugins::upgrade, plugins::set_config, plugins::set_grant,
        plugins::start, plugins::stop, plugins::remove,
        rules::validate, rules::list, rules::deploy, rules::get_one, rules::firings, rules::enable, rules::disable,
        rules::remove,
    ),
    components(schemas(providers::SetBody, providers::ActBody, ingest::IngestBody, ingest::IngestUpdate,
                        system::TokenRequest, system::CheckRequest, plugins::PluginUpload, plugins::PluginConfigBody)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The OpenAPI 3 document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

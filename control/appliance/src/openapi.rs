//! The OpenAPI document of the REST API, served at `GET /netlox/v1/openapi.json`: its fixed
//! parts (title, description, the bearer scheme, the answers every path can give) around the
//! operations that `crate::http` registers from its `#[utoipa::path]` handlers, so the
//! document is built from the same list of routes as the router and cannot drift from it.

use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, Required, Response, ResponseBuilder};

/// The name of the bearer security scheme in `components.securitySchemes`.
const BEARER: &str = "bearer";

/// Why OpenAPI alone does not describe the API completely; the document's description.
const DESCRIPTION: &str = "\
oxlb's REST API, compatible with loxilb's `/netlox/v1` (same paths, JSON field names and \
`{\"result\":\"Success\"}` / `Error` answers), plus oxlb's own `/status`, `/metrics` and this \
document.

Input bodies are matched as loxilb's Go server matches them, which OpenAPI cannot express: \
besides the field names listed here, kube-loxilb's capitalised `BGP` and `Monitor` are accepted \
in `serviceArguments` (Go matches JSON field names case-insensitively), and Go's `null` for an \
empty array is accepted for `endpoints`, `secondaryIPs` and `allowedSources`. Unknown fields are \
refused with 400, naming the field.

A value the schema allows can still be refused with 400 when oxlb does not implement it \
(IPv6 endpoints behind an IPv4 address, some `sel`/`mode` values, ...); the `Error` body's \
`message` says what to send instead and `fields` names the offending JSON path.

Authentication: when the appliance is started with `--api-token-file`, every path (this \
document and the liveness probe included) needs `Authorization: Bearer <token>` and answers \
401 without it; without a token file the API needs no credentials (and listens on loopback \
only). Hence both an empty security requirement and the bearer scheme are listed.

HA state (`/config/cistate`) records the role an external controller assigns (kube-loxilb's \
`--setRoles`); it is persisted and listed, and does not change forwarding; while the default \
instance `llb-inst0` is BACKUP, BGP offers the VIPs less preferred (LOCAL_PREF 10, MED 70 \
instead of 5000 and 10), as loxilb does.

BGP (`/config/bgp/...`): the address of every rule with `bgp` set is advertised to the \
configured neighbours as a host route; routes received are checked, not installed.";

/// The document of `doc`'s operations: the fixed parts and the [`crate::ops`] routes added,
/// and to every operation the answer the layer around the handlers gives (401 from the token
/// check).
pub fn finish(mut doc: OpenApi) -> OpenApi {
    add_ops_paths(&mut doc);
    doc.info.title = "oxlb REST API (loxilb-compatible /netlox/v1)".to_owned();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.info.description = Some(DESCRIPTION.to_owned());
    doc.info.license = None;
    doc.info.contact = None;
    let components = doc.components.get_or_insert_with(Default::default);
    components.schemas.insert(
        LOG_LEVEL.to_owned(),
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("The log filter, in RUST_LOG syntax."))
            .property(
                "filter",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("e.g. `info,oxlb_dataplane=debug`")),
            )
            .required("filter")
            .additional_properties(Some(
                AdditionalProperties::<utoipa::openapi::Schema>::FreeForm(false),
            ))
            .into(),
    );
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The token of the appliance's --api-token-file; needed only when it was \
                     started with one.",
                ))
                .build(),
        ),
    );
    doc.security = Some(vec![
        SecurityRequirement::default(),
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
    ]);
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for op in operations.into_iter().flatten() {
            add_unauthorized(op);
        }
    }
    doc
}

/// The schema name of [`crate::ops::LogLevel`] (which has no `ToSchema`: it is described here).
const LOG_LEVEL: &str = "LogLevel";

/// The log-level routes of [`crate::ops`], merged into the router as a plain axum router and
/// so described here by hand; the router test checks they are served.
fn add_ops_paths(doc: &mut OpenApi) {
    let no_control = || error_response("This appliance does not control its log level");
    let read = OperationBuilder::new()
        .tag("oxlb")
        .summary(Some("The log filter in force"))
        .response("200", json_response("The filter", LOG_LEVEL))
        .response("404", no_control())
        .build();
    let replace = |method: &str| {
        OperationBuilder::new()
            .tag("oxlb")
            .summary(Some(format!("Replaces the log filter ({method})")))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name(LOG_LEVEL)))
                            .build(),
                    )
                    .build(),
            ))
            .response("200", json_response("The filter now in force", LOG_LEVEL))
            .response(
                "400",
                error_response("Not a LogLevel body, or not a filter; the previous one stays"),
            )
            .response("404", no_control())
            .response("413", error_response("The body is larger than 2 MiB"))
            .response(
                "503",
                error_response("The log subscriber takes no changes now (shutting down)"),
            )
            .build()
    };
    let path = crate::ops::LOG_LEVEL_PATH;
    doc.paths
        .add_path_operation(path, vec![HttpMethod::Get], read);
    doc.paths
        .add_path_operation(path, vec![HttpMethod::Put], replace("PUT"));
    doc.paths
        .add_path_operation(path, vec![HttpMethod::Post], replace("POST"));
}

fn json_response(description: &str, schema: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build()
}

fn error_response(description: &str) -> Response {
    json_response(description, "Error")
}

fn add_unauthorized(op: &mut Operation) {
    let response = error_response(
        "Only when the appliance has a token (--api-token-file): the Authorization header is \
         missing, not `Bearer <token>`, or not the token. Sent with `WWW-Authenticate: Bearer`.",
    );
    op.responses
        .responses
        .entry("401".to_owned())
        .or_insert(response.into());
}

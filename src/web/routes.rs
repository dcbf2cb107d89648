//! Every route of the portal, with who may use it. The router is built from
//! this table and nothing else, so a route cannot exist without saying who
//! it is for; the route-by-role test (`tests/it/routes.rs`) reads the same
//! table and checks each route for every role.

use axum::{
    Router,
    handler::Handler,
    http::Method,
    routing::{MethodRouter, get, post},
};

use super::{AppState, access, admin, api, audit, download, manage, me, ops, public};
use crate::types::states::Scope;

/// Who may use a route. The rule itself is the domain's
/// ([`crate::domain::authz`]); this says what the route-by-role test must find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Anyone holding the secret the path carries: a download link, an
    /// access page, a confirmation or a sign-in link.
    Secret,
    /// A signed-in researcher, for their own applications and grants.
    Researcher,
    /// Any signed-in, enabled reviewer (what they see is filtered to their
    /// models).
    Reviewer,
    /// A reviewer assigned to the model of the application or grant the
    /// path names, or an admin.
    ReviewerOfModel,
    /// An admin.
    Admin,
    /// A request with an API token holding this scope (see
    /// [`crate::domain::authz::token_may`]); what it may see of each record
    /// is then its reviewer's.
    Token(Scope),
}

/// Which session a route sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// No session: downloads, access pages, confirmations, operations.
    Open,
    /// The dashboard's.
    Dashboard,
    /// The researcher's pages, and the public ones that change for a
    /// signed-in researcher.
    Researcher,
    /// The JSON API: no session, a token on every request.
    Api,
}

/// One method of one route.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub(crate) area: Area,
    handler: MethodRouter<AppState>,
}

fn on<H, T>(method: Method, path: &'static str, area: Area, access: Access, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let handler = match method {
        Method::GET => get(handler),
        Method::POST => post(handler),
        ref other => unreachable!("no route answers {other}"),
    };
    Route {
        method,
        path,
        access,
        area,
        handler,
    }
}

/// The route table.
pub fn all() -> Vec<Route> {
    use Access::*;
    use Area::{Api, Dashboard, Open, Researcher as Mine};
    let (g, p) = (Method::GET, Method::POST);
    vec![
        on(g.clone(), "/", Mine, Public, public::catalogue),
        on(
            g.clone(),
            "/models/{slug}/terms/{version}",
            Open,
            Public,
            public::terms,
        ),
        on(g.clone(), "/confirm/{token}", Open, Secret, public::confirm_page),
        on(p.clone(), "/confirm/{token}", Open, Secret, public::confirm),
        on(g.clone(), "/access/{token}", Open, Secret, access::page),
        on(
            g.clone(),
            "/access/{token}/manifest.json",
            Open,
            Secret,
            access::grant_manifest,
        ),
        on(
            g.clone(),
            "/access/{token}/releases/{release}/{name}",
            Open,
            Secret,
            access::release_file,
        ),
        on(
            g.clone(),
            access::PUBLIC_KEY_PATH,
            Open,
            Public,
            access::public_key,
        ),
        on(
            g.clone(),
            access::MODEL_SIGNING_KEY_PATH,
            Open,
            Public,
            access::model_signing_key,
        ),
        on(
            g.clone(),
            access::AUDIT_KEY_PATH,
            Open,
            Public,
            access::audit_public_key,
        ),
        on(g.clone(), "/dl/{token}/{*file}", Open, Secret, download::fetch),
        on(g.clone(), "/healthz", Open, Public, ops::healthz),
        on(g.clone(), "/readyz", Open, Public, ops::readyz),
        on(g.clone(), "/metrics", Open, Public, ops::metrics),
        on(g.clone(), "/static/style.css", Open, Public, super::style),
        on(g.clone(), "/models/{slug}", Mine, Public, public::model),
        on(p.clone(), "/models/{slug}/apply", Mine, Public, public::apply),
        on(
            g.clone(),
            "/models/{slug}/submitted",
            Open,
            Public,
            public::submitted,
        ),
        on(g.clone(), "/signin", Mine, Public, me::signin_page),
        on(p.clone(), "/signin", Mine, Public, me::request_link),
        on(g.clone(), "/signin/sent", Open, Public, me::signin_sent),
        on(g.clone(), "/signin/{token}", Mine, Secret, me::link_page),
        on(p.clone(), "/signin/{token}", Mine, Secret, me::use_link),
        on(p.clone(), "/signout", Mine, Public, me::signout),
        on(g.clone(), "/me", Mine, Researcher, me::applications),
        on(
            p.clone(),
            "/me/applications/{id}/answer",
            Mine,
            Researcher,
            me::answer,
        ),
        on(
            p.clone(),
            "/me/applications/{id}/appeal",
            Mine,
            Researcher,
            me::appeal,
        ),
        on(g.clone(), "/me/access", Mine, Researcher, me::access),
        on(p.clone(), "/me/access/{id}/renew", Mine, Researcher, me::renew),
        on(
            p.clone(),
            "/me/access/{id}/client-url",
            Mine,
            Researcher,
            me::client_url,
        ),
        on(
            g.clone(),
            "/me/access/{id}/releases/{release}/{name}",
            Mine,
            Researcher,
            me::release_file,
        ),
        on(
            p.clone(),
            "/me/access/{id}/urls/{url}/withdraw",
            Mine,
            Researcher,
            me::withdraw_url,
        ),
        on(g.clone(), "/admin", Dashboard, Reviewer, admin::queue),
        on(g.clone(), "/admin/login", Dashboard, Public, admin::login_page),
        on(p.clone(), "/admin/login", Dashboard, Public, admin::login),
        on(p.clone(), "/admin/logout", Dashboard, Public, admin::logout),
        on(
            p.clone(),
            "/admin/applications/bulk",
            Dashboard,
            Reviewer,
            admin::bulk,
        ),
        on(
            g.clone(),
            "/admin/applications/{id}",
            Dashboard,
            ReviewerOfModel,
            admin::application,
        ),
        on(
            p.clone(),
            "/admin/applications/{id}/approve",
            Dashboard,
            ReviewerOfModel,
            admin::approve,
        ),
        on(
            p.clone(),
            "/admin/applications/{id}/deny",
            Dashboard,
            ReviewerOfModel,
            admin::deny,
        ),
        on(
            p.clone(),
            "/admin/applications/{id}/ask",
            Dashboard,
            ReviewerOfModel,
            admin::ask,
        ),
        on(g.clone(), "/admin/grants", Dashboard, Reviewer, admin::grants),
        on(
            g.clone(),
            "/admin/grants/{id}",
            Dashboard,
            ReviewerOfModel,
            audit::grant,
        ),
        on(
            p.clone(),
            "/admin/grants/{id}/revoke",
            Dashboard,
            ReviewerOfModel,
            admin::revoke,
        ),
        on(
            p.clone(),
            "/admin/grants/{id}/urls/{url}/withdraw",
            Dashboard,
            ReviewerOfModel,
            admin::withdraw_url,
        ),
        on(
            p.clone(),
            "/admin/grants/{id}/extend",
            Dashboard,
            ReviewerOfModel,
            admin::extend,
        ),
        on(g.clone(), "/admin/reviewers", Dashboard, Admin, manage::reviewers),
        on(
            p.clone(),
            "/admin/reviewers",
            Dashboard,
            Admin,
            manage::save_reviewer,
        ),
        on(
            p.clone(),
            "/admin/reviewers/{id}",
            Dashboard,
            Admin,
            manage::change_reviewer,
        ),
        on(g.clone(), "/admin/models", Dashboard, Admin, manage::models),
        on(
            p.clone(),
            "/admin/models/{slug}/policy",
            Dashboard,
            Admin,
            manage::save_policy,
        ),
        on(
            p.clone(),
            "/admin/models/{slug}/questions",
            Dashboard,
            Admin,
            manage::save_questions,
        ),
        on(
            p.clone(),
            "/admin/models/{slug}/terms",
            Dashboard,
            Admin,
            manage::save_terms,
        ),
        on(
            p.clone(),
            "/admin/templates",
            Dashboard,
            Admin,
            manage::save_template,
        ),
        on(
            p.clone(),
            "/admin/templates/{id}/delete",
            Dashboard,
            Admin,
            manage::delete_template,
        ),
        on(g.clone(), "/admin/account", Dashboard, Reviewer, manage::account),
        on(
            p.clone(),
            "/admin/account",
            Dashboard,
            Reviewer,
            manage::save_account,
        ),
        on(
            p.clone(),
            "/admin/account/password",
            Dashboard,
            Reviewer,
            manage::change_password,
        ),
        on(
            p.clone(),
            "/admin/account/tokens",
            Dashboard,
            Reviewer,
            manage::create_token,
        ),
        on(
            p.clone(),
            "/admin/account/tokens/revoke",
            Dashboard,
            Reviewer,
            manage::revoke_token,
        ),
        on(
            p.clone(),
            "/admin/account/webhooks",
            Dashboard,
            Reviewer,
            manage::create_webhook,
        ),
        on(
            g.clone(),
            "/admin/account/webhook",
            Dashboard,
            Reviewer,
            manage::webhook,
        ),
        on(
            p.clone(),
            "/admin/account/webhook",
            Dashboard,
            Reviewer,
            manage::change_webhook,
        ),
        on(g.clone(), "/admin/audit", Dashboard, Admin, audit::page),
        on(
            g.clone(),
            "/api/v1/openapi.json",
            Open,
            Public,
            api::doc::openapi_json,
        ),
        on(
            g.clone(),
            "/api/v1/models",
            Api,
            Token(Scope::Read),
            api::models::list,
        ),
        on(
            g.clone(),
            "/api/v1/applications",
            Api,
            Token(Scope::Read),
            api::applications::list,
        ),
        on(
            p.clone(),
            "/api/v1/applications/bulk",
            Api,
            Token(Scope::Review),
            api::applications::bulk,
        ),
        on(
            g.clone(),
            "/api/v1/applications/{id}",
            Api,
            Token(Scope::Read),
            api::applications::one,
        ),
        on(
            p.clone(),
            "/api/v1/applications/{id}/approve",
            Api,
            Token(Scope::Review),
            api::applications::approve,
        ),
        on(
            p.clone(),
            "/api/v1/applications/{id}/deny",
            Api,
            Token(Scope::Review),
            api::applications::deny,
        ),
        on(
            p.clone(),
            "/api/v1/applications/{id}/ask",
            Api,
            Token(Scope::Review),
            api::applications::ask,
        ),
        on(
            g.clone(),
            "/api/v1/grants",
            Api,
            Token(Scope::Read),
            api::grants::list,
        ),
        on(
            g.clone(),
            "/api/v1/grants/{id}",
            Api,
            Token(Scope::Read),
            api::grants::one,
        ),
        on(
            p.clone(),
            "/api/v1/grants/{id}/extend",
            Api,
            Token(Scope::Review),
            api::grants::extend,
        ),
        on(
            p.clone(),
            "/api/v1/grants/{id}/revoke",
            Api,
            Token(Scope::Review),
            api::grants::revoke,
        ),
        on(
            g.clone(),
            "/api/v1/audit/events",
            Api,
            Token(Scope::Audit),
            api::audit::events,
        ),
        on(
            g.clone(),
            "/api/v1/audit/downloads",
            Api,
            Token(Scope::Audit),
            api::audit::downloads,
        ),
        on(
            g.clone(),
            "/api/v1/audit/who-has",
            Api,
            Token(Scope::Audit),
            api::audit::who_has,
        ),
        on(
            g.clone(),
            "/api/v1/audit/anomalies",
            Api,
            Token(Scope::Audit),
            api::audit::anomalies,
        ),
        on(
            g.clone(),
            "/api/v1/audit/verify",
            Api,
            Token(Scope::Audit),
            api::audit::verify,
        ),
        on(
            g.clone(),
            "/api/v1/audit/export",
            Api,
            Token(Scope::Audit),
            api::audit::export,
        ),
        on(
            g.clone(),
            "/api/v1/audit/checkpoints",
            Api,
            Token(Scope::Audit),
            api::audit::checkpoints,
        ),
        on(
            g.clone(),
            "/api/v1/webhooks",
            Api,
            Token(Scope::Read),
            api::webhooks::list,
        ),
        on(
            p.clone(),
            "/api/v1/webhooks",
            Api,
            Token(Scope::Review),
            api::webhooks::subscribe,
        ),
        on(
            g.clone(),
            "/api/v1/webhooks/{id}",
            Api,
            Token(Scope::Read),
            api::webhooks::deliveries,
        ),
        on(
            p.clone(),
            "/api/v1/webhooks/{id}/remove",
            Api,
            Token(Scope::Review),
            api::webhooks::remove,
        ),
        on(
            p.clone(),
            "/api/v1/webhooks/{id}/rotate",
            Api,
            Token(Scope::Review),
            api::webhooks::rotate,
        ),
        on(
            p.clone(),
            "/api/v1/webhooks/{id}/enable",
            Api,
            Token(Scope::Review),
            api::webhooks::enable,
        ),
        on(
            p.clone(),
            "/api/v1/webhooks/messages/{id}/resend",
            Api,
            Token(Scope::Review),
            api::webhooks::resend,
        ),
        on(
            p.clone(),
            "/api/v1/reviewers",
            Api,
            Token(Scope::Admin),
            api::reviewers::add,
        ),
        on(
            p.clone(),
            "/api/v1/reviewers/{id}",
            Api,
            Token(Scope::Admin),
            api::reviewers::change,
        ),
        on(
            g.clone(),
            "/api/v1/tokens",
            Api,
            Token(Scope::Read),
            api::own_tokens::list,
        ),
        on(
            p.clone(),
            "/api/v1/tokens/{id}/revoke",
            Api,
            Token(Scope::Read),
            api::own_tokens::revoke,
        ),
        on(
            g,
            "/api/v1/reviewers",
            Api,
            Token(Scope::Admin),
            api::reviewers::list,
        ),
    ]
}

/// The routes of one area, as a router. A route for a token is guarded
/// by [`api::guard`] with the scope the table names, so that no API handler
/// runs without it.
pub(crate) fn router(area: Area, state: &AppState) -> Router<AppState> {
    all()
        .into_iter()
        .filter(|r| r.area == area)
        .fold(Router::new(), |router, r| {
            let handler = match r.access {
                Access::Token(scope) => r.handler.route_layer(axum::middleware::from_fn_with_state(
                    api::Guarded {
                        state: state.clone(),
                        scope,
                        route: r.path,
                    },
                    api::guard,
                )),
                _ => r.handler,
            };
            router.route(r.path, handler)
        })
}
